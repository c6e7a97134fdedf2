"""The workbench apps (spae_lab.widgets) driven as a user would, without a browser: set a control's
value or click its button (ipywidgets runs the same callbacks a frontend triggers), and check what
the app shows changed as it should. Outside a kernel every app is static (its figures).
(tests/test_jupyterlab.py drives them in JupyterLab and Chromium.)

Modules: spae_lab.widgets (every app), spae_lab.widgets.live.
"""

from __future__ import annotations

import datetime
import io

import matplotlib
import pytest
import torch

from spae_lab.widgets import is_live
from spae_lab.widgets.pyramid_app import PyramidExplorer
from spae_lab.widgets.sources import ImageSourceError, read_image

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def digits_explorer():
    return PyramidExplorer("digits", num_images=8, image_index=3, depth=1)


def _png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_apps_are_static_outside_a_kernel_or_when_asked():
    assert not is_live(True)  # pytest is no kernel
    assert not is_live(False)


def test_replacing_the_top_word_changes_the_coarse_decode_most(digits_explorer):
    app = digits_explorer
    app.reset()
    assert not app.replace_word(1, 0, "xyzzy") and "not a word of this codebook" in app.message
    assert app.change_by_depth() == [0.0] * app.num_layers  # refused: nothing changed
    old = app.word_at(1, 0)
    assert app.replace_word(1, 0, "zero") and app.word_at(1, 0) == "zero"
    change = app.change_by_depth()
    assert change[0] > 0.02 and change[0] > 3 * change[-1]  # the top word steers the coarse decode
    assert app.edited_cells(1) == {0}
    assert app.undo() and app.word_at(1, 0) == old and app.change_by_depth() == [0.0] * app.num_layers
    assert not app.undo() and app.message == "nothing to undo"
    app.replace_word(2, 3, "the")
    app.replace_word(3, 0, "blue")
    app.reset()
    assert app.history == [] and torch.equal(app.decodes(), app.original_decodes())


def test_the_explorer_controls_redraw_what_they_change(digits_explorer):
    app = digits_explorer
    app.reset()
    widget = app.widget
    assert "spae-pyramid-explorer" in widget._dom_classes
    decode_before, map_before = app.o_decode.value, app.o_map.outputs
    app.c_depth.value = app.num_layers
    assert app.o_decode.value != decode_before
    app.c_layer.value = 4
    assert len(app.c_cell.options) == 64 and app.o_map.outputs != map_before
    app.c_cell.value = 9
    app.c_word.value = "nonsenseword"
    app.c_replace.click()
    assert "not a word" in app.o_message.value and app.history == []
    table_before = app.o_table.value
    app.c_word.value = "people"  # a codebook word picked from the list replaces at once
    assert app.history and app.word_at(4, 9) == "people" and app.o_table.value != table_before
    app.c_undo.click()
    assert app.history == []
    app.c_image.value = 5
    assert app.note == app.captions[5]
    app.c_path.value = "/no/such/file.png"
    app.c_load.click()
    assert "no image file" in app.o_message.value
    app.c_upload.value = ({"name": "wide.png", "content": memoryview(_png(90, 30)), "type": "image/png",
                           "size": 10, "last_modified": datetime.datetime(2026, 1, 1)},)
    assert app.note.startswith("wide.png: 90x30 px, centre-cropped to 30x30") and "enlarged to 32x32" in app.note
    assert set(app.timings) >= {"depth", "layer", "cell", "replace", "undo", "image", "load", "upload"}


def test_the_static_explorer_draws_the_words_and_the_edits(digits_explorer):
    digits_explorer.replace_word(1, 0, "eight")
    words, edits = digits_explorer.static_figures()
    assert len(words.axes) >= 6 and len(edits.axes) == 3 * digits_explorer.num_layers
    assert "eight" in edits._suptitle.get_text()


def test_images_from_files_are_fitted_and_bad_files_refused(tmp_path):
    image, note = read_image(_png(64, 64), 32, "square.png")
    assert image.shape == (3, 32, 32) and note == "square.png: 64x64 px, shrunk to 32x32 px (the tokenizer's size)"
    with pytest.raises(ImageSourceError, match="not an image"):
        read_image(b"not a picture", 32, "junk.png")
    with pytest.raises(ImageSourceError, match="up to 10000 px"):
        read_image(_png(10_001, 1), 32, "line.png")
    with pytest.raises(ImageSourceError, match="no image file"):
        read_image(tmp_path / "missing.png", 32)


