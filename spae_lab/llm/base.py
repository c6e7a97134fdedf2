"""The one small interface every LLM reader/writer implements.

A backend answers two kinds of question:

- `generate(prompts, ...)`: greedy continuations, cut at the first stop sequence, optionally
  constrained to a set of choices (the answer is then always one of them);
- `loglikelihood(prompt, continuations)`: the summed log-probability of each continuation's tokens
  given the prompt, where the backend allows it (`supports_loglikelihood`).

`score_shared_prefix(prefix, queries, continuations)` is the few-shot shape: every query of an
episode shares the support prefix, and every query is scored against the same candidate answers.
The default loops over `loglikelihood`; the Hugging Face backend overrides it to reuse the prefix's
key/value cache and to batch the candidates, with the same numbers.

Prompts are always passed as the concatenation prefix + query + continuation; backends tokenize
the pieces separately (so a cached prefix and a naive full prompt see the same token ids).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from spae_lab.errors import SpaeError


class LLMError(SpaeError, RuntimeError):
    """An LLM call that cannot succeed: dead endpoint, bad model, retries exhausted, bad reply."""


def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """LLMError unless `value` is an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        bound = f">= {low}" if high is None else f">= {low} and at most {high}"
        raise LLMError(f"{name} must be {bound} (an integer), got {value!r}")


def check_seconds(name: str, value: object, positive: bool) -> None:
    """LLMError unless `value` is a finite number of seconds, > 0 (positive) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value < 0 or (positive and value == 0):
        raise LLMError(f"{name} must be a finite number of seconds "
                       f"{'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class GenerationParams:
    """Decoding parameters; part of every cache key."""

    max_new_tokens: int = 16
    stop: tuple[str, ...] = ("\n",)
    temperature: float = 0.0  # 0 = greedy (the only mode the experiments use)


@dataclass
class CallStats:
    """What a backend did: requests sent, retried and why, served from cache."""

    requests: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0

    def note_retry(self, reason: str) -> None:
        self.retries += 1
        self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + 1


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to (without) its earliest stop string: every backend cuts client-side too,
    because servers may ignore some stops or take only a few."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def best_index(scores: list[float | None], prior: list[float] | None = None) -> int:
    """Index of the highest score (minus `prior`, the content-free query's scores, when given);
    the first of equal ones; None entries (candidates dropped as unable to win) are skipped."""
    adjusted = [(s - (prior[c] if prior else 0.0), -c) for c, s in enumerate(scores) if s is not None]
    return -max(adjusted)[1]


def cannot_win(row: list[float], candidate: int, targets: list[list[int]],
               prior: list[float] | None) -> bool:
    """True if `candidate` (of several tokens, `row[candidate]` its first token's log-prob) loses
    to a candidate already complete in `row` (one token or none) whatever its next tokens: they
    can only lower its score. Exact, ties included (an equal score wins only from a lower
    index)."""
    shift = prior or [0.0] * len(row)
    complete = [c for c, t in enumerate(targets) if len(t) <= 1]
    if not complete:
        return False
    best = max(complete, key=lambda c: (row[c] - shift[c], -c))
    bound, top = row[candidate] - shift[candidate], row[best] - shift[best]
    return bound < top or (bound == top and candidate > best)


def in_order(pairs, count: int) -> list:
    """(index, answer) pairs that arrive in any order -> the answers as a list in index order."""
    answers = dict(pairs)
    return [answers[i] for i in range(count)]


class LLMBackend:
    """Base class. Subclasses set `kind` ("hf", "openai", ...) and `model`."""

    kind: str = "base"
    model: str = ""
    supports_loglikelihood: bool = False

    def __init__(self) -> None:
        self.stats = CallStats()

    def describe(self) -> dict:
        """Identity of the backend for cache keys and reports (never contains secrets)."""
        return {"kind": self.kind, "model": self.model}

    def generate(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                 choices: list[str] | None = None) -> list[str]:
        raise NotImplementedError

    def loglikelihood(self, prompt: str, continuations: list[str]) -> list[float]:
        raise LLMError(f"{self.kind} backend {self.model!r} cannot score continuations; "
                       "use generation (open or constrained) instead")

    def score_shared_prefix(self, prefix: str, queries: list[str],
                            continuations: list[str]) -> list[list[float]]:
        """(len(queries), len(continuations)) log-likelihoods of continuation | prefix + query."""
        return [self.loglikelihood(prefix + q, continuations) for q in queries]

    def rank_shared_prefix(self, prefix: str, queries: list[str], continuations: list[str],
                           content_free: str | None = None) -> list[int]:
        """Index of the most likely continuation after prefix + each query (the first of equal
        ones). With `content_free` (a query whose image says nothing), each continuation's score
        for it is subtracted first (calibration, Zhao et al. 2021). By default from
        `score_shared_prefix`; a backend may score less as long as the answers are the same."""
        asked = list(queries) + ([content_free] if content_free is not None else [])
        scores = self.score_shared_prefix(prefix, asked, continuations)
        prior = scores.pop() if content_free is not None else None
        return [best_index(row, prior) for row in scores]

    def rank_shared_prefix_iter(self, prefix: str, queries: list[str], continuations: list[str],
                                content_free: str | None = None) -> Iterator[tuple[int, int]]:
        """Yield (index into queries, best continuation); same answers as `rank_shared_prefix`."""
        yield from enumerate(self.rank_shared_prefix(prefix, queries, continuations, content_free))

    # Streaming variants: the same answers, yielded as (index, answer) in any order as they become
    # available, so a caller (the response cache) can store each one at once and an interrupted run
    # loses only what was in flight. The defaults compute the whole batch first; backends that
    # answer item by item (the HTTP backend) override them.

    def generate_iter(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                      choices: list[str] | None = None) -> Iterator[tuple[int, str]]:
        """Yield (index into prompts, answer) pairs; same answers as `generate`."""
        yield from enumerate(self.generate(prompts, params, choices))

    def generate_shared_prefix(self, prefix: str, queries: list[str],
                               params: GenerationParams = GenerationParams(),
                               choices: list[str] | None = None) -> list[str]:
        """`generate` of prefix + query for each query: the few-shot shape, where every query
        shares the support prefix (the HF backend reuses the prefix's key/value cache)."""
        return in_order(self.generate_shared_prefix_iter(prefix, queries, params, choices),
                        len(queries))

    def generate_shared_prefix_iter(self, prefix: str, queries: list[str],
                                    params: GenerationParams = GenerationParams(),
                                    choices: list[str] | None = None
                                    ) -> Iterator[tuple[int, str]]:
        """Yield (index into queries, answer) pairs; by default through `generate_iter`."""
        yield from self.generate_iter([prefix + q for q in queries], params, choices)

    def score_shared_prefix_iter(self, prefix: str, queries: list[str],
                                 continuations: list[str]) -> Iterator[tuple[int, list[float]]]:
        """Yield (index into queries, scores) pairs; same numbers as `score_shared_prefix`."""
        yield from enumerate(self.score_shared_prefix(prefix, queries, continuations))

    def close(self) -> None:
        """Release threads, connections or files the backend holds (nothing by default)."""
