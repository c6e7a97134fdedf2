"""The root of every error a user can fix.

Each module keeps its own error class (`ConfigError`, `DataError`, `CheckpointError`, ...) and
derives it from `SpaeError`, so the command line catches one class, without importing the modules
that define the others (importing them would pull in torch and slow every command's start-up).
"""

from __future__ import annotations


class SpaeError(Exception):
    """A user error (bad config key, missing dataset, wrong checkpoint, dead LLM endpoint): the
    message says what to change; the CLI prints its first line and exits with status 2."""
