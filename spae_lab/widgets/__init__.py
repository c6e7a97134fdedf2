"""Interactive apps for JupyterLab: one call each, on any tokenizer (a shipped name or a run folder).

    from spae_lab.widgets import explore_pyramid
    explore_pyramid("digits")          # pick an image, decode at a depth, replace a word, undo

- `explore_pyramid`: an image's words over the image at every layer, a live decode at the depth a
  slider chooses, a word replaced from the codebook and every depth decoded again, with the
  difference at true scale; undo and reset; held-out images, an uploaded file or a path;
- `explore_fewshot`: few-shot episodes (ways, shots, classes) read by a frozen LLM: the exact
  prompt, the LLM's score for every class name, the prediction against the truth, beside
  LQAE-style words and the no-LLM references;
- `step_generation`: in-context generation stepped call by call and layer by layer: the prompt,
  the words written, the decode after each layer, beside the no-LLM fill and the target;
- `watch_training`: a short training run with live loss curves and decodes, and a Stop button.

Live or static. An app shows its ipywidgets controls when `is_live(interactive)` holds: the
caller's `interactive` flag is True (a notebook's `interactive` parameter; `spae-lab report` sets it
False) and the code runs in an IPython kernel with ipywidgets installed. Otherwise (a report run
by papermill, a plain script, a test) it shows its static equivalent, matplotlib figures of its
first state, so a report stays whole. Widgets use only ipywidgets' own controls and images drawn
on the Python side: nothing to build, no custom JavaScript.
"""

from __future__ import annotations

import importlib

_MODULES = {  # module -> the names it gives the package
    "spae_lab.widgets.live": ("is_live",),
    "spae_lab.widgets.pyramid_app": ("explore_pyramid", "PyramidExplorer"),
    "spae_lab.widgets.fewshot_app": ("explore_fewshot", "FewShotExplorer"),
    "spae_lab.widgets.generation_app": ("step_generation", "GenerationStepper"),
    "spae_lab.widgets.training_app": ("watch_training", "TrainingView"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """The apps load torch and ipywidgets: only when a name is first used."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'spae_lab.widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
