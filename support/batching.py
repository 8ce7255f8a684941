"""Batches of token rows: right padding, and the one sort -> batch -> shard -> run -> gather -> unsort pattern that
scoring, generation and bits per byte share (METHOD 6)."""
from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from support import dist


def right_pad(rows: list[list], pad=0, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """(B, T) with `pad` after each row's end: under causal attention no real position ever reads the padding."""
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out


def length_batches(lengths: list[int], batch_size: int, longest_first: bool = True,
                   max_tokens: int | None = None) -> list[list[int]]:
    """Indices 0..n-1 sorted by length (ties keep their order) and cut into batches of similar lengths, each at most
    `batch_size` rows and, with `max_tokens`, at most that many padded tokens (the batch's first row sets T when
    longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i] if longest_first else lengths[i])
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        fits = last is not None and len(last) < batch_size and (
            max_tokens is None or (len(last) + 1) * max(lengths[last[0]], 1) <= max_tokens)
        if fits:
            last.append(i)
        else:
            batches.append([i])
    return batches


def map_batches(batches: list[list[int]], run: Callable[[list[int], tqdm], list], n: int, desc: str = "") -> list:
    """`run(batch, bar)` on this rank's share of `batches` (dist.shard), every rank's results gathered, and each
    result put back at its index: a list of n results, the same on every rank and for any number of ranks.

    `run` returns one result per index of its batch; the bar counts rows and is `run`'s to annotate.
    """
    mine = dist.shard(batches)
    results = []
    with tqdm(total=sum(map(len, mine)), desc=desc, leave=False, dynamic_ncols=True,
              disable=not dist.is_main()) as bar:
        for batch in mine:
            results.append(run(batch, bar))
            bar.update(len(batch))
    out = [None] * n
    for batch, values in zip(batches, dist.gather(results)):
        for i, v in zip(batch, values):
            out[i] = v
    return out
