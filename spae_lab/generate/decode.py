"""Progressive in-context decoding: a frozen LLM writes a token pyramid, layer by layer.

SPAE (Yu et al. 2023) section 4: the LLM writes an image's words coarse to fine, a few
words per call, each prompt holding the in-context examples up to the current layer:

    <condition of example 1><its words, layers 1..l, ' |' between layers>
    ...
    <condition of the query><the query's words so far>      <- the LLM writes the next few words

Every layer has a fixed number of words, so the engine itself writes the layer separators and
stops each layer; the LLM only ever chooses words. Positions whose word is known (the uncorrupted
part of an inpainting query) are written by the engine too, without a call.

Writers (who picks the words):
- `HFWordWriter` (a local Hugging Face model): each step's logits are masked to the token ids of
  the codebook's words (each word is one token " word"), greedy or sampled with a seed. The prefix
  of the current layer runs once into a key/value cache (as the few-shot harness does); each
  query's tokens are appended in fixed blocks, so every answer is a function of (prefix, query)
  only and a resumed run gives the same images as an uninterrupted one.
- `TextWordWriter` (any backend, e.g. an OpenAI-compatible server): free text, each word mapped
  to the codebook (itself, else its nearest codebook word by spelling).

Both store every answer in the SQLite cache of `spae_lab.llm.cache.CachedBackend` at once.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from spae_lab.io import sha256_text
from spae_lab.llm.base import GenerationParams, LLMError
from spae_lab.llm.cache import CachedBackend

LAYER_SEPARATOR = " |"
VOCABULARIES = ("codebook", "context", "position", "known")


@dataclass(frozen=True)
class DecodeConfig:
    """How the LLM writes; every field is part of each cached answer's key."""

    tokens_per_call: int = 2  # words per LLM call (V2L: 2)
    temperature: float = 0.0  # 0: greedy; > 0: sampled from the codebook-masked softmax
    seed: int = 0  # sampling seed (each call draws from its own generator, seeded by its prompt)
    # words the LLM may write: "codebook" (all of them), "context" (those the in-context examples
    # use in the layer being written) or "position" (those the examples hold at the position
    # being written: a copy vocabulary) or "known" (the query's own given words of that layer,
    # e.g. around an inpainted centre; every word where none is given). With all words,
    # SmolLM2-135M drifts into "of the world of the world" or one word repeated after a few
    # words of a deep layer.
    vocabulary: str = "position"
    # n > 0: never repeat an n-gram within the layer being written (HF's no_repeat_ngram_size,
    # applied to the layer's own words only, so copying an example stays possible); 0: off
    no_repeat_ngram: int = 0


@dataclass
class Example:
    """An in-context example: a condition text per depth and the target's codebook rows."""

    conditions: list[str]  # conditions[l - 1]: text before the words when l layers are shown
    target: list[list[int]]  # per layer, codebook rows (row-major over the layer's positions)


@dataclass
class Query:
    """What the LLM completes: conditions like an example's; `known[l][p]` is a forced row or None
    (None: the LLM writes it). `written` fills up as the layers are decoded."""

    conditions: list[str]
    known: list[list[int | None]]
    written: list[list[int]] = field(default_factory=list)


def prompt_id(text: str) -> str:
    """A prompt's (or prefix's) id: the first 16 hex digits of its SHA-256 (prompts.jsonl refers
    to prefixes.jsonl by it; it also seeds sampling and keys cached answers)."""
    return sha256_text(text)[:16]


def words_text(rows_by_layer: Sequence[Sequence[int]], words: Sequence[str]) -> str:
    """' w w | w w w w | ...': the words of the given layers, each with its leading space."""
    return LAYER_SEPARATOR.join("".join(" " + words[r] for r in rows) for rows in rows_by_layer)


def example_line(example: Example, depth: int, words: Sequence[str]) -> str:
    return example.conditions[depth - 1] + words_text(example.target[:depth], words) + "\n"


def layer_prefix(examples: Sequence[Example], depth: int, words: Sequence[str]) -> str:
    """The shared part of every prompt of layer `depth` (1-based): the examples up to it."""
    return "".join(example_line(e, depth, words) for e in examples)


# --- writers --------------------------------------------------------------------------------------


