"""model.py against transformers' LlamaForCausalLM, cached decoding, generation and checkpoint validation."""
import json

import pytest
import torch

from model import CheckpointError

from conftest import LLAMA3_SCALING, TOL, randomize_, reference, save_checkpoint, tiny_hf_config, tiny_model
from model import ModelConfig, SiluMul, Transformer, apply_rope, llama3_scale, rope_cos_sin, rope_inv_freq
from support.generate import KVCache, generate


def new_cache(model, batch, max_len):
    p = model.embed_tokens.weight
    return KVCache(model.config, batch, max_len, p.dtype, p.device)

# (name, config overrides, sequence length, shard size or None)
PARITY_CASES = {
    "gqa4_untied": (dict(), 96, None),
    "gqa3_tied_headdim": (dict(num_attention_heads=9, num_key_value_heads=3, head_dim=12, hidden_size=72,
                               tie_word_embeddings=True), 96, None),
    "llama31_scaling_long": (dict(rope_scaling=LLAMA3_SCALING), 160, None),
    "sharded": (dict(rope_scaling=LLAMA3_SCALING, tie_word_embeddings=True), 130, "60KB"),
}


def hf_reference(tmp_path, overrides, shard=None, seed=0):
    """A random LlamaForCausalLM saved by transformers itself (so it writes `rope_parameters`, v5 style)."""
    transformers = reference("transformers")
    hf = tiny_hf_config(**overrides)
    rope = {"rope_type": "default", "rope_theta": hf.pop("rope_theta")}
    rope.update(hf.pop("rope_scaling", None) or {})
    hf.pop("model_type")
    config = transformers.LlamaConfig(**hf, rope_parameters=rope, attn_implementation="eager")
    torch.manual_seed(seed)
    ref = randomize_(transformers.LlamaForCausalLM(config), seed).eval()
    ref.tie_weights()
    path = tmp_path / "hf"
    ref.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return ref, path


