"""The pyramid explorer: an image's words at every layer, a live decode, word edits with undo.

    from spae_lab.widgets import explore_pyramid
    app = explore_pyramid("digits")                     # a shipped name or a run folder
    app.replace_word(layer=1, cell=0, word="three")     # what the Replace button does
    app                                                 # controls when live, figures otherwise

The image comes from the tokenizer's held-out data, an uploaded file or a path (centre-cropped and
resized to the tokenizer's size, with a note saying so). The words of the chosen layer are drawn
over the image (plotly: hover a word, zoom into small cells); a slider chooses the depth of the
live decode; a cell's word is replaced by a codebook word typed or picked in a Combobox (a word
the codebook does not hold is refused with a message), and the decode at every depth is shown
again beside the unedited one, with their difference at true scale (black: unchanged). Undo takes
back the last replacement, Reset all of them.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from spae_lab.widgets.live import App, control, img_tag, png_bytes
from spae_lab.widgets.sources import ImageSourceError, heldout_images, read_image

DISPLAY_PX = 160  # side of the live decode and of the original beside it


def _tokenizer(tokenizer):
    from spae_lab import load_tokenizer

    return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer


class PyramidExplorer(App):
    """State and controls of the explorer (see the module docstring). Methods change the state
    and redraw when live; `static_figures()` draws the current state."""

    css_class = "spae-pyramid-explorer"

    def __init__(self, tokenizer, images: torch.Tensor | None = None, captions: list[str] | None = None,
                 num_images: int = 12, image_index: int = 0, depth: int | None = None,
                 interactive: bool = True, seed: int = 0):
        super().__init__(interactive)
        self.model = _tokenizer(tokenizer)
        self.name = str(tokenizer) if isinstance(tokenizer, (str, Path)) else "tokenizer"
        if images is None:
            images, captions = heldout_images(self.model, num_images, seed)
        self.images = images
        self.captions = list(captions or [f"image {i}" for i in range(len(images))])
        self.words = self.model.codebook.words
        self._index = {w: i for i, w in enumerate(self.words)}
        self.num_layers = self.model.num_layers
        self.depth = self.num_layers if depth is None else depth
        self.layer, self.cell = 1, 0
        self.message = ""
        self.load(images[image_index], self.captions[image_index])

    # --- state --------------------------------------------------------------------------------

    def load(self, image: torch.Tensor, note: str) -> None:
        """Take `image` (3, S, S) in [0, 1]: encode it, forget every edit."""
        self.image, self.note = image, note
        self.encoded = self.model.encode(image[None])
        self.pyramid = self.encoded[0]
        self.history: list[tuple[int, int, int, int]] = []  # (layer, cell, old id, new id)
        self._original_decodes = self.model.decode_every_depth(self.encoded)[:, 0]  # (L, 3, S, S)
        self._decodes = self._original_decodes
        self.message = ""

    def load_file(self, source, name: str | None = None) -> bool:
        """An uploaded file's bytes or a path; False (and a message) when it cannot be read."""
        try:
            image, note = read_image(source, self.model.config.image_size, name)
        except ImageSourceError as e:
            self.message = f"not loaded: {e}"
            return False
        self.load(image, note)
        self.message = f"loaded {note}"
        return True

    def word_at(self, layer: int, cell: int) -> str:
        return self.words[int(self.pyramid.ids[layer - 1][0, cell])]

    def replace_word(self, layer: int, cell: int, word: str) -> bool:
        """Put codebook `word` at `cell` (row-major) of `layer` (1-based) and decode again. An
        unknown word, layer or cell changes nothing and says why (`message`); returns success."""
        word = word.strip().lower()
        if not 1 <= layer <= self.num_layers or not 0 <= cell < self.model.layout.tokens_per_layer()[layer - 1]:
            self.message = f"no cell {cell} in layer {layer}"
            return False
        if word not in self._index:
            self.message = (f"'{html.escape(word)}' is not a word of this codebook ({len(self.words):,} words): "
                            "pick one from the list")
            return False
        old = int(self.pyramid.ids[layer - 1][0, cell])
        if old == self._index[word]:
            self.message = f"cell {cell} of layer {layer} already holds '{word}'"
            return False
        self._set(layer, cell, self._index[word])
        self.history.append((layer, cell, old, self._index[word]))
        self.message = f"layer {layer}, cell {cell}: '{self.words[old]}' -> '{word}'"
        return True

    def undo(self) -> bool:
        if not self.history:
            self.message = "nothing to undo"
            return False
        layer, cell, old, new = self.history.pop()
        self._set(layer, cell, old)
        self.message = f"undone: '{self.words[new]}' -> '{self.words[old]}' (layer {layer}, cell {cell})"
        return True

    def reset(self) -> None:
        self.pyramid = self.encoded[0]
        self.history = []
        self._decodes = self._original_decodes
        self.message = "every edit undone"

    def _set(self, layer: int, cell: int, row: int) -> None:
        from spae_lab.pyramid import TokenPyramid

        ids = [t.clone() for t in self.pyramid.ids]
        ids[layer - 1][0, cell] = row
        self.pyramid = TokenPyramid(ids, self.model.layout, self.model.codebook)
        self._decodes = self.model.decode_every_depth(self.pyramid)[:, 0]

    def decodes(self) -> torch.Tensor:
        """(L, 3, S, S): the current (edited) words decoded from 1..L layers."""
        return self._decodes

    def original_decodes(self) -> torch.Tensor:
        return self._original_decodes

    def change_by_depth(self) -> list[float]:
        """Mean absolute pixel change of each depth's decode, edited against as encoded."""
        return (self._decodes - self._original_decodes).abs().mean(dim=(1, 2, 3)).tolist()

    def edited_cells(self, layer: int) -> set[int]:
        original = self.encoded.ids[layer - 1][0]
        return set((self.pyramid.ids[layer - 1][0] != original).nonzero().flatten().tolist())

    # --- drawing ------------------------------------------------------------------------------

    def word_map(self, width: int = 480):
        """plotly: the chosen layer's words over the image (hover, zoom); edited cells in gold,
        the selected cell framed."""
        from spae_lab.views.pyramid_figures import token_pyramid_plotly

        figure = token_pyramid_plotly(self.image, self.pyramid, 0, active_layer=self.layer,
                                      title=self.note, width=width)
        trace = figure.data[self.layer]
        edited = self.edited_cells(self.layer)
        trace.marker.color = ["gold" if i in edited else "white" for i in range(len(trace.x))]
        size = self.image.shape[-1]
        n = self.model.layout.layer_sizes[self.layer - 1]
        row, col = divmod(self.cell, n)
        span = size / n
        figure.add_shape(type="rect", x0=col * span, x1=(col + 1) * span, y0=row * span, y1=(row + 1) * span,
                         line={"color": "red", "width": 3})
        figure.update_layout(title={"font": {"size": 13}})
        return figure

    def _depth_label(self, depth: int) -> str:
        tokens = self.model.layout.cumulative_tokens()[depth - 1]
        return f"{depth} layer{'s' if depth > 1 else ''} ({tokens} word{'s' if tokens > 1 else ''})"

    def edit_table_html(self, thumb: int = 96) -> str:
        """An HTML table: decodes at every depth as encoded, after the edits, and the difference
        at true scale, with the mean change under each."""
        from spae_lab.metrics import psnr

        edited, original = self._decodes, self._original_decodes
        change = self.change_by_depth()
        header = "".join(f"<th>{self._depth_label(d)}</th>" for d in range(1, self.num_layers + 1))
        rows = []
        for label, images in (("as encoded", original), ("after your edits", edited),
                              ("difference (true scale)", (edited - original).abs())):
            cells = "".join(f"<td>{img_tag(png_bytes(images[d], max(1, thumb // images.shape[-1])))}</td>"
                            for d in range(self.num_layers))
            rows.append(f"<tr><th>{label}</th>{cells}</tr>")
        quality = [psnr(edited[d][None], self.image[None]).item() for d in range(self.num_layers)]
        notes = "".join(f"<td>mean change {c:.3f}<br>PSNR to original {q:.1f} dB</td>"
                        for c, q in zip(change, quality, strict=True))
        rows.append(f"<tr><th></th>{notes}</tr>")
        return f'<table class="spae-edit-table"><tr><th></th>{header}</tr>{"".join(rows)}</table>'

    def edit_figure(self):
        """matplotlib: the same three rows as `edit_table_html` (the static equivalent)."""
        import matplotlib.pyplot as plt

        from spae_lab.views.figures import to_hwc

        edited, original = self._decodes, self._original_decodes
        rows = (("as encoded", original), ("after the edits" if self.history else "(no edit)", edited),
                ("difference\n(true scale)", (edited - original).abs()))
        figure, axes = plt.subplots(3, self.num_layers, figsize=(1.6 * self.num_layers + 0.6, 5.2), squeeze=False)
        change = self.change_by_depth()
        for r, (label, images) in enumerate(rows):
            for d in range(self.num_layers):
                ax = axes[r, d]
                ax.imshow(to_hwc(images[d]), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(self._depth_label(d + 1), fontsize=9)
                if r == 2:
                    ax.set_xlabel(f"mean change {change[d]:.3f}", fontsize=9)
            axes[r, 0].set_ylabel(label, fontsize=10)
        edits = ", ".join(f"layer {layer} cell {cell}: {self.words[old]} -> {self.words[new]}"
                          for layer, cell, old, new in self.history) or "none"
        figure.suptitle(f"{self.note}\nedits: {edits}", fontsize=10)
        figure.tight_layout()
        return figure

    def static_figures(self) -> list:
        from spae_lab.views.pyramid_figures import token_pyramid_figure

        words = token_pyramid_figure(self.image, self.pyramid, 0, panel_inches=2.0, title=self.note)
        return [words, self.edit_figure()]

    # --- controls -----------------------------------------------------------------------------

    def _build(self):
        import ipywidgets as w

        from spae_lab.views.figures import notebook_setup
        from spae_lab.widgets.live import in_kernel

        if in_kernel():
            notebook_setup()  # plotly renders in JupyterLab and offline
        self.c_image = control(w.Dropdown(options=[(c, i) for i, c in enumerate(self.captions)],
                                          description="image", layout=w.Layout(width="320px")), "image")
        self.c_upload = control(w.FileUpload(accept="image/*", multiple=False, description="upload"), "upload")
        self.c_path = control(w.Text(placeholder="or a path: photo.jpg", layout=w.Layout(width="260px")), "path")
        self.c_load = control(w.Button(description="load path", icon="folder-open"), "load")
        self.c_layer = control(w.ToggleButtons(options=[(f"layer {k}", k) for k in range(1, self.num_layers + 1)],
                                               value=self.layer, description="words of",
                                               style={"button_width": "72px"}), "layer")
        self.c_cell = control(w.Dropdown(description="cell", layout=w.Layout(width="300px")), "cell")
        self.c_word = control(w.Combobox(options=self.words, placeholder="type or pick a codebook word",
                                         ensure_option=False, continuous_update=False, description="new word",
                                         layout=w.Layout(width="300px")), "word")
        self.c_replace = control(w.Button(description="replace", button_style="primary", icon="pencil"), "replace")
        self.c_undo = control(w.Button(description="undo", icon="undo"), "undo")
        self.c_reset = control(w.Button(description="reset", icon="refresh"), "reset")
        self.c_depth = control(w.IntSlider(value=self.depth, min=1, max=self.num_layers, description="decode from",
                                           continuous_update=True), "depth")
        self.o_note = w.HTML()
        self.o_message = w.HTML()
        self.o_map = w.Output(layout=w.Layout(width="500px"))
        self.o_decode = w.HTML()
        self.o_table = w.HTML()
        self.o_map.add_class("spae-output-map")
        self.o_decode.add_class("spae-output-decode")
        self.o_table.add_class("spae-output-table")
        self.c_image.observe(self._on_image, names="value")
        self.c_upload.observe(self._on_upload, names="value")
        self.c_load.on_click(self._on_path)
        self.c_layer.observe(self._on_layer, names="value")
        self.c_cell.observe(self._on_cell, names="value")
        self.c_replace.on_click(self._on_replace)
        self.c_word.observe(self._on_word_submit, names="value")
        self.c_undo.on_click(lambda _: self._after(self.undo(), "undo"))
        self.c_reset.on_click(lambda _: self._after(self.reset(), "reset"))
        self.c_depth.observe(self._on_depth, names="value")
        self._refresh_cells()
        self._redraw_all()
        help_text = w.HTML("<b>Pick an image</b>, read its words (hover for details, drag to zoom), "
                           "<b>replace a word</b> and watch every depth decode again.")
        source = w.HBox([self.c_image, self.c_upload, self.c_path, self.c_load], layout=w.Layout(flex_flow="row wrap"))
        edit = w.VBox([self.c_layer, w.HBox([self.c_cell, self.c_word], layout=w.Layout(flex_flow="row wrap")),
                       w.HBox([self.c_replace, self.c_undo, self.c_reset]), self.o_message])
        right = w.VBox([self.c_depth, self.o_decode])
        view = w.HBox([self.o_map, right], layout=w.Layout(flex_flow="row wrap"))
        return w.VBox([help_text, source, self.o_note, view, edit, self.o_table])

    def _refresh_cells(self) -> None:
        n = self.model.layout.layer_sizes[self.layer - 1]
        options = [(f"({k // n}, {k % n}) {self.word_at(self.layer, k)}", k) for k in range(n * n)]
        self.cell = min(self.cell, n * n - 1)
        self._quiet = True
        self.c_cell.options = options
        self.c_cell.value = self.cell
        self._quiet = False

    def _redraw_map(self) -> None:
        self.o_map.outputs = ({"output_type": "display_data", "data": plotly_bundle(self.word_map()), "metadata": {}},)

    def _redraw_decode(self) -> None:
        d = self.depth
        scale = max(1, DISPLAY_PX // self.image.shape[-1])
        change = self.change_by_depth()[d - 1]
        self.o_decode.value = (
            f"<div style='display:flex;gap:12px'><figure>{img_tag(png_bytes(self.image, scale))}"
            f"<figcaption>original</figcaption></figure><figure>"
            f"{img_tag(png_bytes(self._decodes[d - 1], scale))}<figcaption>decoded from "
            f"{self._depth_label(d)}{f'; edits change it by {change:.3f}' if self.history else ''}"
            f"</figcaption></figure></div>")

    def _redraw_all(self) -> None:
        self.o_note.value = f"<i>{html.escape(self.note)}</i>"
        self.o_message.value = f"<span class='spae-message'>{self.message}</span>"
        self._redraw_map()
        self._redraw_decode()
        self.o_table.value = self.edit_table_html()

    def _after(self, _result, name: str) -> None:
        with self.timed(name):
            self._refresh_cells()
            self._redraw_all()

    def _on_image(self, change) -> None:
        with self.timed("image"):
            self.load(self.images[change["new"]], self.captions[change["new"]])
            self._refresh_cells()
            self._redraw_all()

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        with self.timed("upload"):
            self.load_file(item["content"], item.get("name"))
            self._refresh_cells()
            self._redraw_all()

    def _on_path(self, _button) -> None:
        with self.timed("load"):
            self.load_file(self.c_path.value.strip() or ".")
            self._refresh_cells()
            self._redraw_all()

    def _on_layer(self, change) -> None:
        with self.timed("layer"):
            self.layer = change["new"]
            self._refresh_cells()
            self._redraw_map()

    def _on_cell(self, change) -> None:
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        with self.timed("cell"):
            self.cell = change["new"]
            self._redraw_map()

    def _on_replace(self, _button) -> None:
        with self.timed("replace"):
            self.replace_word(self.layer, self.cell, self.c_word.value)
            self._refresh_cells()
            self._redraw_all()

    def _on_word_submit(self, change) -> None:
        # picking a word from the list (an exact codebook word) replaces at once
        if change["new"] in self._index and change["new"] != self.word_at(self.layer, self.cell):
            self._on_replace(None)

    def _on_depth(self, change) -> None:
        with self.timed("depth"):
            self.depth = change["new"]
            self._redraw_decode()


def plotly_bundle(figure) -> dict:
    """A plotly figure as display data: plotly's JSON (JupyterLab draws it: hover, zoom) and HTML
    that uses the page's plotly.js; the same whatever renderer the session set."""
    import json

    import plotly.io as pio

    return {"application/vnd.plotly.v1+json": {**json.loads(pio.to_json(figure)), "config": {}},
            "text/html": pio.to_html(figure, include_plotlyjs=False, full_html=False)}


def explore_pyramid(tokenizer="digits", image_index: int = 0, depth: int | None = None, num_images: int = 12,
                    interactive: bool = True, seed: int = 0) -> PyramidExplorer:
    """The pyramid explorer on `tokenizer` (a shipped name, run folder or SPAE model), starting on
    its held-out image `image_index` decoded from `depth` layers (None: all). Display the result:
    controls in a live kernel, the static figures otherwise (see `spae_lab.widgets`)."""
    return PyramidExplorer(tokenizer, num_images=num_images, image_index=image_index, depth=depth,
                           interactive=interactive, seed=seed)
