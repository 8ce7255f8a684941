"""The memory and compute plan of a training run, from config.json alone (no weight is read).

    python train.py --plan --preset paper --model /path/to/Llama-3.1-8B-Instruct   # prints format_plan(plan(...))

Memory is what one training step holds: the frozen weights; the adapters with their float32 gradients and AdamW's
two float32 moments (LoRA and GARFA parameters are float32 whatever the weights are, so there is no separate
master copy); the activations that autograd keeps from the forward pass for the backward pass; and a workspace for
the largest transient tensors. Tensor sizes follow the model code, op by op, as torch.autograd.graph.saved_tensors_hooks
sees them (`measured_activation_bytes` counts the same thing; tests/test_plan.py compares the two).

What a block keeps, for n = batch x seq_len tokens, s bytes per activation (the weight dtype), f = 4 (float32):
- RMSNorm: its input as float32 (F.rms_norm runs on x.float()) and the 1/rms per token.
- RoPE: cos and sin. The shared tables are float32 and computed once; in another dtype each layer keeps four casts
  (cos and sin, for q and for k). A GARFA layer computes its own: the angles (float32), and for q and for k the
  pre-rotation tensor, its rotate_half and the cos and sin it multiplies (all four need gradients).
- SDPA (flash-style kernels, CPU and CUDA): the rotated q and k, v, the output, and a float32 log-sum-exp per head.
- SwiGLU: gate and up (SiluMul keeps only those two).
- LoRA (lora.DroppedDown): each target's input (q, k, v share one; o reads SDPA's output, already kept, since the
  kernels write it in (B, T, heads, hd) layout and the reshape is a view), a 1-byte dropout mask per target, and the
  rank-r product A x in float32. A frozen linear keeps nothing: its input gradient needs only its weight.
- Layers below the lowest adapted layer keep nothing (no gradient reaches them); the lowest one's first RMSNorm keeps
  nothing either (its input needs no gradient). `lowest_adapted_layer` defaults to 0, the worst case.
- The loss (model.sequence_nll): the final norm, the hidden states at the target positions (here: every position),
  and the targets. Logits are formed NLL_CHUNK positions at a time, once (model.ChunkNLL): a transient workspace
  of one chunk's logits, not an activation; each chunk keeps its gradient with respect to the hidden states instead,
  the size of the hidden states it replaces.
With activation checkpointing (model.activation_checkpointing), torch's checkpoint keeps the input of every block
a gradient passes through and recomputes one block at a time in backward, so the peak adds one adapted block's
activations. Approximations: every position is counted as a loss target (an upper bound), and the lowest adapted
layer is taken to adapt its attention; a lowest layer with GARFA but no LoRA on q or k keeps two fewer tensors
per side (its q and k need no gradient), so the estimate is high by 2 n (q + kv) s there.
"""
from __future__ import annotations

import dataclasses

import torch

from lora import TARGETS, target_name
from model import NLL_CHUNK, ModelConfig, Transformer

GIB = 2 ** 30
GPU_SIZES_GB = (24, 40, 80)  # common cards: 24 GB (RTX 4090, A10G, L4), 40 and 80 GB (A100, H100)
GPU_USABLE = 0.9  # the rest for the CUDA context, allocator fragmentation and kernel workspaces
F32 = 4
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, float32 like the parameters


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA target linear of one block, read from the model itself (on meta)."""
    with torch.device("meta"):
        block = Transformer(dataclasses.replace(cfg, n_layers=1)).layers[0]
    linears = {t: getattr(getattr(block, module), t) for t, module in TARGETS.items()}
    return {t: (m.in_features, m.out_features) for t, m in linears.items()}


def count_params(cfg: ModelConfig) -> int:
    """Every parameter of the base model (a tied head counted once)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(cfg).parameters())


def lora_params(cfg: ModelConfig, layers: int, r: int, targets: tuple[str, ...]) -> int:
    """r * (in + out) per target linear per layer: A is (r, in), B is (out, r). PEFT counts the same."""
    shapes = linear_shapes(cfg)
    return layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in {target_name(t) for t in targets})


def garfa_params(cfg: ModelConfig, layers: int) -> int:
    return layers * cfg.n_kv_heads  # one log_scale per KV head (garfa.GARFA)


