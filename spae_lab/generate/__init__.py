"""In-context generation: a frozen LLM writes images as token pyramids (SPAE section 4).

    from spae_lab.generate import run_generation
    result = run_generation("class", "digits", out="runs/generate_class")
    result["summary"]["accuracy"]     # share of generated digits recognised as the requested one

- `decode`: progressive in-context decoding (layer by layer, a few words per call, restricted to
  the codebook's words), the word writers and their SQLite cache;
- `tasks`: corruptions (`CorruptionSchedule`, V2L's preset), prompts, no-LLM fills;
- `run`: `run_generation`, the files it writes and its metrics;
- `cli`: `spae-lab generate TASK` (`add_generate_parser`, `cmd_generate`).
"""

from spae_lab.generate.cli import add_generate_parser, cmd_generate
from spae_lab.generate.decode import DecodeConfig, progressive_decode
from spae_lab.generate.run import GenerationConfig, GenerationError, run_generation
from spae_lab.generate.tasks import TASKS, V2L_SCHEDULE, CorruptionSchedule

__all__ = ["TASKS", "V2L_SCHEDULE", "CorruptionSchedule", "DecodeConfig", "GenerationConfig",
           "GenerationError", "add_generate_parser", "cmd_generate", "progressive_decode",
           "run_generation"]