@pytest.fixture(scope="module")
def fewshot(tiny_llama, tmp_path_factory):
    """The explorer on the shipped tokenizers and sample, read by a tiny random Llama (the real
    Hugging Face code, fast): what is tested is the app, not the LLM's skill."""
    from spae_lab.widgets.fewshot_app import FewShotExplorer

    cache = tmp_path_factory.mktemp("fewshot") / "llm_cache.sqlite"
    return FewShotExplorer("cifar10", "cifar10-lqae", "cifar10-sample", backend=f"hf:{tiny_llama}",
                           episodes=4, cache_path=cache, max_per_class=6)


def test_the_fewshot_explorer_shows_prompt_scores_and_references(fewshot):
    prefix, queries, shown = fewshot.prompt()
    assert prefix.startswith(f"Answer with {shown[0]} or {shown[1]}.") and queries[-1].endswith("N/A. This is a")
    scores = fewshot.scores()
    assert len(scores) == 2 and all(len(row) == 2 for row in scores)
    assert fewshot.scores() is scores  # kept per episode: asked once
    references = fewshot.references()
    assert {"1-NN pixels (no LLM)", "1-NN teacher (no LLM)", "word overlap, SPAE words (no LLM)"} <= set(references)
    right, asked = fewshot.tally("SPAE")
    assert asked == 2 and 0 <= right <= 2
    assert "not scored yet" not in fewshot.table_html().split("LQAE-style words")[0]


def test_the_fewshot_controls_change_the_episode(fewshot):
    widget = fewshot.widget
    assert "spae-fewshot-explorer" in widget._dom_classes
    prompt = fewshot.o_prompt.value
    fewshot.c_ways.value = 3
    assert fewshot.o_prompt.value != prompt and len(fewshot.c_query.options) == 3
    episode = fewshot.o_episode.value
    fewshot.c_next.click()
    assert fewshot.index == 1 and fewshot.o_episode.value != episode
    fewshot.c_reader.value = "LQAE-style"
    assert len(fewshot.prompt()[0].split("Image: ")[1].split(".")[0].split()) == 64  # 64 words a picture
    fewshot.c_classes.value = (0, 1)
    assert "at least 3 classes" in fewshot.o_status.value
    fewshot.scores(wait=True)  # the background scoring finishes; the bars are drawn
    fewshot._redraw_scores()
    assert fewshot.o_scores.value[:4] == b"\x89PNG"
    assert set(fewshot.timings) >= {"ways", "episode", "reader"}


def test_the_training_view_trains_stops_and_draws(tmp_path):
    from spae_lab.widgets.training_app import TrainingView

    view = TrainingView("tiny", {"train.num_threads": 1, "train.log_every": 1}, steps=4,
                        out_dir=tmp_path / "run", chunk_steps=2)
    view.run()
    logs = [r for r in view.history if "loss" in r]
    assert view.step == 4 and len(logs) == 4 and [s for s, _ in view.snapshots] == [2, 4]
    assert view.status.startswith("finished: step 4")
    widget = view.widget
    assert "spae-training-view" in widget._dom_classes and view.o_curves.value[:4] == b"\x89PNG"
    view.start(4)  # to step 8, in the background ...
    view.c_stop.click()  # ... stopped at once: it ends after the chunk it is in (if it began one)
    view.wait(120)
    assert view.step in (4, 6) and view.status.startswith(f"stopped at step {view.step}")
    curves, decodes = view.static_figures()
    assert len(curves.axes) == 2 and decodes is not None


@pytest.mark.slow
def test_the_generation_stepper_steps_through_every_call(tmp_path):
    """SmolLM2 writes two digits of one layer each (the words must be single tokens of the LLM,
    which a tiny random model's are not): slow for the default suite."""
    from spae_lab.widgets.generation_app import GenerationStepper

    app = GenerationStepper("class", "digits", out=tmp_path, layers=2, queries=2, examples_per_class=1)
    trace = app.trace(0)
    assert [c.layer for c in trace.calls] == [1, 2, 2] and trace.written[0][0] == trace.calls[0].rows[0]
    assert app.state_at(0) == [[None], [None] * 4]
    assert app.state_at(1)[0] == trace.written[0] and app.state_at(1)[1] == [None] * 4
    assert app.state_at(len(trace.calls)) == trace.written
    widget = app.widget
    assert "spae-generation-stepper" in widget._dom_classes
    app.c_step.value = 1
    call_1 = app.o_call.value
    app.c_next.click()
    assert app.step == 2 and app.o_call.value != call_1 and "writing layer 2" in app.o_call.value
    app.c_query.value = 1
    assert app.step == 0 and app.c_step.max == len(app.trace(1).calls)
    assert len(app.static_figures()[0].axes) == 2 * 3  # two digits: after layer 1, 2 and the copied example