class WordWriter:
    """Writes `count` codebook words after prefix + head + body; answers cached by the whole
    prompt. `head` is the query's fixed part in a layer (its condition and earlier layers),
    `body` the words of the current layer so far."""

    def __init__(self, llm: CachedBackend, words: Sequence[str], config: DecodeConfig,
                 vocabulary_id: str):
        self.llm, self.words, self.config = llm, list(words), config
        self.vocabulary_id = vocabulary_id
        self.calls = 0  # answers computed (not from the cache)
        self.prompts: list[dict] = []  # every call: prefix id, query, answer

    def request(self, prefix: str, query: str, count: int) -> dict:
        # the prefix by its SHA-256 (prefixes.jsonl holds the texts): rows stay small
        prefix_sha256 = sha256_text(prefix)
        return self.llm.request("write_words", prefix_sha256=prefix_sha256, query=query, count=count,
                                vocabulary=self.vocabulary_id, kind=type(self).__name__,
                                decode=dataclasses.asdict(self.config),
                                allowed=prompt_id(str(getattr(self, "_allowed_steps", None))))

    def write(self, prefix: str, head: str, body: str, count: int,
              allowed: Sequence[Sequence[int]] | None = None) -> list[int]:
        """`allowed[step]`: the codebook rows it may write at each of the `count` steps (None:
        every word)."""
        self._allowed_steps = None if allowed is None else [sorted(set(a)) for a in allowed]
        request = self.request(prefix, head + body, count)
        key = CachedBackend.key(request)
        found = self.llm.cache.get_many([key])
        if key in found:
            self.llm.stats.cache_hits += 1
            rows = list(found[key])
        else:
            rows = self.compute(prefix, head, body, count)
            self.calls += 1
            self.llm.cache.put(key, "write_words", request, rows)
        self.prompts.append({"prefix_sha": prompt_id(prefix), "query": head + body, "answer": rows})
        return rows

    def compute(self, prefix: str, head: str, body: str, count: int) -> list[int]:
        raise NotImplementedError


class HFWordWriter(WordWriter):
    """Masked decoding on a local Hugging Face model.

    Key/value cache: the prefix runs once per layer, the head once per query and layer, and each
    word of the body joins the cache on its own forward call and stays there for the next call.
    Every cached vector is therefore a function of the token ids before it only, never of which
    calls came before (a resumed run computes the same floats, hence the same words)."""

    def __init__(self, llm: CachedBackend, words: Sequence[str], config: DecodeConfig,
                 vocabulary_id: str):
        super().__init__(llm, words, config, vocabulary_id)
        self.backend = llm.inner
        token_ids = [self.backend.encode(" " + w) for w in self.words]
        single = [i for i, t in enumerate(token_ids) if len(t) == 1]
        if not single:
            raise LLMError(f"no codebook word is a single token of {self.backend.model!r}; "
                           "use the LLM the codebook was built from")
        self.rows = torch.tensor(single)  # codebook rows the LLM may write
        self.allowed = torch.tensor([token_ids[i][0] for i in single])  # their token ids
        self.unwritable = len(self.words) - len(single)
        self._prefix: str | None = None
        self._head: str | None = None

    def _crop(self, length: int) -> None:
        """Drop cached tokens past `length` (a negative count removes tokens in transformers
        4.x and 5.x alike)."""
        extra = self._cache.get_seq_length() - length
        if extra > 0:
            self._cache.crop(-extra)

    def _run(self, ids: list[int], fresh: bool = False) -> torch.Tensor:
        """Append ids to the cache (a new cache if `fresh`); the next-token logits (V,)."""
        if fresh:
            self._cache = self.backend._new_cache()
        past = self._cache.get_seq_length()
        mask = torch.ones(1, past + len(ids), dtype=torch.long)
        logits, self._cache = self.backend._forward(torch.tensor([ids]), mask, cache=self._cache,
                                                    keep=1)
        return logits[0, -1].float()

    @torch.inference_mode()
    def compute(self, prefix: str, head: str, body: str, count: int) -> list[int]:
        if prefix != self._prefix:
            ids = self.backend.context_ids(prefix)
            self._prefix_logits = self._run(ids, fresh=True)
            self._prefix, self._base, self._head = prefix, len(ids), None
        if head != self._head:
            self._crop(self._base)
            head_ids = self.backend.encode(head)
            self._after = [self._run(head_ids) if head_ids else self._prefix_logits]
            self._head, self._start, self._body = head, self._base + len(head_ids), []
        body_ids = self.backend.encode(body)
        common = 0
        while (common < min(len(body_ids), len(self._body))
               and body_ids[common] == self._body[common]):
            common += 1
        self._crop(self._start + common)
        self._body, self._after = self._body[:common], self._after[:common + 1]
        for token in body_ids[common:]:
            self._append(token)
        rows = []
        for step in range(count):
            rows_ok, tokens_ok = self.rows, self.allowed
            if self._allowed_steps is not None:
                keep = torch.isin(self.rows, torch.tensor(self._allowed_steps[step]))
                if keep.any():
                    rows_ok, tokens_ok = self.rows[keep], self.allowed[keep]
            scores = self._after[-1][tokens_ok].clone()
            banned = _repeated_ngram_tokens(self._body, self.config.no_repeat_ngram)
            if banned:
                hit = torch.isin(tokens_ok, torch.tensor(sorted(banned)))
                if not hit.all():
                    scores[hit] = float("-inf")
            pick = self._pick(scores, prefix, head + body, step)
            rows.append(int(rows_ok[pick]))
            self._append(int(tokens_ok[pick]))
        return rows

    def _append(self, token: int) -> None:
        """One token joins the cache on its own forward call."""
        self._after.append(self._run([token]))
        self._body.append(token)

    def _pick(self, scores: torch.Tensor, prefix: str, query: str, step: int) -> int:
        if self.config.temperature <= 0:
            return int(scores.argmax())
        seed = int(prompt_id(f"{self.config.seed}|{prompt_id(prefix)}|{query}|{step}"), 16) % (2**63)
        generator = torch.Generator().manual_seed(seed)
        probs = torch.softmax(scores / self.config.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))


