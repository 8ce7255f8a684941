"""LS-LoRA: low-rank adapters on chosen layers only (METHOD 4.5), saved in PEFT's on-disk format.

Every target linear of a chosen layer computes `W x + (alpha / r) * B A dropout(x)` with A (r, in) Kaiming-uniform
and B (out, r) zero, so an untrained adapter changes nothing; the base weights are frozen.

Names. `LoRALinear` takes over the very `weight` Parameter of the nn.Linear it replaces and registers it under the
same name, so a base weight keeps its checkpoint path (`layers.3.self_attn.q_proj.weight`) and the adapter matrices
sit next to it (`layers.3.self_attn.q_proj.lora_A`, `.lora_B`). PEFT's file names the same matrix
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`: our name between a fixed prefix and `.weight`.

Dtypes. The LoRA matrices are float32 whatever the base dtype (like GARFA's log_scale, and like PEFT, which upcasts
adapters on a bf16 model): AdamW steps of lr 2e-4 vanish when added to bf16 numbers. The LoRA branch runs in the
matrices' dtype and is cast back to the base output's dtype; under bf16 autocast F.linear runs both branches in bf16.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from garfa import GARFA_FILE, check_layers, freeze_base_weights, garfa_layers, garfa_state, load_garfa_state, read_garfa
from support.files import UserError, load_tensors, read_json, save_tensors
from model import Transformer

# Each target linear of a Block and the submodule that holds it; short names drop "_proj" ("q" -> "q_proj").
TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
DEFAULT_TARGETS = tuple(TARGETS)
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.model."  # PeftModel.base_model > LlamaForCausalLM.model > LlamaModel, then our names
ADAPTER_FILES = (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, GARFA_FILE, "README.md")  # README.md: PEFT writes one too
# adapter_config.json keys that would change the math away from plain LoRA, with the values implemented here.
PLAIN_LORA = {"bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "rank_pattern": {},
              "alpha_pattern": {}, "modules_to_save": None, "layer_replication": None, "target_parameters": None}


def target_name(name: str) -> str:
    full = name if name in TARGETS else f"{name}_proj"
    if full not in TARGETS:
        raise ValueError(f"unknown LoRA target '{name}' (valid: {', '.join(TARGETS)}, or the same without '_proj')")
    return full


def check_hparams(r, alpha, dropout) -> None:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if not (isinstance(r, int) and number(r) and r > 0):
        raise UserError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not (number(alpha) and alpha > 0):
        raise UserError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not (number(dropout) and 0 <= dropout < 1):
        raise UserError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def module_path(layer: int, target: str) -> str:
    return f"layers.{layer}.{TARGETS[target]}.{target}"


def peft_key(layer: int, target: str, matrix: str) -> str:
    return f"{PEFT_PREFIX}{module_path(layer, target)}.{matrix}.weight"


def target_module(model: Transformer, layer: int, target: str) -> nn.Module:
    return getattr(getattr(model.layers[layer], TARGETS[target]), target)


# ----------------------------------------------------------------------------------------------------------------
# The module

def keep_mask(shape: tuple[int, ...], p: float, rows: list[tuple[int, int]] | None, device=None) -> torch.Tensor:
    """Which elements of an input of `shape` (B, T, in) dropout keeps. rows None: drawn from the global RNG, like
    nn.Dropout. Else one (seed, length) per batch row: row i's first `length` positions come from its own generator, so a row's masks do
    not depend on which rows share its batch, how far the batch is padded, or how many processes train (dist.py)."""
    if rows is None:
        return torch.rand(shape, device=device) >= p
    keep = torch.empty(shape, dtype=torch.bool, device=device)
    for i, (seed, length) in enumerate(rows):
        g = torch.Generator(device or "cpu").manual_seed(seed)
        keep[i, :length] = torch.rand((length, *shape[2:]), generator=g, device=device) >= p  # (length, in)
        keep[i, length:] = True  # padding: never read by a real position
    return keep


class DroppedDown(torch.autograd.Function):
    """scale * (x * keep) @ A.T for a LoRA A (r, in): dropout's product, keeping only the 1-byte mask for backward.

    nn.Dropout would keep a float copy of the dropped input and, on CPU, a float mask: 8 bytes per input element and
    per target, about half of a LoRA step's saved activations. The base linear already keeps x itself, so this costs
    1 byte per element. Dropout's 1 / (1 - p) is `scale`, applied on the r-wide side (r multiplies instead of in).
    The mask (`keep_mask`) is an input: the function draws nothing, so torch.compile traces it whole.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, A, keep, scale: float):
        ctx.scale = scale
        ctx.save_for_backward(x, keep, A)
        return F.linear(x.to(A.dtype) * keep, A).mul_(scale)  # (..., r)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):  # grad (..., r)
        x, keep, A = ctx.saved_tensors
        grad = grad * ctx.scale
        grad_x = grad_A = None
        if ctx.needs_input_grad[0]:
            grad_x = ((grad @ A.to(grad.dtype)) * keep).to(x.dtype)
        if ctx.needs_input_grad[1]:
            h = x.to(grad.dtype) * keep
            grad_A = (grad.reshape(-1, grad.shape[-1]).T @ h.reshape(-1, h.shape[-1])).to(A.dtype)  # (r, in)
        return grad_x, grad_A, None, None


