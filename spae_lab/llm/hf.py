"""The Hugging Face causal-LM backend: exact scoring, a shared-prefix fast path, greedy and
constrained generation.

Token ids. Every text piece is tokenized on its own (``add_special_tokens=False``) and the ids are
concatenated after one BOS at the very start, when the tokenizer itself puts a BOS there:

- ``loglikelihood(prompt, continuations)``: BOS + ids(prompt) + ids(continuation);
- ``score_shared_prefix(prefix, queries, continuations)``: BOS + ids(prefix) + ids(query) +
  ids(continuation), through the cached and the naive path alike, so both see the same ids (and
  differ only by floating-point rounding);
- ``generate(prompts, choices=...)``: BOS + ids(prompt), and each choice as ids(choice).

A context that would be empty (no BOS, empty prompt) starts with the BOS or else the EOS token
instead, so the first continuation token has something to be predicted from.

The shared-prefix path runs the prefix once into a key/value cache (a transformers
``DynamicCache``; the last `kept_prefixes` prefixes are kept, so a prefix read again costs nothing
and one that extends a kept one costs only its new tokens), then packs the queries and the
candidates' tokens end to end after it in one row, kept apart by an attention mask
(`spae_lab.llm.hf_packing`): no copy of the prefix's cache per query or candidate. Ranking
(`rank_shared_prefix`) skips the later tokens of candidates that can no longer win. Generation
decodes each query on a copy of the prefix's cache (forward calls mutate caches in place).
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Iterator

import torch

from spae_lab.llm.base import (
    GenerationParams,
    LLMBackend,
    LLMError,
    best_index,
    cannot_win,
    check_int,
)
from spae_lab.llm.decoding import build_trie, greedy_constrained, greedy_open
from spae_lab.llm.hf_load import SMOLLM2, check_model_path, load_model
from spae_lab.llm.hf_packing import NO_PARENT, Packing, chunks_by_tokens


def _pad(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (len(rows), max length) int64, mask 1 on real tokens. Rows are
    left-aligned (padding on the right), or right-aligned with `left` (padding on the left, so the
    next token of every row comes last)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def _sum_token_logprobs(logprobs: torch.Tensor, targets: list[list[int]]) -> list[float]:
    """Sum of log p(targets[i][j]) read from logprobs[i, j]: logprobs (B, T, V) float32 with
    T >= max len(targets); positions past a row's own length are ignored."""
    ids, mask = _pad(targets, 0)
    ids, mask = ids.to(logprobs.device), mask.to(logprobs.device)
    picked = logprobs[:, : ids.shape[1]].gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * mask).sum(-1).tolist()


