"""Write the measured tables of README.md and docs/*.md from benchmarks/results/ and the model cards.

A measured figure is written once: in a results file under `benchmarks/results/` (or a pretrained
tokenizer's card, `spae_lab/assets/pretrained/*.json`). The pages show it through a table that this
script renders between marker comments,

    <!-- table:NAME -->
    (generated: do not edit by hand)
    <!-- /table -->

so a page cannot drift from its source. After adding or changing a result:

    .venv/bin/python scripts/make_docs_tables.py            # rewrite the pages in place
    .venv/bin/python scripts/make_docs_tables.py --check    # exit 1 when a page is out of date

`tests/test_docs.py` runs the check. A marker naming no table here, or a table no page shows, is an
error. Rendering reads only JSON/CSV files and the cards: it loads no model and takes well under a
second.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = ["README.md", "docs/*.md"]
MARKER = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)

TABLES: dict[str, Callable[[], str]] = {}


def table(name: str):
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        TABLES[name] = fn
        return fn
    return register


# --- helpers --------------------------------------------------------------------------------------


def load(name: str):
    return json.loads((RESULTS / name).read_text())


def rows_of(name: str) -> list[dict]:
    with open(RESULTS / name, newline="") as f:
        return list(csv.DictReader(f))


def markdown(columns: list[str], rows: list[list], right: int = 0) -> str:
    """A Markdown table; the last `right` columns are right-aligned (numbers)."""
    align = ["---"] * (len(columns) - right) + ["---:"] * right
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def source(files: str, command: str | None = None) -> str:
    line = f"Source: {files}"
    return line + (f"; command: `{command}`" if command else "")


def pct(value: float, digits: int = 0) -> str:
    return f"{100 * value:.{digits}f}%"


def per_depth(values, fmt: str = "{:.1f}", scale: float = 1) -> str:
    return " / ".join(fmt.format(scale * v) for v in values)


# --- headline figures (README) --------------------------------------------------------------------

FEWSHOT_2WAY = "fewshot_cifar10_pretrained_2way_64episodes"
FEWSHOT_16 = "fewshot_cifar10_pretrained"
FEWSHOT_COMMON = ("spae-lab fewshot cifar10 --baseline cifar10-lqae --dataset PATH/cifar10-train-jpeg.tar.gz "
                  "--split heldout --max-per-class 200 --names real --decoding likelihood --references teacher")
FEWSHOT_COMMANDS = {FEWSHOT_2WAY: f"{FEWSHOT_COMMON} --ways 2 --episodes 64",
                    FEWSHOT_16: f"{FEWSHOT_COMMON} --ways 2 5 --episodes 16",
                    "fewshot_cifar10_pretrained_layers2": f"{FEWSHOT_COMMON} --ways 2 5 --episodes 16 --layers 2"}


def card(name: str) -> dict:
    return json.loads((ROOT / "spae_lab" / "assets" / "pretrained" / f"{name}.json").read_text())


def image_tokenizers() -> list[str]:
    """The shipped image tokenizers (the clip ones have their own tables in docs/video.md)."""
    from spae_lab.pretrained import image_tokenizers as names

    return names()


def clip_tokenizers() -> list[str]:
    from spae_lab.pretrained import available

    return [name for name in available() if "clip" in card(name)["config"]]


@functools.cache
def fewshot_gap(folder: str, ways: int, resamples: int = 10_000) -> dict:
    """SPAE minus LQAE-style accuracy over all 7 settings, with a 95% bootstrap interval over
    episodes (every setting's queries of an episode resampled together; seeded, so stable)."""
    counts: dict[str, dict[int, list[int]]] = {"SPAE": {}, "LQAE-style": {}}
    for r in rows_of(f"{folder}/records.csv"):
        if int(r["ways"]) == ways and r["method"] in counts:
            c = counts[r["method"]].setdefault(int(r["episode"]), [0, 0])
            c[0] += r["correct"] == "True"
            c[1] += 1
    episodes = sorted(counts["SPAE"])
    spae = [counts["SPAE"][e] for e in episodes]
    lqae = [counts["LQAE-style"][e] for e in episodes]

    def gap(sample: list[int]) -> float:
        def accuracy(per_episode: list[list[int]]) -> float:
            return sum(per_episode[i][0] for i in sample) / sum(per_episode[i][1] for i in sample)
        return 100 * (accuracy(spae) - accuracy(lqae))

    rng = random.Random(0)
    everything = list(range(len(episodes)))
    draws = sorted(gap(rng.choices(everything, k=len(everything))) for _ in range(resamples))
    def whole(per_episode: list[list[int]]) -> float:
        return 100 * sum(c[0] for c in per_episode) / sum(c[1] for c in per_episode)

    return {"spae": whole(spae), "lqae": whole(lqae), "gap": gap(everything),
            "low": draws[int(0.025 * resamples)], "high": draws[int(0.975 * resamples) - 1],
            "episodes": len(episodes)}


def class_digits_both_seeds() -> tuple[int, int]:
    runs = load("generation_cpu.json")
    parts = [runs[k]["summary"] for k in ("class_last_5episodes", "class_last_5episodes_seed1")]
    return round(sum(p["accuracy"] * p["images"] for p in parts)), sum(p["images"] for p in parts)


def short_fewshot(options: str) -> str:
    """A few-shot command shortened for the README's table; the page it links to shows it whole."""
    return (f"`spae-lab fewshot cifar10 --baseline cifar10-lqae {options} ...` "
            "([in full](docs/reading.md#smollm2-reads-cifar-10))")


@table("headlines")
def headlines() -> str:
    spae, lqae = card("cifar10")["heldout"], card("cifar10-lqae")["heldout"]
    two, five = fewshot_gap(FEWSHOT_2WAY, 2), fewshot_gap(FEWSHOT_16, 5)
    correct, images = class_digits_both_seeds()
    search = next(r for r in load("search_cpu.json")["search"] if r["space"] == "search space"
                  and r["latents"] == 16384)
    step = next(s for s in load("train_step_cpu.json")["steps"] if s["variant"] == "spae")
    rows = [
        ["`cifar10` tokenizer, 512 held-out CIFAR-10 images",
         f"{spae['psnr'][-1]:.1f} dB from all 149 tokens; class word among the first 5 words "
         f"{pct(spae['class_hit'][1])} (LQAE-style's 64 words: {pct(lqae['class_hit'][0])})",
         "`spae-lab pretrained --verbose` (the card; [how it was measured](docs/pretrained.md))"],
        ["few-shot 2-way, SmolLM2 reads 1 SPAE word vs 64 LQAE-style words",
         f"{two['spae']:.1f}% vs {two['lqae']:.1f}%: +{two['gap']:.1f} points (95% CI {two['low']:.1f} to "
         f"{two['high']:.1f})", short_fewshot("--ways 2 --episodes 64")],
        ["few-shot 5-way, the same",
         f"{five['spae']:.1f}% vs {five['lqae']:.1f}%: +{five['gap']:.1f} points (95% CI {five['low']:.1f} to "
         f"{five['high']:.1f})", short_fewshot("--ways 2 5 --episodes 16")],
        ["SmolLM2 writes a requested digit (`digits`, all 5 layers)",
         f"{pct(correct / images)} of {images} recognised (chance 10%)",
         "`spae-lab generate class --tokenizer digits --episodes 5 [--seed 1]`"],
        ["nearest-word search, 16,384 latents x 8,192 words (CPU)",
         f"{search['vqp_over_ours']:.0f}x faster than vector-quantize-pytorch, same ids",
         "`python benchmarks/bench_search.py`"],
        ["SPAE training step (`small` preset, batch 32, CPU)",
         f"{step['over_plain_vq']:.2f}x the time of a plain VQ step of the same backbone",
         "`python benchmarks/bench_train_step.py`"],
    ]
    return markdown(["what", "measured", "command"], rows)


# --- pretrained tokenizers --------------------------------------------------------------------------


@table("pretrained")
def pretrained() -> str:
    from spae_lab.pretrained import markdown_table

    return markdown_table()


@table("pretrained-provenance")
def pretrained_provenance() -> str:
    rows = []
    for name in image_tokenizers():
        c = card(name)
        rows.append([f"`{name}`", c["description"], c["steps"], c["wall_minutes"], c["machine"],
                     f"`{c['commit']}`", f"`{c['command']}`"])
    return markdown(["name", "what", "steps", "wall minutes", "machine", "commit", "reproduce"], rows)


@table("pretrained-depths")
def pretrained_depths() -> str:
    rows = []
    for name in image_tokenizers():
        m = card(name)["heldout"]
        hits = m.get("caption_hit") or m.get("class_hit")
        rows.append([f"`{name}`", per_depth(m["psnr"]), per_depth(m["distinct_words"], "{:.0f}"),
                     per_depth(m["relevance"], "{:.3f}") + f" ({m['relevance_random']:.3f})",
                     per_depth(hits, "{:.0f}%", 100)])
    return markdown(["name", "PSNR by depth (dB)", "distinct words by layer",
                     "teacher relevance by layer (random word)", "caption / class word in layers 1..d"], rows)


# --- reading (few-shot) -----------------------------------------------------------------------------

SETTINGS = ["noT-1s-0r", "T-1s-0r", "T-3s-0r", "T-5s-0r", "T-1s-1r", "T-1s-3r", "T-1s-5r"]
METHOD_NAMES = {"SPAE": "**SPAE (1 word)**", "LQAE-style": "LQAE-style (64 words)"}


def fewshot_rows(folder: str, ways: int) -> list[list]:
    rows = []
    for r in rows_of(f"{folder}/table.csv"):
        if int(r["ways"]) == ways:
            rows.append([ways, METHOD_NAMES.get(r["method"], r["method"])]
                        + [f"{float(r[s]):.1f}" for s in SETTINGS] + [f"**{float(r['average']):.1f}**"
                                                                      if r["method"] == "SPAE" else
                                                                      f"{float(r['average']):.1f}"])
    return rows


@table("fewshot")
def fewshot() -> str:
    rows = fewshot_rows(FEWSHOT_2WAY, 2) + fewshot_rows(FEWSHOT_16, 5)
    return "\n\n".join([
        markdown(["ways", "method", *SETTINGS, "average"], rows, right=len(SETTINGS) + 1),
        source(f"`benchmarks/results/{FEWSHOT_2WAY}/` (2-way, 64 episodes, 128 queries a cell) and "
               f"`benchmarks/results/{FEWSHOT_16}/` (5-way, 16 episodes, 80 queries a cell)"),
        "```\n" + FEWSHOT_COMMANDS[FEWSHOT_2WAY] + "\n" + FEWSHOT_COMMANDS[FEWSHOT_16] + "\n```"])


@table("fewshot-gap")
def fewshot_gap_table() -> str:
    rows = []
    for folder, ways in ((FEWSHOT_2WAY, 2), (FEWSHOT_16, 2), (FEWSHOT_16, 5)):
        g = fewshot_gap(folder, ways)
        rows.append([ways, g["episodes"], f"{g['spae']:.1f}", f"{g['lqae']:.1f}", f"**{g['gap']:+.1f}**",
                     f"{g['low']:.1f} to {g['high']:.1f}", f"`{folder}/`"])
    return markdown(["ways", "episodes", "SPAE", "LQAE-style", "gap (points)",
                     "95% bootstrap interval over episodes", "results"], rows)


@table("fewshot-layers")
def fewshot_layers() -> str:
    one, five = (rows_of(f"{f}/table.csv") for f in (FEWSHOT_16, "fewshot_cifar10_pretrained_layers2"))

    def average(rows: list[dict], method: str, ways: int) -> str:
        return next(f"{float(r['average']):.1f}" for r in rows if r["method"] == method and int(r["ways"]) == ways)

    rows = [[ways, average(one, "SPAE", ways), average(five, "SPAE", ways), average(one, "LQAE-style", ways)]
            for ways in (2, 5)]
    return "\n\n".join([
        markdown(["ways", "SPAE, layer 1 (1 word)", "SPAE, layers 1-2 (5 words)", "LQAE-style (64 words)"],
                 rows, right=3),
        source(f"`benchmarks/results/{FEWSHOT_16}/`, `benchmarks/results/fewshot_cifar10_pretrained_layers2/` "
               "(average over the 7 settings, the same 16 episodes)",
               FEWSHOT_COMMANDS["fewshot_cifar10_pretrained_layers2"])])


@table("fewshot-calibration")
def fewshot_calibration() -> str:
    folders = {c: rows_of(f"fewshot_cifar10_pretrained_calibration_{c}/summary.csv")
               for c in ("content-free", "none")}
    rows = []
    for ways in (2, 5):
        for names in ("real", "nonsense"):
            cells = []
            for part in folders.values():
                mine = [r for r in part if r["method"] == "SPAE" and int(r["ways"]) == ways and r["names"] == names]
                accuracy = sum(float(r["accuracy"]) for r in mine) / len(mine)
                share = sum(float(r["top_answer_share"]) for r in mine) / len(mine)
                cells.append(f"{pct(accuracy, 1)} / {share:.2f}")
            rows.append([ways, names, *cells])
    return "\n\n".join([
        markdown(["ways", "names", "content-free calibration (default): accuracy / most common answer's share",
                  "raw summed log-probabilities: accuracy / most common answer's share"], rows),
        source("`benchmarks/results/fewshot_cifar10_pretrained_calibration_{content-free,none}/` (SPAE as it "
               "read images then: 5 words from the trained head, 16 episodes, average over the 7 settings)")])


@table("prefix-cache")
def prefix_cache() -> str:
    d = load("fewshot_prefix_cache.json")
    rows = [[f"{d['ways']}-way {d['shots']}-shot, {d['queries']} queries", d["prefix_tokens"],
             f"{d['seconds']['naive']:.1f} s", f"{d['seconds']['cached']:.1f} s", f"**{d['speedup']:.1f}x**",
             "yes" if d["identical_predictions"] else "no"]]
    return "\n\n".join([
        markdown(["episode", "prefix tokens", "scored from scratch", "prefix cached", "speed-up",
                  "same predictions"], rows),
        source("`benchmarks/results/fewshot_prefix_cache.json`", "python benchmarks/bench_fewshot_prefix_cache.py")])


# --- writing (generation) ---------------------------------------------------------------------------


def short_generate(command: str, tokenizer: str = "") -> str:
    """`spae-lab generate TASK [--tokenizer T] ... --out DIR` -> `TASK ...`, without `--tokenizer T`
    when `tokenizer` is T (the table's header names it)."""
    short = command.removeprefix("spae-lab generate ").split(" --out")[0]
    return short.replace(f" --tokenizer {tokenizer}", "") if tokenizer else short


@table("generation-class")
def generation_class() -> str:
    from spae_lab.tables import wilson_interval

    runs = load("generation_cpu.json")
    keys = ["class_mixed", "class_last", "class_last_5episodes", "class_last_5episodes_seed1", "class_same",
            "arithmetic"]
    rows = []
    for key in keys:
        label = "`" + short_generate(runs[key]["command"], "digits") + "`"
        s = runs[key]["summary"]
        correct = round(s["accuracy"] * s["images"])
        low, high = wilson_interval(correct, s["images"])
        rows.append([label, s["images"], f"**{pct(s['accuracy'])}** ({pct(low)}-{pct(high)})",
                     per_depth(s["accuracy_by_depth"], "{:.0f}", 100), pct(s["chance"]),
                     pct(s["copy_reference_accuracy"]), pct(s["mean_max_overlap_with_context"]),
                     s["exact_copies"]])
        if key == "class_last_5episodes_seed1":
            correct, images = class_digits_both_seeds()
            low, high = wilson_interval(correct, images)
            rows.append(["both runs above", images,
                         f"**{pct(correct / images)}** ({pct(low)}-{pct(high)})", "", "10%", "", "", ""])
    classifier = runs["class_last_5episodes"]["summary"]
    return "\n\n".join([
        markdown(["run (`spae-lab generate ... --tokenizer digits`)", "images",
                  "recognised as asked (95% interval)", "by decoded depth 1..5 (%)", "chance",
                  "copying a context example (no LLM)", "words shared with the closest example",
                  "exact copies"], rows),
        f"The judge, on real held-out digits: {pct(classifier['classifier_real_heldout'], 1)}; on their "
        f"reconstructions: {pct(classifier['classifier_reconstructed_heldout'], 1)}. "
        + "The default class context is `last` (the requested digit's examples next to the query). "
        + source("`benchmarks/results/generation_cpu.json`")])


@table("generation-images")
def generation_images() -> str:
    runs = load("generation_cpu.json")
    rows = []
    for key, run in runs.items():
        s = run.get("summary", {})
        if "psnr_generated" not in s:
            continue
        region = "region_psnr_generated" in s

        def cell(name: str, s=s, region=region) -> str:
            whole = f"{s[f'psnr_{name}']:.2f}"
            return f"{s[f'region_psnr_{name}']:.2f} ({whole})" if region else whole

        # runs before `--corruption` existed put random words in the region (now `--corruption random`)
        corruption = ("masked" if key.endswith("_masked") else "random") if region else "-"
        rows.append([f"`{short_generate(run['command'])}`", corruption,
                     s["images"], cell("generated"), cell("corrupted"), cell("noLLM_fill"), cell("clean_tokens")])
    return "\n\n".join([
        markdown(["run (`spae-lab generate ...`)", "region's words", "images", "LLM", "corrupted input",
                  "no-LLM fill", "clean words (ceiling)"], rows),
        "PSNR in dB against the original (flip and shift: the transformed original); for inpaint and "
        "outpaint the corrupted region's PSNR, the whole image's in brackets. The region's words: "
        "`masked` (the default, `--corruption masked`: those of the image with the region painted grey) "
        "or `random` (random codebook words, `--corruption random`, the only kind when most runs were made). "
        + source("`benchmarks/results/generation_cpu.json`")])


@table("generation-recipe")
def generation_recipe() -> str:
    runs = load("generation_cpu.json")["recipe_training_split"]
    rows = []
    for key, s in runs.items():
        if not isinstance(s, dict):
            continue
        if s["task"] == "class":
            figure = f"{pct(s['accuracy'])} of {s['images']} recognised"
        else:
            figure = (f"region {s['region_psnr_generated']:.2f} dB (corrupted {s['region_psnr_corrupted']:.2f}, "
                      f"no-LLM fill {s['region_psnr_noLLM_fill']:.2f})")
        rows.append([f"`{key}`", figure])
    return "\n\n".join([markdown(["choice tried on the training split", "result"], rows),
                        source("`benchmarks/results/generation_cpu.json` (`recipe_training_split`)")])


@table("edit")
def edit() -> str:
    rows = []
    for run in load("edit_cpu.json"):
        for key, label in (("original", "unedited"), ("edited", "**swapped for the word**"),
                           ("random word", "a random word")):
            rows.append([run["tokenizer"], run["judge"], label, per_depth(run[key], "{:.0f}%", 100),
                         f"{run['psnr_edited_vs_original']:.1f} dB" if key == "edited" else "-"])
    return "\n\n".join([
        markdown(["tokenizer", "judge", "top word", "read as the word at depth 1 / 2 / 3 / 4 / 5",
                  "full-depth PSNR edited vs unedited"], rows),
        source("`benchmarks/results/edit_cpu.json`", "python scripts/measure_edit.py")])


# --- performance ------------------------------------------------------------------------------------


def machine_line(d: dict) -> str:
    load_average = d.get("load_average")
    text = f"torch {d['torch']}, {d['threads']} thread(s)"
    return text + (f", load average {load_average[0]:.2f} -> {load_average[1]:.2f}" if load_average else "")


@table("search")
def search() -> str:
    d = load("search_cpu.json")
    rows = []
    for r in d["search"]:
        space = "raw LLM rows" if r["space"].startswith("raw") else r["space"]
        differing = r["ids_differing_from_cdist"]
        rows.append([f"{space}, {r['codebook'][1]}-d", f"{r['latents']:,}", f"{r['ours_throughput_vs_floor']:.2f}",
                     f"{r['cdist_over_ours']:.1f}x", f"{r['vqp_over_ours']:.1f}x",
                     f"{differing['ours']} (vqp: {differing['vector_quantize_pytorch']})"])
    names = {"floor_matmul": "bare product", "ours": "ours", "cdist_argmin": "cdist",
             "vector_quantize_pytorch": "vector-quantize-pytorch",
             "quantizer_encode": "whole SAQ quantizer of the `small` preset, without gradients",
             "quantizer_train": "whole SAQ quantizer, forward + backward"}
    memory = [[names.get(m["method"], m["method"].replace("_", " ")), f"{m['peak_extra_mb']:,.0f} MB"]
              for m in d["memory"]]
    return "\n\n".join([
        markdown(["space", "N latents", "ours vs bare product (throughput)", "cdist / ours",
                  "vector-quantize-pytorch / ours", "ids differing from cdist"], rows, right=4),
        f"Peak extra memory at N = {d['memory'][0]['latents']:,} ({d['memory'][0]['space']}):",
        markdown(["method", "peak extra memory"], memory, right=1),
        source(f"`benchmarks/results/search_cpu.json` ({machine_line(d)})",
               "python benchmarks/bench_search.py --json benchmarks/results/search_cpu.json")])


@table("codec")
def codec() -> str:
    rows = []
    for name in ("codec_cpu.json", "codec_cpu_1thread.json"):
        d = load(name)
        for r in d["codec"]:
            rows.append([d["threads"], f"{d['load_average'][0]:.2f}", r["batch_size"],
                         f"{r['encode_images_per_second']:.1f}", f"{r['decode_images_per_second']:.1f}", f"`{name}`"])
    return "\n\n".join([
        markdown(["torch threads", "load at start", "batch", "encode images/s", "decode images/s", "file"], rows),
        source("`benchmarks/results/codec_cpu*.json` (the `small` preset, 149 tokens an image)",
               "OMP_NUM_THREADS=1 python benchmarks/bench_codec.py --json FILE")])


TRAIN_STEP_FILES = {
    "train_step_cpu_before.json": "before, quiet", "train_step_cpu_before_repeat.json": "before, quiet (repeat)",
    "train_step_cpu_before_1thread.json": "before, quiet",
    "train_step_cpu_before_load2.json": "before, two busy processes",
    "train_step_cpu_before_load2_1thread.json": "before, two busy processes",
    "train_step_cpu.json": "quiet", "train_step_cpu_repeat.json": "quiet (repeat)",
    "train_step_cpu_repeat2.json": "quiet (repeat)", "train_step_cpu_repeat3.json": "quiet (repeat)",
    "train_step_cpu_repeat4.json": "quiet (repeat)", "train_step_cpu_1thread.json": "quiet",
    "train_step_cpu_load2.json": "two busy processes", "train_step_cpu_load2_1thread.json": "two busy processes",
}


@table("train-step")
def train_step() -> str:
    rows = []
    for name, label in TRAIN_STEP_FILES.items():
        d = load(name)
        steps = {s["variant"]: s for s in d["steps"]}

        def ratio(variant: str, steps=steps) -> str:
            s = steps.get(variant)
            if s is None:
                return "-"
            spread = s.get("round_ratio_quartiles")
            return f"{s['over_plain_vq']:.2f}x" + (f" ({spread[0]:.2f}-{spread[2]:.2f})" if spread else "")

        rows.append([label, d["threads"], f"{d['load_average'][0]:.2f}", ratio("spae"), ratio("spae_no_semantic"),
                     ratio("spae_live_teacher"),
                     f"{1000 * steps['spae']['step_seconds']:.0f} ({1000 * steps['plain_vq']['step_seconds']:.0f})",
                     f"`{name}`"])
    return "\n\n".join([
        markdown(["code, machine", "torch threads", "load at start", "SPAE / plain VQ", "no semantic loss / plain",
                  "live teacher / plain", "SPAE step ms (plain)", "file"], rows),
        "In brackets: the quartiles of the per-round ratios (each round times every variant back to back). "
        "\"Before\" is the code as issue 16 found it (commit e620f15, its own benchmark and plain step). "
        + source("`benchmarks/results/train_step_cpu*.json`",
                 "python benchmarks/bench_train_step.py [--threads N] [--load 2] --json FILE")])


@table("step-profile")
def step_profile() -> str:
    d = load("step_profile_cpu.json")
    runs = [r for r in d["runs"] if r["threads"] == (2 if r["background"] == "none" else 1)]
    phases = [p for p in runs[0]["phases_ms"] if p != "step (profiled)"]
    rows = [[p] + [f"{r['phases_ms'].get(p, 0):.1f}" for r in runs] for p in phases]
    rows.append(["**step, not profiled (median)**"] + [f"**{r['step_ms']:.0f}**" for r in runs])
    return "\n\n".join([
        markdown(["phase (ms a step)"] + [r["label"] for r in runs], rows, right=len(runs)),
        source("`benchmarks/results/step_profile_cpu.json` (every thread count and load: "
               "`step_profile_cpu.md`)", "python benchmarks/bench_step_profile.py --loads 0 2 --threads 2 1")])


@table("contention")
def contention() -> str:
    d = load("contention_cpu.json")
    rows = [[r["background"] if r["processes"] else "none", r["threads"], r["policy"],
             f"{r['ms']['plain_vq']:.0f}", f"{r['ms']['spae']:.0f}", f"**{r['over_plain_vq']['spae']:.2f}**"]
            for r in d["rows"]]
    return "\n\n".join([
        markdown(["background", "threads", "OMP_WAIT_POLICY", "plain VQ ms", "SPAE ms", "SPAE / plain"], rows,
                 right=3),
        source("`benchmarks/results/contention_cpu.json`", "python benchmarks/bench_contention.py")])


@table("teacher-cache")
def teacher_cache() -> str:
    d = load("teacher_cache_cifar10.json")
    rows = [[f"{d['images']:,}", f"{d['table_fill_cpu_seconds_estimate']:.1f} CPU-s",
             f"{d['live_teacher_ms_per_batch']:.1f} ms", f"{d['lookup_ms_per_batch']:.1f} ms",
             f"{d['images_same_words']:,} of {d['images_compared']:,}"]]
    return "\n\n".join([
        markdown(["CIFAR-10 training images", "table filled once", f"live teacher, batch {d['batch_size']}",
                  "table lookup, a batch", "same words as the live teacher"], rows),
        source("`benchmarks/results/teacher_cache_cifar10.json`",
               "python benchmarks/bench_teacher_cache.py --config configs/pretrained/cifar10.yaml "
               "--set data.dataset=PATH --json FILE")])


@table("time-to-quality")
def time_to_quality() -> str:
    d = load("time_to_quality_cifar10.json")
    rows = []
    for threshold in (20.0, 22.0, 23.0, 23.5):
        hit = next((p for p in d["curve"] if p["psnr"][-1] >= threshold), None)
        rows.append([f"PSNR {threshold:g} dB (all layers)", *reach(hit)])
    for threshold in (0.30, 0.35):
        hit = next((p for p in d["curve"] if p["class_hit"][0] >= threshold), None)
        rows.append([f"class word in layer 1 (trained head), {threshold:.0%} of images", *reach(hit)])
    last = d["curve"][-1]
    return "\n\n".join([
        markdown(["held-out milestone", "step", "training CPU-minutes", "wall-minutes"], rows, right=3),
        f"Last evaluation: step {last['step']:,}, {last['train_cpu_minutes']:.1f} CPU-minutes, PSNR by depth "
        f"{per_depth(last['psnr'], '{:.2f}')} dB, class word in layer 1 {pct(last['class_hit'][0], 1)}. "
        + source(f"`benchmarks/results/time_to_quality_cifar10.json` (commit {d['commit']}, {d['machine']})",
                 "OMP_NUM_THREADS=1 python benchmarks/bench_time_to_quality.py --set train.num_threads=1")])


def reach(point: dict | None) -> list[str]:
    if point is None:
        return ["not reached", "-", "-"]
    return [f"{point['step']:,}", f"{point['train_cpu_minutes']:.1f}", f"{point['train_wall_minutes']:.1f}"]


@table("gpu-step")
def gpu_step() -> str:
    d = load("gpu_train_step_h200.json")
    cases: dict[str, dict[str, dict]] = {}
    for s in d["steps"]:
        cases.setdefault(s["case"], {})[s["variant"]] = s

    def ratio(variants: dict, name: str) -> str:
        s = variants.get(name)
        return f"{s['over_fp32_spae']:.2f}x" if s else "-"

    rows = []
    for case, variants in cases.items():
        base = variants["fp32 spae"]
        rows.append([case, f"{base['ms_per_step']:.1f} ms ({base['images_per_second']:,.0f} images/s)",
                     ratio(variants, "bf16 spae"), ratio(variants, "fp32 plain_vq"),
                     ratio(variants, "cpu 2 threads fp32 spae"),
                     f"{base['peak_extra_mb'] / 1024:.1f} GB" if base.get("peak_extra_mb") else "-"])
    agreement = d["bf16_word_agreement"]
    return "\n\n".join([
        markdown(["case", "fp32 SPAE", "bf16 SPAE", "fp32 plain VQ", "same SPAE step on 2 CPU threads",
                  "fp32 SPAE peak memory"], rows),
        f"With the encoder under bf16 (the search stays fp32), a trained small tokenizer picked the same word as "
        f"in fp32 for {per_depth(agreement['same_word_per_layer'], '{:.1f}%', 100)} of the tokens of layers "
        f"1-{len(agreement['same_word_per_layer'])} ({agreement['images']} held-out scenes). "
        + source(f"`benchmarks/results/gpu_train_step_h200.json` ({d['device']}, torch {d['torch']})",
                 "python benchmarks/bench_gpu_train_step.py --run RUN --json FILE")])


# --- the recipe's history ---------------------------------------------------------------------------

ABLATIONS = {"ablation_small_1000steps_h200.csv": "H200, seed 0",
             "ablation_small_1000steps_h200_seed1.csv": "H200, seed 1",
             "ablation_small_400steps_cpu.csv": "CPU, seed 0"}


@table("ablations")
def ablations() -> str:
    rows = []
    for name, label in ABLATIONS.items():
        for r in rows_of(name):
            hit = next(v for k, v in r.items() if k.startswith("caption word"))
            rows.append([label, r["variant"], r["steps"], f"{float(r['PSNR@1']):.1f} / {float(r['PSNR@5']):.1f}",
                         f"{float(r['relevance L1']):.2f} / {float(r['relevance L5']):.2f}",
                         pct(float(hit)), r["distinct words (deepest)"]])
    return "\n\n".join([
        markdown(["run", "variant", "steps", "PSNR 1 / 5 layers (dB)", "relevance L1 / L5",
                  "caption word in layers 1-2", "distinct words (deepest)"], rows),
        source("`benchmarks/results/ablation_small_*.csv` (the cell pyramid with layers 1-3 guided; "
               "the other files there hold more variants)",
               "spae-lab ablate --preset small --steps 1000 --out runs/ablation")])


# --- clips (docs/video.md) --------------------------------------------------------------------------

VIDEO_READING = "video_reading"
VIDEO_READING_2WAY = "video_reading_2way_60episodes"
VIDEO_READING_COMMAND = ("python scripts/measure_clip_reading.py --tokenizer moving-scenes --eval-seed 7 --clips 200 "
                         "--ways 2 4 --episodes 20 --settings quick --names real "
                         "--out benchmarks/results/video_reading")
VIDEO_WRITING_COMMAND = ("python scripts/measure_clip_writing.py --tokenizer moving-scenes --eval-seed 7 --clips 30 "
                         "--layers 4 --out benchmarks/results/video_writing")


@table("video-card")
def video_card() -> str:
    parts = []
    for name in clip_tokenizers():
        c = card(name)
        m, f = c["heldout"], c["frame_by_frame"]
        words = c["cumulative_words"]
        rows = [[f"`{name}` at depth {d + 1}", words[d], f"{m['psnr'][d]:.2f}", pct(m["direction_hit"][d], 1),
                 pct(m["content_hit"][d], 1)] for d in range(len(words))]
        rows += [[f"`{c['frame_by_frame_tokenizer']}` frame by frame, depth {d + 1}", n, f"{f['psnr'][d]:.2f}",
                  pct(f["direction_hit"][d], 1), pct(f["content_hit"][d], 1)]
                 for d, n in enumerate(f["words_per_clip"])]
        rows.sort(key=lambda r: (r[1], not r[0].startswith(f"`{name}`")))
        reading = ", ".join(f"{k} = {v}" for k, v in c.get("inference_overrides", {}).items())
        sets = "".join(f" --set {k}={v}" for k, v in c.get("inference_overrides", {}).items())
        parts += [markdown(["tokenizer, depth", "words a clip", "PSNR (dB)", "direction word among them",
                            "colour or shape word among them"], rows, right=4),
                  f"{c['data']['heldout_clips']} held-out clips of seed {c['data']['eval_seed']}; the shipped "
                  f"float16 weights, read with {reading or 'the trained settings'}. "
                  + source(f"`spae_lab/assets/pretrained/{name}.json`",
                           f"python scripts/make_pretrained_video.py {name} --run runs/video_s0{sets} "
                           f"--command \"...\"")]
    return "\n\n".join(parts)


@table("video-as-trained")
def video_as_trained() -> str:
    d = load("video_bars_head.json")
    run = d["runs"][0]
    rows = [[depth + 1, run["words"][depth], f"{run['psnr'][depth]:.2f}", pct(run["direction_hit"][depth], 1),
             pct(run["content_hit"][depth], 1)] for depth in range(len(run["words"]))]
    return "\n\n".join([
        markdown(["depth", "words a clip", "PSNR (dB)", "direction word in layers 1..d",
                  "colour or shape word in layers 1..d"], rows, right=5),
        source("`benchmarks/results/video_bars_head.json`",
               f"python scripts/eval_clip_runs.py runs/video_s0 --eval-seed {d['eval_seed']} --clips {d['clips']} "
               "--top-word head --json benchmarks/results/video_bars_head.json")])


@table("video-vqa")
def video_vqa() -> str:
    rows = [[r["question"], r["method"], f"{pct(float(r['accuracy']), 1)} ({pct(float(r['ci_low']))}-"
             f"{pct(float(r['ci_high']))})", pct(float(r["chance"]))]
            for r in rows_of(f"{VIDEO_READING}/vqa.csv") if r["decoding"] in ("constrained", "-")]
    return "\n\n".join([markdown(["question", "reader", "accuracy (95% interval)", "chance"], rows, right=2),
                         source(f"`benchmarks/results/{VIDEO_READING}/vqa.csv` (likelihood ranking gives the same "
                                "answers: every answer is one token)", VIDEO_READING_COMMAND)])


@table("video-fewshot")
def video_fewshot() -> str:
    rows = []
    for folder in (VIDEO_READING, VIDEO_READING_2WAY):
        episodes = load(f"{folder}/config.json")["fewshot"]["episodes"]
        for r in sorted(rows_of(f"{folder}/summary.csv"), key=lambda r: int(r["ways"])):
            rows.append([f"{r['ways']}-way, {episodes} episodes", r["method"], r["queries"],
                         f"{pct(float(r['accuracy']), 1)} ({pct(float(r['ci_low']))}-{pct(float(r['ci_high']))})",
                         pct(1 / int(r["ways"]))])
    return "\n\n".join([
        markdown(["ways, episodes", "method", "queries", "accuracy (95% interval)", "chance"], rows, right=3),
        source(f"`benchmarks/results/{VIDEO_READING}/` and `{VIDEO_READING_2WAY}/` (summary.csv)",
               VIDEO_READING_COMMAND) + f"; the 2-way rerun: the same with `--ways 2 --episodes 60 --out "
        f"benchmarks/results/{VIDEO_READING_2WAY}`"])


@table("video-writing")
def video_writing() -> str:
    d = load("video_writing/summary.json")
    methods = [k for k in d if k.startswith("psnr_later: ")]
    rows = [[k.removeprefix("psnr_later: "), f"{d[k]:.2f}"] for k in methods]
    return "\n\n".join([
        markdown(["later frames from", "PSNR of frames 5-8 (dB)"], rows, right=1),
        f"{d['clips']} held-out clips, {d['known_frames']} frames known, SmolLM2 writes layers 1-{d['layers']} "
        f"({d['calls_computed']} calls); the direction word is among the words it wrote for layers 1-2 for "
        f"{pct(d['direction_word_written'])} of clips. "
        + source("`benchmarks/results/video_writing/summary.json`", VIDEO_WRITING_COMMAND)])


@table("video-speed")
def video_speed() -> str:
    d = load("clip_speed_cpu.json")
    rows = [[k, v["load_tokenizer_s"], v["read_clip_s"], v["encode_s"], f"**{v['load_read_encode_s']}**",
             v["imports_s"], v.get("ratio_to_frame_by_frame", "")] for k, v in d["results"].items()]
    return "\n\n".join([
        markdown(["file, tokenizer", "load tokenizer (s)", "read clip (s)", "encode (s)", "load + read + encode (s)",
                  "Python imports (s)", "ratio to frame by frame"], rows, right=6),
        f"{d['machine']}, load average {d['load_average_1min']} (a shared machine), {d['statistic']} "
        f"({d['repeats']}). " + source("`benchmarks/results/clip_speed_cpu.json`",
                                       "python benchmarks/bench_clip_speed.py --repeats 5 --json "
                                       "benchmarks/results/clip_speed_cpu.json")])


# --- pages ------------------------------------------------------------------------------------------


def pages() -> list[Path]:
    return sorted({p for pattern in PAGES for p in ROOT.glob(pattern)})


def render(text: str, page: str, rendered: dict[str, str]) -> str:
    """`text` with every marked table replaced by its generated content."""
    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise SystemExit(f"{page}: no table named {name!r}; known: {', '.join(sorted(TABLES))}")
        if name not in rendered:
            rendered[name] = TABLES[name]().strip()
        return f"{match.group(1)}{rendered[name]}\n{match.group(4)}"

    return MARKER.sub(replace, text)


def render_pages() -> dict[Path, tuple[str, str]]:
    """page -> (text on disk, text with fresh tables); raises SystemExit on an unknown or unused table."""
    rendered: dict[str, str] = {}
    out = {}
    for page in pages():
        text = page.read_text()
        out[page] = (text, render(text, str(page.relative_to(ROOT)), rendered))
    unused = sorted(set(TABLES) - set(rendered))
    if unused:
        raise SystemExit(f"tables no page shows: {', '.join(unused)} (add a <!-- table:NAME --> marker)")
    return out


def main() -> int:
    from spae_lab.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    args = parser.parse_args()
    stale = []
    for page, (old, new) in render_pages().items():
        if old != new:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                atomic_write_text(page, new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `python scripts/make_docs_tables.py`", file=sys.stderr)
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "every page is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
