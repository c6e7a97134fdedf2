"""`spae-lab`: the command line, a thin layer over library functions (`main`), and `demo`, the
README's main job."""

from spae_lab.cli.main import main

__all__ = ["main"]
