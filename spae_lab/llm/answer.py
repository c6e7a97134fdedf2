"""Asking a frozen LLM to pick one of a few answers, in the three ways this project compares.

- "likelihood": rank the answers by the summed log-probability of their tokens after the prompt
  (optionally calibrated against a content-free query, Zhao et al. 2021);
- "constrained": generate, restricted to the answers' token sequences;
- "open": generate freely and take the first line as the answer (exact match, case-insensitive).

Every decoding reuses the shared prefix's key/value cache (`LLMBackend.*_shared_prefix`), so the
in-context examples are read once per episode, not once per query.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from spae_lab.llm.base import GenerationParams, LLMBackend, LLMError

DECODINGS = ("likelihood", "constrained", "open")


def parse_open_answer(text: str) -> str:
    """Generated text -> a candidate answer: first line, lower case, no surrounding punctuation."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    return text.strip(string.punctuation + " ").lower()


def choose(backend: LLMBackend, prefix: str, queries: Sequence[str], answers: Sequence[str],
           decoding: str, params: GenerationParams = GenerationParams(max_new_tokens=8, stop=("\n", ".")),
           content_free: str | None = None) -> list[int | None]:
    """Index into `answers` of the LLM's answer to each query (prompt = prefix + query); None when
    a generated answer is none of them.

    `params` bound the generation decodings. With `content_free` (a query whose image says
    nothing, e.g. "Image: N/A. This is a"), likelihood ranking subtracts each answer's score for
    that query first: an answer the prompt favours whatever the image (a short one, the last one
    shown) loses its head start, and answers of different token counts compete fairly.
    """
    continuations = [" " + a for a in answers]
    if decoding == "likelihood":
        return backend.rank_shared_prefix(prefix, list(queries), continuations, content_free)
    if decoding == "constrained":
        out = backend.generate_shared_prefix(prefix, list(queries), params, choices=continuations)
        return [continuations.index(a) if a in continuations else None for a in out]
    if decoding == "open":
        out = backend.generate_shared_prefix(prefix, list(queries), params)
        lowered = [a.lower() for a in answers]
        parsed = [parse_open_answer(a) for a in out]
        return [lowered.index(p) if p in lowered else None for p in parsed]
    raise LLMError(f"decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}")
