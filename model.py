"""A Llama 3.x decoder with grouped-query attention, from scratch, reading Hugging Face checkpoints (METHOD 2).

Parameter names mirror the HF checkpoint (`self_attn.q_proj`, `mlp.gate_proj`, ...), so loading is a plain name
mapping and LoRA targets carry PEFT's names. The file reads top to bottom: config, RoPE math, the attention mask,
modules, streaming loading, and the completion-only NLL. It imports torch and safetensors only: decoding (with its
KV cache), the tokenizer and the commands' plumbing are in support/.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch.utils.checkpoint import checkpoint

SUPPORTED_MODEL_TYPES = ("llama",)
SUPPORTED_ROPE_TYPES = ("default", "llama3")


class CheckpointError(ValueError):
    """A config.json or checkpoint that cannot be loaded; the message names the file and the fix. The commands print
    it as one line, like every user mistake (`user_error`: support/cli.py reads it, so this file imports nothing)."""
    user_error = True


# ----------------------------------------------------------------------------------------------------------------
# Config: one frozen dataclass, built from config.json in one function that validates at the boundary.

@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's frequency scaling (`rope_scaling.rope_type == "llama3"`)."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @property
    def n_rep(self) -> int:
        """Query heads per KV head; query head h reads KV head h // n_rep (HF's repeat_kv order)."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "ModelConfig":
        def need(key):
            if key not in hf:
                raise CheckpointError(f"{source}: required key '{key}' is missing")
            return hf[key]

        if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(f"{source}: model_type '{hf.get('model_type')}' is not supported "
                            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        if hf.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{source}: hidden_act '{hf['hidden_act']}' is not supported (Llama uses 'silu')")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key, False):
                raise CheckpointError(f"{source}: '{key}: true' is not supported (Llama 3 has no biases)")
        n_heads = need("num_attention_heads")
        n_kv_heads = hf.get("num_key_value_heads") or n_heads
        if n_heads % n_kv_heads:
            raise CheckpointError(f"{source}: num_attention_heads {n_heads} is not a multiple of "
                            f"num_key_value_heads {n_kv_heads}")
        # Published Llama 3.1 configs use top-level rope_theta + rope_scaling; transformers 5.x writes rope_parameters.
        rope = dict(hf.get("rope_parameters") or {})
        rope = {**(hf.get("rope_scaling") or {}), **rope}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise CheckpointError(f"{source}: rope type '{rope_type}' is not supported "
                            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
        scaling = None
        if rope_type == "llama3":
            try:
                scaling = Llama3RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]),
                                            float(rope["high_freq_factor"]),
                                            int(rope["original_max_position_embeddings"]))
            except KeyError as e:
                raise CheckpointError(f"{source}: llama3 rope scaling needs key {e}") from None
        eos = hf.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        hidden = need("hidden_size")
        return cls(vocab_size=need("vocab_size"), hidden_size=hidden, n_layers=need("num_hidden_layers"),
                   n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=hf.get("head_dim") or hidden // n_heads,
                   intermediate_size=need("intermediate_size"), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                   rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), rope_scaling=scaling,
                   tie_word_embeddings=hf.get("tie_word_embeddings", False),
                   max_position_embeddings=hf.get("max_position_embeddings", 2048),
                   eos_token_ids=eos, pad_token_id=hf.get("pad_token_id"))

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path} not found: a model directory needs a Hugging Face config.json")
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); fix it or download the model again") from None
        if not isinstance(hf, dict):
            raise CheckpointError(f"{path} does not hold a Hugging Face config (a JSON object)")
        return cls.from_hf(hf, source=str(path))


# ----------------------------------------------------------------------------------------------------------------
# RoPE as small pure functions (HF "rotate_half" layout: the two halves of a head are the two rotation coordinates).

