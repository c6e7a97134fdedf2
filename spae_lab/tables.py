"""Result tables: proportions with confidence intervals, accuracy per group, Markdown.

Every accuracy this project reports comes with a 95% Wilson interval, so a reader can tell a
difference from noise; `accuracy_table` also reports how concentrated the answers are.
"""

from __future__ import annotations

import math

import pandas as pd


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sane at 0% and 100%, unlike mean +- 2 se)."""
    if total == 0:
        return (math.nan, math.nan)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_table(records: list[dict], keys: list[str]) -> pd.DataFrame:
    """Records with a boolean "correct" -> accuracy and 95% Wilson CI per group of `keys`."""
    rows = []
    for group, part in pd.DataFrame(records).groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        correct, total = int(part["correct"].sum()), len(part)
        low, high = wilson_interval(correct, total)
        row = dict(zip(keys, group, strict=True)) | {
            "queries": total, "accuracy": correct / total, "ci_low": low, "ci_high": high}
        if "prediction" in part:
            # the answer distribution: share of queries given the most common answer (position
            # among the episode's names; every position is true equally often, so an unbiased
            # reader gives 1/ways and one that always answers the same gives 1)
            answers = part["prediction"].dropna()
            row["top_answer_share"] = float(answers.value_counts(normalize=True).max()) if len(answers) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (no tabulate dependency)."""
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
