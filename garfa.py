"""GARFA: GQA-Aware RoPE Frequency Adaptation (METHOD 4.6).

On each chosen layer, one learnable scalar per KV head g: `log_scale[g]`, initialised to 0. KV head g and the n_rep
query heads that read it rotate with `inv_freq * exp(log_scale[g])`, where `inv_freq` already carries the Llama 3.1
scaling. Queries and keys of one group share their frequencies, so q.k stays a function of relative position only.
At log_scale = 0 the multiplier is exactly 1.0, so the adapted model is bit-for-bit the base model.

It plugs into `Attention.rope_freqs` (model.py), which expands the per-KV-head tables to the query heads in GQA order.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from support.files import UserError, load_tensors
from model import Transformer

GARFA_FILE = "garfa.safetensors"
ADAPTER_PARAM_NAMES = ("lora_A", "lora_B", "log_scale")  # everything else is a frozen base weight


class GARFA(nn.Module):
    """Per-KV-head frequency multipliers exp(log_scale) for one layer."""

    def __init__(self, n_kv_heads: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(n_kv_heads))

    def forward(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """inv_freq (hd/2,) -> per-KV-head frequencies (n_kv, hd/2), in float32."""
        return inv_freq.float()[None, :] * self.log_scale.float().exp()[:, None]


def check_layers(model: Transformer, layers) -> list[int]:
    """Sorted, de-duplicated layer indices, each one checked against the model's depth."""
    n = model.config.n_layers
    layers = sorted({int(layer) for layer in layers})
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a {n}-layer model (valid: 0..{n - 1})")
    return layers


def freeze_base_weights(model: nn.Module) -> None:
    """Only adapter parameters (LoRA matrices, GARFA scales) train; the base model stays frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] in ADAPTER_PARAM_NAMES)


def apply_garfa(model: Transformer, layers) -> list[int]:
    """Attach identity-initialised GARFA to `layers` (in place); returns the adapted layers."""
    layers = check_layers(model, layers)
    taken = [layer for layer in layers if model.layers[layer].self_attn.rope_freqs is not None]
    if taken:  # checked before the first attach, so an error leaves the model as it was
        raise ValueError(f"layers {taken} already have GARFA attached")
    p = model.embed_tokens.weight
    for layer in layers:
        model.layers[layer].self_attn.rope_freqs = GARFA(model.config.n_kv_heads).to(p.device)  # float32 in bf16 too
    freeze_base_weights(model)
    return layers


def garfa_layers(model: Transformer) -> list[int]:
    return [i for i, block in enumerate(model.layers) if isinstance(block.self_attn.rope_freqs, GARFA)]


def garfa_state(model: Transformer) -> dict[str, torch.Tensor]:
    """`layers.<l>.log_scale` -> tensor (n_kv,): the on-disk format of garfa.safetensors."""
    return {f"layers.{i}.log_scale": model.layers[i].self_attn.rope_freqs.log_scale.detach().float().cpu()
            for i in garfa_layers(model)}


def garfa_multipliers(model: Transformer) -> dict[int, list[float]]:
    """The learned frequency multipliers exp(log_scale), per layer and KV head, as reported."""
    return {int(k.split(".")[1]): v.exp().tolist() for k, v in garfa_state(model).items()}


def read_garfa(path: str | Path, model: Transformer) -> dict[int, torch.Tensor]:
    """Read and validate garfa.safetensors against `model` without touching it: layer -> log_scale."""
    state, out = load_tensors(Path(path)), {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "layers" or parts[2] != "log_scale" or not parts[1].isdigit():
            raise UserError(f"{path}: unexpected tensor '{key}' (expected 'layers.<l>.log_scale')")
        layer = int(parts[1])
        if not 0 <= layer < model.config.n_layers or value.shape != (model.config.n_kv_heads,):
            raise UserError(f"{path}: '{key}' of shape {tuple(value.shape)} does not fit this model "
                            f"({model.config.n_layers} layers, {model.config.n_kv_heads} KV heads): "
                            f"the adapter was made for another model")
        out[layer] = value
    return out


def load_garfa_state(model: Transformer, scales: dict[int, torch.Tensor]) -> None:
    """Attach GARFA to the layers in `scales` and set their log_scale (validated by `read_garfa`)."""
    apply_garfa(model, scales)
    with torch.no_grad():
        for layer, value in scales.items():
            model.layers[layer].self_attn.rope_freqs.log_scale.copy_(value)
