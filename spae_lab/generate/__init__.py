"""In-context generation: a frozen LLM writes images as token pyramids (SPAE section 4).

    from spae_lab.generate import run_generation
    result = run_generation("class", "digits", out="runs/generate_class")
    result.summary["accuracy"]     # share of generated digits recognised as the requested one
    result.summary["verdict"]      # the same against chance and the judge's reliability

- `decode`: progressive in-context decoding (layer by layer, a few words per call, restricted to
  the codebook's words), the word writers and their SQLite cache;
- `tasks`: corruptions (`CorruptionSchedule`, V2L's preset), prompts, no-LLM fills;
- `queries`: what a run asks: its images and their names, `ImageTask`, `DigitEpisode`;
- `outputs`: the files' names and sizes, the PNGs, the prompts files, `--out` owned
  (`GenerationFolder`: locked, resumed, or replaced with `force`);
- `run`: `run_generation` (a `GenerationResult`) and its metrics;
- `edit`: editing by words (`run_edit`: the top word swapped, the pyramid decoded; no LLM);
- `figures`: the grid of context, condition and outputs per layer.

The command line is `spae-lab generate TASK` (`spae_lab.cli.generate`). Names are imported on
first use.
"""

from __future__ import annotations

from spae_lab import lazy_exports

_EXPORTS = {
    "DecodeConfig": "spae_lab.generate.decode",
    "progressive_decode": "spae_lab.generate.decode",
    "GenerationConfig": "spae_lab.generate.run",
    "GenerationError": "spae_lab.generate.queries",
    "GenerationResult": "spae_lab.generate.run",
    "run_generation": "spae_lab.generate.run",
    "run_edit": "spae_lab.generate.edit",
    "TASKS": "spae_lab.generate.tasks",
    "V2L_SCHEDULE": "spae_lab.generate.tasks",
    "CorruptionSchedule": "spae_lab.generate.tasks",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
