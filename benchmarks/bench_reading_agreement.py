"""The same reader through two engines: SmolLM2 in the Hugging Face backend and in llama.cpp's
server (llama-cpp-python, `python -m llama_cpp.server` on loopback, the packaged GGUF), on the
same few-shot episodes: how often they give the same answer, and their accuracies with 95% CIs.

The demo's setting (CIFAR-10 sample, T-3s-0r, 2- and 5-way, SPAE's top word and the LQAE-style
baseline's 64 words), the three decodings. The HF backend computes in fp32 on weights dequantized
from the GGUF; llama.cpp computes on the 4-bit weights with 8-bit activations, and scores through
the OpenAI-compatible API (next-token scoring: see spae_lab/llm/openai_scoring.py).

    .venv/bin/python benchmarks/bench_reading_agreement.py [--episodes 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import requests

RESULTS = Path(__file__).resolve().parent / "results"


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    from spae_lab.assets import smollm2_gguf_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
                             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                             "--n_ctx", "4096", "--n_threads", str(threads), "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if requests.get(url + "/models", timeout=2).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the llama.cpp server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=8, help="episodes per way")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(RESULTS / "reading_agreement_llamacpp.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "reading_agreement_llamacpp.md"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from spae_lab.cli.demo import DEMO_SETTING
    from spae_lab.llm import load_backend
    from spae_lab.reading.episodes import FewShotConfig, select_settings
    from spae_lab.reading.fewshot import run_experiment

    config = FewShotConfig(ways=(2, 5), settings=select_settings(DEMO_SETTING), names=("real",),
                           decodings=("likelihood", "constrained", "open"), episodes=args.episodes)
    proc, url = start_server(args.threads)
    records, seconds, calls = {}, {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, backend in (("hf", "hf:smollm2"), ("llama.cpp server", f"openai:smollm2@{url}")):
                llm = load_backend(backend) if name == "hf" else load_backend(backend, concurrency=1)
                start = time.perf_counter()
                result = run_experiment(Path(tmp) / name.replace(" ", "_"), "cifar10",
                                        baseline="cifar10-lqae", dataset="cifar10-sample",
                                        max_per_class=None, references=(), config=config,
                                        backend=llm, progress=False)
                seconds[name] = time.perf_counter() - start
                calls[name] = json.loads(result.paths["config"].read_text())["llm_calls"]
                records[name] = result.records
    finally:
        proc.terminate()
        proc.wait(10)
    write(records, seconds, calls, config, args)


def write(records: dict[str, pd.DataFrame], seconds, calls, config, args) -> None:
    from spae_lab.tables import wilson_interval

    hf, server = records["hf"], records["llama.cpp server"]
    keys = ["method", "ways", "decoding", "episode", "image"]
    llm_rows = hf[~hf.method.str.contains("no LLM")]
    both = llm_rows.merge(server, on=keys, suffixes=("_hf", "_server"))
    rows = []
    for (method, ways, decoding), g in both.groupby(["method", "ways", "decoding"], sort=False):
        same = (g.prediction_hf.astype(str) == g.prediction_server.astype(str))
        row = {"method": method, "ways": int(ways), "decoding": decoding, "queries": len(g),
               "same_answer": float(same.mean())}
        for side in ("hf", "server"):
            correct = int(g[f"correct_{side}"].sum())
            low, high = wilson_interval(correct, len(g))
            row[f"accuracy_{side}"] = correct / len(g)
            row[f"ci_{side}"] = [low, high]
        rows.append(row)
    result = {"episodes_per_way": args.episodes, "threads": args.threads, "setting": config.settings[0].label,
              "seconds": seconds, "llm_calls": calls, "rows": rows,
              "same_answer_overall": float(sum(r["same_answer"] * r["queries"] for r in rows)
                                           / sum(r["queries"] for r in rows))}
    Path(args.json).write_text(json.dumps(result, indent=2))
    lines = ["# SmolLM2 through the HF backend and llama.cpp's server, on the same episodes "
             "(`benchmarks/bench_reading_agreement.py`)", "",
             f"CIFAR-10 sample, {result['setting']}, {args.episodes} episodes per way, {args.threads} thread(s); "
             f"same answer on {100 * result['same_answer_overall']:.0f}% of all queries. Seconds: "
             + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".", "",
             "| reader | ways | decoding | queries | same answer | accuracy HF [95% CI] "
             "| accuracy llama.cpp [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ways']} | {r['decoding']} | {r['queries']} | "
                     f"{100 * r['same_answer']:.0f}% | {100 * r['accuracy_hf']:.0f}% "
                     f"[{100 * r['ci_hf'][0]:.0f}-{100 * r['ci_hf'][1]:.0f}] | "
                     f"{100 * r['accuracy_server']:.0f}% "
                     f"[{100 * r['ci_server'][0]:.0f}-{100 * r['ci_server'][1]:.0f}] |")
    text = "\n".join(lines) + "\n"
    Path(args.markdown).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
