"""Training throughput on a CUDA GPU: images/s and model FLOP utilisation (MFU) of the SPAE
training step, for the `small` and `paper` presets, fp32 against bf16 autocast, eager against
`torch.compile`.

FLOPs per step are counted once per case with `torch.utils.flop_counter.FlopCounterMode` (forward
and backward of the real step, the matrix products and convolutions); MFU is that over the
measured step time, over the GPU's dense peak of the step's precision (`--peak-tflops`, default:
an H200's 989 bf16 and 494 TF32 TFLOP/s). Timings are interleaved medians in one run.

    python benchmarks/bench_gpu_mfu.py [--repeats 20] [--json benchmarks/results/gpu_mfu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians  # noqa: E402
from bench_train_step import build  # noqa: E402

# (label, preset, overrides, batch): the paper preset keeps 8,192 words so that its cached word
# embeddings travel with the benchmark (as in bench_gpu_train_step.py).
CASES = [("small 32 px, batch 256", "small", {}, 256),
         ("paper 128 px (8,192 words), batch 32", "paper", {"codebook.max_size": 8192}, 32)]


def step_function(preset: str, batch: int, overrides: dict, amp_dtype, compiled: bool):
    from spae_lab.training.loop import sample_depths, training_step

    cfg, spae, guide, _, images, indices = build(preset, batch, "cuda", overrides)
    optimizer = torch.optim.AdamW(spae.parameters(), lr=1e-4)
    depths = sample_depths(0, batch, spae.num_layers, cfg).to("cuda")
    net = torch.compile(spae) if compiled else spae

    def step() -> None:
        training_step(net, spae, optimizer, images, depths, cfg, guide, 1000, indices, amp_dtype)
        torch.cuda.synchronize()
    return step


def flops_per_step(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, nargs=2, default=(989.0, 494.0),
                        metavar=("BF16", "TF32"), help="the GPU's dense peak (H200 by default)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark times GPU steps")
    torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 training on this GPU would use
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for label, preset, overrides, batch in CASES:
        variants = {f"{precision} {mode}": step_function(preset, batch, overrides, dtype, mode == "compiled")
                    for precision, dtype in (("fp32/tf32", None), ("bf16", torch.bfloat16))
                    for mode in ("eager", "compiled")}
        for fn in variants.values():  # compile and warm up outside the timing
            for _ in range(3):
                fn()
        flops = flops_per_step(variants["fp32/tf32 eager"])
        seconds = interleaved_medians(variants, args.repeats, warmup=1)
        for name, s in seconds.items():
            peak = 1e12 * (args.peak_tflops[0] if name.startswith("bf16") else args.peak_tflops[1])
            rows.append({"case": label, "variant": name, "ms_per_step": 1e3 * s,
                         "images_per_second": batch / s, "gflop_per_step": flops / 1e9,
                         "mfu": flops / s / peak, "over_fp32_eager": s / seconds["fp32/tf32 eager"]})
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for r in rows:
        print(f"{r['case']:38s} {r['variant']:20s} {r['ms_per_step']:8.1f} ms {r['images_per_second']:8.0f} img/s "
              f"MFU {100 * r['mfu']:5.1f}%  x{r['over_fp32_eager']:.2f} of fp32 eager")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__,
                                               "device": torch.cuda.get_device_name(),
                                               "peak_tflops": args.peak_tflops, "steps": rows}, indent=2))


if __name__ == "__main__":
    main()
