"""Batches of token rows: right padding, and the one sort -> batch -> shard -> run -> gather -> unsort pattern that
scoring, generation and bits per byte share (METHOD 6)."""
from __future__ import annotations

import torch


def right_pad(rows: list[list], pad=0, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """(B, T) with `pad` after each row's end: under causal attention no real position ever reads the padding."""
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out
