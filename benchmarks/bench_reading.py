"""Reading speed: prompt tokens per second of likelihood scoring, against this CPU's floor.

The workload is the demo's few-shot reading (`spae-lab demo`): episodes of the shipped CIFAR-10
sample in Frozen's T-3s-0r setting, 2- and 5-way, read as SPAE's top word (tokenizer cifar10) and
as the LQAE-style baseline's 64 words (cifar10-lqae), each episode's queries plus the content-free
query ranked over the class names. Every engine reads the same prompts in one run:

- floor: the forward pass's FLOPs (linear layers, attention over the context, the LM head where a
  score is read) over this CPU's measured matrix-product rate, fp32 (and bf16 beside it);
- HF as it was: the Hugging Face path before packing (prefix once, each query on a copy of the
  prefix's key/value cache, candidates on a copy of the query's), kept here as `rank_before`;
- HF now: `HFBackend.rank_shared_prefix` (queries packed after the prefix, exact pruning), fp32,
  and in bf16 (the same weights rounded: its agreement is reported);
- llama.cpp in-process (where llama-cpp-python is installed): the packaged GGUF itself (4-bit
  weights), the prefix evaluated once, each query after it on llama.cpp's cache.

Tokens/s counts the distinct prompt tokens (each prefix once, each query once): the work no
engine can skip. Every engine starts each episode cold (HF's kept prefixes are cleared). Engines
take turns episode by episode (their order rotating); each episode's time is the median of
`--repeats`. On a shared machine the ratios are the numbers to read.

    .venv/bin/python benchmarks/bench_reading.py [--episodes 3] [--threads 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# -- the workload --------------------------------------------------------------------------------

def demo_episodes(per_way: int) -> list[dict]:
    """[{reader, ways, prefix, queries, content_free, names, truth}] in the demo's setting."""
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.cli.demo import DEMO_SETTING
    from spae_lab.data import make_dataset
    from spae_lab.reading.episodes import (
        FewShotConfig,
        dataset_labels,
        episode_sets,
        image_keys,
        select_settings,
    )
    from spae_lab.reading.fewshot import CONTENT_FREE_TEXT, TokenizerTexts, build_prompt, class_names, texts_for

    cfg = FewShotConfig(ways=(2, 5), settings=select_settings(DEMO_SETTING), names=("real",),
                        episodes=per_way)
    out = []
    for reader in ("cifar10", "cifar10-lqae"):
        model = load_tokenizer(reader)
        data = make_dataset("cifar10-sample", model.config.image_size)
        sets = episode_sets(dataset_labels(data), image_keys(data), cfg)
        keys = sorted({k for eps in sets.values() for e in eps for k, _ in e.support + e.queries})
        texts = texts_for(keys, data, TokenizerTexts(model, 1))
        for episodes in sets.values():
            for episode in episodes:
                shown = class_names(episode, list(data.classes), "real")
                prefix, queries = build_prompt(
                    [(texts[k], shown[p]) for k, p in episode.support],
                    [texts[k] for k, _ in episode.queries] + [CONTENT_FREE_TEXT], shown,
                    cfg.settings[0])
                out.append({"reader": reader, "ways": episode.ways, "prefix": prefix,
                            "queries": queries[:-1], "content_free": queries[-1],
                            "names": [" " + n for n in shown],
                            "truth": [p for _, p in episode.queries]})
    return out


# -- the floor -----------------------------------------------------------------------------------

