"""Layer rankings that others use, computed on the calibration pairs and reported next to S and I (METHOD.md 4.4).

- the logit-lens margin: log p(correct) - log p(incorrect) of the completions read from each layer's residual
  stream through the final norm and LM head, and its gain at layer l (where correctness emerges);
- ShortGPT's Block Influence: 1 - cos(h_in, h_out) of block l over the tokens of prompt + correct;
- the layer-drop delta: the change in the correct completion's mean NLL when block l is skipped.
The model is passed in (any module with embed_tokens, layers, norm, lm_head and hidden_states).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

LENS_ROWS = 512  # logit-lens rows per LM-head product: 512 x a 49k vocabulary is 100 MB of float32 logits


def logit_lens_margin(model, states: list[torch.Tensor], pair) -> torch.Tensor:
    """(L + 1,) margins from `states` (the embedding output, then the stream after each block; rows 0 and 1 are
    prompt + correct and prompt + incorrect); the last entry is the model's own margin. Tokens before the
    completions first differ add the same to both and are skipped."""
    n, c, i = len(pair.prompt), pair.correct, pair.incorrect
    same = next((j for j, (x, y) in enumerate(zip(c, i)) if x != y), min(len(c), len(i)))
    margin = torch.zeros(len(states), dtype=torch.float64)
    for row, completion, sign in ((0, c, 1.0), (1, i, -1.0)):
        targets = torch.tensor(completion[same:], device=states[0].device)  # predicted from the positions before
        h = torch.stack([s[row, n + same - 1:n + len(completion) - 1] for s in states]).flatten(0, 1)  # ((L+1) t, D)
        want = targets.repeat(len(states))  # every layer reads the same targets
        logp = torch.cat([torch.log_softmax(model.lm_head(model.norm(h[j:j + LENS_ROWS])).float(), -1).gather(
            -1, want[j:j + LENS_ROWS, None])[:, 0] for j in range(0, len(h), LENS_ROWS)])  # the head read once a chunk
        margin += sign * logp.view(len(states), -1).sum(-1).double().cpu()
    return margin


def block_influence(states: list[torch.Tensor], length: int) -> torch.Tensor:
    """(L,): 1 - cos(h_in, h_out) of each block, averaged over the first `length` tokens of row 0."""
    h = torch.stack([s[0, :length].float() for s in states])  # (L + 1, T, D)
    return (1 - F.cosine_similarity(h[:-1], h[1:], dim=-1)).mean(-1)


@torch.inference_mode()
def layer_drop(model, tokens: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(L,): mean NLL of the tokens where mask (1, T) is True with block l skipped, minus the intact model's.

    Blocks below l do not see the skip, so one intact pass records what enters each block (the stream and the
    block's other arguments: positions, rotation tables, mask), and block j then runs once on a batch of the rows
    that skipped an earlier block: row l starts as the stream entering block l and joins after it."""
    entering = []
    hooks = [block.register_forward_pre_hook(lambda _, args: entering.append(args)) for block in model.layers]
    try:
        final, _ = model.hidden_states(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    skipped = tokens.new_zeros(0, *entering[0][0].shape[1:], dtype=entering[0][0].dtype)  # (l, T, D)
    for block, (x, *args) in zip(model.layers, entering):
        skipped = torch.cat([block(skipped, *args) if len(skipped) else skipped, x])  # rows 0..j-1 run; j skips
    target = mask[0, 1:]  # position t predicts token t + 1
    h = torch.cat([final[:1], model.norm(skipped)])[:, :-1][:, target]  # (1 + L, N, D): intact row first
    nll = torch.stack([F.cross_entropy(model.lm_head(row).float(), tokens[0, 1:][target]) for row in h])  # one row
    return (nll[1:] - nll[0]).double().cpu().numpy()  # of logits at a time: (N, vocab) each


def reference_spearman(references: dict, S, I) -> dict:
    """Each reference ranking's Spearman with S, with I and with the layer index (NaN where one is constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: {against: float(stats.spearmanr(v, x)[0]) for against, x in
                       (("S", S), ("I", I), ("depth", np.arange(len(S))))} for name, v in references.items()}