class HFBackend(LLMBackend):
    """A Hugging Face causal LM as an `LLMBackend` (kind "hf"), exact log-likelihoods included.

    `model`: "smollm2" (the offline SmolLM2-135M-Instruct), a local folder, or a hub id.
    `use_prefix_cache`: `score_shared_prefix` reuses the prefix's key/value cache (fast path);
    False runs every (query, continuation) from scratch (the reference the fast path must match).
    `batch_size`: most rows in one forward call (continuations from scratch, prompts).
    `pack_tokens`: about how many query and candidate tokens one packed forward call reads.
    `kept_prefixes`: how many recent prefixes keep their key/value cache.
    `lazy`: load the weights on first use, not now (a rerun whose answers are all in a
    `CachedBackend`'s file then never loads them); the model path is checked now either way.

    `stats.requests` counts forward batches: one per scoring forward call (prefix, packed chunk,
    continuation chunk) and one per chunk of prompts in `generate` (its decoding steps included).
    """

    kind = "hf"
    supports_loglikelihood = True

    def __init__(self, model: str = SMOLLM2, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, use_prefix_cache: bool = True,
                 batch_size: int = 16, pack_tokens: int = 1024, kept_prefixes: int = 2,
                 lazy: bool = False) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("pack_tokens", pack_tokens, 1)
        check_int("kept_prefixes", kept_prefixes, 1)
        self.pack_tokens, self.kept_prefixes = pack_tokens, kept_prefixes
        self._prefixes: OrderedDict[tuple[int, ...], tuple] = OrderedDict()
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.use_prefix_cache = use_prefix_cache
        self.batch_size = batch_size
        if lazy:  # a bad path still fails here; the weights wait until a question needs them
            check_model_path(model)
        else:
            self._load()

    # Attributes that exist once the model is loaded (`lazy=True` loads it on first use).
    _LOADED = frozenset({"tokenizer", "lm", "_bos", "_pad_id", "_eos_ids", "_cache_arg",
                         "_keep_arg"})

    def __getattr__(self, name: str):
        if name in HFBackend._LOADED and not self.__dict__.get("_loading"):
            self._load()
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _load(self) -> None:
        self._loading = True  # (attributes read while loading must not load again)
        try:
            self._load_model()
        finally:
            self._loading = False

    def _load_model(self) -> None:
        self.tokenizer, self.lm = load_model(self.model, self.device, self.dtype)
        self._bos = self._bos_prefix()
        self._pad_id = self._first_id(self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0)
        self._eos_ids = self._stop_token_ids()
        # transformers 5 calls the cache argument `cache` (`past_key_values` is deprecated), 4.x
        # only knows `past_key_values`; likewise the logits trimming argument was renamed.
        params = inspect.signature(self.lm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params),
                              None)

    def describe(self) -> dict:
        return {**super().describe(), "dtype": str(self.dtype).removeprefix("torch.")}

    # ---------------------------------------------------------------- tokens

    @staticmethod
    def _first_id(*candidates: int | None) -> int | None:
        return next((c for c in candidates if c is not None), None)

    def _bos_prefix(self) -> list[int]:
        """[bos] when the tokenizer itself starts its encodings with BOS, else []."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return []
        probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return [bos] if probe[:1] == [bos] else []

    def _stop_token_ids(self) -> set[int]:
        """Token ids that end open generation: the tokenizer's EOS and the model's own EOS ids."""
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
        return {i for i in ids if i is not None}

    def encode(self, text: str) -> list[int]:
        """Token ids of one piece of text, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def context_ids(self, *pieces: str) -> list[int]:
        """BOS (if used) + the pieces tokenized separately; never empty (see the module doc)."""
        ids = list(self._bos)
        for piece in pieces:
            ids += self.encode(piece)
        if not ids:
            start = self._first_id(self.tokenizer.bos_token_id, self.tokenizer.eos_token_id)
            if start is None:
                raise LLMError("an empty prompt needs a BOS or EOS token to start from; "
                               f"the tokenizer of {self.model!r} has neither")
            ids = [start]
        return ids

    # --------------------------------------------------------------- forward

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache=None,
                 position_ids: torch.Tensor | None = None, keep: int = 0, count: bool = True):
        """One forward call: ids, mask (B, T) (mask covers cached + new tokens when `cache` is
        given). Returns (logits of the last `keep` positions, all if 0: (B, keep or T, V), the
        cache, now holding the new tokens too, or None without a cache). Counts one request
        unless `count` is False."""
        self.stats.requests += int(count)
        kwargs = {self._cache_arg: cache, "use_cache": cache is not None}
        if keep and self._keep_arg:
            kwargs[self._keep_arg] = keep  # skips the LM head on positions nobody reads
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(self.device)
        out = self.lm(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        logits = out.logits[:, -keep:] if keep else out.logits
        if cache is None:
            return logits, None
        new_cache = getattr(out, "cache", None)
        return logits, new_cache if new_cache is not None else out.past_key_values

    def _new_cache(self):
        from transformers import DynamicCache

        try:  # with the config, sliding-window models get sliding layers
            return DynamicCache(config=self.lm.config)
        except TypeError:  # transformers 4.x without the `config` argument
            return DynamicCache()

    # --------------------------------------------------------------- scoring

    def _score_from_scratch(self, context: list[int], continuations: list[list[int]]) -> list[float]:
        """log p(continuation | context) for each continuation: one forward of the full rows
        context + continuation per chunk of `batch_size`, right-padded."""
        scores = [0.0] * len(continuations)
        todo = [i for i, c in enumerate(continuations) if c]  # empty continuation: log 1 = 0
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            targets = [continuations[i] for i in chunk]
            ids, mask = _pad([context + t for t in targets], self._pad_id)
            # The last max_len + 1 positions hold every prediction of a continuation token:
            # position len(context) - 1 + j predicts continuation token j.
            keep = max(len(t) for t in targets) + 1
            logits, _ = self._forward(ids, mask, keep=keep)
            logprobs = logits.float().log_softmax(-1)
            for i, s in zip(chunk, _sum_token_logprobs(logprobs, targets), strict=True):
                scores[i] = s
        return scores

    def _extend(self, cache, ids: list[int]):
        """(cache of context + ids, next-token log-probs (V,) float32) from a batch-1 context
        cache, which is left as it was."""
        cache = copy.deepcopy(cache)
        past = cache.get_seq_length()
        mask = torch.ones(1, past + len(ids), dtype=torch.long)
        logits, cache = self._forward(torch.tensor([ids]), mask, cache=cache, keep=1)
        return cache, logits[0, -1].float().log_softmax(-1)

    @torch.inference_mode()
    def loglikelihood(self, prompt: str, continuations: list[str]) -> list[float]:
        """Summed log-probability of each continuation's tokens given the prompt."""
        return self._score_from_scratch(self.context_ids(prompt),
                                        [self.encode(c) for c in continuations])

    @torch.inference_mode()
    def score_shared_prefix(self, prefix: str, queries: list[str], continuations: list[str],
                            use_prefix_cache: bool | None = None) -> list[list[float]]:
        """(len(queries), len(continuations)) log-likelihoods of continuation | prefix + query.

        With the prefix cache (default: `self.use_prefix_cache`) the prefix runs once (or not at
        all, when a recent call read it) and the queries and candidates are packed after it
        (`hf_packing`); without it every (query, continuation) row runs from scratch. Same token
        ids either way."""
        use_cache = self.use_prefix_cache if use_prefix_cache is None else use_prefix_cache
        targets = [self.encode(c) for c in continuations]
        prefix_ids = self.context_ids(prefix)
        if not use_cache:
            return [self._score_from_scratch(prefix_ids + self.encode(q), targets)
                    for q in queries]
        return self._score_packed(prefix_ids, [self.encode(q) for q in queries], targets)

    @torch.inference_mode()
    def rank_shared_prefix(self, prefix: str, queries: list[str], continuations: list[str],
                           content_free: str | None = None) -> list[int]:
        """`LLMBackend.rank_shared_prefix`, exactly, scoring less: a candidate of several tokens
        whose first token already leaves it below a finished candidate is not read further
        (log-probabilities only fall as tokens are added, so it cannot win)."""
        targets = [self.encode(c) for c in continuations]
        prefix_ids = self.context_ids(prefix)
        prior = None
        if content_free is not None:
            prior = self._score_packed(prefix_ids, [self.encode(content_free)], targets)[0]
        rows = self._score_packed(prefix_ids, [self.encode(q) for q in queries], targets,
                                  prune=True, prior=prior)
        return [best_index(row, prior) for row in rows]

    def _prefix_state(self, prefix_ids: list[int]):
        """(key/value cache of the prefix, batch 1; next-token log-probs after it (V,) float32).
        The last few prefixes are kept: a prefix read again is not recomputed, and one that
        extends a kept prefix (a support set repeated) computes only its new tokens. Callers
        must leave the cache as they found it (`crop` back to the prefix)."""
        key = tuple(prefix_ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        base = max((k for k in self._prefixes if len(k) < len(key) and key[:len(k)] == k),
                   key=len, default=())
        if base:
            cache, last = self._extend(self._prefixes[base][0], list(key[len(base):]))
        else:
            logits, cache = self._forward(torch.tensor([prefix_ids]),
                                          torch.ones(1, len(prefix_ids), dtype=torch.long),
                                          cache=self._new_cache(), keep=1)
            last = logits[0, -1].float().log_softmax(-1)
        self._prefixes[key] = (cache, last)
        while len(self._prefixes) > self.kept_prefixes:
            self._prefixes.popitem(last=False)
        return cache, last

    def _score_packed(self, prefix_ids: list[int], queries: list[list[int]],
                      targets: list[list[int]], prune: bool = False,
                      prior: list[float] | None = None) -> list[list[float | None]]:
        """Scores of every target after prefix + each query, queries and targets packed after the
        prefix's cache in chunks of about `pack_tokens` tokens. With `prune`, a target of several
        tokens that cannot beat a finished one (see `rank_shared_prefix`; `prior` is subtracted
        first) is left unread: its score is None."""
        cache, last = self._prefix_state(prefix_ids)
        extra = sum(max(len(t) - 1, 0) for t in targets)
        rows: list[list[float | None]] = []
        for chunk in chunks_by_tokens([len(q) + extra for q in queries], self.pack_tokens):
            try:
                rows += self._score_chunk(cache, last, len(prefix_ids),
                                          [queries[i] for i in chunk], targets, prune, prior)
            finally:  # the kept prefix cache, as it was (a negative crop: both old and new API)
                cache.crop(-(cache.get_seq_length() - len(prefix_ids)))
        return rows

    def _score_chunk(self, cache, last, prefix_length: int, queries: list[list[int]],
                     targets: list[list[int]], prune: bool, prior: list[float] | None):
        packing = Packing(prefix_length)
        segments = [packing.add(q) if q else NO_PARENT for q in queries]
        firsts = [last] * len(queries)  # next-token log-probs after each query
        ends = [packing.ends[s] for s in segments if s != NO_PARENT]
        if ends:
            logprobs = iter(self._forward_packed(packing, 0, cache, ends))
            firsts = [next(logprobs) if s != NO_PARENT else last for s in segments]
        rows: list[list[float | None]] = [[float(f[t[0]]) if t else 0.0 for t in targets]
                                          for f in firsts]
        longer = [(i, c) for i, row in enumerate(rows) for c in range(len(targets))
                  if len(targets[c]) > 1 and not (prune and cannot_win(row, c, targets, prior))]
        if prune:  # the pruned ones: None (their first-token score is a bound, not a score)
            read = set(longer)
            rows = [[None if len(targets[c]) > 1 and (i, c) not in read else s
                     for c, s in enumerate(row)] for i, row in enumerate(rows)]
        if not longer:
            return rows
        start = len(packing.ids)
        for i, c in longer:
            packing.add(targets[c][:-1], parent=segments[i])
        logprobs = self._forward_packed(packing, start, cache, list(range(start, len(packing.ids))))
        offset = 0
        for i, c in longer:
            rest = targets[c][1:]
            picked = logprobs[offset:offset + len(rest)].gather(-1, torch.tensor(rest)[:, None])
            rows[i][c] += float(picked.sum())
            offset += len(rest)
        return rows

    def _forward_packed(self, packing: Packing, first: int, cache, keep: list[int]) -> torch.Tensor:
        """Log-probs (len(keep), V) float32 at the packed tokens `keep` (indices into
        packing.ids), running tokens `first:` on `cache` (which then holds them too)."""
        self.stats.requests += 1
        ids = torch.tensor([packing.ids[first:]], device=self.device)
        kwargs = {self._cache_arg: cache, "use_cache": True}
        rows = torch.tensor([k - first for k in keep])
        if self._keep_arg == "logits_to_keep":  # the LM head only where read
            kwargs["logits_to_keep"] = rows.to(self.device)
        out = self.lm(input_ids=ids, attention_mask=packing.mask(first, self.lm.dtype).to(self.device),
                      position_ids=torch.tensor([packing.positions[first:]], device=self.device),
                      **kwargs)
        logits = out.logits[0] if "logits_to_keep" in kwargs else out.logits[0, rows]
        return logits.float().log_softmax(-1).cpu()

    # ------------------------------------------------------------ generation

    @torch.inference_mode()
    def generate(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                 choices: list[str] | None = None) -> list[str]:
        """Greedy continuations of each prompt.

        Open (choices=None): up to `params.max_new_tokens` tokens, ended early by an EOS token or
        a stop string; the text is cut at the first stop string (the stop itself removed).

        Constrained (choices given): each step may only pick a token that keeps the output the
        prefix of some choice's ids (each choice tokenized on its own), so the answer is always
        one of `choices`, returned verbatim. Stop rule: once the output is a complete choice,
        decoding stops unless the model's unconstrained top token (argmax over the whole
        vocabulary) continues a longer choice, i.e. exactly when greedy decoding would carry on.
        Choices bound the length: `max_new_tokens` and `stop` do not apply."""
        trie = self._check_generation(params, choices)
        outputs = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.context_ids(p) for p in prompts[start:start + self.batch_size]]
            outputs += self._decode(self._decoder(chunk), len(chunk), params, choices, trie)
        return outputs

    def generate_shared_prefix_iter(self, prefix: str, queries: list[str],
                                    params: GenerationParams = GenerationParams(),
                                    choices: list[str] | None = None
                                    ) -> Iterator[tuple[int, str]]:
        """`generate` of prefix + query for each query, as (index, text) while they finish: the
        prefix runs once into a key/value cache and each query decodes on a copy of it (batch 1,
        no padding). Ids are the prefix's and the query's, tokenized separately."""
        trie = self._check_generation(params, choices)
        if not queries:
            return
        with torch.inference_mode():
            prefix_cache, prefix_last = self._prefix_state(self.context_ids(prefix))
        for i, query in enumerate(queries):
            # inference mode per query, not around the yield: it would leak into the caller
            with torch.inference_mode():
                query_ids = self.encode(query)
                if query_ids:
                    cache, last = self._extend(prefix_cache, query_ids)
                else:
                    cache, last = copy.deepcopy(prefix_cache), prefix_last
                text = self._decode(self._cached_decoder(cache, last), 1, params, choices, trie)[0]
            yield i, text

    def _check_generation(self, params: GenerationParams, choices: list[str] | None):
        """The trie of the choices (None for open generation), after checking the arguments."""
        if params.temperature != 0:
            raise LLMError(f"the hf backend decodes greedily only; got temperature "
                           f"{params.temperature}")
        if choices is not None and not choices:
            raise LLMError("constrained generation needs at least one choice")
        return build_trie([self.encode(c) for c in choices]) if choices is not None else None

    def _decode(self, decoder, rows: int, params: GenerationParams, choices, trie) -> list[str]:
        self.stats.requests += int(trie is not None or params.max_new_tokens > 0)
        if trie is None:
            def text(ids: list[int]) -> str:
                return self.tokenizer.decode(ids, skip_special_tokens=True)
            return greedy_open(decoder, rows, params, text, self._eos_ids)
        return [choices[i] for i in greedy_constrained(decoder, rows, trie, self._pad_id)]

    def _cached_decoder(self, cache, last: torch.Tensor):
        """`_decoder` for one context already in `cache` (batch 1, no padding), whose next-token
        scores are `last` (V,)."""
        past = cache.get_seq_length()
        logits = last.view(1, -1)
        while True:
            tokens = yield logits
            past += 1
            out, cache = self._forward(tokens.view(1, 1), torch.ones(1, past, dtype=torch.long),
                                       cache=cache, keep=1, count=False)
            logits = out[:, -1].float()

    def _decoder(self, contexts: list[list[int]]):
        """Batched incremental greedy decoding over left-padded contexts. A generator: it yields
        the next-token logits (B, V) float32 and receives the tokens (B,) to append."""
        ids, mask = _pad(contexts, self._pad_id, left=True)
        # Left padding shifts the rows: positions count real tokens only.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # The decoding steps are not counted: the caller counts one request per batch.
        logits, cache = self._forward(ids, mask, cache=self._new_cache(), position_ids=positions,
                                      keep=1, count=False)
        while True:
            tokens = yield logits[:, -1].float()
            next_positions = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones(len(contexts), 1, dtype=torch.long)], dim=1)
            logits, cache = self._forward(tokens.view(-1, 1), mask, cache=cache,
                                          position_ids=next_positions, keep=1, count=False)
