"""In-context generation: corruption schedule, regions and no-LLM fills, codebook-only words on a
tiny random Llama, resume from the cache with the same images, the text writer's snapping, and
the `generate` command writing its files.

Modules: spae_lab.generate (tasks, decode, queries, run), spae_lab.generate.tasks,
spae_lab.cli.generate.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from spae_lab.cli.main import build_parser
from spae_lab.generate import (
    V2L_SCHEDULE,
    CorruptionSchedule,
    DecodeConfig,
    run_generation,
)
from spae_lab.generate import tasks as T
from spae_lab.generate.decode import HFWordWriter, TextWordWriter, make_writer, progressive_decode
from spae_lab.llm.base import LLMBackend
from spae_lab.llm.cache import CachedBackend
from spae_lab.llm.hf import HFBackend
from spae_lab.pyramid import PyramidLayout

LAYOUT = PyramidLayout(8, (1, 2, 4, 8, 8))


@pytest.fixture(scope="module")
def tiny_llm(tiny_llama):
    return tiny_llama  # the session's tiny Llama (conftest.py)


@pytest.fixture(scope="module")
def tokenizer_run(tiny_tokenizer_run):
    return tiny_tokenizer_run  # an untrained tiny SPAE on the tiny Llama's words (conftest.py)


@pytest.fixture(scope="module")
def model(tokenizer_run):
    from spae_lab import load_tokenizer

    return load_tokenizer(tokenizer_run)


@pytest.fixture()
def input_folder(tmp_path):
    """Four images of an odd size (outputs must come back at it)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for k in range(4):
        pixels = (torch.rand(20, 24, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"img{k}.png")
    return folder


# --- schedule, regions, fills (no LLM) -------------------------------------------------------------


def test_v2l_schedule_falls_from_half_to_0_23():
    ratios = V2L_SCHEDULE.ratios()
    assert len(ratios) == 10 and ratios[0] == 0.5 and ratios[-1] == 0.23
    assert all(a > b for a, b in zip(ratios, ratios[1:], strict=False))
    assert CorruptionSchedule(0.4, 0.1, 4).ratios() == [0.4, 0.3, 0.2, 0.1]


@pytest.mark.parametrize("ratio", [0.0, 0.23, 0.5, 1.0])
def test_random_replace_changes_at_most_the_ratio(ratio):
    g = torch.Generator().manual_seed(1)
    pyramid = [[0] * n for n in LAYOUT.tokens_per_layer()]  # row 0 everywhere
    noisy = T.random_replace(pyramid, ratio, 1000, g)
    changed = sum(r != 0 for layer in noisy for r in layer)
    assert [len(x) for x in noisy] == LAYOUT.tokens_per_layer()
    assert changed <= round(ratio * 149) and changed >= round(ratio * 149) * 0.9


def test_regions_of_inpaint_and_outpaint():
    inpaint = T.region_mask(LAYOUT, T.task_box("inpaint", 8))
    assert [sum(m) for m in inpaint] == [0, 0, 4, 16, 16]
    outpaint = T.region_mask(LAYOUT, T.task_box("outpaint", 8))
    assert [sum(m) for m in outpaint] == [0, 2, 8, 32, 32]
    assert outpaint[1] == [False, False, True, True]


def test_masked_corruption_paints_the_region_grey_and_takes_only_its_words():
    images = torch.rand(2, 3, 32, 32)
    holed = T.paint_region(images, T.task_box("inpaint", 8), 8)
    assert (holed[..., 8:24, 8:24] == 0.5).all()
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:24, 8:24] = False
    assert torch.equal(holed[..., outside], images[..., outside])
    mask = T.region_mask(LAYOUT, T.task_box("inpaint", 8))
    pyramid = [[1] * n for n in LAYOUT.tokens_per_layer()]
    other = [[2] * n for n in LAYOUT.tokens_per_layer()]
    merged = T.merge_masked(pyramid, other, mask)
    assert [row.count(2) for row in merged] == [sum(m) for m in mask] == [0, 0, 4, 16, 16]


def test_no_llm_fills():
    mask = T.region_mask(LAYOUT, T.task_box("outpaint", 8))
    pyramid = [list(range(n)) for n in LAYOUT.tokens_per_layer()]
    filled = T.nearest_known_fill(pyramid, mask, LAYOUT)
    assert filled[1] == [0, 1, 0, 1]  # bottom quadrants copy the ones above
    assert filled[3][63] == 31  # bottom-right cell copies the last known row's
    copies = [[[1, 2]], [[1, 3]], [[4, 3]]]
    assert T.majority_fill(copies) == [[1, 3]]