@pytest.mark.parametrize("case", PARITY_CASES)
def test_logits_match_transformers(tmp_path, case):
    overrides, T, shard = PARITY_CASES[case]
    ref, path = hf_reference(tmp_path, overrides, shard)
    if shard:
        assert (path / "model.safetensors.index.json").is_file()
    model = Transformer.from_pretrained(path)
    tokens = torch.randint(0, 96, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(tokens).logits
        got, hidden = model(tokens, output_hidden_states=True)
        ref_hidden = ref(tokens, output_hidden_states=True).hidden_states
    assert (got - expected).abs().max() < TOL
    # HF's hidden_states are (embeddings, block 0, ..., block L-2, final-normed); ours are every block, un-normed.
    for layer in range(len(hidden) - 1):
        scale = ref_hidden[layer + 1].abs().max()
        assert (hidden[layer] - ref_hidden[layer + 1]).abs().max() < TOL * scale
    assert (model.norm(hidden[-1]) - ref_hidden[-1]).abs().max() < TOL


def test_parity_configs_are_sensitive_to_rope_scaling(tmp_path):
    """Guards the parity test itself: with the Llama 3.1 scaling deleted, the logits move far beyond the tolerance."""
    ref, path = hf_reference(tmp_path, dict(rope_scaling=LLAMA3_SCALING))
    model = Transformer.from_pretrained(path)
    tokens = torch.randint(0, 96, (1, 160), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(tokens).logits
        model.inv_freq = rope_inv_freq(model.config.head_dim, model.config.rope_theta)  # scaling removed
        assert (model(tokens) - expected).abs().max() > 100 * TOL


def test_classic_and_rope_parameters_configs_agree(tmp_path):
    """Published Llama 3.1 configs use rope_theta + rope_scaling; transformers 5 writes rope_parameters."""
    _, path = hf_reference(tmp_path, dict(rope_scaling=LLAMA3_SCALING, rope_theta=5e5))
    hf = json.loads((path / "config.json").read_text())
    classic = {k: v for k, v in hf.items() if k != "rope_parameters"}
    classic["rope_theta"] = hf["rope_parameters"]["rope_theta"]
    classic["rope_scaling"] = {k: v for k, v in hf["rope_parameters"].items() if k != "rope_theta"}
    assert ModelConfig.from_hf(classic) == ModelConfig.from_hf(hf)
    assert ModelConfig.from_hf(hf).rope_theta == 5e5 and ModelConfig.from_hf(hf).rope_scaling.factor == 8.0


def test_llama3_scale_known_values():
    """Wavelengths below original/high_freq_factor stay, above original/low_freq_factor are divided by factor."""
    s = ModelConfig.from_hf(tiny_hf_config(rope_scaling=LLAMA3_SCALING)).rope_scaling
    inv_freq = torch.tensor([1.0, 2 * torch.pi / 32, 2 * torch.pi / 1000])  # wavelengths 6.3, 32, 1000
    scaled = llama3_scale(inv_freq, s)
    smooth = (64 / 32 - 1) / (4 - 1)
    expected = torch.tensor([1.0, (1 - smooth) * inv_freq[1] / 8 + smooth * inv_freq[1], inv_freq[2] / 8])
    assert torch.allclose(scaled, expected)


def test_rope_relative_position():
    """q.k after RoPE depends on the positions only through their difference."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    inv_freq = rope_inv_freq(16, 10000.0)[None]

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), inv_freq)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), inv_freq)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    assert torch.allclose(score(7, 3), score(107, 103), atol=1e-5)
    assert (score(7, 3) - score(40, 3)).abs() > 0.1  # a different offset gives a different score


@pytest.mark.parametrize("adapters", ["none", "lora", "garfa", "both"])
def test_kv_cache_matches_full_forward(adapters):
    from garfa import apply_garfa
    from lora import apply_lora

    model = tiny_model(rope_scaling=LLAMA3_SCALING)
    torch.manual_seed(0)
    if adapters in ("lora", "both"):
        apply_lora(model, [0, 2], r=4, alpha=8)
        for p in model.parameters():  # B = 0 would make LoRA invisible
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.2)
    if adapters in ("garfa", "both"):
        apply_garfa(model, [1, 2])
        with torch.no_grad():
            for block in model.layers[1:]:
                block.self_attn.rope_freqs.log_scale.copy_(torch.tensor([0.3, -0.4]))
    model.eval()
    tokens = torch.randint(0, 96, (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        cache = new_cache(model, 2, 100)
        steps = [model(tokens[:, :80], cache=cache)]  # a prefill, then a multi-token chunk, then single tokens
        steps.append(model(tokens[:, 80:90], cache=cache))
        steps += [model(tokens[:, t:t + 1], cache=cache) for t in range(90, 100)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < TOL
    prompts = [[5, 9, 11, 40, 41, 7, 8], [12, 13]]  # left-padded batch: per-row positions through the adapters
    for prompt, new in zip(prompts, generate(model, prompts, max_new_tokens=10, stop_ids=[])):
        with torch.no_grad():
            assert model(torch.tensor([prompt + new]))[0, len(prompt) - 1:-1].argmax(-1).tolist() == new


def test_left_padded_batch_matches_single_sequences():
    model = tiny_model()
    seqs = [torch.randint(3, 96, (n,), generator=torch.Generator().manual_seed(n)) for n in (20, 7)]
    tokens = torch.zeros(2, 20, dtype=torch.long)
    key_mask = torch.zeros(2, 20, dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, 20 - len(s):], key_mask[i, 20 - len(s):] = s, True
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(tokens, positions=positions, cache=new_cache(model, 2, 20), key_mask=key_mask)
        for i, s in enumerate(seqs):
            alone = model(s[None])
            assert (batched[i, 20 - len(s):] - alone[0]).abs().max() < TOL


def test_batched_generation_equals_one_by_one():
    model = tiny_model(seed=3)
    prompts = [[5, 9, 11, 40, 41, 7, 8], [12], [30, 31, 32, 33]]
    batched = generate(model, prompts, max_new_tokens=12, stop_ids=[])
    single = [generate(model, [p], max_new_tokens=12, stop_ids=[])[0] for p in prompts]
    assert batched == single and all(len(o) == 12 for o in batched)
    # Greedy decoding is the argmax of the full forward at every step.
    seq = torch.tensor([prompts[0] + batched[0]])
    with torch.no_grad():
        assert model(seq)[0, len(prompts[0]) - 1:-1].argmax(-1).tolist() == batched[0]


def test_generation_stops_per_sequence():
    model = tiny_model(seed=3)
    prompts = [[5, 9, 11], [30, 31, 32, 33]]
    free = generate(model, prompts, max_new_tokens=10, stop_ids=[])
    stop = free[0][3]
    out = generate(model, prompts, max_new_tokens=10, stop_ids=[stop])
    assert out[0] == free[0][:free[0].index(stop)]
    assert out[1] == (free[1][:free[1].index(stop)] if stop in free[1] else free[1])


@pytest.fixture
def checkpoint(tmp_path):
    hf = tiny_hf_config()
    return save_checkpoint(tiny_model(), tmp_path / "ckpt", hf), hf


def _edit_tensors(path, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, str(path / "model.safetensors"))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), "missing 1 tensor.*layers.1.mlp.up_proj"),
    (lambda s: s.update({"model.layers.7.self_attn.q_proj.weight": torch.zeros(128, 64)}),
     "unexpected tensor 'model.layers.7.self_attn.q_proj.weight'"),
    (lambda s: s.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}),
     r"'model.layers.0.self_attn.k_proj.weight' has shape \(64, 64\), config.json implies \(32, 64\)"),
])
def test_bad_tensors_are_named(checkpoint, edit, message):
    path, _ = checkpoint
    _edit_tensors(path, edit)
    with pytest.raises(ValueError, match=message):
        Transformer.from_pretrained(path)


@pytest.mark.parametrize("change, message", [
    (dict(model_type="mistral"), "model_type 'mistral' is not supported"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope type 'yarn' is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "llama3 rope scaling needs key 'low_freq_factor'"),
    (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads 3"),
    (dict(hidden_size=None), "required key 'hidden_size' is missing"),
    (dict(attention_bias=True), "'attention_bias: true' is not supported"),
])
def test_bad_configs_are_named(checkpoint, change, message):
    path, hf = checkpoint
    cfg = {k: v for k, v in {**hf, **change}.items() if v is not None}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        Transformer.from_pretrained(path)


def test_missing_files_are_named(checkpoint, tmp_path):
    path, hf = checkpoint
    with pytest.raises(CheckpointError, match="config.json"):
        Transformer.from_pretrained(tmp_path / "nowhere")
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Transformer.from_pretrained(path)
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="names shard 'model-00002-of-00002.safetensors'"):
        Transformer.from_pretrained(path)


def test_from_pretrained_dtype_and_tied_head(tmp_path):
    hf = tiny_hf_config(tie_word_embeddings=True)
    path = save_checkpoint(tiny_model(tie_word_embeddings=True), tmp_path / "tied", hf)
    model = Transformer.from_pretrained(path, dtype=torch.bfloat16)
    assert model.lm_head.weight is model.embed_tokens.weight and model.lm_head.weight.dtype == torch.bfloat16
    assert model.inv_freq.dtype == torch.float32  # RoPE angles stay in float32 under a bf16 model
    fp32 = Transformer.from_pretrained(path)
    tokens = torch.randint(0, 96, (1, 32))
    with torch.no_grad():  # bf16 is a smoke test: two correct bf16 runs differ by up to ~0.5
        assert (model(tokens).float() - fp32(tokens)).abs().max() < 1.0


def test_sequence_nll_matches_full_cross_entropy(monkeypatch):
    """Chunked completion-only NLL and its gradients (every weight below the frozen output layer) equal
    cross-entropy over full logits; a trainable output layer is refused rather than left without a gradient."""
    import model as model_module

    monkeypatch.setattr(model_module, "NLL_CHUNK", 7)  # several chunks, one of them partial
    model = tiny_model()
    model.lm_head.weight.requires_grad_(False)
    model.embed_tokens.weight.requires_grad_(False)  # tied or not: the output layer is frozen in training
    tokens = torch.randint(0, 96, (3, 24), generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(3, 24, dtype=torch.bool)
    mask[0, 10:], mask[1, 3:9], mask[2, 23] = True, True, True
    upstream = torch.tensor([0.5, -2.0, 3.0])  # backward scales each row's kept gradient by its own weight
    nll, count = model_module.sequence_nll(model, tokens, mask)
    (nll @ upstream).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    logp = torch.log_softmax(model(tokens)[:, :-1], dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
    expected = -(logp * mask[:, 1:]).sum(-1)
    (expected @ upstream).backward()
    assert count.tolist() == [14, 6, 1]
    assert torch.allclose(nll, expected, atol=1e-4)
    assert len(grads) > 10 and all(g.abs().max() > 0 for g in grads.values())
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="output layer must be frozen"):
        model_module.sequence_nll(model, tokens, mask)


@pytest.fixture(scope="module")
def default_model():
    from conftest import default_model_dir

    from support.tokenizer import Tokenizer
    path = default_model_dir()
    return path, Transformer.from_pretrained(path), Tokenizer.from_pretrained(path)


def test_default_model_matches_transformers(default_model):
    transformers = reference("transformers")
    path, model, tok = default_model
    ref = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens = torch.tensor([tok.encode("The Eiffel Tower, completed in 1889, stands on the Champ de Mars in Paris. "
                                      * 8)])
    with torch.no_grad():
        assert (model(tokens) - ref(tokens).logits).abs().max() < TOL


def test_default_model_knows_the_capital_of_france(default_model):
    _, model, tok = default_model
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tok.decode(generate(model, [prompt], max_new_tokens=20, stop_ids=tok.eos_ids)[0])
    assert "Paris" in answer, answer


def test_silu_mul_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(SiluMul.apply, (gate, up))
    assert torch.equal(SiluMul.apply(gate, up), torch.nn.functional.silu(gate) * up)