def _repeated_ngram_tokens(tokens: list[int], n: int) -> set[int]:
    """Tokens that would end an n-gram already present in `tokens` (none for n <= 0)."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    context = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1)
            if tuple(tokens[i:i + n - 1]) == context}


class TextWordWriter(WordWriter):
    """Free text from any backend, mapped onto the codebook word by word."""

    def __init__(self, llm: CachedBackend, words: Sequence[str], config: DecodeConfig,
                 vocabulary_id: str):
        super().__init__(llm, words, config, vocabulary_id)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.snapped = 0  # words that were not codebook words

    def nearest(self, word: str, rows: Sequence[int] | None = None) -> int:
        """The codebook row of `word` (among `rows`, default all), else of the closest spelling
        (difflib), else the first allowed row."""
        word = word.strip(".,;:!?\"'()[]").lower()
        if word in self.index and (rows is None or self.index[word] in rows):
            return self.index[word]
        self.snapped += 1
        pool = self.words if rows is None else [self.words[r] for r in rows]
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.0)
        return self.index[close[0]] if close else (rows[0] if rows else 0)

    def compute(self, prefix: str, head: str, body: str, count: int) -> list[int]:
        params = GenerationParams(max_new_tokens=4 * count, stop=("\n", "|"),
                                  temperature=self.config.temperature)
        text = self.llm.generate_shared_prefix(prefix, [head + body], params)[0]
        steps = self._allowed_steps or [None] * count
        rows = [self.nearest(w, a) for w, a in zip(text.split(), steps, strict=False)]
        while len(rows) < count:  # too few words: the last again (or the first allowed word)
            self.snapped += 1
            allowed = steps[len(rows)]
            rows.append(rows[-1] if rows and (allowed is None or rows[-1] in allowed)
                        else (allowed or [0])[0])
        return rows


def make_writer(llm: CachedBackend, words: Sequence[str], config: DecodeConfig,
                vocabulary_id: str) -> WordWriter:
    """HFWordWriter for a local Hugging Face model, TextWordWriter for anything else."""
    from spae_lab.llm.hf import HFBackend

    kind = HFWordWriter if isinstance(llm.inner, HFBackend) else TextWordWriter
    return kind(llm, words, config, vocabulary_id)


# --- the engine -----------------------------------------------------------------------------------


def progressive_decode(writer: WordWriter, examples: Sequence[Example], queries: Sequence[Query],
                       tokens_per_layer: Sequence[int], num_layers: int | None = None,
                       on_call: Callable[[], None] | None = None) -> list[list[list[int]]]:
    """Write every query's pyramid, layer by layer (coarse to fine), `tokens_per_call` words per
    call. Layer l's prompts hold the examples up to layer l; the queries of one layer share that
    prefix (its key/value cache). Returns per query, per layer, the codebook rows written (known
    positions keep their rows). `on_call` is called once per word chunk (progress)."""
    num_layers = num_layers or len(tokens_per_layer)
    words = writer.words
    for query in queries:
        query.written = []
    for depth in range(1, num_layers + 1):
        prefix = layer_prefix(examples, depth, words)
        size = tokens_per_layer[depth - 1]
        vocabulary = writer.config.vocabulary
        if vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")
        layer_words = sorted({r for e in examples for r in e.target[depth - 1]})
        for query in queries:
            known = query.known[depth - 1]
            head = query.conditions[depth - 1] + words_text(query.written, words)
            head += LAYER_SEPARATOR if query.written else ""
            rows: list[int] = []
            while len(rows) < size:
                if known[len(rows)] is not None:
                    rows.append(known[len(rows)])
                    continue
                run = 0  # free positions from here, up to tokens_per_call
                while (len(rows) + run < size and known[len(rows) + run] is None
                       and run < writer.config.tokens_per_call):
                    run += 1
                allowed = None
                if vocabulary == "context" and examples:
                    allowed = [layer_words] * run
                elif vocabulary == "position" and examples:
                    allowed = [[e.target[depth - 1][p] for e in examples]
                               for p in range(len(rows), len(rows) + run)]
                elif vocabulary == "known" and any(k is not None for k in known):
                    allowed = [[k for k in known if k is not None]] * run
                rows += writer.write(prefix, head, words_text([rows], words) if rows else "",
                                     run, allowed)
                if on_call is not None:
                    on_call()
            query.written.append(rows)
    return [q.written for q in queries]


def count_calls(queries: Sequence[Query], tokens_per_call: int, num_layers: int) -> int:
    """How many word chunks `progressive_decode` asks for (the progress bar's total)."""
    total = 0
    for query in queries:
        for known in query.known[:num_layers]:
            run = 0
            for row in [*known, 0]:
                if row is None:
                    run += 1
                    continue
                total += -(-run // tokens_per_call)
                run = 0
    return total
