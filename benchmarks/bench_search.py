"""Nearest-word search against its floor and the library a user would reach for.

For N latents and the default filtered SmolLM2 codebook (8,192 words), in the search space the
model trains in (16-d in the small preset) and in the raw 576-d LLM rows: our `nearest_codes` vs a
bare (N x d) @ (d x V) matrix product (the floor: the scores alone, no argmin) vs `torch.cdist` + argmin vs
vector-quantize-pytorch's `VectorQuantize` (eval mode, the same frozen codebook loaded into it).
Timings are interleaved medians of one run; ids are checked against cdist. Peak extra memory
(resident set growth of a fresh child process) of each method at the largest N.

    .venv/bin/python benchmarks/bench_search.py [--sizes 4096 16384 65536] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    interleaved_medians,
    load_average,
    peak_rss_mb,
    reset_peak_rss,
    run_child,
)


def codebooks() -> dict[str, torch.Tensor]:
    """The default filtered SmolLM2 codebook, raw (576-d), and as the small preset's search table."""
    from spae_lab.codebook import load_codebook
    from spae_lab.config import CodebookConfig, create_config
    from spae_lab.model import SPAE

    torch.manual_seed(0)
    model = SPAE(create_config("small").model, load_codebook(CodebookConfig()))
    with torch.no_grad():
        return {"search space": model.quantizer.table().contiguous(),
                "raw 576-d": load_codebook(CodebookConfig()).embeddings.float().contiguous()}


def vqp_lookup(codebook: torch.Tensor):
    from vector_quantize_pytorch import VectorQuantize

    V, D = codebook.shape
    vq = VectorQuantize(dim=D, codebook_size=V).eval()
    vq._codebook.embed.copy_(codebook[None])  # the same frozen words, (heads=1, V, D)

    def lookup(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vq(x[None])[1][0]

    return lookup


def methods(codebook: torch.Tensor) -> dict:
    from spae_lab.quantizer import nearest_codes

    half = 0.5 * codebook.pow(2).sum(1)
    out = {
        "floor_matmul": lambda x: x @ codebook.t(),
        "ours": lambda x: nearest_codes(x, codebook, half),
        "cdist_argmin": lambda x: torch.cdist(x, codebook).argmin(1),
    }
    try:
        out["vector_quantize_pytorch"] = vqp_lookup(codebook)
    except ImportError:  # pip install -e ".[bench]"
        pass
    return out


def targets_for(n: int, d: int) -> torch.Tensor:
    # unit-RMS latents like the model's (SAQ targets are sums of a few of them)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True))


def quantizer_memory(n: int, train: bool) -> dict:
    """Peak extra memory of the small preset's PyramidQuantizer on about n searched latents (SAQ,
    149 tokens per image): no_grad (encode), or forward + backward (training)."""
    from spae_lab.codebook import load_codebook
    from spae_lab.config import CodebookConfig, create_config
    from spae_lab.model import SPAE
    from spae_lab.quantizer import unit_rms

    model = SPAE(create_config("small").model, load_codebook(CodebookConfig()))
    quantizer, layout = model.quantizer, model.layout
    images = -(-n // layout.cumulative_tokens()[-1])
    z = unit_rms(torch.randn(images, layout.num_positions, quantizer.dim)).requires_grad_(train)
    before = reset_peak_rss()
    with torch.set_grad_enabled(train):
        out = quantizer(z)
        if train:
            (out.latents.square().mean() + out.commitment_loss + out.codebook_loss).backward()
    return {"peak_extra_mb": peak_rss_mb() - before, "images": images,
            "latents": images * layout.cumulative_tokens()[-1]}


def child(space: str, n: int, method: str) -> dict:
    if method.startswith("quantizer"):
        return quantizer_memory(n, train=method.endswith("train"))
    codebook = codebooks()[space]
    x = targets_for(n, codebook.shape[1])
    fn = methods(codebook)[method]
    fn(x[:64])  # lazy initialisations are not the search's memory
    before = reset_peak_rss()
    fn(x)
    return {"peak_extra_mb": peak_rss_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--raw-max", type=int, default=16384, help="largest N for the 576-d rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        space, n, method = args.child
        print(json.dumps(child(space, int(n), method)))
        return

    load_before = load_average()
    rows = []
    for space, codebook in codebooks().items():
        fns = methods(codebook)
        for n in args.sizes:
            if space.startswith("raw") and n > args.raw_max:
                continue
            x = targets_for(n, codebook.shape[1])
            expected = fns["cdist_argmin"](x)
            same = {name: int((fn(x) != expected).sum()) for name, fn in fns.items()
                    if name not in ("floor_matmul", "cdist_argmin")}
            reps = args.repeats if n <= 16384 else max(3, args.repeats // 2)
            t = interleaved_medians({k: (lambda f=f, x=x: f(x)) for k, f in fns.items()}, reps)
            row = {"space": space, "latents": n, "codebook": list(codebook.shape), "seconds": t,
                   "ids_differing_from_cdist": same,
                   "ours_throughput_vs_floor": t["floor_matmul"] / t["ours"],
                   "cdist_over_ours": t["cdist_argmin"] / t["ours"]}
            if "vector_quantize_pytorch" in t:
                row["vqp_over_ours"] = t["vector_quantize_pytorch"] / t["ours"]
            rows.append(row)
            print(f"{space:12s} N={n:6d} " + " ".join(f"{k}={v * 1e3:.0f}ms" for k, v in t.items())
                  + f" ours/floor throughput={row['ours_throughput_vs_floor']:.2f}"
                  + (f" vqp/ours={row['vqp_over_ours']:.2f}" if "vqp_over_ours" in row else "")
                  + f" differing ids={same}", flush=True)
    memory = []
    n = max(args.sizes)
    for method in [*methods(codebooks()["search space"]), "quantizer_encode", "quantizer_train"]:
        mb = run_child(__file__, ["search space", str(n), method])["peak_extra_mb"]
        memory.append({"space": "search space", "latents": n, "method": method, "peak_extra_mb": mb})
        print(f"peak extra memory, search space, N={n}: {method} {mb:.0f} MB", flush=True)

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load_before:.2f} -> {load_average():.2f}")
    print(f"{'space':12s} {'N':>6s} {'floor ms':>9s} {'ours ms':>8s} {'cdist ms':>9s} {'vqp ms':>8s} "
          f"{'ours/floor thr':>15s} {'vqp/ours':>9s} {'ids != cdist (ours, vqp)':>25s}")
    for r in rows:
        s = r["seconds"]
        vqp = s.get("vector_quantize_pytorch", float("nan"))
        diff = r["ids_differing_from_cdist"]
        print(f"{r['space']:12s} {r['latents']:6d} {s['floor_matmul'] * 1e3:9.0f} {s['ours'] * 1e3:8.0f} "
              f"{s['cdist_argmin'] * 1e3:9.0f} {vqp * 1e3:8.0f} {r['ours_throughput_vs_floor']:15.2f} "
              f"{r.get('vqp_over_ours', float('nan')):9.2f} "
              f"{str((diff.get('ours'), diff.get('vector_quantize_pytorch'))):>25s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_average": [load_before, load_average()], "search": rows,
                       "memory": memory}, f, indent=2)


if __name__ == "__main__":
    main()
