"""Few-shot harness: episodes, prompts, statistics, the three decodings end to end on a tiny random
Llama, resume after a kill, the CLI, and one check that real SmolLM2 reads class words.

Modules: spae_lab.reading.fewshot, spae_lab.reading.episodes, spae_lab.cli.reading.
"""

from __future__ import annotations

import json

import pytest
import torch

from spae_lab.checkpoint import CHECKPOINT_NAME, save_checkpoint
from spae_lab.cli.main import main
from spae_lab.codebook import load_codebook
from spae_lab.config import create_config
from spae_lab.data import make_dataset
from spae_lab.llm.answer import DECODINGS
from spae_lab.llm.base import LLMBackend
from spae_lab.llm.cache import CachedBackend
from spae_lab.llm.hf import HFBackend
from spae_lab.model import SPAE
from spae_lab.reading import fewshot
from spae_lab.reading.episodes import (
    FROZEN_SETTINGS,
    FewShotConfig,
    FewShotError,
    Setting,
    prepare_episodes,
    sample_episodes,
)
from spae_lab.reading.fewshot import build_prompt, run_fewshot
from spae_lab.tables import wilson_interval


@pytest.fixture(scope="module")
def tiny_llm(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def digits():
    return make_dataset("digits", 16, split="heldout")


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """An (untrained) tiny SPAE checkpoint on the digits: the harness does not care what it learnt."""
    cfg = create_config("tiny", {"data.dataset": "digits", "semantic.enabled": False})
    torch.manual_seed(0)
    model = SPAE(cfg.model, load_codebook(cfg.codebook))
    run = tmp_path_factory.mktemp("tok")
    save_checkpoint(run / CHECKPOINT_NAME, model, None, 0, cfg)
    return run


class CountingBackend(LLMBackend):
    """Counts the queries that reach the real backend; can fail after a number of calls (a kill)."""

    def __init__(self, inner: LLMBackend, fail_after: int | None = None):
        super().__init__()
        self.inner, self.fail_after, self.queries = inner, fail_after, 0
        self.kind, self.model = inner.kind, inner.model
        self.supports_loglikelihood = inner.supports_loglikelihood

    def describe(self):
        return self.inner.describe()

    def _tick(self, n: int) -> None:
        if self.fail_after is not None and self.queries >= self.fail_after:
            raise KeyboardInterrupt("killed half-way")
        self.queries += n

    def generate(self, prompts, params=None, choices=None):
        self._tick(len(prompts))
        return self.inner.generate(prompts, params or fewshot.GenerationParams(), choices)

    def score_shared_prefix(self, prefix, queries, continuations):
        self._tick(len(queries))
        return self.inner.score_shared_prefix(prefix, queries, continuations)


def test_episodes_are_disjoint_balanced_and_seeded():
    labels = [i % 5 for i in range(60)]
    keys = [f"img{i}" for i in range(60)]
    episodes = sample_episodes(labels, keys, ways=3, shots=2, count=10, seed=1)
    assert episodes == sample_episodes(labels, keys, ways=3, shots=2, count=10, seed=1)
    assert episodes != sample_episodes(labels, keys, ways=3, shots=2, count=10, seed=2)
    for e in episodes:
        assert len(set(e.classes)) == 3 and len(e.support) == 6 and len(e.queries) == 3
        support_keys = {k for k, _ in e.support}
        assert not support_keys & {k for k, _ in e.queries}
        for key, pos in e.support + e.queries:
            assert labels[keys.index(key)] == e.classes[pos]
        assert sorted(p for _, p in e.queries) == [0, 1, 2]


def test_too_few_images_is_a_clear_error():
    with pytest.raises(FewShotError, match="5 classes"):
        sample_episodes([0, 0, 1, 1], ["a", "b", "c", "d"], ways=5, shots=1, count=1, seed=0)


@pytest.mark.parametrize("prompt_format", ["spae", "v2l"])
def test_prompt_formats(prompt_format):
    support = [("red ball", "dax"), ("blue sky", "blicket")]
    prefix, queries = build_prompt(support, ["green leaf"], ["dax", "blicket"],
                                   Setting(True, 1, 2), prompt_format)
    assert prefix.count("red ball") == 3  # repeats = 2 extra copies of the support set
    assert "dax" in prefix.splitlines()[0] and "blicket" in prefix.splitlines()[0]  # induction
    no_induction, _ = build_prompt(support, ["green leaf"], ["dax", "blicket"],
                                   Setting(False, 1, 0), prompt_format)
    assert "red ball" in no_induction.splitlines()[0] or no_induction.startswith("###")
    assert "green leaf" in queries[0] and "green leaf" not in prefix
    if prompt_format == "spae":
        assert prefix.endswith("Image: blue sky. This is a blicket.\n")
        assert queries == ["Image: green leaf. This is a"]
    else:
        assert prefix.startswith("For each of the following input output pairs, output is one "
                                 "of ['dax' or 'blicket']\n###\nInput: < red ball >\nOutput: dax\n")
        assert queries == ["Input: < green leaf >\nOutput:"]


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.404, abs=1e-3) and high == pytest.approx(0.596, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and 0 < wilson_interval(0, 10)[1] < 0.35
    assert wilson_interval(10, 10)[1] == 1.0


def test_the_three_decodings_end_to_end_and_resume(tiny_llm, digits, tmp_path, tokenizer_run):
    from spae_lab.checkpoint import load_tokenizer
    from spae_lab.reading.fewshot import TokenizerTexts, pixel_features

    model = load_tokenizer(tokenizer_run)
    cfg = FewShotConfig(ways=(2,), settings=FROZEN_SETTINGS[:2], names=("real", "nonsense"),
                        decodings=DECODINGS, episodes=2)
    inner = HFBackend(str(tiny_llm))
    readers = {"SPAE": TokenizerTexts(model, 2)}

    def run(backend):
        cached = CachedBackend(backend, tmp_path / "cache.sqlite")
        try:
            return run_fewshot(digits, readers, cached, cfg, episodes_path=tmp_path / "episodes.json",
                               references={"pixels": pixel_features}, progress=False)
        finally:
            cached.cache.close()

    # killed half-way: some answers are cached, then the run dies
    killed = CountingBackend(inner, fail_after=10)
    with pytest.raises(KeyboardInterrupt):
        run(killed)
    # restarted: only the missing queries reach the LLM
    resumed = CountingBackend(inner)
    first = run(resumed)
    records, summary = first.records, first.summary
    total_queries = 2 * 2 * 3 * 2 * 2  # settings x names x decodings x episodes x queries
    calibration = 2 * 2 * 2  # one content-free query per likelihood episode
    assert resumed.queries == total_queries + calibration - killed.queries
    # finished: re-rendering asks nothing and gives the same table
    again = CountingBackend(inner)
    second = run(again)
    summary2 = second.summary
    assert again.queries == 0
    assert summary.equals(summary2)

    llm_rows = records[records.method == "SPAE"]
    assert len(llm_rows) == total_queries
    assert set(llm_rows.decoding) == set(DECODINGS)
    # constrained and likelihood decoding always name one of the classes; open may not
    assert llm_rows[llm_rows.decoding != "open"].prediction.notna().all()
    assert {"1-NN pixels (no LLM)", "word overlap SPAE (no LLM)"} <= set(records.method)
    table = fewshot.paper_table(summary)
    assert {"T-1s-0r", "noT-1s-0r", "average"} <= set(table.columns)
    episodes = json.loads((tmp_path / "episodes.json").read_text())
    assert set(episodes["episodes"]) == {"2way-1shot"}


def test_stale_episode_file_is_refused(digits, tmp_path):
    path = tmp_path / "episodes.json"
    prepare_episodes(digits, FewShotConfig(ways=(2,), episodes=2), path)
    with pytest.raises(FewShotError, match="another dataset or config"):
        prepare_episodes(digits, FewShotConfig(ways=(2,), episodes=3), path)


def test_cli_fewshot(tiny_llm, tokenizer_run, tmp_path, capsys):
    out = tmp_path / "fs"
    code = main(["fewshot", str(tokenizer_run), "--baseline", str(tokenizer_run),
                 "--baseline-max-tokens", "8", "--backend", f"hf:{tiny_llm}", "--ways", "2",
                 "--episodes", "2", "--settings", "quick", "--names", "real",
                 "--decoding", "likelihood", "constrained", "--references", "pixels",
                 "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ways | names | decoding | method |" in printed
    for name in ("table.md", "table.csv", "summary.csv", "records.csv", "episodes.json",
                 "config.json", "llm_cache.sqlite"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["readers"] == {"SPAE": "1 layer(s), 1 words", "LQAE-style": "1 layer(s), 1 words"}
    # the same folder with other episodes: one readable line, exit code 2
    code = main(["fewshot", str(tokenizer_run), "--backend", f"hf:{tiny_llm}", "--ways", "2",
                 "--episodes", "3", "--out", str(out), "--quiet", "--references"])
    assert code == 2
    assert "another dataset or config" in capsys.readouterr().err


def test_smollm2_reads_class_words(digits):
    """With image text that names the class, the real frozen LLM classifies (nearly) perfectly:
    the harness's plumbing carries the signal end to end."""
    names = digits.classes
    reader = {"oracle": lambda images: ["unused"] * len(images)}
    # an oracle reader: the text of each image is its class name, twice
    index_label = {str(i): int(digits.labels[i]) for i in range(len(digits))}

    def oracle_texts(keys, dataset, fn):
        return {k: f"{names[index_label[k]]} {names[index_label[k]]}" for k in keys}

    cfg = FewShotConfig(ways=(5,), settings=(Setting(True, 1, 0),), names=("real",),
                        decodings=("likelihood",), episodes=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fewshot, "texts_for", oracle_texts)
        summary = run_fewshot(digits, reader, HFBackend("smollm2"), cfg, progress=False).summary
    assert summary.loc[summary.method == "oracle", "accuracy"].item() >= 0.8


@pytest.mark.slow  # a real server process answering hundreds of queries, faults injected
def test_fewshot_through_a_faulty_openai_server_loses_nothing_and_leaks_no_key(
        tokenizer_run, tmp_path, monkeypatch):
    """100 LLM queries of a real experiment (CLI subprocess) against a loopback server injecting
    429s, 500s, timeouts, dropped connections and bad JSON: every query answered once, retries
    reported, and the API key in none of the outputs."""
    import sqlite3
    import subprocess
    import sys
    import uuid

    from test_llm_openai import FakeServer

    key = f"sk-fewshot-{uuid.uuid4().hex}"
    server = FakeServer(tmp_path / "requests.jsonl", "--p-429", "0.1", "--p-500", "0.1",
                        "--p-timeout", "0.03", "--p-drop", "0.05", "--p-bad-json", "0.05",
                        "--max-faults-per-prompt", "2", "--sleep", "1")
    out = tmp_path / "fs"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "spae_lab.cli", "fewshot", str(tokenizer_run), "--backend",
             f"openai:fake@{server.url}", "--ways", "2", "--episodes", "25", "--settings",
             "quick", "--names", "real", "--decoding", "likelihood", "constrained",
             "--references", "--llm-timeout", "0.5", "--out", str(out),
             "--layers", "2"],  # 5 words: distinct prompts (one word of a random tokenizer repeats)
            capture_output=True, text=True, timeout=600,
            env={**__import__("os").environ, "OPENAI_API_KEY": key, "OMP_NUM_THREADS": "1"})
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = __import__("pandas").read_csv(out / "records.csv")
    llm = records[records.method == "SPAE"]
    assert len(llm) == 100 and not llm.duplicated(["decoding", "episode", "image"]).any()
    with sqlite3.connect(out / "llm_cache.sqlite") as db:
        # one answer per query: a likelihood answer is the calibrated rank, its content-free query
        # part of the same request
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 100
    calls = json.loads((out / "config.json").read_text())["llm_calls"]
    assert calls["retries"] > 0 and calls["retry_reasons"]
    sent = {r.get("auth_sha256") for r in server.requests()}
    assert __import__("hashlib").sha256(f"Bearer {key}".encode()).hexdigest() in sent
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert key.encode() not in path.read_bytes(), path
    assert key not in proc.stdout + proc.stderr


class _PriorBackend(LLMBackend):
    """Scores that favour the first name by a constant, whatever the image: what a prompt's
    recency or a short name does to summed log-probabilities (ranked by LLMBackend's default)."""

    def score_shared_prefix(self, prefix, queries, continuations):
        rows = []
        for query in queries:
            rows.append([5.0 if i == 0 else 0.0 for i in range(len(continuations))])
            if "N/A" not in query:  # the image's own evidence: a small lift for its class
                rows[-1][int(query.split()[1].rstrip("."))] += 1.0
        return rows


def test_content_free_calibration_removes_a_name_prior():
    names = ["dax", "blicket"]
    queries = ["Image: 0 . This is a", "Image: 1 . This is a"]
    raw = fewshot.predict(_PriorBackend(), "", queries, names, "likelihood")
    assert raw == [0, 0]  # the prior wins every query
    calibrated = fewshot.predict(_PriorBackend(), "", queries, names, "likelihood",
                                 content_free="Image: N/A. This is a")
    assert calibrated == [0, 1]


def test_summary_shows_the_answer_distribution():
    records = [{"method": "m", "ways": 2, "names": "nonsense", "decoding": "likelihood",
                "setting": "T-1s-0r", "truth": t, "prediction": 0, "correct": t == 0}
               for t in (0, 1, 0, 1)]
    row = fewshot.summarize(records).iloc[0]
    assert row["accuracy"] == 0.5 and row["top_answer_share"] == 1.0