def test_token_transforms():
    pyramid = [list(range(n)) for n in LAYOUT.tokens_per_layer()]
    flipped = T.transform_tokens("flip", pyramid, LAYOUT)
    assert flipped[1] == [1, 0, 3, 2]
    assert T.transform_tokens("flip", flipped, LAYOUT) == pyramid
    shifted = T.transform_tokens("shift", pyramid, LAYOUT)
    assert shifted[1] == pyramid[1] and shifted[2][:4] == [3, 0, 1, 2]


# --- decoding on a tiny random Llama --------------------------------------------------------------


def _writer(model, tiny_llm, path, **decode):
    llm = CachedBackend(HFBackend(str(tiny_llm)), path)
    return make_writer(llm, model.codebook.words, DecodeConfig(**decode), "test")


@pytest.mark.parametrize("vocabulary", ["codebook", "known"])
def test_every_written_word_is_a_codebook_word_and_known_words_stay(model, tiny_llm, tmp_path,
                                                                    vocabulary):
    writer = _writer(model, tiny_llm, tmp_path / "c.sqlite", vocabulary=vocabulary)
    assert isinstance(writer, HFWordWriter) and writer.unwritable == 0
    V, sizes = len(model.codebook), model.layout.tokens_per_layer()
    g = torch.Generator().manual_seed(0)
    clean = [[int(torch.randint(V, (1,), generator=g)) for _ in range(n)] for n in sizes]
    mask = T.region_mask(model.layout, T.task_box("inpaint", model.layout.grid))
    bad = T.mask_words(clean, mask, V, g)
    known = [[None if m else r for r, m in zip(lr, lm, strict=True)]
             for lr, lm in zip(bad, mask, strict=True)]
    example = T.pair_example(bad, clean, model.codebook.words)
    query = T.pair_query(bad, model.codebook.words, known)
    class_query = T.class_query("7", sizes)
    out = progressive_decode(writer, [example], [query], sizes)[0]
    out_class = progressive_decode(writer, [T.class_example("3", clean)], [class_query], sizes)[0]
    for written in (out, out_class):
        assert [len(x) for x in written] == sizes
        assert all(0 <= r < V for layer in written for r in layer)
    assert all(r == k for lr, lk in zip(out, known, strict=True) for r, k in zip(lr, lk, strict=True)
               if k is not None)
    if vocabulary == "known":  # masked words are copies of the layer's given words
        for lr, lk in zip(out, known, strict=True):
            given = {k for k in lk if k is not None}
            assert not given or set(lr) <= given
    assert writer.llm.inner.stats.requests > 0
    writer.llm.close()


def test_sampling_is_seeded(model, tiny_llm, tmp_path):
    sizes = model.layout.tokens_per_layer()[:3]
    runs = []
    for k, seed in enumerate((0, 0, 1)):
        writer = _writer(model, tiny_llm, tmp_path / f"s{k}.sqlite", temperature=1.0, seed=seed)
        runs.append(progressive_decode(writer, [], [T.class_query("7", sizes)], sizes))
        writer.llm.close()
    assert runs[0] == runs[1] and runs[0] != runs[2]


class ScriptedBackend(LLMBackend):
    """A 'server' that answers with words outside the codebook."""

    kind, model = "scripted", "x"

    def generate(self, prompts, params=None, choices=None):
        return [" Zebra, quux" for _ in prompts]


def test_text_writer_maps_unknown_words_to_codebook_words(model, tmp_path):
    llm = CachedBackend(ScriptedBackend(), tmp_path / "t.sqlite")
    writer = make_writer(llm, model.codebook.words, DecodeConfig(), "test")
    assert isinstance(writer, TextWordWriter)
    sizes = model.layout.tokens_per_layer()[:3]
    out = progressive_decode(writer, [], [T.class_query("7", sizes)], sizes)[0]
    assert all(0 <= r < len(model.codebook) for layer in out for r in layer)
    assert writer.snapped > 0
    llm.close()


class _Killed(Exception):
    pass


class StubClassifier:
    def predict(self, images):
        return torch.zeros(len(images), dtype=torch.long)

    def accuracy(self, images, labels):
        return float((labels == 0).float().mean())


