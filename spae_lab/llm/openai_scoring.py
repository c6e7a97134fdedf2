"""How the OpenAI-compatible backend scores continuations, in two ways servers allow.

- "echo" (OpenAI's legacy completions, vLLM): one request per (prompt, continuation) with
  `echo=True, logprobs=1, max_tokens=1`: the server reads prompt + continuation and returns every
  token's log-probability and character offset; the continuation's score is the sum over the
  tokens that overlap it (`replies.parse_continuation_logprob`).
- "next-token" (any server that returns `logprobs=N` for a generated token): one request per
  distinct text read, `max_tokens=1, logprobs=N`: the top N next tokens and their log-probs. A
  continuation is read piece by piece, each piece the longest top token it starts with; the first
  token of every continuation of a prompt comes from one request.

llama-cpp-python's server (`python -m llama_cpp.server`) returns echoed log-probabilities one
position late: at token i it reports log p(token i | tokens up to and including i), not the
probability the model gave token i before seeing it. "auto" (the default) finds such a server
with one probe and scores it the next-token way; see `ScoringRequests._probe_echo`.
"""

from __future__ import annotations

import logging
import threading

from spae_lab.llm.base import LLMError
from spae_lab.llm.replies import (
    parse_continuation_logprob,
    parse_echo_top_logprobs,
    parse_top_logprobs,
)

log = logging.getLogger(__name__)

SCORINGS = ("auto", "echo", "next-token")
PROBE_TEXT = "The sky is blue"  # scoring="auto": a short text whose echo tells a late server


class ScoringRequests:
    """The scoring requests of `OpenAIBackend` (a mixin: it uses the backend's `_post`, `model`,
    `scoring`, `top_logprobs`, `stats`, `_lock` and `public_url`)."""

    def _score_one(self, prompt: str, continuation: str, cancel: threading.Event) -> float:
        """Echo scoring: the server reads prompt + continuation and returns every token's logprob.
        max_tokens=1, not 0: some servers take 0 as "no limit" (llama-cpp-python); the one token
        generated lies past the continuation and is not counted."""
        if not continuation:
            return 0.0
        body = {"model": self.model, "prompt": prompt + continuation, "max_tokens": 1,
                "temperature": 0.0, "echo": True, "logprobs": 1}
        return self._post(body, parse_continuation_logprob(len(prompt), len(prompt + continuation)),
                          cancel, scoring=True)

    def _next_tokens(self, prompt: str, cancel: threading.Event) -> dict[str, float]:
        """The server's likeliest next tokens after `prompt` (text -> logprob), `top_logprobs`
        of them, from one generated token's logprobs."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                "logprobs": self.top_logprobs}
        return self._post(body, parse_top_logprobs, cancel, scoring=True)

    def _score_next_tokens(self, prompt: str, continuations: list[str],
                           cancel: threading.Event) -> list[float]:
        """Next-token scoring of every continuation after `prompt`: the continuation is read
        piece by piece, each piece the longest of the top next tokens it starts with. One request
        per distinct text read (the first token of every continuation: one request). A
        continuation whose next piece is not among the top `top_logprobs` tokens gets the
        lowest of them for the rest: an upper bound, counted in stats.retry_reasons as
        'bounded_score'."""
        seen: dict[str, dict[str, float]] = {}
        scores = []
        for continuation in continuations:
            total, done = 0.0, 0
            while done < len(continuation):
                context = prompt + continuation[:done]
                if context not in seen:
                    seen[context] = self._next_tokens(context, cancel)
                top = seen[context]
                pieces = [t for t in top if t and continuation.startswith(t, done)]
                if not pieces:
                    total += min(top.values())
                    with self._lock:
                        self.stats.retry_reasons["bounded_score"] = (
                            self.stats.retry_reasons.get("bounded_score", 0) + 1)
                    break
                piece = max(pieces, key=len)
                total += top[piece]
                done += len(piece)
            scores.append(total)
        return scores

    def _scoring_mode(self) -> str:
        """"echo" or "next-token"; "auto" is settled once, by `_probe_echo`."""
        if self.scoring == "auto":
            self.scoring = self._probe_echo()
            log.info("%s: scoring continuations by %s", self.public_url, self.scoring)
        return self.scoring

    def _probe_echo(self) -> str:
        """"next-token" if the server's echoed log-probabilities are one position late, else
        "echo". In an echo, the top logprobs listed at the last token are the distribution that
        token was drawn from; a late server lists there the distribution *after* it, which is
        what a plain completion of the whole text reports for its first generated token."""
        cancel = threading.Event()
        body = {"model": self.model, "prompt": PROBE_TEXT, "max_tokens": 1, "temperature": 0.0,
                "echo": True, "logprobs": 1}
        try:
            echoed = self._post(body, parse_echo_top_logprobs(len(PROBE_TEXT)), cancel,
                                scoring=True)
        except LLMError as echo_error:
            try:  # no usable echo: next-token, or the echo's error
                self._next_tokens(PROBE_TEXT, cancel)
            except LLMError:
                raise echo_error from None
            return "next-token"
        try:
            after = self._next_tokens(PROBE_TEXT, cancel)
        except LLMError:  # no logprobs for generated tokens: echo it is
            return "echo"
        top = max(after, key=after.get)
        late = top in echoed and abs(echoed[top] - after[top]) < 1e-3
        return "next-token" if late else "echo"
