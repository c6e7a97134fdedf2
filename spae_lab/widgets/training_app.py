"""The training view: a short run with live loss curves and decodes, which the user can stop.

    from spae_lab.widgets import watch_training
    view = watch_training("tiny", {"data.dataset": "digits", "train.lr": 3e-3}, steps=100,
                          out_dir="runs/notebooks/training")
    view.run()          # trains here (the curves and decodes redraw as it goes)
    view                # live: buttons to train more in the background, and Stop

Training runs in chunks of `chunk_steps` steps (`train(..., stop_at=...)`; a resume is exact, so
chunks change nothing). Between chunks the view redraws: the training loss (total, and the
reconstruction term alone) and the held-out PSNR per depth against the step, and a few held-out
images decoded from every depth by the weights of that moment. Stop ends the run after the
current chunk, with its checkpoint written; "train more" continues from it. While a cell runs,
a kernel reads no button clicks, so `run()` in a cell trains to the end; the buttons train in a
background thread, and Stop works there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from spae_lab.widgets.live import App, control, figure_png


class TrainingView(App):
    """A training run you can watch and stop (see the module docstring)."""

    css_class = "spae-training-view"

    def __init__(self, preset: str = "tiny", overrides: dict | None = None, steps: int = 100,
                 out_dir: str | Path = "runs/notebooks/training", chunk_steps: int = 25, num_images: int = 8,
                 fresh: bool = False, interactive: bool = True):
        from spae_lab.config import create_config

        super().__init__(interactive)
        self.preset, self.overrides = preset, dict(overrides or {})
        self.steps, self.chunk_steps, self.num_images = steps, max(1, chunk_steps), num_images
        self.run_dir = Path(out_dir)
        self.cfg = create_config(preset, {**self.overrides, "train.steps": steps})
        self.history: list[dict] = []
        self.step = 0
        self.originals: torch.Tensor | None = None  # (B, 3, S, S) held-out images
        self.snapshots: list[tuple[int, torch.Tensor]] = []  # (step, decodes from all layers (B, 3, S, S))
        self.decode_step = 0
        self.status = "not started"
        self.fresh = fresh  # the first chunk replaces a run the folder holds (train's force)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        self._last_draw = 0.0
        self._decodes_drawn = -1

    # --- training -------------------------------------------------------------------------------

    def _on_record(self, history: list[dict]) -> None:
        self.history = list(history)
        self.step = max(self.step, history[-1].get("step", 0))
        if self._widget is not None:  # live: the curves move within a long chunk; drawing costs a step or two
            self._redraw(throttle=5.0)

    def _on_figure(self, model, heldout, path: Path) -> None:
        from spae_lab.data import collate
        from spae_lab.views.figures import save_reconstruction_figure

        save_reconstruction_figure(model, heldout, path)  # what train() writes by default
        was_training = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            batch = collate([heldout[i] for i in range(min(self.num_images, len(heldout)))])["image"].to(device)
            self.originals = batch.cpu()
            decoded = model.decode(model.encode(batch)).cpu()
        model.train(was_training)
        self.decode_step = int(path.stem.split("_")[-1])
        self.snapshots = [(s, d) for s, d in self.snapshots if s < self.decode_step] + [(self.decode_step, decoded)]

    def run(self, steps: int | None = None) -> None:
        """Train up to `steps` in all (default: the view's), chunk by chunk, redrawing between
        chunks; stops early when `stop()` was called. A folder holding a run continues it."""
        self._stop.clear()
        self._run(steps)

    def _run(self, steps: int | None = None) -> None:
        from spae_lab.config import create_config
        from spae_lab.training.loop import train

        target = steps or self.steps
        if target > self.cfg.train.steps:
            self.cfg = create_config(self.preset, {**self.overrides, "train.steps": target})
        self.status = "training"
        self._redraw()
        start = time.perf_counter()
        while self.step < target and not self._stop.is_set():
            stop_at = min(target, (self.step // self.chunk_steps + 1) * self.chunk_steps)
            replace, self.fresh = self.fresh, False
            result = train(self.cfg, self.run_dir, resume=False if replace else "auto", force=replace,
                           progress=False, stop_at=stop_at, on_record=self._on_record, on_figure=self._on_figure)
            self.history, self.step = list(result.history), result.step
            self._redraw()
        seconds = time.perf_counter() - start
        self.status = (f"stopped at step {self.step}" if self._stop.is_set() and self.step < target
                       else f"finished: step {self.step}") + f" ({seconds:.0f} s)"
        self._redraw()

    def start(self, more_steps: int = 100) -> None:
        """Train `more_steps` further in a background thread (live kernels: Stop stays clickable)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()  # here, not in the thread: a Stop clicked at once is not lost
        self._thread = threading.Thread(target=self._run, args=(self.step + more_steps,), daemon=True,
                                        name="spae-training")
        self._thread.start()

    def stop(self) -> None:
        """End the run after the current chunk (its checkpoint is written)."""
        self._stop.set()
        self.status = "stopping after this chunk ..."
        if self._widget is not None:  # the status line only: a click answers at once
            with self.timed("stop"):
                self.o_status.value = f"<b>{self.status}</b>; step {self.step}"

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # --- figures --------------------------------------------------------------------------------

    def curves_figure(self):
        """Loss (total and reconstruction) and held-out PSNR per depth against the step."""
        import matplotlib.pyplot as plt

        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
        logs = [r for r in self.history if "loss" in r]
        if logs:
            steps = [r["step"] for r in logs]
            left.plot(steps, [r["loss"] for r in logs], color="C0", label="total loss")
            if "l2" in logs[0]:
                left.plot(steps, [r["l2"] for r in logs], color="C1", label="reconstruction (L2)")
            left.legend(fontsize=9)
        left.set(xlabel="step", ylabel="training loss", title="training loss")
        evals = [r for r in self.history if "eval" in r]
        tokens = [1, 5, 21, 85, 149]
        if evals:
            for depth in range(len(evals[0]["eval"]["psnr"])):
                label = f"{depth + 1} layer{'s' if depth else ''}"
                label += f" ({tokens[depth]} word{'s' if depth else ''})" if depth < len(tokens) else ""
                right.plot([r["step"] for r in evals], [r["eval"]["psnr"][depth] for r in evals], marker="o",
                           ms=3, label=label)
            right.legend(fontsize=8)
        right.set(xlabel="step", ylabel="held-out PSNR (dB)", title="held-out reconstruction")
        for ax in (left, right):
            ax.grid(alpha=0.3)
        figure.suptitle(f"{self.preset} on {self.cfg.data.dataset}: {self.status}", fontsize=11)
        figure.tight_layout()
        return figure

    def decodes_figure(self, rows: int = 5):
        """Held-out images (top row) and their decodes from all layers at up to `rows` steps of
        the run, spread from the first figure to the last: the pictures sharpen as the loss falls."""
        import matplotlib.pyplot as plt

        from spae_lab.metrics import psnr
        from spae_lab.views.figures import to_hwc

        if not self.snapshots:
            return None
        n = len(self.snapshots)
        picks = sorted({round(i * (n - 1) / max(1, rows - 1)) for i in range(min(rows, n))})
        shown = [self.snapshots[i] for i in picks]
        count = self.originals.shape[0]
        figure, axes = plt.subplots(len(shown) + 1, count, figsize=(1.0 * count + 1.2, 1.0 * (len(shown) + 1) + 0.4),
                                    squeeze=False)
        labels = ["held-out"] + [f"step {step}\n{psnr(d, self.originals).mean().item():.1f} dB" for step, d in shown]
        for r, images in enumerate([self.originals] + [d for _, d in shown]):
            for c in range(count):
                axes[r, c].imshow(to_hwc(images[c]), interpolation="nearest")
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
            axes[r, 0].set_ylabel(labels[r], fontsize=8, rotation=0, ha="right", va="center")
        figure.suptitle("decoded from all layers as the run goes", fontsize=10)
        figure.tight_layout()
        return figure

    def static_figures(self) -> list:
        return [f for f in (self.curves_figure(), self.decodes_figure()) if f is not None]

    # --- drawing, live or not ------------------------------------------------------------------

    def _redraw(self, throttle: float = 0.0) -> None:
        now = time.perf_counter()
        if throttle and now - self._last_draw < throttle:
            return
        self._last_draw = now
        if self._widget is not None:
            with self.timed("redraw"):
                self.o_status.value = f"<b>{self.status}</b>; step {self.step}; run folder <code>{self.run_dir}</code>"
                self.o_curves.value = figure_png(self.curves_figure(), dpi=80)
                if self.snapshots and self._decodes_drawn != self.decode_step:
                    self.o_decodes.value = figure_png(self.decodes_figure(), dpi=80)
                    self._decodes_drawn = self.decode_step
        elif not self.live:
            self._redraw_static()

    def _redraw_static(self) -> None:
        """Outside a live widget: one output per figure, replaced in place (a report keeps the last)."""
        from spae_lab.widgets.live import in_kernel

        if not in_kernel():
            return
        from IPython.display import Image, display

        images = [Image(figure_png(f, dpi=90)) for f in self.static_figures()]
        if self._handle is None:
            self._handle = [display(image, display_id=True) for image in images]
        else:
            for k, image in enumerate(images):
                if k < len(self._handle):
                    self._handle[k].update(image)
                else:
                    self._handle.append(display(image, display_id=True))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.live:
            display(self.widget)
        elif self._handle is None:  # a view displayed before any training: its figures now
            self._redraw_static()

    def _build(self):
        import ipywidgets as w

        self.c_more = control(w.IntSlider(value=100, min=10, max=2000, step=10, description="more steps"), "more")
        self.c_start = control(w.Button(description="train more", button_style="success", icon="play"), "start")
        self.c_stop = control(w.Button(description="stop", button_style="danger", icon="stop"), "stop")
        self.o_status = w.HTML()
        self.o_curves, self.o_decodes = w.Image(format="png"), w.Image(format="png")
        for name, out in (("status", self.o_status), ("curves", self.o_curves), ("decodes", self.o_decodes)):
            out.add_class(f"spae-output-{name}")
        self.c_start.on_click(lambda _: self.start(self.c_more.value))
        self.c_stop.on_click(lambda _: self.stop())
        box = w.VBox([w.HBox([self.c_more, self.c_start, self.c_stop]), self.o_status, self.o_curves, self.o_decodes])
        self._widget = box
        self._redraw()
        return box


def watch_training(preset: str = "tiny", overrides: dict | None = None, steps: int = 100,
                   out_dir: str | Path = "runs/notebooks/training", chunk_steps: int = 25, fresh: bool = False,
                   interactive: bool = True) -> TrainingView:
    """A training view of `preset` with config `overrides` (see the module docstring); `fresh`
    replaces a run already in `out_dir` (else it is continued). Call `.run()` to train; display
    it for the live controls (or, in a report, its last figures)."""
    return TrainingView(preset, overrides, steps, out_dir, chunk_steps, fresh=fresh, interactive=interactive)
