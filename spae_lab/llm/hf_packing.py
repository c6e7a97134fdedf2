"""Many short sequences on one shared prefix in a single forward call ("packing").

Few-shot scoring reads a long prefix (the support examples) and then many short pieces that
each continue it: the queries, then the candidate answers of each query. Instead of repeating the
prefix's key/value cache once per piece (a copy of the whole cache per row), every piece is laid
end to end in one row after the prefix, and an attention mask keeps them apart:

    kv:    [ prefix (P tokens) | query 0 | query 1 | ... | answer (0, c) | answer (1, c) ... ]
    a token sees: the prefix, the earlier tokens of its own segment, and its parent segment
    (an answer's parent is its query; a query's parent is the prefix alone)

Positions restart after the prefix for every segment (a query starts at position P, its answers
continue at P + len(query)), so each piece is computed exactly as if it were alone after the
prefix: the same numbers as the one-row-per-piece path, up to floating-point summation order.

The mask is additive (0 where a token may look, the dtype's lowest value elsewhere), shaped
(1, 1, new tokens, cached + new tokens): transformers passes such a 4D mask to the attention as it
is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

NO_PARENT = -1  # a segment whose only context is the prefix


@dataclass
class Packing:
    """Segments laid end to end after a prefix of `prefix_length` tokens (see the module doc)."""

    prefix_length: int
    ids: list[int] = field(default_factory=list)  # every segment's tokens, end to end
    segment_of: list[int] = field(default_factory=list)  # per token: its segment
    positions: list[int] = field(default_factory=list)  # per token: its position id
    parents: list[int] = field(default_factory=list)  # per segment: the segment it continues
    ends: list[int] = field(default_factory=list)  # per segment: position (in ids) of its last token
    next_position: list[int] = field(default_factory=list)  # per segment: the position after it

    def add(self, ids: list[int], parent: int = NO_PARENT) -> int:
        """Append a segment continuing `parent` (a segment already added); its index."""
        segment = len(self.parents)
        start = self.next_position[parent] if parent != NO_PARENT else self.prefix_length
        self.ids += ids
        self.segment_of += [segment] * len(ids)
        self.positions += range(start, start + len(ids))
        self.parents.append(parent)
        self.ends.append(len(self.ids) - 1)
        self.next_position.append(start + len(ids))
        return segment

    def mask(self, first: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask of tokens `first:` (this forward call) over the prefix and tokens
        `:len(ids)` (earlier calls' tokens are in the cache), (1, 1, new, P + len(ids))."""
        kv_segment = torch.tensor(self.segment_of, dtype=torch.long)
        q_segment = kv_segment[first:]
        parents = torch.tensor(self.parents, dtype=torch.long)
        kv_index = torch.arange(len(self.ids))
        q_index = kv_index[first:]
        same = (q_segment[:, None] == kv_segment[None, :]) & (kv_index[None, :] <= q_index[:, None])
        parent = parents[q_segment][:, None] == kv_segment[None, :]
        visible = torch.cat([torch.ones(len(q_index), self.prefix_length, dtype=torch.bool),
                             same | parent], dim=1)
        mask = torch.zeros(visible.shape, dtype=dtype)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[None, None]


def chunks_by_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped in order so that each group's lengths sum to at most `budget` (a single
    longer item makes a group of its own)."""
    groups: list[list[int]] = []
    total = budget + 1
    for i, length in enumerate(lengths):
        if total + length > budget and (not groups or groups[-1]):
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += length
    return [g for g in groups if g]
