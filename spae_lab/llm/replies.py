"""Reading the replies of an OpenAI-compatible server without taking them on trust, and keeping
the API key out of everything a reply may carry.

Parsers are pure functions of the decoded JSON. A reply that could be a transient fault (no
choices, a text that is not a string) raises `RetryableReply`, which the backend retries; a reply
that is well formed but cannot be what was asked (log-probabilities that are strings, NaN,
+/-inf or above 0, offsets that are not integers, lists of different lengths) is an `LLMError` at
once: a server that answers so answers so every time, and a NaN scored as a number would print a
table at chance without a word.

Redaction (`redact_key`) removes the key and every prefix of it of `MIN_SECRET_PREFIX` or more
characters (a server or a cut error text may hold the start of the key only); `redact_reply`
applies it to every string of a decoded reply before it is parsed, so a key echoed in a 200 answer
never reaches the response cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from spae_lab.llm.base import LLMError

MIN_SECRET_PREFIX = 6  # shorter pieces of a key are too common in ordinary text to remove
SHOWN_CHARS = 120  # how much of a bad reply an error message quotes
_MAX_SCORE_ABOVE_ZERO = 1e-4  # a log-probability is <= 0; servers round, within this


class RetryableReply(Exception):
    """A reply that may be right if asked again (reason "bad_json")."""


def redact_key(text: str, key: str | None) -> str:
    """`text` with the key and every prefix of it of 6+ characters replaced by `***`."""
    if not key or len(key) < MIN_SECRET_PREFIX or not text:
        return text
    head = key[:MIN_SECRET_PREFIX]
    out, pos = [], 0
    while (start := text.find(head, pos)) >= 0:
        end = start + MIN_SECRET_PREFIX
        while end < len(text) and end - start < len(key) and text[end] == key[end - start]:
            end += 1
        out += [text[pos:start], "***"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_reply(obj, key: str | None):
    """The decoded reply with `redact_key` applied to every string in it (keys of objects too)."""
    if not key:
        return obj
    if isinstance(obj, str):
        return redact_key(obj, key)
    if isinstance(obj, list):
        return [redact_reply(v, key) for v in obj]
    if isinstance(obj, dict):
        return {redact_key(k, key) if isinstance(k, str) else k: redact_reply(v, key)
                for k, v in obj.items()}
    return obj


def shown(obj) -> str:
    """A piece of a reply for an error message: its repr, cut (redaction happened before)."""
    text = repr(obj)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def first_choice(reply) -> dict:
    if not isinstance(reply, dict):
        raise RetryableReply(f"reply is not a JSON object: {shown(reply)}")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise RetryableReply(f"reply has no choices: {shown(reply)}")
    if not isinstance(choices[0], dict):
        raise RetryableReply(f"reply's choice is not an object: {shown(choices[0])}")
    return choices[0]


def parse_text(endpoint: str) -> Callable[[object], str]:
    """The generated text of a completions or chat reply."""
    def parse(reply) -> str:
        choice = first_choice(reply)
        if endpoint == "chat":
            message = choice.get("message")
            # content is null when the model said nothing (e.g. max_tokens=0): an empty answer
            text = (message.get("content") or "") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            raise RetryableReply(f"reply has no text: {shown(choice)}")
        return text
    return parse


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_logprob(value, index: int) -> float:
    if not _is_number(value):
        raise LLMError(f"the server's token_logprobs[{index}] is {shown(value)}, not a number; "
                       "it does not return OpenAI-style prompt logprobs and cannot score "
                       "continuations: use generation (constrained or open) instead")
    value = float(value)
    if not math.isfinite(value) or value > _MAX_SCORE_ABOVE_ZERO:
        raise LLMError(f"the server's token_logprobs[{index}] is {value}; a log-probability is a "
                       "finite number <= 0, so its scores cannot be trusted")
    return value


def parse_continuation_logprob(start: int, end: int) -> Callable[[object], float]:
    """Sum the logprobs of the echoed tokens overlapping characters [start, end) of the text.

    A token that straddles the prompt/continuation boundary counts (the continuation cannot be
    produced without it); tokens from `end` on (a token the server generated after the echo) do
    not."""
    def parse(reply) -> float:
        lp = first_choice(reply).get("logprobs")
        if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("text_offset"):
            raise LLMError("the server did not return prompt logprobs (echo=True, logprobs=1); "
                           "it cannot score continuations, use generation instead"
                           + (f" (logprobs: {shown(lp)})" if lp is not None else ""))
        tokens, logprobs, offsets = lp.get("tokens"), lp["token_logprobs"], lp["text_offset"]
        if not all(isinstance(x, list) for x in (tokens, logprobs, offsets)):
            raise LLMError("the server's logprobs are not lists (tokens, token_logprobs, "
                           f"text_offset): {shown(lp)}")
        if not len(tokens) == len(logprobs) == len(offsets):
            raise LLMError("the server's logprobs lists have different lengths "
                           f"({len(tokens)} tokens, {len(logprobs)} logprobs, {len(offsets)} "
                           "offsets)")
        total, counted = 0.0, 0
        for index, (tok, value, off) in enumerate(zip(tokens, logprobs, offsets, strict=True)):
            if not isinstance(tok, str) or not _is_number(off) or off != int(off):
                raise LLMError(f"the server's token {index} is {shown(tok)} at offset "
                               f"{shown(off)}: a token is a string at an integer offset")
            if off < end and off + max(len(tok), 1) > start:
                if value is None:  # the very first token has no context: nothing to score against
                    raise LLMError("cannot score a continuation of an empty prompt")
                total += _checked_logprob(value, index)
                counted += 1
        if counted == 0:
            raise LLMError("the server's echoed tokens do not cover the continuation "
                           f"(characters {start}..{end}); cannot score it")
        if not math.isfinite(total):  # each one finite, their sum beyond a float's range
            raise LLMError(f"the server's logprobs sum to {total} over characters {start}..{end}")
        return total
    return parse


def _checked_top(top, where: str) -> dict[str, float]:
    if not isinstance(top, dict) or not top:
        raise LLMError(f"the server's top_logprobs {where} is {shown(top)}, not an object of "
                       "token -> logprob; it cannot score continuations this way")
    return {str(token): _checked_logprob(value, 0) for token, value in top.items()}


def parse_top_logprobs(reply) -> dict[str, float]:
    """The top next tokens (text -> logprob) of a plain completion's first generated token."""
    lp = first_choice(reply).get("logprobs")
    tops = lp.get("top_logprobs") if isinstance(lp, dict) else None
    if not isinstance(tops, list) or not tops:
        raise LLMError("the server returned no top_logprobs for the generated token (logprobs=N); "
                       f"it cannot score continuations, use generation instead ({shown(lp)})")
    return _checked_top(tops[0], "of the first generated token")


