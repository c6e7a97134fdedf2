"""The training step under contention: torch threads, OMP_WAIT_POLICY and the step's own changes
(the teacher's cached top-K words, the cache-sized search with its vectorised argmax), on a quiet
machine and beside a fixed background load (two busy processes, `_common.BackgroundLoad`).

Each setting runs in a fresh process (OpenMP reads OMP_WAIT_POLICY when torch loads) and times,
interleaved, the plain VQ step and three SPAE steps of bench_train_step.py: "spae" (this
project's step), "spae_live_teacher" (the teacher's forward in every step), "spae_before" (the
live teacher and the search as it was: one 64 MB score buffer and torch's argmax). Every ratio is
against the plain VQ step of the same process.

    .venv/bin/python benchmarks/bench_contention.py --json benchmarks/results/contention_cpu.json \
        --markdown benchmarks/results/contention_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BackgroundLoad, interleaved_medians, load_average, write_results  # noqa: E402

POLICIES = ("default", "PASSIVE", "ACTIVE")


def child(threads: int, repeats: int) -> dict:
    import torch
    from bench_train_step import steps

    import spae_lab.quantizer as quantizer

    torch.set_num_threads(threads)
    fns, _ = steps("small", 32)

    def before() -> None:  # the search as it was: one 64 MB buffer, torch's argmax
        chunk, argmax = quantizer.SEARCH_CHUNK_ELEMENTS, quantizer.argmax_rows
        quantizer.SEARCH_CHUNK_ELEMENTS = (1 << 24) // torch.get_num_threads()
        quantizer.argmax_rows = lambda scores: scores.argmax(dim=-1)
        try:
            fns["spae_live_teacher"]()
        finally:
            quantizer.SEARCH_CHUNK_ELEMENTS, quantizer.argmax_rows = chunk, argmax

    timed = {"plain_vq": fns["plain_vq"], "spae": fns["spae"], "spae_live_teacher": fns["spae_live_teacher"],
             "spae_before": before}
    t = interleaved_medians(timed, repeats, warmup=1)
    return {"ms": {k: 1e3 * v for k, v in t.items()}, "over_plain_vq": {k: v / t["plain_vq"] for k, v in t.items()}}


def run_setting(threads: int, policy: str, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    proc = subprocess.run([sys.executable, __file__, "--child", str(threads), "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    lines = ["| background | threads | OMP_WAIT_POLICY | plain VQ ms | SPAE ms | SPAE / plain | live teacher / plain "
             "| before / plain | load average |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        ms, ratio = r["ms"], r["over_plain_vq"]
        lines.append(f"| {r['background']} | {r['threads']} | {r['policy']} | {ms['plain_vq']:.0f} | {ms['spae']:.0f} "
                     f"| **{ratio['spae']:.2f}** | {ratio['spae_live_teacher']:.2f} | {ratio['spae_before']:.2f} "
                     f"| {r['load_average'][0]:.2f} -> {r['load_average'][1]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 2], help="busy background processes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return
    rows = []
    for load in args.loads:
        with BackgroundLoad(load) as background:
            for threads in args.threads:
                for policy in args.policies:
                    before = load_average()
                    r = run_setting(threads, policy, args.repeats)
                    rows.append({"background": background.describe(), "processes": load, "threads": threads,
                                 "policy": policy, **r, "load_average": [before, load_average()]})
                    print(markdown({"rows": rows[-1:]}).splitlines()[-1], flush=True)
    result = {"cpus": os.cpu_count(), "rows": rows}
    write_results(result, args.json, args.markdown, markdown)


if __name__ == "__main__":
    main()
