"""What SPAE adds to a training step: a preset's full SPAE step vs a plain VQ autoencoder of the
same backbone (encoder, decoder, 1x1 projections) with a learned codebook of the same size and
search dimension, one layer of G x G tokens, straight-through, commitment + codebook losses.

The SPAE step is the training loop's (`spae_lab.training.loop.training_step`): forward with random
depths, pixel + gradient losses, commitment, codebook, the semantic loss, backward, gradient
clipping and AdamW; the plain VQ step clips and steps the same way. Variants: "spae" reads the
teacher's top-K words from the table computed once per training set (the default,
`semantic.cache_top_words`), "spae_live_teacher" runs the teacher's forward in every step (as
before that table), "spae_no_semantic" leaves the teacher and the semantic loss out. The batch is
32 CIFAR-10 images through the training data path (the 300-image sample that ships).

Timings are interleaved medians of one run, so every ratio is against a plain VQ step measured in
the same run (and per round: each round times every variant back to back; their quartiles say how
much the load moved); `--load N` runs N busy background processes meanwhile (`_common.BackgroundLoad`).
Peak extra memory of a step is measured in a fresh child process per variant.

    .venv/bin/python benchmarks/bench_train_step.py [--preset small] [--load 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BackgroundLoad,
    interleaved_times,
    load_average,
    peak_rss_mb,
    quantiles,
    reset_peak_rss,
    run_child,
)


class PlainVQAutoencoder(nn.Module):
    """The reference: SPAE's backbone around a learned (V, D) codebook, one token per grid cell."""

    def __init__(self, spae):
        super().__init__()
        self.encoder, self.decoder = spae.encoder, spae.decoder
        self.to_codebook, self.from_codebook = spae.to_codebook, spae.from_codebook
        V, D = len(spae.codebook), spae.quantizer.dim
        self.codebook = nn.Parameter(torch.randn(V, D) / D**0.5)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from spae_lab.quantizer import nearest_codes

        z = self.to_codebook(self.encoder(images * 2 - 1))  # (B, D, G, G)
        B, D, G, _ = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*G*G, D)
        codes = self.codebook[nearest_codes(flat.detach(), self.codebook.detach())]
        vq_loss = (codes - flat.detach()).pow(2).mean() + 0.25 * (flat - codes.detach()).pow(2).mean()
        quantized = flat + (codes - flat).detach()  # straight-through
        latents = quantized.view(B, G, G, D).permute(0, 3, 1, 2)
        return self.decoder(self.from_codebook(latents)), vq_loss