class LoRALinear(nn.Module):
    """An nn.Linear's own weight (and bias) plus the low-rank update (alpha / r) B A on a dropped-out input."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: checkpoint names and storage unchanged
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=torch.float32, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=torch.float32, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's (and PEFT's) init, from the global RNG
        self.dropout = float(dropout)  # probability, applied to the adapter's input in training mode (DroppedDown)
        self.dropout_rows = None  # per batch row (seed, length) of its dropout masks, or None: the global RNG
        self.keep = None  # the next forward's dropout mask when drawn ahead of a compiled block (compiled.py)
        self.merged = False  # True while (alpha / r) B A is folded into `weight` (merge_lora)
        self.train(base.training)  # a new module starts in training mode: dropout would act inside an eval() model

    @property
    def drops(self) -> bool:
        """Whether the next forward applies dropout to the adapter's input (training, p > 0, not merged)."""
        return self.training and self.dropout > 0 and not self.merged

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, in), float32

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        if self.drops:
            keep = self.keep if self.keep is not None else keep_mask(x.shape, self.dropout, self.dropout_rows,
                                                                       x.device)
            a = DroppedDown.apply(x, self.lora_A, keep, 1 / (1 - self.dropout))
        else:
            a = F.linear(x.to(self.lora_A.dtype), self.lora_A)  # (..., r)
        return y + (self.scaling * F.linear(a, self.lora_B)).to(y.dtype)  # (..., out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, dropout={self.dropout}, merged={self.merged}")


def lora_modules(model: Transformer) -> dict[tuple[int, str], LoRALinear]:
    """(layer, target) -> its LoRALinear, for every adapted linear."""
    found = {}
    for layer in range(len(model.layers)):
        for target in TARGETS:
            module = target_module(model, layer, target)
            if isinstance(module, LoRALinear):
                found[(layer, target)] = module
    return found


def set_dropout_rows(model: Transformer, rows: list[tuple[tuple, int]] | None) -> None:
    """Tie the next batch's dropout masks to its rows: per batch row (key, length), the key naming the row for the
    whole run (train.py: the seed and the row's slot in the data order); each linear mixes in its own (layer,
    target). None: back to the global RNG."""
    for (layer, target), module in lora_modules(model).items():
        module.dropout_rows = None if rows is None else [
            (int.from_bytes(hashlib.blake2b(repr((key, layer, target)).encode(), digest_size=8).digest(), "little"),
             length) for key, length in rows]


def lora_layers(model: Transformer) -> list[int]:
    return sorted({layer for layer, _ in lora_modules(model)})


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# Attach, merge, unmerge

def apply_lora(model: Transformer, layers, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               targets=DEFAULT_TARGETS) -> list[int]:
    """Wrap `targets` of `layers` in LoRALinear (in place), freeze everything but adapters; returns the layers.

    Everything is checked before the first linear is wrapped, so an error leaves the model as it was.
    """
    check_hparams(r, alpha, dropout)
    wanted = {target_name(t) for t in ([targets] if isinstance(targets, str) else targets)}
    if not wanted:
        raise ValueError(f"no LoRA targets given (valid: {', '.join(TARGETS)})")
    targets = [t for t in TARGETS if t in wanted]
    layers = check_layers(model, layers)
    attached = lora_modules(model)
    taken = [module_path(layer, t) for layer in layers for t in targets if (layer, t) in attached]
    if taken:
        raise ValueError(f"LoRA is already attached to {', '.join(taken)}")
    for layer in layers:
        for target in targets:
            lora = LoRALinear(target_module(model, layer, target), r, alpha, dropout)
            setattr(getattr(model.layers[layer], TARGETS[target]), target, lora)
    freeze_base_weights(model)
    return layers


