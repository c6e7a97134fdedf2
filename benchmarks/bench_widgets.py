"""How fast each control of each app (spae_lab.widgets) answers on a CPU.

Each app is built on its default tokenizer, then every control is changed in turn, `--repeats`
times, exactly as a frontend changes it (the widget's value is set, or its button clicked: the
same callbacks run); the app's own `timings` record how long each response took. The slow parts
that run in the background (the LLM scoring an episode, the first generation of a query, a
training chunk) are timed apart, since no control waits for them.

Baseline, measured in the same run: decoding one image from every depth of the `digits` tokenizer
(the least any pyramid control does). Bar (issue 22): every response well under a second.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_widgets.py --json benchmarks/results/widgets_cpu.json \\
        --markdown benchmarks/results/widgets_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, write_results  # noqa: E402

BAR_SECONDS = 1.0


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def pyramid_controls(repeats: int) -> dict:
    from spae_lab.widgets.pyramid_app import PyramidExplorer

    app = PyramidExplorer("digits", num_images=8, image_index=3, depth=1)
    app.widget  # noqa: B018 (builds the controls)
    photo = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    photo.write(_png(640, 480))
    photo.close()
    uploads = [({"name": f"photo{k}.png", "content": memoryview(_png(640 + k, 480)), "type": "image/png",
                 "size": 1, "last_modified": datetime.datetime(2026, 1, 1)},) for k in range(repeats)]
    for k in range(repeats):
        app.c_depth.value = 1 + (k % app.num_layers)
        app.c_layer.value = 1 + (k + 1) % app.num_layers
        app.c_cell.value = k % len(app.c_cell.options)
        app.c_word.value = ["zero", "three", "people", "blue"][k % 4]
        app.c_word.value = "notaword"
        app.c_replace.click()
        app.c_undo.click()
        app.c_reset.click()
        app.c_image.value = k % len(app.captions)
        app.c_upload.value = uploads[k]
        app.c_path.value = photo.name
        app.c_load.click()
    os.unlink(photo.name)
    return app.timings


def fewshot_controls(repeats: int) -> tuple[dict, dict]:
    from spae_lab.widgets.fewshot_app import FewShotExplorer

    with tempfile.TemporaryDirectory() as cache:
        app = FewShotExplorer("cifar10", "cifar10-lqae", "cifar10-sample", episodes=20,
                              cache_path=Path(cache) / "llm_cache.sqlite")
        background = {}
        start = time.perf_counter()
        app.scores("SPAE")
        background["SmolLM2 loads and scores the first episode (SPAE words)"] = [time.perf_counter() - start]
        for reader in ("SPAE", "LQAE-style"):  # the slow part, in the worker thread when live
            times = []
            for index in (1, 2, 3):
                app.index = index
                start = time.perf_counter()
                app.scores(reader)
                times.append(time.perf_counter() - start)
            background[f"LLM scores one 2-way episode ({reader} words, median of 3)"] = times
        app.index = 0
        app.widget  # noqa: B018
        for k in range(repeats):
            app.c_next.click()
            app.c_reader.value = ["LQAE-style", "SPAE"][k % 2]
            app.c_ways.value = 2 + (k % 3)
            app.c_shots.value = 1 + (k % 3)
            app.c_query.value = 0 if app.query else 1
            app.c_classes.value = tuple(range(10 - k % 3))
            app.c_prev.click()
        app._worker.shutdown(wait=True, cancel_futures=True)
    return app.timings, background


def generation_controls(repeats: int) -> tuple[dict, dict]:
    from spae_lab.widgets.generation_app import GenerationStepper

    with tempfile.TemporaryDirectory() as out:
        app = GenerationStepper("class", "digits", out=out, layers=2, queries=4)
        background = {}
        for q in range(2):
            start = time.perf_counter()
            app.trace(q)  # the LLM writes the query's words (cached after)
            background[f"first view of a query: SmolLM2 writes it ({len(app.trace(q).calls)} calls)"] = [
                time.perf_counter() - start]
        app.widget  # noqa: B018
        for k in range(repeats):
            app.c_query.value = k % 2
            app.c_next.click()
            app.c_layer.click()
            app.c_step.value = 0
            app.c_prev.click()
    return app.timings, background


def training_controls(repeats: int) -> tuple[dict, dict]:
    from spae_lab.widgets.training_app import TrainingView

    with tempfile.TemporaryDirectory() as out:
        view = TrainingView("tiny", {"data.dataset": "digits", "train.num_threads": 1}, steps=10,
                            out_dir=Path(out) / "run", chunk_steps=5)
        start = time.perf_counter()
        view.run()
        background = {"a chunk of 5 tiny steps (training, evaluation, checkpoint)": [(time.perf_counter() - start) / 2]}
        view.widget  # noqa: B018
        for _ in range(repeats):
            start = time.perf_counter()
            view.c_start.click()  # returns at once: training runs in a thread
            view.timings.setdefault("start", []).append(time.perf_counter() - start)
            view.c_stop.click()
            view.wait(300)
    return view.timings, background


def baseline(repeats: int) -> float:
    from spae_lab import load_tokenizer
    from spae_lab.widgets.sources import heldout_images

    model = load_tokenizer("digits")
    images, _ = heldout_images(model, 1)
    pyramid = model.encode(images)
    return interleaved_medians({"decode": lambda: model.decode_every_depth(pyramid)}, repeats)["decode"]


def summarize(timings: dict) -> dict:
    return {name: {"median_s": round(sorted(t)[len(t) // 2], 4), "max_s": round(max(t), 4), "count": len(t)}
            for name, t in timings.items()}


def markdown(result: dict) -> str:
    lines = [f"# Widget controls: response times (CPU, {result['threads']} torch threads)", "",
             f"Baseline: decoding one `digits` image from every depth, {1000 * result['baseline_s']:.1f} ms "
             f"(median). Bar: every response under {BAR_SECONDS:.0f} s. Load average at start: "
             f"{result['load_before']:.1f} (a shared machine).", "",
             "| app | control | median (ms) | slowest (ms) | responses | median / baseline | under the bar |",
             "|---|---|---:|---:|---:|---:|---|"]
    for app, timings in result["controls"].items():
        for control, t in timings.items():
            under = "yes" if t["max_s"] < BAR_SECONDS else "no"
            lines.append(f"| {app} | {control} | {1000 * t['median_s']:.0f} | {1000 * t['max_s']:.0f} | {t['count']} | "
                         f"{t['median_s'] / result['baseline_s']:.1f}x | {under} |")
    lines += ["", "Background work (no control waits for it; a live app shows a line while it runs):", "",
              "| app | work | seconds |", "|---|---|---:|"]
    for app, work in result["background"].items():
        for name, t in work.items():
            lines.append(f"| {app} | {name} | {t['median_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    import torch

    load = os.getloadavg()[0]
    base = baseline(max(5, args.repeats))
    controls, background = {}, {}
    controls["pyramid explorer"] = summarize(pyramid_controls(args.repeats))
    timings, slow = fewshot_controls(args.repeats)
    controls["few-shot explorer"], background["few-shot explorer"] = summarize(timings), summarize(slow)
    timings, slow = generation_controls(args.repeats)
    controls["generation stepper"], background["generation stepper"] = summarize(timings), summarize(slow)
    timings, slow = training_controls(min(args.repeats, 2))
    controls["training view"], background["training view"] = summarize(timings), summarize(slow)
    result = {"threads": torch.get_num_threads(), "baseline_s": base, "load_before": load,
              "controls": controls, "background": background}
    write_results(result, args.json, args.markdown, markdown)


if __name__ == "__main__":
    main()
