"""The ablation command: four variants, one table (CSV + Markdown), resumable.

Modules: spae_lab.training.ablation.
"""

import pandas as pd
import pytest

from spae_lab.cli.main import main


@pytest.mark.slow  # trains four variants
def test_ablation_table_from_the_cli(tmp_path, capsys):
    out = tmp_path / "ablation"
    args = ["ablate", "--preset", "tiny", "--steps", "4", "--out", str(out), "--quiet",
            "--set", "train.num_threads=1", "--set", "data.heldout_images=8"]
    assert main(args) == 0
    table = pd.read_csv(out / "ablation.csv")
    assert list(table["variant"]) == ["SAQ + semantic", "SAQ", "RQ + semantic", "RQ"]
    for column in ("PSNR@1", "PSNR@5", "relevance L5", "rank L5", "caption word in first 2 layers",
                   "relevance, random word"):
        assert column in table.columns
    assert (out / "ablation.png").stat().st_size > 10_000  # PSNR and relevance curves
    assert (table["steps"] == 4).all()
    markdown = (out / "ablation.md").read_text()
    assert markdown.startswith("| variant |") and "RQ + semantic" in markdown
    assert "| variant |" in capsys.readouterr().out
    # finished variants are not trained again
    stamp = (out / "saq_semantic" / "checkpoint.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "saq_semantic" / "checkpoint.safetensors").stat().st_mtime_ns == stamp