@pytest.mark.parametrize("task", ["inpaint", "class"])
def test_resume_after_a_kill_gives_the_same_images(model, tiny_llm, tmp_path, monkeypatch, task):
    from spae_lab.data import make_dataset

    data = make_dataset("digits", model.config.image_size, split="heldout")
    subset = torch.utils.data.Subset(data, range(12))
    subset.labels = data.labels[:12]
    kwargs = dict(input=subset if task == "inpaint" else data, backend=HFBackend(str(tiny_llm)),
                  images=3, examples=2, episodes=1, examples_per_class=1, layers=4,
                  progress=False, classifier=StubClassifier())
    whole = run_generation(task, model, out=tmp_path / "whole", **kwargs)

    compute = HFWordWriter.compute
    calls = {"n": 0}

    def dying(self, *args):
        calls["n"] += 1
        if calls["n"] > 7:
            raise _Killed
        return compute(self, *args)

    monkeypatch.setattr(HFWordWriter, "compute", dying)
    with pytest.raises(_Killed):
        run_generation(task, model, out=tmp_path / "resumed", **kwargs)
    monkeypatch.setattr(HFWordWriter, "compute", compute)
    resumed = run_generation(task, model, out=tmp_path / "resumed", **kwargs)
    assert resumed.written == whole.written
    assert torch.equal(resumed.decoded["generated"], whole.decoded["generated"])
    assert resumed.config["calls_computed"] < whole.config["calls_computed"]
    assert resumed.summary["every_word_in_codebook"]
    again = run_generation(task, model, out=tmp_path / "resumed", **kwargs)
    assert again.config["calls_computed"] == 0 and again.written == whole.written


def test_cli_writes_images_at_input_size_csv_prompts_and_cache(tokenizer_run, tiny_llm,
                                                              input_folder, tmp_path, capsys):
    parser = build_parser()
    out = tmp_path / "out"
    args = parser.parse_args(["generate", "inpaint", "--tokenizer", str(tokenizer_run),
                              "--input", str(input_folder), "--out", str(out),
                              "--backend", f"hf:{tiny_llm}", "--examples", "2", "--layers", "3",
                              "--quiet"])
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["every_word_in_codebook"]
    for name in ("results.csv", "prompts.jsonl", "prefixes.jsonl", "prompt_example.txt",
                 "llm_cache.sqlite", "config.json"):
        assert (out / name).exists(), name
    pngs = sorted(p.name for p in (out / "images").iterdir())
    assert len(pngs) == 4 and all(p.endswith(("_corrupted.png", "_generated.png")) for p in pngs)
    for p in (out / "images").iterdir():
        assert Image.open(p).size == (24, 20)
    calls = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    prefixes = {json.loads(line)["prefix_id"] for line in (out / "prefixes.jsonl").read_text().splitlines()}
    assert calls and all(c["prefix_id"] in prefixes for c in calls)
    assert "images, results.csv" in capsys.readouterr().out


def test_repeated_ngrams_are_banned_within_the_layer():
    from spae_lab.generate.decode import _repeated_ngram_tokens

    assert _repeated_ngram_tokens([1, 2, 1], 2) == {2}
    assert _repeated_ngram_tokens([1, 2, 3], 2) == set()
    assert _repeated_ngram_tokens([5, 6], 1) == {5, 6}
    assert _repeated_ngram_tokens([1, 2, 1], 0) == set()


@pytest.mark.parametrize("vocabulary", ["context", "position"])
def test_copy_vocabularies_write_only_the_examples_words(model, tiny_llm, tmp_path, vocabulary):
    writer = _writer(model, tiny_llm, tmp_path / "v.sqlite", vocabulary=vocabulary,
                     no_repeat_ngram=2)
    sizes = model.layout.tokens_per_layer()[:4]
    g = torch.Generator().manual_seed(3)
    V = len(model.codebook)
    targets = [[torch.randint(V, (n,), generator=g).tolist() for n in sizes] for _ in range(3)]
    examples = [T.class_example(str(k), t) for k, t in enumerate(targets)]
    out = progressive_decode(writer, examples, [T.class_query("1", sizes)], sizes)[0]
    for layer, rows in enumerate(out):
        for p, r in enumerate(rows):
            if vocabulary == "position":
                assert r in {t[layer][p] for t in targets}
            else:
                assert r in {w for t in targets for w in t[layer]}
    writer.llm.close()


@pytest.mark.parametrize("conditions", [["An image of 7:", "An image of 1:"], "images"])
def test_generation_grid_draws_context_conditions_and_layers(conditions):
    import matplotlib

    matplotlib.use("Agg")
    from spae_lab.generate.figures import generation_grid

    images = torch.rand(2, 3, 8, 8)
    result = SimpleNamespace(by_layer=torch.rand(3, 2, 3, 8, 8), context=[("7", images[0])],
                             conditions=images if conditions == "images" else conditions,
                             targets=images if conditions == "images" else None)
    figure = generation_grid(result)
    assert len(figure.axes) == 3 * 5  # (1 context row + 2 queries) x (condition, 3 layers, target)


