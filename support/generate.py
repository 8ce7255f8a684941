"""Greedy generation: a left-padded batch, one prefill, then one cached step per token (METHOD.md 8).

`model.generate` is this function. Rows leave the batch as they finish (a stop id, or the caller's stop check on the
ids so far), so a long answer in one row does not make the finished rows keep computing. On a model prepared by
`compiled.compile_model` the steps after the prefill run its compiled decoding step over a static KV cache instead:
the batch keeps its shape (a finished row stays, unread), so one compiled graph serves every step.
"""
from __future__ import annotations

from typing import Callable

import torch


class KVCache:
    """Preallocated keys and values of every layer; `pos` counts the slots already filled.

    Dynamic (the default): new keys are written at pos.. and a step attends over the filled slots, so the shapes grow
    by one per token. Static (compiled decoding, as in gpt-fast): pos is a 0-d tensor, keys are written by index and
    every step attends over all slots under a mask, so every step has the same shapes and one compiled graph serves
    every length.
    """

    def __init__(self, cfg, batch: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 static: bool = False):
        # One tensor per layer, not views of one: a compiled step then updates each in place (a view's update is
        # written back into its whole base tensor, every layer's, at every step).
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.static = static
        self.pos = torch.zeros((), dtype=torch.long, device=device) if static else 0

    @property
    def n_keys(self) -> int | None:
        """Key slots a step attends over: all of them when static, else those filled (None)."""
        return self.k[0].shape[2] if self.static else None

    def layer(self, i: int) -> "LayerCache":
        return LayerCache(self, self.k[i], self.v[i])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every batch row not in `rows` (finished sequences stop costing compute)."""
        self.k, self.v = [k[rows] for k in self.k], [v[rows] for v in self.v]


class LayerCache:
    """One layer's keys and values in a KVCache: what a block sees. (A block that indexed the whole cache by its layer
    number would make a compiled block specialise on that number: one graph per layer instead of one for all.)"""

    def __init__(self, cache: KVCache, k: torch.Tensor, v: torch.Tensor):
        self.cache, self.k, self.v = cache, k, v  # (B, n_kv, max_len, hd), the cache's own tensors

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values (B, n_kv, T, hd) at slots pos.. and return what a step attends over."""
        pos, T = self.cache.pos, k.shape[2]
        if self.cache.static:
            slots = pos + torch.arange(T, device=k.device)  # (T,)
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            return self.k, self.v  # (B, n_kv, max_len, hd)
        if pos + T > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; writing up to {pos + T}")
        self.k[:, :, pos:pos + T] = k
        self.v[:, :, pos:pos + T] = v
        return self.k[:, :, :pos + T], self.v[:, :, :pos + T]  # (B, n_kv, pos + T, hd)



@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int = 64,
             stop_ids: list[int] | None = None, stop: Callable[[int, list[int]], bool] | None = None,
             on_step: Callable[[int], None] | None = None) -> list[list[int]]:
    """Greedy continuation of each prompt, one prefill and then one cached step per token for the whole batch.

    A row ends at its first stop id (not included), or once `stop(row, new_ids)` is true (e.g. a stop string
    appeared; its ids are kept), and leaves the batch. `on_step(active_rows)` is called after every step.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    stop_set = set(model.config.eos_token_ids if stop_ids is None else stop_ids)
    device = model.embed_tokens.weight.device
    decode_step = getattr(model, "decode_step", None)  # compiled (compiled.compile_model), or None: eager
    static = decode_step is not None
    B, P = len(prompts), max(len(p) for p in prompts)
    tokens = torch.zeros(B, P, dtype=torch.long)
    key_mask = torch.zeros(B, P + max_new_tokens, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = torch.tensor(p)
        key_mask[i, P - len(p):] = True
    tokens, key_mask = tokens.to(device), key_mask.to(device)
    positions = (key_mask[:, :P].long().cumsum(-1) - 1).clamp(min=0)  # (B, P): real tokens count from 0
    padded = any(len(p) < P for p in prompts)
    p = model.embed_tokens.weight
    cache = KVCache(model.config, B, P + max_new_tokens, p.dtype, p.device, static)
    out = [[] for _ in range(B)]
    active = list(range(B))  # batch row j generates for prompt active[j]; None: finished (static batches only)
    for step in range(max_new_tokens):
        if static:
            forward = model if step == 0 else decode_step  # the prefill's length varies; a decoding step's does not
            logits = forward(tokens, positions=positions, cache=cache, key_mask=key_mask, last_only=True)
        else:  # without padding, plain causal attention is exact (attention_mask returns None for one new token)
            logits = model(tokens, positions=positions, cache=cache, last_only=True,
                           key_mask=key_mask[:, :cache.pos + tokens.shape[1]] if padded else None)
        tokens = logits[:, -1].argmax(-1, keepdim=True)  # (B_active, 1)
        positions = positions[:, -1:] + 1
        still = []
        for j, t in enumerate(tokens[:, 0].tolist()):
            i = active[j]
            if i is not None and t not in stop_set:
                out[i].append(t)
                if stop is None or not stop(i, out[i]):
                    still.append(j)
        if on_step is not None:
            on_step(len(still))
        if len(still) < sum(i is not None for i in active):
            if not still:
                break
            if static:
                active = [i if j in still else None for j, i in enumerate(active)]
                continue
            rows = torch.tensor(still, device=device)
            cache.keep(rows)
            tokens, positions, key_mask = tokens[rows], positions[rows], key_mask[rows]
            active = [active[j] for j in still]
    return out
