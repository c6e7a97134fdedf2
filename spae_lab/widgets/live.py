"""What every app shares: live or static, images as PNG bytes, timings of each control's response.

`is_live(interactive)` decides whether an app shows ipywidgets controls (see the package
docstring). `App` is the base class: `app.widget` builds the controls on first use, displaying the
app shows them when live and its static figures otherwise, and `app.timings` records how long
each control took to respond (benchmarks/bench_widgets.py reads them; tests do not time).
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
from collections.abc import Iterator

import numpy as np


def in_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, nbclient, papermill, nbval), False in a plain
    interpreter or a terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def is_live(interactive: bool = True) -> bool:
    """Should an app show live controls? `interactive` is the caller's word (a notebook passes its
    `interactive` parameter, which `spae-lab report` sets False: a report has no kernel behind it);
    beyond it the code must run in a kernel with ipywidgets importable."""
    if not interactive or not in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def to_uint8(image) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] or (H, W, 3) float array -> (H, W, 3) uint8."""
    if hasattr(image, "detach"):
        image = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image, dtype=np.float32)
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def png_bytes(image, scale: int = 1) -> bytes:
    """An image as PNG bytes, enlarged `scale` times with sharp pixels (no blur of 32 px images)."""
    from PIL import Image

    picture = Image.fromarray(to_uint8(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed (never shown twice by inline)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def img_tag(png: bytes, width: int | None = None, title: str = "") -> str:
    """An <img> holding `png` inline (an HTML widget's image: no file, no server route)."""
    size = f' width="{width}"' if width else ""
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"{size} '
            f'title="{title}" style="image-rendering: pixelated">')


def show_figures(figures) -> None:
    """Display matplotlib figures once each and close them (the static equivalent of an app)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    for figure in figures:
        display(figure)
        plt.close(figure)


class App:
    """Base of the apps: `widget` (built on first use), `show_static()`, `timings`.

    Subclasses implement `_build()` (the ipywidgets tree) and `static_figures()` (matplotlib
    figures of the current state)."""

    css_class = "spae-app"

    def __init__(self, interactive: bool = True):
        self.interactive = interactive
        self.timings: dict[str, list[float]] = {}
        self._widget = None

    @property
    def live(self) -> bool:
        return is_live(self.interactive)

    @property
    def widget(self):
        if self._widget is None:
            self._widget = self._build()
            self._widget.add_class("spae-app")
            self._widget.add_class(self.css_class)
        return self._widget

    def _build(self):
        raise NotImplementedError

    def static_figures(self) -> list:
        raise NotImplementedError

    def show_static(self) -> None:
        show_figures(self.static_figures())

    @contextlib.contextmanager
    def timed(self, control: str) -> Iterator[None]:
        """Record how long the response to `control` took (seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings.setdefault(control, []).append(time.perf_counter() - start)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.live:
            display(self.widget)
        else:
            self.show_static()


def control(widget, name: str):
    """`widget` tagged with the CSS class `spae-control-<name>` (the browser test finds it so)."""
    widget.add_class("spae-control")
    widget.add_class(f"spae-control-{name}")
    if getattr(widget, "description", "") and hasattr(widget, "style") and hasattr(widget.style, "description_width"):
        widget.style.description_width = "initial"  # the whole label, never "decode fr..."
    return widget