def build(preset: str, batch_size: int, device: str = "cpu", overrides: dict | None = None):
    from spae_lab.codebook import load_codebook
    from spae_lab.config import create_config
    from spae_lab.data import collate, make_dataset
    from spae_lab.model import SPAE
    from spae_lab.semantic import SemanticGuide

    cfg = create_config(preset, {**(overrides or {}), "train.batch_size": batch_size})
    torch.manual_seed(0)
    spae = SPAE(cfg.model, load_codebook(cfg.codebook)).to(device)
    guide = SemanticGuide.from_config(cfg.semantic, spae.codebook, device)
    dataset = make_dataset("cifar10-sample", cfg.model.image_size)
    guide.cache_top_words(dataset)
    torch.manual_seed(0)
    plain = PlainVQAutoencoder(SPAE(cfg.model, spae.codebook)).to(device)
    indices = torch.arange(batch_size) * (len(dataset) // batch_size)  # every class
    images = collate([dataset[i] for i in indices.tolist()])["image"].to(device)
    return cfg, spae, guide, plain, images, indices


def steps(preset: str, batch_size: int, device: str = "cpu", amp_dtype: torch.dtype | None = None,
          overrides: dict | None = None) -> tuple[dict, dict]:
    """The step functions, and facts about the shapes. With `amp_dtype`, the forward and
    the losses run under autocast, as the training loop does on CUDA (bf16)."""
    from dataclasses import replace

    from spae_lab.losses import reconstruction_losses
    from spae_lab.training.loop import sample_depths, training_step

    cfg, spae, guide, plain, images, indices = build(preset, batch_size, device, overrides)
    opt_spae = torch.optim.AdamW(spae.parameters(), lr=1e-4)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    depths = sample_depths(0, batch_size, spae.num_layers, cfg).to(device)
    no_semantic = replace(cfg, semantic=replace(cfg.semantic, enabled=False))
    device_type = torch.device(device).type

    def spae_step(config, batch_indices) -> None:
        training_step(spae, spae, opt_spae, images, depths, config, guide, 1000, batch_indices, amp_dtype)

    def plain_step() -> None:
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            recon, vq_loss = plain(images)
            loss = sum(reconstruction_losses(recon.float(), images * 2 - 1, cfg.loss).values()) + vq_loss
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.train.grad_clip)
        opt_plain.step()

    fns = {"plain_vq": plain_step, "spae": lambda: spae_step(cfg, indices),
           "spae_live_teacher": lambda: spae_step(cfg, None),
           "spae_no_semantic": lambda: spae_step(no_semantic, None)}
    facts = {"preset": preset, "batch_size": batch_size, "spae_tokens_per_image": spae.layout.cumulative_tokens()[-1],
             "plain_tokens_per_image": spae.layout.num_positions, "codebook_size": len(spae.codebook),
             "search_dim": spae.quantizer.dim, "image_size": cfg.model.image_size}
    return fns, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--load", type=int, default=0, help="busy background processes (0: quiet)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        fns, _ = steps(args.preset, args.batch_size)
        fn = fns[args.child[0]]
        # the first step: later ones reuse pages the allocator already holds (AdamW state, a few
        # MB, is created in it too)
        before = reset_peak_rss()
        fn()
        print(json.dumps({"peak_extra_mb": peak_rss_mb() - before}))
        return

    fns, facts = steps(args.preset, args.batch_size)
    with BackgroundLoad(args.load) as background:
        load_before = load_average()
        times = interleaved_times(fns, args.repeats, warmup=2)
        load_after = load_average()
    child_args = ["--preset", args.preset, "--batch-size", str(args.batch_size)]
    child_args += ["--threads", str(args.threads)] if args.threads else []
    memory = {name: None if args.no_memory else run_child(__file__, [name, *child_args])["peak_extra_mb"]
              for name in fns}
    t = {name: quantiles(v)[1] for name, v in times.items()}
    # per-round ratios (each round times every variant back to back): median and quartiles
    ratios = {name: quantiles([a / b for a, b in zip(v, times["plain_vq"], strict=True)]) for name, v in times.items()}
    rows = [{"variant": name, "step_seconds": t[name], "images_per_second": args.batch_size / t[name],
             "over_plain_vq": t[name] / t["plain_vq"], "round_ratio_quartiles": ratios[name],
             "peak_extra_mb": memory[name], "step_seconds_all": times[name]} for name in fns]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, background load "
          f"{background.describe()}, load average {load_before:.2f} -> {load_after:.2f}; "
          f"preset {facts['preset']}, batch {facts['batch_size']}, "
          f"{facts['codebook_size']} words, search {facts['search_dim']}-d; tokens/image: SPAE "
          f"{facts['spae_tokens_per_image']}, plain VQ {facts['plain_tokens_per_image']}")
    print(f"{'variant':20s} {'ms/step':>8s} {'images/s':>9s} {'x plain VQ':>11s} {'per round (quartiles)':>22s} "
          f"{'peak extra MB':>14s}")
    for r in rows:
        low, mid, high = r["round_ratio_quartiles"]
        print(f"{r['variant']:20s} {r['step_seconds'] * 1e3:8.0f} {r['images_per_second']:9.1f} "
              f"{r['over_plain_vq']:11.2f} {f'{mid:.2f} ({low:.2f}-{high:.2f})':>22s} {r['peak_extra_mb'] or 0:14.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "background": background.describe(), "load_average": [load_before, load_after],
                       **facts, "steps": rows}, f, indent=2)


if __name__ == "__main__":
    main()