def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """inv_freq_i = 1 / theta^(2i/d), float32, shape (head_dim/2,)."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)


def llama3_scale(inv_freq: torch.Tensor, s: Llama3RopeScaling) -> torch.Tensor:
    """Llama 3.1: divide low frequencies by `factor`, keep high ones, blend smoothly in between."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def model_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta)
    return llama3_scale(inv_freq, cfg.rope_scaling) if cfg.rope_scaling else inv_freq


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T), inv_freq (H, hd/2) -> cos, sin (B, H, T, hd) in float32; H is 1 when heads share."""
    angles = positions[:, None, :, None].float() * inv_freq[None, :, None, :].float()  # (B, H, T, hd/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, H, T, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, hd) by the angles in cos/sin (broadcastable to x)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def attention_mask(start, T: int, key_mask: torch.Tensor | None, device=None,
                   n_keys: int | None = None) -> torch.Tensor | None:
    """Boolean mask (B|1, 1, T, n_keys), True = may attend; None where plain causal attention is exact.

    The T queries sit in slots start.. (an int, or a 0-d tensor for a static cache) and the keys in slots 0..n_keys-1
    (default start + T: the keys written so far). `key_mask` (B, n_keys) marks real tokens (False = padding). A padded
    query keeps its own slot so that no row has every key masked: SDPA backends disagree on such rows (zeros on CPU in
    torch 2.13, NaN on some others).
    """
    if n_keys is None and key_mask is None and (start == 0 or T == 1):
        return None
    q_slot = (start + torch.arange(T, device=device))[:, None]
    k_slot = torch.arange(start + T if n_keys is None else n_keys, device=device)[None, :]
    allowed = (k_slot <= q_slot)[None, None]  # (1, 1, T, S)
    if key_mask is not None:
        allowed = (allowed & key_mask[:, None, None, :]) | (k_slot == q_slot)  # (B, 1, T, S)
    return allowed


# ----------------------------------------------------------------------------------------------------------------
# Modules

class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        # Optional per-KV-head frequencies: a module mapping inv_freq (hd/2,) -> (n_kv, hd/2). GARFA (garfa.py)
        # plugs in here; None means this layer uses the rotation tables shared by all layers.
        self.rope_freqs: nn.Module | None = None

    def forward(self, x, positions, inv_freq, shared_rope, mask=None, cache=None):
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, n_heads, T, hd)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        if self.rope_freqs is None:
            cos_q = cos_k = shared_rope[0]
            sin_q = sin_k = shared_rope[1]
        else:  # a KV head and the n_rep query heads that read it rotate with the same frequencies
            cos_k, sin_k = rope_cos_sin(positions, self.rope_freqs(inv_freq))  # (B, n_kv, T, hd)
            cos_q, sin_q = (t.repeat_interleave(cfg.n_rep, dim=1) for t in (cos_k, sin_k))  # (B, n_heads, T, hd)
        q, k = apply_rope(q, cos_q, sin_q), apply_rope(k, cos_k, sin_k)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, n_kv, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=cfg.n_rep > 1)  # (B, n_heads, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim))


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, keeping only gate and up for backward (autograd would keep silu(gate) as well)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        s = torch.sigmoid(gate)
        return grad * up * s * (1 + gate * (1 - s)), grad * gate * s  # d silu(g)/dg = s (1 + g (1 - s))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # normalise in float32, as the reference does, whatever the activation dtype
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, positions, inv_freq, shared_rope, mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), positions, inv_freq, shared_rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        # Kept out of the state dict and out of .to(dtype): RoPE angles are always computed in float32.
        self.inv_freq = model_inv_freq(cfg)
        # Recompute each block in backward instead of keeping its activations (small GPUs; train.py
        # --activation-checkpointing). Same gradients, about one block's activations kept instead of all.
        self.activation_checkpointing = False

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def hidden_states(self, tokens: torch.Tensor, *, positions: torch.Tensor | None = None,
                      cache=None, key_mask: torch.Tensor | None = None,
                      output_hidden_states: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens (B, T) -> final-normed states (B, T, D) and, if `output_hidden_states`, the L residual streams.

        `cache` (support/generate.py's KVCache) makes this a step of cached decoding (tokens go to slots
        cache.pos...); `key_mask` (B, cache.pos+T), or (B, max_len) with a static cache, marks padding; `positions`
        (B, T) default to the slot index.
        """
        B, T = tokens.shape
        start = cache.pos if cache is not None else 0
        if positions is None:
            positions = (start + torch.arange(T, device=tokens.device)).expand(B, T)
        self.inv_freq = self.inv_freq.to(tokens.device)
        shared_rope = rope_cos_sin(positions, self.inv_freq[None])  # (B, 1, T, hd)
        mask = attention_mask(start, T, key_mask, tokens.device, cache.n_keys if cache is not None else None)
        x = self.embed_tokens(tokens)  # (B, T, D)
        blocks = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.layers):
            if recompute:
                x = checkpoint(block, x, positions, self.inv_freq, shared_rope, mask, use_reentrant=False)
            else:
                x = block(x, positions, self.inv_freq, shared_rope, mask, cache.layer(i) if cache is not None else None)
            if output_hidden_states:
                blocks.append(x)
        if cache is not None:
            cache.pos += T
        return self.norm(x), blocks

    def forward(self, tokens: torch.Tensor, output_hidden_states: bool = False, *, last_only: bool = False,
                positions: torch.Tensor | None = None, cache=None,
                key_mask: torch.Tensor | None = None):
        """tokens (B, T) -> logits (B, T, vocab) [, the L residual streams (B, T, D) before the final norm].

        `last_only` keeps only the last position's logits (generation); see `hidden_states` for the rest.
        """
        x, blocks = self.hidden_states(tokens, positions=positions, cache=cache, key_mask=key_mask,
                                       output_hidden_states=output_hidden_states)
        logits = self.lm_head(x[:, -1:] if last_only else x)  # (B, T, vocab)
        return (logits, blocks) if output_hidden_states else logits

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "Transformer":
        """Stream an HF checkpoint into the model, one tensor at a time, straight to its device and dtype.

        The model is built on the meta device (shapes, no memory) and every tensor name and shape is checked
        against the file headers before any weight is read. Each tensor is then read, converted into the place it
        will live and its source released before the next one: peak host memory is the final model plus one
        tensor (bf16 file into a float32 model included), and about one tensor when loading onto a GPU.
        """
        path = Path(path)
        cfg = ModelConfig.from_json(path / "config.json")
        with torch.device("meta"):
            model = cls(cfg)
        expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            expected.pop("lm_head.weight")
        sources = {}  # our name -> (file, HF name)
        for hf_name, (file, shape) in read_safetensors(path).items():
            name = hf_name.removeprefix("model.")
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # some tied checkpoints store a copy of the embedding; the model shares one tensor
            if name not in expected:
                raise CheckpointError(f"{file}: unexpected tensor '{hf_name}' for a {cfg.n_layers}-layer Llama model")
            if shape != expected[name]:
                raise CheckpointError(f"{file}: tensor '{hf_name}' has shape {shape}, config.json implies {expected[name]}")
            sources[name] = (file, hf_name)
        missing = sorted(set(expected) - set(sources))
        if missing:
            raise CheckpointError(f"{path}: checkpoint is missing {len(missing)} tensor(s), e.g. '{missing[0]}'; "
                            f"download the model again")
        state = {}
        for name, (file, hf_name) in sources.items():
            # One open per tensor: safe_open maps the whole file, and every page read stays resident until the file
            # is closed, so one open per 5 GB shard would hold the shard beside the model. copy=True: the model owns
            # its memory even where the dtype already matches, instead of pages of a file that may be rewritten.
            with safe_open(file, framework="pt") as f:
                state[name] = f.get_tensor(hf_name).to(device=device, dtype=dtype or torch.float32, copy=True)
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        model.inv_freq = model_inv_freq(cfg).to(device or "cpu")
        return model.eval()