def forward_flops(config, prefix_tokens: int, query_tokens: list[int]) -> float:
    """FLOPs of reading a prefix once and each query after it: linear layers per token, attention
    over each token's context, the LM head once per score read (prefix end, each query end)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads * head_dim
    linear = 2 * layers * (d * heads * head_dim * 2 + 2 * d * kv + 3 * d * config.intermediate_size)

    def attention(first: int, count: int) -> float:  # tokens at positions first..first+count-1
        keys = count * first + count * (count + 1) / 2  # keys each sees, itself included
        return 4 * layers * heads * head_dim * keys

    tokens = prefix_tokens + sum(query_tokens)
    total = linear * tokens + attention(0, prefix_tokens)
    total += sum(attention(prefix_tokens, q) for q in query_tokens)
    return total + 2 * d * config.vocab_size * (1 + len(query_tokens))


def matmul_rate(dtype: torch.dtype, d: int, ffn: int, device: str = "cpu", repeats: int = 30) -> float:
    """FLOP/s of the device on a (512, d) x (d, ffn) product, the MLP's shape (median of repeats)."""
    a = torch.randn(512, d, dtype=dtype, device=device)
    b = torch.randn(d, ffn, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * 512 * d * ffn / sorted(times)[len(times) // 2]


# -- the engines ---------------------------------------------------------------------------------

def rank_before(backend, prefix: str, queries: list[str], names: list[str], content_free: str):
    """The HF path as it was before packing: prefix once; per query a copy of the prefix's cache
    extended by the query; candidates of several tokens on the query's cache repeated per
    candidate; full scores, then the calibrated argmax."""
    from spae_lab.llm.base import best_index

    targets = [backend.encode(n) for n in names]
    prefix_ids = backend.context_ids(prefix)
    logits, prefix_cache = backend._forward(torch.tensor([prefix_ids]),
                                            torch.ones(1, len(prefix_ids), dtype=torch.long),
                                            cache=backend._new_cache(), keep=1)
    prefix_last = logits[0, -1].float().log_softmax(-1)
    rows = []
    for query in [*queries, content_free]:
        ids = backend.encode(query)
        cache, last = backend._extend(prefix_cache, ids) if ids else (prefix_cache, prefix_last)
        row = [float(last[t[0]]) for t in targets]
        for c, t in enumerate(targets):
            if len(t) > 1:  # the old path: one forward of the candidate on a copy of the cache
                past = cache.get_seq_length()
                out, _ = backend._forward(torch.tensor([t[:-1]]),
                                          torch.ones(1, past + len(t) - 1, dtype=torch.long),
                                          cache=copy.deepcopy(cache))
                logprobs = out[0].float().log_softmax(-1)
                row[c] += sum(float(logprobs[j, t[j + 1]]) for j in range(len(t) - 1))
        rows.append(row)
    prior = rows.pop()
    return [best_index(row, prior) for row in rows]


class LlamaCppRanker:
    """Calibrated ranking on llama.cpp in-process (llama-cpp-python): the prefix evaluated once,
    each query after it on llama.cpp's own cache (rewound to the prefix between queries)."""

    def __init__(self, threads: int):
        from llama_cpp import Llama

        from spae_lab.assets import smollm2_gguf_path

        self.llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=4096, n_batch=512,
                         n_threads=threads, n_threads_batch=threads, logits_all=False,
                         verbose=False)
        self.vocab = self.llm.n_vocab()

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=False) if text else []

    def next_logprobs(self, ids: list[int]) -> torch.Tensor:
        self.llm.eval(ids)
        import numpy as np

        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))
        return torch.from_numpy(logits.copy()).log_softmax(-1)

    def rank(self, prefix: str, queries: list[str], names: list[str], content_free: str):
        from spae_lab.llm.base import best_index

        targets = [self.tokens(n) for n in names]
        self.llm.reset()
        prefix_ids = self.tokens(prefix)
        self.llm.eval(prefix_ids)
        rows = []
        for query in [*queries, content_free]:
            self.llm.n_tokens = len(prefix_ids)  # rewind to the prefix (eval drops the rest)
            last = self.next_logprobs(self.tokens(query))
            row = []
            for t in targets:
                score, here = float(last[t[0]]), self.llm.n_tokens
                for j in range(1, len(t)):
                    score += float(self.next_logprobs([t[j - 1]])[t[j]])
                self.llm.n_tokens = here
                row.append(score)
            rows.append(row)
        prior = rows.pop()
        return [best_index(row, prior) for row in rows]


