"""Reading and writing clips with an LLM: the text of a clip, the frame-by-frame baseline, VQA and
few-shot on clips, in-context continuation (a tiny random Llama: the real loading and scoring code)."""

import pytest
import torch

from spae_lab.checkpoint import create_tokenizer
from spae_lab.config import create_config
from spae_lab.generate.decode import DecodeConfig
from spae_lab.llm.hf import HFBackend
from spae_lab.pyramid import PyramidLayout
from spae_lab.reading.episodes import FewShotConfig, select_settings
from spae_lab.video.config import create_clip_config
from spae_lab.video.data import MovingScenes
from spae_lab.video.reading import ClipTexts, FrameByFrameTexts, frame_word_counts, run_clip_fewshot, run_clip_vqa
from spae_lab.video.writing import ContinuationConfig, freeze_after, last_slot_fill, later_mask, run_continuation


@pytest.fixture(scope="module")
def llm_words(tiny_llama):
    return {"codebook.source": str(tiny_llama), "codebook.max_size": None, "codebook.word_list": None}


@pytest.fixture(scope="module")
def clip_model(llm_words):
    torch.manual_seed(0)
    return create_tokenizer(create_clip_config("video-tiny", {"semantic.enabled": False, **llm_words})).eval()


@pytest.fixture(scope="module")
def backend(tiny_llama):
    return HFBackend(str(tiny_llama))


def _clips(n, split="heldout"):
    data = MovingScenes(n, split, 0, 16, 4)
    return data, torch.stack([data[i]["video"] for i in range(n)])


def test_frame_word_counts_spread_the_words_over_the_clip():
    assert frame_word_counts(2, 8) == [1, 0, 0, 0, 0, 0, 0, 1]
    assert frame_word_counts(10, 8) == [2, 1, 1, 1, 1, 1, 1, 2]
    assert frame_word_counts(1, 8) == [1, 0, 0, 0, 0, 0, 0, 0]
    assert sum(frame_word_counts(37, 8)) == 37


def test_clip_texts_and_frame_by_frame_texts_give_the_same_count(clip_model, llm_words):
    _, clips = _clips(3)
    texts = ClipTexts(clip_model, 2)(clips)
    assert len(texts) == 3 and all(len(t.split()) == 2 for t in texts)
    image_model = create_tokenizer(create_config("tiny", {"semantic.enabled": False, "model.image_size": 32,
                                                          **llm_words})).eval()
    frames = FrameByFrameTexts(image_model, 2)(clips)  # 16 px frames resized to the image model's 32 px
    assert all(len(t.split()) == 2 for t in frames)
    first_frame = image_model.encode(torch.nn.functional.interpolate(
        clips[:, :, 0], size=(32, 32), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    assert [t.split()[0] for t in frames] == [first_frame.to_text(1, image=i) for i in range(3)]


class TruthReader:
    """Reads a clip as its true direction and colour words: an oracle to test the scoring with."""

    def __init__(self, data, clips):
        self.texts = {clips[i].sum().item(): f"{data.scene(i).colors[0]} {data.scene(i).direction}"
                      for i in range(len(data))}

    def __call__(self, clips):
        return [self.texts[c.sum().item()] for c in clips]


def test_vqa_scores_exactly_against_the_truth(backend):
    train, train_clips = _clips(6, "train")
    heldout, held_clips = _clips(5)
    oracle = TruthReader(train, train_clips)
    oracle.texts.update(TruthReader(heldout, held_clips).texts)
    records, table = run_clip_vqa({"oracle": oracle}, backend, train, heldout, num_examples=3,
                                  questions=("direction", "colour"))
    alone = table[table["method"] == "oracle: words alone (no LLM)"].set_index("question")
    assert alone.loc["direction", "accuracy"] == 1.0 and alone.loc["colour", "accuracy"] == 1.0
    llm = table[(table["method"] == "oracle") & (table["decoding"] == "constrained")]
    assert len(llm) == 2 and set(table["chance"]) == {0.25, 0.1}
    assert set(records["prediction"].dropna()) <= {"left", "right", "up", "down", *__import__("spae_lab").data.COLORS}


def test_fewshot_on_clips_runs_the_image_protocol(clip_model, backend, tmp_path):
    data, _ = _clips(24)
    config = FewShotConfig(ways=(2,), settings=select_settings("T-1s-0r"), names=("real",), episodes=2)
    result = run_clip_fewshot(data, {"clips": ClipTexts(clip_model, 2)}, backend, config, tmp_path)
    assert (tmp_path / "episodes.json").exists()
    assert set(result.summary["method"]) == {"clips", "word overlap clips (no LLM)"}
    assert len(result.records[result.records["method"] == "clips"]) == 4  # 2 episodes x 2 queries
    assert all(len(t.split()) == 2 for t in result.texts["clips"].values())


def test_continuation_masks_and_fills():
    layout = PyramidLayout(4, (1, 2, 4), frames=4, time_sizes=(1, 2, 4))
    mask = later_mask(layout, 2)  # latent frames 0-1 known
    assert mask[0] == [True] and mask[1] == [False] * 4 + [True] * 4
    assert mask[2] == [False] * 32 + [True] * 32
    pyramid = [[7], list(range(8)), list(range(64))]
    filled = last_slot_fill(pyramid, mask, layout)
    assert filled[0] == [7] and filled[1] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert filled[2][32:48] == list(range(16, 32)) and filled[2][48:] == list(range(16, 32))
    clips = torch.rand(2, 3, 8, 4, 4)
    frozen = freeze_after(clips, 3)
    assert torch.equal(frozen[:, :, :3], clips[:, :, :3]) and torch.equal(frozen[:, :, 7], clips[:, :, 2])


def test_continuation_writes_only_the_later_tokens(clip_model, backend, tmp_path):
    train, heldout = MovingScenes(8, "train", 0, 16, 4), MovingScenes(2, "heldout", 0, 16, 4)
    config = ContinuationConfig(known_frames=2, examples=2, clips=2, layers=3,
                                decode=DecodeConfig(vocabulary="codebook"))
    result = run_continuation(clip_model, train, heldout, backend, tmp_path, config, progress=False)
    summary = result.summary
    assert summary["every_word_in_codebook"] and summary["calls_computed"] > 0
    assert {"psnr_later: LLM", "psnr_later: no-LLM fill", "psnr_later: copy the last frame (pixels)"} <= set(summary)
    mask = later_mask(clip_model.layout, 1)
    frozen = clip_model.encode(freeze_after(torch.stack([heldout[i]["video"] for i in range(2)]), 2))
    for k, written in enumerate(result.written):
        for layer, (rows, layer_mask) in enumerate(zip(written, mask, strict=False)):
            given = frozen.ids[layer][k].tolist()
            assert all(r == g for r, g, m in zip(rows, given, layer_mask, strict=True) if not m)
    again = run_continuation(clip_model, train, heldout, backend, tmp_path, config, progress=False)
    assert again.summary["calls_computed"] == 0 and again.written == result.written  # the cache
