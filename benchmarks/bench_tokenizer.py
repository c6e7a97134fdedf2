"""Tokenizer costs on this machine: a training step of a preset, and the nearest-word search
against its floor, a bare matrix product of the same shape. All numbers of one table come from one
run (these machines are noisy: compare ratios, not absolute times across runs).

    .venv/bin/python benchmarks/bench_tokenizer.py [--preset small] [--batch-size 32] [--json out.json]

Peak memory of a step is measured in a fresh child process (peak resident set size after the step
minus the resident set size before it), so earlier allocations of this script do not count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _timeit(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_step(preset: str, batch_size: int, repeats: int) -> dict:
    """Runs in a fresh process: one preset's training step (forward, losses, backward, AdamW)."""
    from spae_lab.codebook import load_codebook
    from spae_lab.config import create_config
    from spae_lab.losses import reconstruction_losses
    from spae_lab.model import SPAE

    cfg = create_config(preset, {"train.batch_size": batch_size})
    torch.manual_seed(0)
    model = SPAE(cfg.model, load_codebook(cfg.codebook))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch_size, 3, cfg.model.image_size, cfg.model.image_size)
    depths = torch.randint(1, model.num_layers + 1, (batch_size,))

    def step():
        out = model(images, depths)
        losses = reconstruction_losses(out.reconstructions, images * 2 - 1, cfg.loss)
        loss = sum(losses.values()) + cfg.loss.commitment_weight * out.quant.commitment_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rss_before = _peak_rss_mb()
    seconds = _timeit(step, repeats)
    return {
        "preset": preset,
        "batch_size": batch_size,
        "step_seconds": seconds,
        "images_per_second": batch_size / seconds,
        "peak_step_memory_mb": _peak_rss_mb() - rss_before,
        "tokens_per_image": model.layout.cumulative_tokens()[-1],
        "codebook_size": len(model.codebook),
        "search_dim": model.quantizer.dim,
    }


def search_vs_floor(num_latents: int, codebook: torch.Tensor, repeats: int) -> dict:
    """Our nearest-word search against a bare (N x d) @ (d x V) product: the floor."""
    from spae_lab.quantizer import nearest_codes

    torch.manual_seed(0)
    targets = torch.randn(num_latents, codebook.shape[1])
    half = 0.5 * codebook.pow(2).sum(1)
    floor = _timeit(lambda: targets @ codebook.t(), repeats)
    ours = _timeit(lambda: nearest_codes(targets, codebook, half), repeats)
    cdist = _timeit(lambda: torch.cdist(targets, codebook).argmin(1), repeats)
    assert torch.equal(nearest_codes(targets, codebook, half), torch.cdist(targets, codebook).argmin(1))
    return {
        "latents": num_latents,
        "codebook": list(codebook.shape),
        "matmul_seconds": floor,
        "nearest_seconds": ours,
        "cdist_argmin_seconds": cdist,
        "nearest_over_matmul": ours / floor,
        "cdist_over_nearest": cdist / ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_step(args.preset, args.batch_size, args.repeats)))
        return

    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--preset", args.preset, "--batch-size",
         str(args.batch_size), "--repeats", str(args.repeats)],
        capture_output=True, text=True, check=True,
    )
    step = json.loads(proc.stdout.strip().splitlines()[-1])

    from spae_lab.codebook import load_codebook
    from spae_lab.config import create_config
    from spae_lab.model import SPAE

    cfg = create_config(args.preset)
    model = SPAE(cfg.model, load_codebook(cfg.codebook))
    num_latents = args.batch_size * model.layout.cumulative_tokens()[-1]
    with torch.no_grad():
        searches = [
            {"space": f"search space ({model.quantizer.dim}-d)",
             **search_vs_floor(num_latents, model.quantizer.table(), args.repeats)},
            {"space": f"raw LLM rows ({model.codebook.dim}-d)",
             **search_vs_floor(num_latents, model.quantizer.codebook, args.repeats)},
        ]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"\nTraining step, preset {step['preset']}, batch {step['batch_size']} "
          f"({step['tokens_per_image']} tokens/image, {step['codebook_size']} words, "
          f"search in {step['search_dim']}-d)")
    print(f"  {step['step_seconds'] * 1000:.0f} ms/step, {step['images_per_second']:.1f} images/s, "
          f"peak extra memory {step['peak_step_memory_mb']:.0f} MB")
    print(f"\nNearest-word search of {num_latents} latents (one batch) vs its floor")
    print(f"  {'space':28s} {'matmul ms':>10s} {'ours ms':>9s} {'ours/matmul':>12s} {'cdist ms':>9s}")
    for s in searches:
        print(f"  {s['space']:28s} {s['matmul_seconds'] * 1000:10.1f} {s['nearest_seconds'] * 1000:9.1f} "
              f"{s['nearest_over_matmul']:12.2f} {s['cdist_argmin_seconds'] * 1000:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "train_step": step, "search": searches}, f, indent=2)


if __name__ == "__main__":
    main()