# -- the run -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes per way and reader")
    parser.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (llama.cpp runs on cpu only)")
    parser.add_argument("--json", default=str(RESULTS / "reading_cpu.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "reading_cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from spae_lab.llm.hf import HFBackend

    episodes = demo_episodes(args.episodes)
    hf = HFBackend("smollm2", device=args.device)
    hf_bf16 = HFBackend("smollm2", device=args.device, dtype=torch.bfloat16)
    config = hf.lm.config
    tokens = flops = 0.0
    for e in episodes:
        p = len(hf.context_ids(e["prefix"]))
        q = [len(hf.encode(x)) for x in [*e["queries"], e["content_free"]]]
        tokens += p + sum(q)
        flops += forward_flops(config, p, q)
    rates = {name: matmul_rate(dtype, config.hidden_size, config.intermediate_size, args.device)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    engines = {"HF as it was": lambda *a: rank_before(hf, *a),
               "HF now": hf.rank_shared_prefix, "HF now, bf16": hf_bf16.rank_shared_prefix}
    if args.device == "cpu" and importlib.util.find_spec("llama_cpp") is not None:
        engines["llama.cpp in-process (Q4_1 GGUF)"] = LlamaCppRanker(args.threads).rank
    answers: dict[str, list[list[int]]] = {name: [] for name in engines}
    seconds = dict.fromkeys(engines, 0.0)
    load_before = load_average()
    # Interleaved episode by episode, the engines' order rotating, so that a load change on a
    # shared machine hits every engine alike; every episode starts cold (no kept prefix).
    with torch.inference_mode():
        for index, e in enumerate(episodes):
            names = list(engines)
            names = names[index % len(names):] + names[:index % len(names)]
            for name in names:
                times = []
                for _ in range(args.repeats):
                    hf._prefixes.clear()
                    hf_bf16._prefixes.clear()
                    start = time.perf_counter()
                    got = engines[name](e["prefix"], e["queries"], e["names"], e["content_free"])
                    times.append(time.perf_counter() - start)
                seconds[name] += sorted(times)[len(times) // 2]
                answers[name].append(got)
    base = seconds["HF as it was"]
    floor = {k: flops / rate for k, rate in rates.items()}

    def accuracy(name: str) -> float:
        pairs = [(p, t) for a, e in zip(answers[name], episodes, strict=True)
                 for p, t in zip(a, e["truth"], strict=True)]
        return sum(p == t for p, t in pairs) / len(pairs)

    def agreement(name: str) -> float:
        same = [p == b for a, r in zip(answers[name], answers["HF as it was"], strict=True)
                for p, b in zip(a, r, strict=True)]
        return sum(same) / len(same)

    result = {
        "torch": torch.__version__, "threads": args.threads, "device": args.device,
        "load_average": [load_before, load_average()], "episodes": len(episodes),
        "queries": sum(len(e["queries"]) for e in episodes), "prompt_tokens": int(tokens),
        "forward_gflop": flops / 1e9, "matmul_gflops": {k: r / 1e9 for k, r in rates.items()},
        "floor_seconds": floor,
        "engines": {name: {"seconds": s, "tokens_per_s": tokens / s,
                           "times_floor_fp32": s / floor["fp32"],
                           "speedup_over_hf_as_it_was": base / s,
                           "same_answers_as_hf_as_it_was": agreement(name),
                           "accuracy": accuracy(name)} for name, s in seconds.items()},
    }
    write_results(result, args.json, args.markdown, markdown)


def markdown(r: dict) -> str:
    lines = [
        "# Reading speed: likelihood scoring against the floor (`benchmarks/bench_reading.py`)",
        "",
        f"{r['episodes']} episodes of the demo's few-shot reading ({r['queries']} queries, "
        f"{r['prompt_tokens']:,} distinct prompt tokens, {r['forward_gflop']:.0f} GFLOP of forward "
        f"pass); torch {r['torch']}, {r.get('device', 'cpu')}, {r['threads']} thread(s), load average "
        f"{r['load_average'][0]:.1f} -> {r['load_average'][1]:.1f}.",
        "",
        f"Floor: {r['forward_gflop']:.0f} GFLOP at the measured matrix-product rate, fp32 "
        f"{r['matmul_gflops']['fp32']:.0f} GFLOP/s -> {r['floor_seconds']['fp32']:.1f} s "
        f"({r['prompt_tokens'] / r['floor_seconds']['fp32']:.0f} tokens/s); bf16 "
        f"{r['matmul_gflops']['bf16']:.0f} GFLOP/s -> {r['floor_seconds']['bf16']:.1f} s.",
        "",
        "| engine | seconds | prompt tokens/s | x fp32 floor | speed-up over HF as it was "
        "| same answers as HF as it was | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in r["engines"].items():
        lines.append(f"| {name} | {e['seconds']:.1f} | {e['tokens_per_s']:.0f} | "
                     f"{e['times_floor_fp32']:.2f} | {e['speedup_over_hf_as_it_was']:.2f}x | "
                     f"{100 * e['same_answers_as_hf_as_it_was']:.0f}% | {100 * e['accuracy']:.0f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