def activation_terms(cfg: ModelConfig, n: int, s: int, r: int, targets: set[str]) -> dict[str, int]:
    """Bytes autograd keeps per block, split into the parts that depend on the layer's role (module docstring)."""
    D, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    norm = n * D * F32 + n * F32  # float32 input and 1/rms per token
    rope_casts = 0 if s == F32 else 4 * n * hd * s
    attention = n * (2 * q + 2 * kv) * s + n * cfg.n_heads * F32  # q, k, v, output; log-sum-exp
    swiglu = 2 * n * I * s
    # The input each target's DroppedDown keeps, by the tensor it is: q, k, v read one; gate and up another.
    shared = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "o", "gate_proj": "h2", "up_proj": "h2",
              "down_proj": "m"}
    input_bytes = {"h": n * D * s, "o": 0, "h2": n * D * s, "m": n * I * s}
    lora_inputs = sum(input_bytes[x] for x in {shared[t] for t in targets})
    shapes = linear_shapes(cfg)
    lora = lora_inputs + sum(n * shapes[t][0] + n * r * F32 for t in targets)  # mask, A x
    garfa = n * kv * F32 + 4 * n * (q + kv) * s + n * F32 - rope_casts  # angles, q and k sides, positions
    return dict(norm=norm, base=2 * norm + rope_casts + attention + swiglu, lora=lora, garfa=garfa,
                rope_tables=2 * n * hd * F32 if s == F32 else 0)


def loss_bytes(cfg: ModelConfig, n: int, s: int) -> int:
    """Final norm, the hidden states at the target positions, targets and indices (sequence_nll)."""
    per_target = 8 + 8 + 4 + 1  # target id and row index (int64), the NLL (float32), the target mask (bool)
    return n * cfg.hidden_size * F32 + n * F32 + n * cfg.hidden_size * s + n * per_target


def plan(cfg: ModelConfig, *, lora_layers: int, garfa_layers: int, r: int, targets: tuple[str, ...],
         batch_size: int, seq_len: int, grad_accum: int, steps: int, dtype: torch.dtype,
         activation_checkpointing: bool, lowest_adapted_layer: int = 0) -> dict:
    """Memory (bytes) and compute (FLOPs) of a run; see the module docstring for what each term counts."""
    L = cfg.n_layers
    if not (0 <= lora_layers <= L and 0 <= garfa_layers <= L and 0 <= lowest_adapted_layer < L):
        raise ValueError(f"layer counts must lie in 0..{L} and lowest_adapted_layer in 0..{L - 1}")
    targets = {target_name(t) for t in targets}
    s = torch.empty(0, dtype=dtype).element_size()
    n = batch_size * seq_len
    n_params = count_params(cfg)
    lora, garfa = lora_params(cfg, lora_layers, r, tuple(targets)), garfa_params(cfg, garfa_layers)
    trainable = lora + garfa

    t = activation_terms(cfg, n, s, r, targets)
    adapted = lora_layers + garfa_layers > 0
    path = L - lowest_adapted_layer if adapted else 0  # blocks a gradient passes through
    no_ckpt = (path * t["base"] - (t["norm"] if adapted else 0) + lora_layers * t["lora"]
               + garfa_layers * t["garfa"] + (t["rope_tables"] if adapted else 0) + loss_bytes(cfg, n, s) * adapted)
    ckpt = (path * n * cfg.hidden_size * s + n * 8 + loss_bytes(cfg, n, s)) * adapted  # block inputs, positions
    recompute = (t["base"] + (t["lora"] if lora_layers else 0) + (t["garfa"] if garfa_layers else 0)) * adapted
    chunk = min(NLL_CHUNK, n)
    workspace = max(chunk * cfg.vocab_size * (8 + s),  # one chunk's logits, float32 log-softmax and its gradient
                    n * (3 * cfg.intermediate_size + 3 * cfg.hidden_size) * s) * adapted  # a block's backward
    activations = ckpt + recompute if activation_checkpointing else no_ckpt

    weights = n_params * s
    states = trainable * F32 * (1 + 1 + ADAMW_MOMENTS)  # parameters, gradients, AdamW moments
    peak = weights + states + activations + workspace
    tokens = steps * grad_accum * n
    active = n_params - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)  # all but the lookup
    return dict(
        settings=dict(lora_layers=lora_layers, garfa_layers=garfa_layers, r=r,
                      targets=[t for t in TARGETS if t in targets], batch_size=batch_size, seq_len=seq_len,
                      grad_accum=grad_accum, steps=steps,
                      dtype=str(dtype).removeprefix("torch."), activation_checkpointing=activation_checkpointing,
                      lowest_adapted_layer=lowest_adapted_layer, layers=L),
        n_params=n_params, lora_params=lora, garfa_params=garfa, trainable_params=trainable,
        weight_bytes=weights, trainable_bytes=trainable * F32, grad_bytes=trainable * F32,
        optimizer_bytes=trainable * F32 * ADAMW_MOMENTS,
        activation_bytes_no_ckpt=no_ckpt, activation_bytes_ckpt=ckpt, recompute_bytes=recompute,
        activation_bytes=activations, workspace_bytes=workspace, peak_bytes=peak,
        fits_gpu={gb: peak <= GPU_USABLE * gb * GIB for gb in GPU_SIZES_GB},
        tokens=tokens, active_params=active,
        train_flops_6nd=6 * active * tokens,
        train_flops_frozen_base=(4 + 2 * activation_checkpointing) * active * tokens)


