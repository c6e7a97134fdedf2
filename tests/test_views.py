"""Views that notebooks and apps draw from (spae_lab.views.readable, spae_lab.views.pyramid_figures,
spae_lab.views.figures): numbers as people read them, each word placed over the region it stands
for, and figures with one panel per depth. On the tiny untrained tokenizer of conftest.py."""

import pytest
import torch

from spae_lab.tables import wilson_interval
from spae_lab.views.readable import decibels, percent, text_table, word_grids_html


def test_percent_gives_the_share_and_its_wilson_interval():
    low, high = wilson_interval(7, 20)
    assert percent(7, 20) == f"35% (95% interval {100 * low:.0f}-{100 * high:.0f}%)"
    assert percent(7, 20, interval=False) == "35%"
    assert percent(0, 0) == "n/a (no queries)"
    assert decibels(23.456) == "23.5 dB"


def test_text_table_keeps_formatted_text_and_its_index():
    table = text_table([{"method": "SPAE", "accuracy": "79%"}, {"method": "LQAE", "accuracy": "51%"}],
                       index="method")
    assert table.loc["LQAE", "accuracy"] == "51%"


@pytest.fixture(scope="module")
def tiny_pyramid(tiny_tokenizer_run):
    from spae_lab import load_tokenizer

    model = load_tokenizer(tiny_tokenizer_run)
    size = model.config.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, images, model.encode(images)


def test_word_grids_show_each_small_layer_in_place(tiny_pyramid):
    _, _, pyramid = tiny_pyramid
    page = word_grids_html(pyramid, image=1, max_side=8)
    sizes = [n for n in pyramid.layout.layer_sizes if n <= 8]
    assert page.count("<table") == len(sizes)
    for layer, n in enumerate(pyramid.layout.layer_sizes):
        if n <= 8:  # every word of the layer is in its grid, row by row
            assert page.count("<td") >= n * n
            assert all(w.replace("&", "&amp;").replace("<", "&lt;") in page for w in pyramid.words(layer, 1))


def test_token_table_places_each_word_at_the_centre_of_its_region(tiny_pyramid):
    from spae_lab.views.pyramid_figures import token_table

    model, _, pyramid = tiny_pyramid
    size = model.config.image_size
    rows = token_table(pyramid, image=0, image_size=size)
    assert len(rows) == sum(pyramid.layout.tokens_per_layer())
    top = [r for r in rows if r["layer"] == 1]
    assert len(top) == 1 and top[0]["x"] == pytest.approx(size / 2) and top[0]["y"] == pytest.approx(size / 2)
    for r in rows:  # inside the image, and a layer's regions tile it
        assert 0 < r["x"] < size and 0 < r["y"] < size
        assert r["span"] * pyramid.layout.layer_sizes[r["layer"] - 1] == pytest.approx(size)


def test_pyramid_and_reconstruction_figures_have_a_panel_per_layer(tiny_pyramid):
    import matplotlib.pyplot as plt

    from spae_lab.views.figures import reconstruction_grid
    from spae_lab.views.pyramid_figures import token_pyramid_figure

    model, images, pyramid = tiny_pyramid
    figure = token_pyramid_figure(images[0], pyramid, image_index=0)
    texts = {t.get_text() for ax in figure.axes for t in ax.texts}
    assert set(pyramid.words(0, 0)) <= texts  # layer 1's word is drawn
    assert len([ax for ax in figure.axes if ax.images]) == 1 + pyramid.num_layers  # the image, then each layer
    plt.close(figure)
    by_depth = torch.stack([model.decode(pyramid, depth) for depth in range(1, pyramid.num_layers + 1)])
    cumulative = torch.tensor(pyramid.layout.tokens_per_layer()).cumsum(0).tolist()
    grid = reconstruction_grid(images, by_depth, cumulative)
    labels = [t.get_text() for t in grid.axes[0].get_yticklabels()]
    assert labels[0] == "original" and len(labels) == 1 + pyramid.num_layers
    assert all(f"{tokens} tok" in label and label.endswith(" dB")
               for tokens, label in zip(cumulative, labels[1:], strict=True))
    plt.close(grid)