def parse_echo_top_logprobs(end: int) -> Callable[[object], dict[str, float]]:
    """From an echo reply: the top logprobs listed at the last token starting before `end`."""
    def parse(reply) -> dict[str, float]:
        lp = first_choice(reply).get("logprobs")
        tops = lp.get("top_logprobs") if isinstance(lp, dict) else None
        offsets = lp.get("text_offset") if isinstance(lp, dict) else None
        if not isinstance(tops, list) or not isinstance(offsets, list) or len(tops) != len(offsets):
            raise LLMError("the server did not return prompt logprobs (echo=True, logprobs=1); "
                           f"it cannot score continuations, use generation instead ({shown(lp)})")
        inside = [i for i, off in enumerate(offsets) if _is_number(off) and off < end]
        if not inside:
            raise LLMError(f"the server's echo holds no token before character {end}")
        return _checked_top(tops[inside[-1]], f"at echoed token {inside[-1]}")
    return parse


def snap_to_choice(text: str, choices: list[str]) -> str:
    """The choice the generated text names, else the text itself (scored as wrong).

    Exact match after strip + lower first, then the longest choice the text starts with (so "cats
    are..." picks "cat", and "category" beats "cat" when both are choices)."""
    norm = text.strip().lower()
    for choice in choices:
        if norm == choice.strip().lower():
            return choice
    prefixed = [c for c in choices if c.strip() and norm.startswith(c.strip().lower())]
    return max(prefixed, key=lambda c: len(c.strip())) if prefixed else text
