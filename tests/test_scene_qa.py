"""Captioning and VQA on synthetic scenes: exact scoring, every decoding, the no-LLM references."""

from __future__ import annotations

import pytest

from spae_lab.data import SyntheticScenes
from spae_lab.llm.hf import HFBackend
from spae_lab.reading.scene_qa import QUESTIONS, caption_scores, run_captioning, run_vqa, words_reference


@pytest.fixture(scope="module")
def backend(tiny_llama):
    return HFBackend(str(tiny_llama))


def oracle_text(scenes_images):
    """Stands in for a tokenizer: no image words at all (the LLM must guess)."""
    return ["word"] * len(scenes_images)


def test_caption_scores_are_exact():
    scene = SyntheticScenes(4, seed=0).scene(0)
    colour, shape = scene.colors[0], scene.shapes[0]
    assert caption_scores(scene.caption, scene) == {
        "colour": True, "shape": True, "colour and shape": True, "exact caption": True}
    assert caption_scores(f"a {colour} thing", scene)["colour and shape"] is False
    assert caption_scores(f"A {shape.upper()}.", scene)["shape"] is True


def test_words_reference_reads_answers_off_the_words():
    assert words_reference("the Red circle", QUESTIONS["colour"][2]) == "red"
    assert words_reference("many stars here", QUESTIONS["shape"][2]) == "star"
    assert words_reference("nothing useful", QUESTIONS["count"][2]) is None


def test_vqa_and_captioning_run_and_score(backend):
    records, summary = run_vqa(oracle_text, backend, num_examples=3, num_queries=6,
                               image_size=16, progress=False)
    llm = records[records.method == "LLM"]
    assert len(llm) == 3 * 3 * 6  # questions x decodings x scenes
    assert llm[llm.decoding != "open"].prediction.notna().all()
    for name, (_, _, answers) in QUESTIONS.items():
        constrained = llm[(llm.question == name) & (llm.decoding == "constrained")]
        assert set(constrained.prediction) <= set(answers)
    assert set(summary.method) == {"LLM", "image words (no LLM)", "majority answer (no LLM)"}
    assert summary.accuracy.between(0, 1).all() and (summary.ci_low <= summary.ci_high).all()

    captions, scores = run_captioning(oracle_text, backend, num_examples=3, num_queries=4,
                                      image_size=16)
    assert len(captions) == 4 and set(scores.criterion) == {
        "colour", "shape", "colour and shape", "exact caption"}


def test_cli_scene_qa(tmp_path, capsys, tiny_llama):
    from spae_lab.checkpoint import CHECKPOINT_NAME, save_checkpoint
    from spae_lab.cli.main import main
    from spae_lab.codebook import load_codebook
    from spae_lab.config import create_config
    from spae_lab.model import SPAE

    cfg = create_config("tiny", {"semantic.enabled": False})
    save_checkpoint(tmp_path / "run" / CHECKPOINT_NAME, SPAE(cfg.model, load_codebook(cfg.codebook)),
                    None, 0, cfg)
    llm = tiny_llama
    code = main(["scene-qa", str(tmp_path / "run"), "--backend", f"hf:{llm}", "--examples", "2",
                 "--queries", "3", "--decoding", "constrained", "--out", str(tmp_path / "qa"),
                 "--quiet"])
    assert code == 0
    assert "| question | method | decoding |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "qa").iterdir()} >= {"vqa.csv", "captioning.csv",
                                                             "captions.csv", "llm_cache.sqlite"}