def read_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors of a single-file or sharded (model.safetensors.index.json) checkpoint, from the file headers
    alone (no weight is read): name -> (file, shape). Every shard is checked to exist before any is opened."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json "
                        f"(a Hugging Face model directory is expected; `python prepare.py` builds the default)")
    for file in files:
        if not (path / file).is_file():
            raise CheckpointError(f"{index}: names shard '{file}', which is not in {path}; download the model again")
    out = {}
    for file in files:
        try:
            with safe_open(path / file, framework="pt") as f:
                out.update({name: (str(path / file), tuple(f.get_slice(name).get_shape())) for name in f.keys()})
        except SafetensorError as e:
            raise CheckpointError(f"{path / file} is damaged ({e}); download the model again") from None
    return out


# ----------------------------------------------------------------------------------------------------------------
# Completion-only negative log-likelihood: the loss of training, of the RoPE-influence score and of cloze scoring.

NLL_CHUNK = 512  # positions per chunk of vocabulary logits


def chunk_nll(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log softmax(h W^T)[target] (N,) for a chunk of positions h (N, D), and the log-probabilities (N, V), float32."""
    log_probs = F.linear(h, weight).float().log_softmax(-1)  # (N, V)
    return -log_probs.gather(1, targets[:, None])[:, 0], log_probs


class ChunkNLL(torch.autograd.Function):
    """chunk_nll under autograd, with the gradient formed in the same pass.

    d nll_i / d h_i = (softmax_i - onehot(target_i)) W: formed while the chunk's logits exist, it is one more matmul
    and (N, D) numbers to keep, and backward only scales row i by the upstream gradient. So the logits are formed
    once and never kept (a checkpointed cross-entropy forms them twice and runs the log-softmax three times). The
    weight gets no gradient: LoRA and GARFA never train the output layer.
    """

    @staticmethod
    def forward(ctx, h, weight, targets):
        if ctx.needs_input_grad[1]:
            raise ValueError("sequence_nll: the output layer must be frozen (its gradient is not computed)")
        nll, log_probs = chunk_nll(h, weight, targets)
        probs = log_probs.exp_()  # softmax, in place
        probs[torch.arange(len(targets), device=h.device), targets] -= 1
        ctx.save_for_backward((probs.to(weight.dtype) @ weight).to(h.dtype))  # (N, D)
        return nll

    @staticmethod
    def backward(ctx, grad):  # grad (N,)
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad[:, None].to(grad_h.dtype), None, None


def sequence_nll(model: Transformer, tokens: torch.Tensor, target_mask: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of the tokens where target_mask (B, T) is True, each predicted from the position before it.

    Returns (nll (B,), count (B,)). Logits are formed only at target positions, a chunk at a time, and none stays
    alive: under autograd each chunk keeps its gradient with respect to h instead (ChunkNLL).
    """
    x, _ = model.hidden_states(tokens)  # (B, T, D)
    predict = target_mask[:, 1:]  # position t predicts token t + 1
    rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(predict)[predict]  # (N,)
    h, targets = x[:, :-1][predict], tokens[:, 1:][predict]  # (N, D), (N,)
    nll = []
    for i in range(0, len(targets), NLL_CHUNK):
        args = (h[i:i + NLL_CHUNK], model.lm_head.weight, targets[i:i + NLL_CHUNK])
        nll.append(ChunkNLL.apply(*args) if torch.is_grad_enabled() else chunk_nll(*args)[0])
    nll = torch.cat(nll) if nll else h.new_zeros(0, dtype=torch.float32)
    B = tokens.shape[0]
    total = torch.zeros(B, dtype=torch.float32, device=tokens.device).index_add(0, rows, nll)
    return total, predict.sum(-1)