def format_plan(d: dict) -> str:
    """The plan as text for people (GiB = 2^30 bytes)."""
    g = lambda b: f"{b / GIB:9.3f} GiB"
    st = d["settings"]
    ckpt = st["activation_checkpointing"]
    lines = [
        f"plan: {st['layers']}-layer model, {d['n_params'] / 1e9:.3f} B parameters in {st['dtype']}",
        f"  run: {st['steps']} steps x grad_accum {st['grad_accum']} x batch {st['batch_size']} x seq_len "
        f"{st['seq_len']} = {d['tokens']:,} tokens; LoRA r {st['r']} on {st['lora_layers']} layers "
        f"({', '.join(st['targets'])}), GARFA on {st['garfa_layers']} layers; "
        f"gradients from layer {st['lowest_adapted_layer']} up; activation checkpointing {'on' if ckpt else 'off'}",
        f"  trainable: {d['trainable_params']:,} (LoRA {d['lora_params']:,} + GARFA {d['garfa_params']:,})",
        "memory:",
        f"  weights (frozen)             {g(d['weight_bytes'])}",
        f"  adapters (float32)           {g(d['trainable_bytes'])}",
        f"  gradients (float32)          {g(d['grad_bytes'])}",
        f"  AdamW moments (2 x float32)  {g(d['optimizer_bytes'])}",
        f"  activations, per micro-batch {g(d['activation_bytes'])}"
        + (f"  (block inputs {g(d['activation_bytes_ckpt']).strip()} + one block recomputed "
           f"{g(d['recompute_bytes']).strip()})" if ckpt else ""),
        f"    without checkpointing      {g(d['activation_bytes_no_ckpt'])}",
        f"    with checkpointing         {g(d['activation_bytes_ckpt'] + d['recompute_bytes'])}",
        f"  workspace (transient)        {g(d['workspace_bytes'])}",
        f"  peak estimate                {g(d['peak_bytes'])}",
        "  fits on a GPU of " + ", ".join(f"{gb} GB: {'yes' if ok else 'no'}" for gb, ok in d["fits_gpu"].items())
        + f" ({GPU_USABLE:.0%} of it usable)",
        "compute:",
        f"  6 N D = {d['train_flops_6nd']:.3g} FLOPs (N = {d['active_params'] / 1e9:.3f} B parameters a token passes "
        f"through, D = tokens; Kaplan et al.'s forward 2N + backward 4N, attention left out)",
        f"  with the base frozen ~ {d['train_flops_frozen_base']:.3g} FLOPs (no weight gradients: backward 2N"
        + (", + 2N to recompute" if ckpt else "") + ")",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The measurement the estimate is checked against

class _Saved:
    """What the pack hook hands autograd: alive exactly as long as the graph keeps the saved tensor."""
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def measured_activation_bytes(model: Transformer, tokens: torch.Tensor, target_mask: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd still holds for backward after one sequence_nll forward (parameters
    excluded): the quantity `plan` estimates as activation_bytes (checkpointing: block inputs and the loss only)."""
    import weakref

    from model import sequence_nll

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    handles = []

    def pack(t):
        saved = _Saved(t)
        handles.append(weakref.ref(saved))
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved.tensor):
        nll, count = sequence_nll(model, tokens, target_mask)
    storages = {}
    for h in handles:
        if (saved := h()) is not None:
            st = saved.tensor.untyped_storage()
            if st.data_ptr() not in params:
                storages[st.data_ptr()] = st.nbytes()
    del nll, count
    return sum(storages.values())


# ----------------------------------------------------------------------------------------------------------------
# The plan of a train.py run, and the rough phase times it prints up front

def run_plan(job, arms: list[tuple[str, str, str]]) -> str:
    """train.py --plan: the plan of the widest arm (name, LoRA side, GARFA side), from config.json alone."""
    cfg = ModelConfig.from_json(job.model_dir / "config.json")
    k = job.scores.k or -(-cfg.n_layers // 4)
    width = lambda side: cfg.n_layers if side == "all" else 0 if side == "none" else k
    name, lora, garfa = max(arms, key=lambda a: (width(a[1]), width(a[2])))
    t = job.train
    return (f"plan for arm {name} ({len(job.seeds)} seed(s)), {job.dtype}, from {job.model_dir.name}/config.json\n"
            + format_plan(plan(cfg, lora_layers=width(lora), garfa_layers=width(garfa), r=t.r, targets=t.targets,
                               batch_size=t.batch_size, seq_len=t.seq_len, grad_accum=t.grad_accum, steps=t.steps,
                               dtype=job.dtype, activation_checkpointing=t.activation_checkpointing)))