@torch.no_grad()
def merge_lora(model: Transformer) -> list[int]:
    """Fold (alpha / r) B A into each base weight, for export or inference: the forward skips the LoRA branch.

    Exact up to float32 rounding (~1e-6) in a float32 model. In bf16 weights merge + unmerge loses ~2% of the
    weight scale: keep training state unmerged.
    """
    modules = lora_modules(model)
    if any(m.merged for m in modules.values()):
        raise ValueError("merge_lora: LoRA is already merged (call unmerge_lora first)")
    for m in modules.values():
        m.weight += m.delta_weight().to(m.weight.dtype)
        m.merged = True
    return lora_layers(model)


@torch.no_grad()
def unmerge_lora(model: Transformer) -> list[int]:
    modules = lora_modules(model)
    if not all(m.merged for m in modules.values()):
        raise ValueError("unmerge_lora: LoRA is not merged (call merge_lora first)")
    for m in modules.values():
        m.weight -= m.delta_weight().to(m.weight.dtype)
        m.merged = False
    return lora_layers(model)


# ----------------------------------------------------------------------------------------------------------------
# PEFT on-disk format: adapter_config.json + adapter_model.safetensors, next to our garfa.safetensors

def peft_config(model: Transformer, base_model_name_or_path: str | None = None) -> dict | None:
    """The adapter_config.json from which `peft` rebuilds exactly our LoRA; None when no LoRA is attached."""
    modules = lora_modules(model)
    if not modules:
        return None
    layers = lora_layers(model)
    targets = [t for t in TARGETS if any(target == t for _, target in modules)]
    # One PEFT config applies the same targets, r and alpha to every layer in layers_to_transform.
    if set(modules) != {(layer, t) for layer in layers for t in targets}:
        raise ValueError(f"save_adapter: PEFT's layers_to_transform needs the same targets on every adapted layer; "
                         f"this model has {sorted(modules)}")
    hparams = {(m.r, m.alpha, m.dropout) for m in modules.values()}
    if len(hparams) > 1:
        raise ValueError(f"save_adapter: all LoRA modules must share r, alpha, dropout; found {sorted(hparams)}")
    r, alpha, dropout = hparams.pop()
    return dict(peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
                r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, layers_to_transform=layers,
                layers_pattern="layers", init_lora_weights=True, inference_mode=True, **PLAIN_LORA)