def test_edit_by_words_steers_the_coarse_decode_of_the_shipped_digits(tmp_path):
    """Swapping the top word for "seven" makes the 1-layer decode a seven for the digit classifier
    far more often than the unedited words or a random top word do (the judged images are the
    ones not read as a seven before); the files are written at the input's size."""
    from spae_lab.generate.edit import run_edit

    result = run_edit("digits", "seven", out=tmp_path / "edit", images=12)
    judged = result.summary["judged_as_word"]
    assert judged["original"][0] == 0.0  # only images not already read as a seven are edited
    assert judged["edited"][0] >= 0.75 > judged["random word"][0] + 0.25
    names = list(result.records["image"])
    assert len(names) == 12 and (tmp_path / "edit" / "images" / f"{names[0]}_edited.png").exists()
    assert set(result.records["new_word"]) == {"seven"}


def test_edit_refuses_a_word_outside_the_codebook_in_one_line(tmp_path, capsys):
    from spae_lab.cli.main import main

    assert main(["generate", "edit", "--tokenizer", "digits", "--word", "zzqq",
                 "--out", str(tmp_path / "e")]) == 2
    assert main(["generate", "edit", "--tokenizer", "digits", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "not a word of this tokenizer's codebook" in err and "needs --word" in err


@pytest.mark.parametrize("corruption", ["masked", "random"])
def test_inpaint_corruptions_change_only_the_centre_words(model, tiny_llm, tmp_path, corruption):
    from spae_lab.data import make_dataset
    from spae_lab.generate.run import GenerationError

    data = make_dataset("digits", model.config.image_size, split="heldout")
    subset = torch.utils.data.Subset(data, range(8))
    kwargs = dict(input=subset, backend=HFBackend(str(tiny_llm)), images=3, examples=2, layers=3,
                  progress=False)
    result = run_generation("inpaint", model, out=tmp_path / corruption, corruption=corruption, **kwargs)
    mask = T.region_mask(model.layout, T.task_box("inpaint", model.layout.grid))
    clean = T.pyramids_of(model.encode(torch.stack([subset[i]["image"] for i in range(3)])).ids)
    for bad, rows in zip(result.inputs, clean, strict=True):
        for b, r, m in zip(bad, rows, mask, strict=False):
            assert all(x == y for x, y, hidden in zip(b, r, m, strict=True) if not hidden)
    if corruption == "masked":  # the hole's words: those of the grey-painted image, the same for all
        holed = model.encode(T.paint_region(torch.stack([subset[i]["image"] for i in range(3)]),
                                            T.task_box("inpaint", model.layout.grid), model.layout.grid))
        expect = [T.merge_masked(r, h, mask)[:3] for r, h in zip(clean, T.pyramids_of(holed.ids), strict=True)]
        assert result.inputs == expect
    with pytest.raises(GenerationError, match="corruption"):
        run_generation("inpaint", model, out=tmp_path / "bad", corruption="blur", **kwargs)


@pytest.mark.parametrize("task", ["class", "arithmetic"])
def test_last_context_moves_the_examples_showing_the_asked_label_next_to_the_query(model, task):
    from spae_lab.data import make_dataset
    from spae_lab.generate.queries import build_digit_episodes
    from spae_lab.generate.run import GenerationConfig

    data = make_dataset("digits", model.config.image_size, split="heldout")
    cfg = GenerationConfig(task=task, episodes=1, examples_per_class=2, arithmetic_examples=40)
    episodes = build_digit_episodes(model, cfg, data)
    assert len(episodes) == 10  # one context per query
    assert len({n for e in episodes for n in e.names}) == 10  # every query its own output name
    for episode in episodes:
        asked = episode.queries[0].conditions[0]
        shown = [e.conditions[0] for e in episode.examples]
        mine = shown.count(asked)
        assert len(shown) == (20 if task == "class" else 40)
        # the examples showing the asked label (not merely its value: 2+6 is not 1+7) come last
        assert shown[len(shown) - mine:] == [asked] * mine and asked not in shown[:len(shown) - mine]


def test_digit_classifier_trains_inside_no_grad():
    """The generation tasks judge under torch.no_grad(); a first use with an empty cache trains
    the classifier there, which needs gradients all the same."""
    from spae_lab.generate.digit_classifier import ClassifierConfig, DigitCNN, train_digit_classifier

    config = ClassifierConfig(epochs=1, with_reconstructions=False)
    torch.manual_seed(config.seed)
    initial = DigitCNN().state_dict()  # the training run's initialisation (same seed)
    with torch.no_grad():
        trained = train_digit_classifier(config).net.state_dict()
    assert all(trained[k].shape == v.shape for k, v in initial.items())
    assert any(not torch.equal(trained[k], v) for k, v in initial.items() if v.is_floating_point())
