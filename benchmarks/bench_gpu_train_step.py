"""Training steps on a CUDA GPU: fp32 against bf16 autocast (what `spae-lab train` uses on CUDA),
beside the same step on 2 CPU threads, all timed in one run; and how often bf16 autocast makes a
trained tokenizer pick another word than fp32 does.

The step is bench_train_step.py's (SPAE with the semantic loss, and a plain learned-codebook VQ
autoencoder of the same backbone as the reference). Ratios are against fp32 on the same GPU in the
same run; absolute times drift between machines and runs.

    python benchmarks/bench_gpu_train_step.py [--run RUN_DIR] [--json out.json]

--run: a trained run folder (or checkpoint) for the word-agreement check on its held-out images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians  # noqa: E402
from bench_train_step import steps  # noqa: E402

# (label, preset, overrides, batch size). The paper preset keeps the 8,192-word codebook here so
# that its cached word embeddings travel with the benchmark (the full 21k table needs the LLM).
CASES = [
    ("small 32 px, batch 32", "small", {}, 32),
    ("small 32 px, batch 256", "small", {}, 256),
    ("paper 128 px (8,192 words), batch 32", "paper", {"codebook.max_size": 8192}, 32),
]


def synced(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def peak_memory_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_case(label: str, preset: str, overrides: dict, batch: int, repeats: int, cpu: bool) -> list[dict]:
    fp32, facts = steps(preset, batch, "cuda", None, overrides)
    bf16, _ = steps(preset, batch, "cuda", torch.bfloat16, overrides)
    fns = {"fp32 spae": synced(fp32["spae"]), "bf16 spae": synced(bf16["spae"]),
           "fp32 plain_vq": synced(fp32["plain_vq"]), "bf16 plain_vq": synced(bf16["plain_vq"])}
    if cpu:  # the same step where this project's CPU users run it: 2 threads
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        cpu_fns, _ = steps(preset, batch, "cpu", None, overrides)
        start = time.perf_counter()
        for _ in range(3):
            cpu_fns["spae"]()
        cpu_seconds = (time.perf_counter() - start) / 3
        torch.set_num_threads(threads)
    t = interleaved_medians(fns, repeats, warmup=3)
    rows = []
    for name, seconds in t.items():
        rows.append({"case": label, "variant": name, "ms_per_step": 1e3 * seconds,
                     "images_per_second": batch / seconds, "over_fp32_spae": seconds / t["fp32 spae"],
                     "peak_extra_mb": peak_memory_mb(fns[name]), **facts})
    if cpu:
        rows.append({"case": label, "variant": "cpu 2 threads fp32 spae", "ms_per_step": 1e3 * cpu_seconds,
                     "images_per_second": batch / cpu_seconds, "over_fp32_spae": cpu_seconds / t["fp32 spae"],
                     "peak_extra_mb": None, **facts})
    return rows


@torch.no_grad()
def word_agreement(run: str, images: int = 256) -> dict:
    """Per layer, the fraction of tokens a trained tokenizer picks identically in fp32 and under
    bf16 autocast (the quantizer itself always searches in fp32; the encoder's latents differ)."""
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.training.loop import build_datasets, load_batch

    model = load_tokenizer(run, "cuda")
    _, heldout = build_datasets(model.experiment_config)
    batch = load_batch(heldout, list(range(min(images, len(heldout)))))["image"].cuda()
    _, exact = model.quantize(batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, fast = model.quantize(batch)
    same = [float((a == b).float().mean()) for a, b in zip(exact.ids, fast.ids, strict=True)]
    return {"run": str(run), "images": batch.shape[0], "same_word_per_layer": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--run", help="trained run folder for the bf16 word-agreement check")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark times GPU steps (bench_train_step.py times CPU ones)")
    rows = []
    for i, (label, preset, overrides, batch) in enumerate(CASES):
        rows += time_case(label, preset, overrides, batch, args.repeats, cpu=i == 0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'case':40s} {'variant':24s} {'ms/step':>8s} {'images/s':>9s} {'x fp32 SPAE':>12s} {'peak MB':>8s}")
    for r in rows:
        memory = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:8.0f}"
        print(f"{r['case']:40s} {r['variant']:24s} {r['ms_per_step']:8.1f} {r['images_per_second']:9.0f} "
              f"{r['over_fp32_spae']:12.2f} {memory}")
    agreement = word_agreement(args.run) if args.run else None
    if agreement:
        print("bf16 vs fp32, same word per layer:", [round(v, 4) for v in agreement["same_word_per_layer"]])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "steps": rows,
                       "bf16_word_agreement": agreement}, f, indent=2)


if __name__ == "__main__":
    main()