def save_adapter(model: Transformer, out_dir: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the PEFT files for LoRA and garfa.safetensors for GARFA (whichever is attached), all or nothing; each
    safetensors file carries the checksum of its tensors in its metadata (files.save_tensors)."""
    out_dir = Path(out_dir)
    config, garfa = peft_config(model, base_model_name_or_path), garfa_state(model)
    if config is None and not garfa:
        raise ValueError("save_adapter: the model has neither LoRA nor GARFA attached")
    if out_dir.exists():  # it is replaced as a whole: refuse to delete anything that is not an adapter file
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in ADAPTER_FILES)
        if foreign:
            raise FileExistsError(f"{out_dir} holds {', '.join(foreign)}, which save_adapter would delete; "
                                  f"give it an empty or adapter-only directory")
    tmp, old = (out_dir.with_name(f".{out_dir.name}.{suffix}-{os.getpid()}") for suffix in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if config is not None:
            (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            weights = {peft_key(layer, target, matrix): getattr(m, matrix).detach().cpu().contiguous()
                       for (layer, target), m in lora_modules(model).items() for matrix in ("lora_A", "lora_B")}
            save_tensors(weights, tmp / PEFT_WEIGHTS_FILE)
        if garfa:
            save_tensors(garfa, tmp / GARFA_FILE)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_lora(adapter_dir: Path, model: Transformer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and validate the PEFT files against `model` without touching it: (hparams, PEFT key -> tensor)."""
    config_path, weights_path = adapter_dir / PEFT_CONFIG_FILE, adapter_dir / PEFT_WEIGHTS_FILE
    cfg = read_json(config_path, "fix it, or train the adapter again", what="a PEFT adapter config")
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{config_path}: peft_type {cfg.get('peft_type')!r} is not supported (only 'LORA')")
    for key, plain in PLAIN_LORA.items():
        if cfg.get(key, plain) not in (plain, None):
            raise UserError(f"{config_path}: '{key}: {json.dumps(cfg[key])}' is not supported "
                            f"(plain LoRA has {json.dumps(plain)})")
    if not isinstance(cfg.get("target_modules"), list):  # PEFT also accepts a regex string; we do not
        raise UserError(f"{config_path}: target_modules must be a list of names (valid: {', '.join(TARGETS)})")
    layers = cfg.get("layers_to_transform")  # PEFT: null means every layer, an int one layer
    layers = range(model.config.n_layers) if layers is None else [layers] if isinstance(layers, int) else layers
    try:
        hparams = dict(r=cfg.get("r"), alpha=cfg.get("lora_alpha"), dropout=cfg.get("lora_dropout", 0.0))
        check_hparams(**hparams)
        named = {target_name(name) for name in cfg["target_modules"]}
        hparams.update(targets=[t for t in TARGETS if t in named], layers=check_layers(model, layers))
    except ValueError as e:
        raise UserError(f"{config_path}: {e}") from None
    if not weights_path.is_file():
        raise UserError(f"{weights_path} not found (it goes with {PEFT_CONFIG_FILE}; only safetensors is read)")
    weights = load_tensors(weights_path)
    r, expected = hparams["r"], {}
    for layer in hparams["layers"]:
        for t in hparams["targets"]:
            base = target_module(model, layer, t)
            expected[peft_key(layer, t, "lora_A")] = (r, base.in_features)
            expected[peft_key(layer, t, "lora_B")] = (base.out_features, r)
    what = f"{PEFT_CONFIG_FILE} names layers {hparams['layers']} x {', '.join(hparams['targets'])}"
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing:
        raise UserError(f"{weights_path}: missing tensor '{missing[0]}' ({len(missing)} missing; {what})")
    if unexpected:
        raise UserError(f"{weights_path}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} unexpected; {what})")
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise UserError(f"{weights_path}: '{key}' has shape {tuple(weights[key].shape)}, this model with "
                            f"r={r} needs {shape}: the adapter was made for another model")
    return hparams, weights


def load_adapter(model: Transformer, adapter_dir: str | Path) -> dict:
    """Attach and load whatever `adapter_dir` holds (PEFT LoRA and/or garfa.safetensors); returns what it attached.

    Every file is validated, and checked against the adapters already on the model, before anything is attached.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UserError(f"adapter directory {adapter_dir} not found")
    has_lora, has_garfa = (adapter_dir / PEFT_CONFIG_FILE).is_file(), (adapter_dir / GARFA_FILE).is_file()
    if not has_lora and not has_garfa:
        raise UserError(f"{adapter_dir} holds neither {PEFT_CONFIG_FILE} (LoRA) nor {GARFA_FILE} (GARFA)")
    lora, weights = read_lora(adapter_dir, model) if has_lora else (None, {})
    scales = read_garfa(adapter_dir / GARFA_FILE, model) if has_garfa else {}
    taken = [module_path(layer, t) for layer, t in lora_modules(model)
             if lora and layer in lora["layers"] and t in lora["targets"]]
    taken += [f"layers.{layer}.self_attn.rope_freqs" for layer in garfa_layers(model) if layer in scales]
    if taken:
        raise UserError(f"{adapter_dir}: the model already has adapters on {', '.join(taken)}; "
                        f"load into a model without them")
    if lora:
        apply_lora(model, lora["layers"], lora["r"], lora["alpha"], lora["dropout"], lora["targets"])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in weights.items():  # a PEFT key is our parameter name between the prefix and ".weight"
                params[key.removeprefix(PEFT_PREFIX).removesuffix(".weight")].copy_(value)
    if scales:
        load_garfa_state(model, scales)
    return dict(lora_layers=lora["layers"] if lora else [], lora_targets=lora["targets"] if lora else [],
                garfa_layers=sorted(scales))
