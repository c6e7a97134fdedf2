"""Numbers and words as people read them: percentages with their interval, dB to one decimal,
a pyramid's words as small grids, tables of formatted text.

    percent(correct, total)    # a whole percentage with its 95% Wilson interval
    decibels(value)            # one decimal and the unit
    word_grids_html(pyramid)   # layer 1, 2, 3 ... as grids of words, side by side
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def percent(correct: float, total: int, interval: bool = True) -> str:
    """`correct` of `total` as a whole percentage, with its 95% Wilson interval."""
    from spae_lab.tables import wilson_interval

    if total <= 0:
        return "n/a (no queries)"
    share = 100 * correct / total
    if not interval:
        return f"{share:.0f}%"
    low, high = wilson_interval(int(round(correct)), int(total))
    return f"{share:.0f}% (95% interval {100 * low:.0f}-{100 * high:.0f}%)"


def decibels(value: float) -> str:
    return f"{value:.1f} dB"


def word_grids_html(pyramid, image: int = 0, layers: Sequence[int] | None = None, max_side: int = 8) -> str:
    """Each layer's words as a grid at their positions (layer 1: one word; layer 2: 2x2 ...),
    side by side, in readable type: the text form of the token pyramid."""
    layers = list(layers or range(1, pyramid.num_layers + 1))
    tables = []
    for layer in layers:
        n = pyramid.layout.layer_sizes[layer - 1]
        if n > max_side:
            continue
        words = pyramid.words(layer - 1, image)
        rows = "".join("<tr>" + "".join(f"<td style='border:1px solid #ccc;padding:2px 5px;font-size:12px'>"
                                        f"{html.escape(words[r * n + c])}</td>" for c in range(n)) + "</tr>"
                       for r in range(n))
        tables.append(f"<div style='margin-right:18px'><div style='font-weight:600;font-size:12px'>layer {layer} "
                      f"({n}x{n}, {n * n} word{'s' if n > 1 else ''})</div>"
                      f"<table style='border-collapse:collapse'>{rows}</table></div>")
    return "<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>" + "".join(tables) + "</div>"


def text_table(rows: Sequence[dict], index: str | None = None):
    """A pandas DataFrame of already formatted text (no float noise), `index` as its index."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    return frame.set_index(index) if index else frame
