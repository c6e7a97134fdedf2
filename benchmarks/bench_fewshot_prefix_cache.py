"""Few-shot scoring with SmolLM2: the shared-prefix key/value cache against scoring from scratch.

One N-way K-shot episode in the SPAE shape: a prompt of N*K support examples, each
"Input: < w1 w2 w3 w4 w5 >\\nOutput: name\\n" (words drawn from a small bag per class), then Q
queries "Input: < ... >\\nOutput:", each scored against the N class names. The naive path runs
every (query, class) row from scratch (the rows of one query in one padded batch); the cached path
runs the prefix once, each query once on its cache and the N candidates in one batch on top.
Both see the same token ids: the predictions (argmax over classes) must be identical and the
scores within 1e-3. Timings are interleaved medians of one run (a shared machine is noisy: the
ratio is the number to read).

    .venv/bin/python benchmarks/bench_fewshot_prefix_cache.py [--queries 10] [--repeats 3] \\
        [--json benchmarks/results/fewshot_prefix_cache.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, load_average  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fewshot_prefix_cache.json"

# mini-ImageNet-like class names (several are more than one token, so the candidates of a query
# take a forward pass of their own), and words an image of each might be read as (a SPAE lexical
# layer is a bag of such words).
CLASS_WORDS = {
    "golden retriever": "fur puppy leash bark tail paw collar grass ball park brown ears",
    "tabby cat": "kitten whisker fur paw tail sofa purr window yarn eyes ears gray",
    "school bus": "wheel road tire street door engine yellow children stop window driver seat",
    "goldfinch": "wing feather beak branch sky nest tree flight small song yellow perch",
    "daisy": "petal garden bloom stem leaf white green spring pollen vase bee meadow",
}


def make_episode(shots: int, queries: int, words: int, seed: int = 0):
    """(prefix, queries, class names as continuations " dog", ..., true labels)."""
    rng = random.Random(seed)
    classes = list(CLASS_WORDS)

    def example(name: str) -> str:
        return "Input: < " + " ".join(rng.sample(CLASS_WORDS[name].split(), words)) + " >\nOutput:"

    support = [name for name in classes for _ in range(shots)]
    rng.shuffle(support)
    prefix = "".join(f"{example(name)} {name}\n" for name in support)
    labels = [classes[i % len(classes)] for i in range(queries)]
    return prefix, [example(name) for name in labels], [f" {c}" for c in classes], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=5, help="support examples per class")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--words", type=int, default=5, help="words per example")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(RESULTS), help="write the results here")
    args = parser.parse_args()

    from spae_lab.llm.hf import HFBackend

    backend = HFBackend("smollm2")
    prefix, queries, classes, labels = make_episode(args.shots, args.queries, args.words)
    prefix_tokens = len(backend.context_ids(prefix))
    query_tokens = sum(len(backend.encode(q)) for q in queries) / len(queries)

    def score(cached: bool) -> list[list[float]]:
        return backend.score_shared_prefix(prefix, queries, classes, use_prefix_cache=cached)

    last: dict[str, list[list[float]]] = {}  # the scores of the timed runs, checked below

    def timed(name: str, cached: bool):
        def run() -> None:
            last[name] = score(cached)
        return run

    load_before = load_average()
    # No warm-up round: one naive round is long, and its first forward call is no slower.
    seconds = interleaved_medians({"naive": timed("naive", False), "cached": timed("cached", True)},
                                  args.repeats, warmup=0)
    speedup = seconds["naive"] / seconds["cached"]

    naive, cached = torch.tensor(last["naive"]), torch.tensor(last["cached"])
    same_predictions = torch.equal(naive.argmax(1), cached.argmax(1))
    max_abs_diff = float((naive - cached).abs().max())
    assert same_predictions, "the cached path changed a prediction"
    assert max_abs_diff < 1e-3, f"scores differ by {max_abs_diff}"
    predictions = [classes[i].strip() for i in cached.argmax(1).tolist()]
    accuracy = sum(p == t for p, t in zip(predictions, labels, strict=True)) / len(labels)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load_before:.2f} -> {load_average():.2f}")
    print(f"{len(classes)}-way {args.shots}-shot, {len(queries)} queries: prefix {prefix_tokens} "
          f"tokens, queries {query_tokens:.1f} tokens on average; accuracy {accuracy:.2f}")
    print(f"naive  {seconds['naive']:.2f} s ({seconds['naive'] / len(queries) * 1e3:.0f} ms/query)")
    print(f"cached {seconds['cached']:.2f} s ({seconds['cached'] / len(queries) * 1e3:.0f} ms/query)")
    print(f"speed-up {speedup:.1f}x; identical predictions: {same_predictions}, "
          f"max |score difference| {max_abs_diff:.2e}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_average": [load_before, load_average()], "model": backend.describe(),
                       "ways": len(classes), "shots": args.shots, "queries": len(queries),
                       "prefix_tokens": prefix_tokens, "mean_query_tokens": query_tokens,
                       "seconds": seconds, "speedup": speedup,
                       "identical_predictions": same_predictions, "max_abs_diff": max_abs_diff,
                       "accuracy": accuracy}, f, indent=2)


if __name__ == "__main__":
    main()
