"""lora.py: LS-LoRA on chosen layers, merge/unmerge, and the PEFT on-disk format checked against `peft` itself."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import (LLAMA3_SCALING, TOL, adamw_losses, reference, base_model, batch, completion_loss, default_model_dir,
                      logits, save_checkpoint, tiny_hf_config)
from garfa import GARFA_FILE, apply_garfa, garfa_layers
from lora import (DEFAULT_TARGETS, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, TARGETS, DroppedDown, LoRALinear, apply_lora,
                  count_trainable, keep_mask, load_adapter, lora_layers, lora_modules, merge_lora, save_adapter,
                  unmerge_lora)
from support.files import TENSORS_SHA256, save_tensors, tensors_sha256


def randomize_lora_(model, seed=0, std=0.1):
    """A trained-looking adapter: B nonzero (an untrained one has B = 0 and changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(std * torch.randn(m.lora_B.shape, generator=g))
    return model


def lora_model(layers=(0, 2), seed=0, **kwargs):
    model = base_model(seed)
    torch.manual_seed(seed)
    apply_lora(model, layers, **{"r": 4, "alpha": 8, **kwargs})
    return randomize_lora_(model, seed)


# ----------------------------------------------------------------------------------------------------------------
# The adapter itself

def test_untrained_lora_is_bit_identical_to_base():
    model, tokens = base_model(), batch()
    expected = logits(model, tokens)
    apply_lora(model, [0, 1, 2])
    assert len(lora_modules(model)) == 3 * len(DEFAULT_TARGETS)
    assert torch.equal(logits(model, tokens), expected)


def test_only_lora_matrices_require_grad():
    model = base_model()
    apply_lora(model, [1], r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.1.{parent}.{t}.lora_{m}" for t, parent in TARGETS.items() for m in "AB"}
    cfg = model.config
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    dims = [(cfg.hidden_size, q), (cfg.hidden_size, kv), (cfg.hidden_size, kv), (q, cfg.hidden_size)] + \
           [(cfg.hidden_size, cfg.intermediate_size)] * 2 + [(cfg.intermediate_size, cfg.hidden_size)]
    assert count_trainable(model) == sum(4 * (i + o) for i, o in dims)


def test_apply_lora_touches_only_chosen_layers_and_targets():
    model, tokens = base_model(), batch()
    before = {name: p for name, p in model.named_parameters()}
    _, hidden_before = model(tokens, output_hidden_states=True)
    assert apply_lora(model, [2, 1, 1], r=4, targets=("q", "v_proj", "down")) == [1, 2]  # short and full names
    randomize_lora_(model)
    assert set(lora_modules(model)) == {(l, t) for l in (1, 2) for t in ("q_proj", "v_proj", "down_proj")}
    assert lora_layers(model) == [1, 2]
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 6
    # Base weights keep their checkpoint names and storage; the adapter matrices sit next to them.
    after = dict(model.named_parameters())
    assert all(after[name] is p for name, p in before.items())
    assert sorted(set(after) - set(before)) == sorted(f"layers.{l}.{p}.{t}.lora_{m}" for l in (1, 2) for m in "AB"
                                                      for t, p in (("q_proj", "self_attn"), ("v_proj", "self_attn"),
                                                                   ("down_proj", "mlp")))
    with torch.no_grad():
        _, hidden = model(tokens, output_hidden_states=True)
    assert torch.equal(hidden[0], hidden_before[0])  # layer 0 has no adapter
    assert (hidden[1] - hidden_before[1]).abs().max() > 1e-2


def test_merged_forward_equals_unmerged_and_unmerge_restores_weights():
    model, tokens = lora_model(), batch()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    unmerged = logits(model, tokens)
    assert merge_lora(model) == [0, 2]
    assert all(m.merged for m in lora_modules(model).values())
    assert not torch.equal(model.layers[0].self_attn.q_proj.weight, weights["layers.0.self_attn.q_proj.weight"])
    merged = logits(model, tokens)
    assert (merged - unmerged).abs().max() < 1e-5 * unmerged.abs().max()
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.allclose(p, weights[name], atol=1e-6), name
    assert (logits(model, tokens) - unmerged).abs().max() < 1e-5 * unmerged.abs().max()
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(model)


def test_gradients_reach_every_lora_matrix():
    model = lora_model(layers=(0, 1, 2))
    completion_loss(model, batch()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
        else:
            assert p.grad is None, name
    # Untrained (B = 0): the gradient reaches B, so training can start.
    fresh = base_model()
    apply_lora(fresh, [1])
    completion_loss(fresh, batch()).backward()
    assert all(m.lora_B.grad.abs().max() > 0 for m in lora_modules(fresh).values())


def test_dropped_down_equals_plain_dropout_with_the_same_mask():
    """Forward and both gradients equal autograd on x * keep / (1 - p) @ A.T, keep drawn from the same RNG state."""
    p, g = 0.3, torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 24, generator=g, requires_grad=True)
    A = torch.randn(4, 24, generator=g, requires_grad=True)
    upstream = torch.randn(3, 50, 4, generator=g)
    torch.manual_seed(7)
    out = DroppedDown.apply(x, A, keep_mask(x.shape, p, None), 1 / (1 - p))
    (out * upstream).sum().backward()
    torch.manual_seed(7)
    keep = torch.rand(x.shape) >= p
    x2, A2 = x.detach().clone().requires_grad_(), A.detach().clone().requires_grad_()
    ref = torch.nn.functional.linear(x2 * keep / (1 - p), A2)
    (ref * upstream).sum().backward()
    assert 0.6 < keep.float().mean() < 0.8
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(A.grad, A2.grad)


def test_training_dropout_keeps_one_byte_per_input_element():
    """nn.Dropout would keep a float copy and a mask per target; LoRALinear keeps only a bool mask beyond eval mode."""
    layer = LoRALinear(torch.nn.Linear(24, 40, bias=False).requires_grad_(False), r=4, alpha=8, dropout=0.1)
    x = torch.randn(2, 30, 24, requires_grad=True)

    def saved_bytes(training):
        layer.train(training)
        storages = {}  # data pointer -> bytes: a tensor saved twice counts once

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(storages.values())

    assert saved_bytes(True) - saved_bytes(False) == x.numel()  # the keep-mask, 1 byte per element


@pytest.mark.parametrize("adapter", ["lora", "garfa"])
def test_a_few_adamw_steps_reduce_the_loss(adapter):
    model, tokens = base_model(), batch(seed=5)
    torch.manual_seed(0)
    if adapter == "lora":
        apply_lora(model, [1, 2], r=4, alpha=8, dropout=0.0)
    else:
        apply_garfa(model, [0, 1, 2])
    model.train()
    losses = adamw_losses(model, tokens, lr=1e-2)  # METHOD 4.6: GARFA lr 1e-2, no weight decay
    assert losses[-1] < losses[0] - 0.1, losses


def test_bf16_forward_keeps_lora_in_float32():
    """bf16 is a smoke test (two correct bf16 runs differ by up to ~0.5)."""
    fp32, tokens = lora_model(), batch(length=32)
    expected = logits(fp32, tokens)
    bf16 = lora_model().to(torch.bfloat16)
    for m in lora_modules(bf16).values():  # the model's .to() cast them; train in float32 again
        m.lora_A.data, m.lora_B.data = m.lora_A.float(), m.lora_B.float()
    out = logits(bf16, tokens)
    assert out.dtype == torch.bfloat16 and (out.float() - expected).abs().max() < 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a float32 model under autocast, as train.py on GPU
        loss = completion_loss(fp32, tokens)
    loss.backward()
    m = fp32.layers[0].self_attn.q_proj
    assert m.lora_A.dtype == m.lora_A.grad.dtype == torch.float32 and m.lora_B.grad.abs().max() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=[3]), r"layer indices \[3\] are out of range for a 3-layer model"),
    (dict(layers=[1], targets=("q", "qkv")), r"unknown LoRA target 'qkv' \(valid: q_proj, k_proj, v_proj, o_proj, "
                                             r"gate_proj, up_proj, down_proj"),
    (dict(layers=[1], targets=()), "no LoRA targets given"),
    (dict(layers=[1], r=0), "rank r must be a positive integer, got 0"),
    (dict(layers=[1], r=2.0), "rank r must be a positive integer, got 2.0"),
    (dict(layers=[1], alpha=-1), "alpha must be a positive number, got -1"),
    (dict(layers=[1], dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
])
def test_bad_arguments_are_named(kwargs, message):
    model = base_model()
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **kwargs)
    assert not lora_modules(model)


def test_applying_twice_is_an_error_and_attaches_nothing():
    model = base_model()
    apply_lora(model, [1], targets=("q", "k"))
    apply_lora(model, [1], targets=("v",))  # another linear of the same layer is fine
    with pytest.raises(ValueError, match="already attached to layers.1.self_attn.q_proj"):
        apply_lora(model, [0, 1], targets=("q",))
    assert set(lora_modules(model)) == {(1, "q_proj"), (1, "k_proj"), (1, "v_proj")}


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading

def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model, tokens = lora_model(dropout=0.1), batch()
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="some/base")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]
    config = json.loads((tmp_path / "adapter" / PEFT_CONFIG_FILE).read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"], config["lora_dropout"],
            config["layers_to_transform"], config["target_modules"], config["base_model_name_or_path"]) == \
        ("LORA", "CAUSAL_LM", 4, 8, 0.1, [0, 2], list(DEFAULT_TARGETS), "some/base")
    keys = load_file(tmp_path / "adapter" / PEFT_WEIGHTS_FILE)
    assert "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight" in keys and len(keys) == 2 * 7 * 2
    fresh = base_model()
    info = load_adapter(fresh, tmp_path / "adapter")
    assert info == dict(lora_layers=[0, 2], lora_targets=list(DEFAULT_TARGETS), garfa_layers=[])
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
           {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora_modules(fresh)[(2, "down_proj")].dropout == 0.1
    assert torch.equal(logits(fresh, tokens), logits(model, tokens))


def test_save_adapter_writes_what_is_attached_and_replaces_the_whole_directory(tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(ValueError, match="neither LoRA nor GARFA attached"):
        save_adapter(base_model(), out)
    model = lora_model()
    apply_garfa(model, [1])
    save_adapter(model, out)
    assert sorted(p.name for p in out.iterdir()) == [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, GARFA_FILE]
    garfa_only = base_model()
    apply_garfa(garfa_only, [0])
    save_adapter(garfa_only, out)  # no stale LoRA files survive
    assert [p.name for p in out.iterdir()] == [GARFA_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary directories left behind
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds notes.txt"):
        save_adapter(model, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_save_adapter_needs_one_peft_config_for_all_layers(tmp_path):
    model = base_model()
    apply_lora(model, [0], targets=("q",))
    apply_lora(model, [1], targets=("v",))
    with pytest.raises(ValueError, match="same targets on every adapted layer"):
        save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def _edit_json(name, **changes):
    def edit(d):
        cfg = json.loads((d / name).read_text())
        cfg.update(changes)
        (d / name).write_text(json.dumps(cfg))
    return edit


def _edit_tensors(name, edit_state):
    def edit(d):
        state = load_file(d / name)
        edit_state(state)
        save_file(state, str(d / name))
    return edit


def _damage(name):
    """One byte of the last tensor changed, the header and the size intact: what a bad copy does."""
    def edit(d):
        raw = bytearray((d / name).read_bytes())
        raw[-1] ^= 0x40
        (d / name).write_bytes(bytes(raw))
    return edit


def _non_finite(name, key):
    """A NaN written by this project's own writer, so its checksum is right and only the value is wrong."""
    def edit(d):
        state = load_file(d / name)
        state[key] = state[key].clone().index_fill_(0, torch.tensor([0]), float("nan"))
        save_tensors(state, d / name)
    return edit


KEY = "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"
BAD_ADAPTERS = {
    "missing_dir": (lambda d: __import__("shutil").rmtree(d), ValueError, "adapter directory .* not found"),
    "empty_dir": (lambda d: [p.unlink() for p in d.iterdir()], ValueError,
                  "holds neither adapter_config.json .LoRA. nor garfa.safetensors .GARFA."),
    "no_weights": (lambda d: (d / PEFT_WEIGHTS_FILE).unlink(), ValueError, "adapter_model.safetensors not found"),
    "missing_key": (_edit_tensors(PEFT_WEIGHTS_FILE, lambda s: s.pop(KEY)), ValueError,
                    f"adapter_model.safetensors: missing tensor '{KEY}'"),
    "unexpected_key": (_edit_tensors(PEFT_WEIGHTS_FILE, lambda s: s.update(
        {"base_model.model.model.layers.1.mlp.up_proj.lora_A.weight": torch.zeros(4, 64)})), ValueError,
        "adapter_model.safetensors: unexpected tensor 'base_model.model.model.layers.1.mlp.up_proj.lora_A.weight'"),
    "wrong_shape": (_edit_tensors(PEFT_WEIGHTS_FILE, lambda s: s.update({KEY: torch.zeros(64, 8)})), ValueError,
                    rf"'{KEY}' has shape \(64, 8\), this model with r=4 needs \(64, 4\)"),
    "layer_out_of_range": (_edit_json(PEFT_CONFIG_FILE, layers_to_transform=[0, 5]), ValueError,
                           r"adapter_config.json: layer indices \[5\] are out of range"),
    "unknown_target": (_edit_json(PEFT_CONFIG_FILE, target_modules=["q_proj", "lm_head"]), ValueError,
                       "adapter_config.json: unknown LoRA target 'lm_head'"),
    "regex_targets": (_edit_json(PEFT_CONFIG_FILE, target_modules=".*proj"), ValueError,
                      "adapter_config.json: target_modules must be a list"),
    "dora": (_edit_json(PEFT_CONFIG_FILE, use_dora=True), ValueError, "'use_dora: true' is not supported"),
    "not_lora": (_edit_json(PEFT_CONFIG_FILE, peft_type="IA3"), ValueError, "peft_type 'IA3' is not supported"),
    "bad_rank": (_edit_json(PEFT_CONFIG_FILE, r=0), ValueError, "adapter_config.json: LoRA rank r must be"),
    "bad_json": (lambda d: (d / PEFT_CONFIG_FILE).write_text("{"), ValueError, "adapter_config.json is not valid JSON"),
    # GARFA is validated before LoRA is attached, and LoRA before GARFA.
    "garfa_wrong_shape": (lambda d: save_file({"layers.1.log_scale": torch.zeros(3)}, str(d / GARFA_FILE)),
                          ValueError, r"garfa.safetensors: 'layers.1.log_scale' of shape \(3,\) does not fit"),
    "garfa_corrupt": (lambda d: (d / GARFA_FILE).write_bytes(b"nonsense"), ValueError,
                      "garfa.safetensors: not a readable safetensors file"),
    "lora_damaged": (_damage(PEFT_WEIGHTS_FILE), ValueError,
                     "adapter_model.safetensors: its tensors do not match the checksum in its header"),
    "garfa_damaged": (_damage(GARFA_FILE), ValueError,
                      "garfa.safetensors: its tensors do not match the checksum in its header"),
    "lora_nan": (_non_finite(PEFT_WEIGHTS_FILE, KEY), ValueError, f"'{KEY}' holds NaN or infinite values"),
    "garfa_nan": (_non_finite(GARFA_FILE, "layers.1.log_scale"), ValueError,
                  "'layers.1.log_scale' holds NaN or infinite values"),
}


@pytest.mark.parametrize("case", BAD_ADAPTERS)
def test_bad_adapter_is_named_and_loading_never_half_attaches(tmp_path, case):
    edit, error, message = BAD_ADAPTERS[case]
    model = lora_model()
    apply_garfa(model, [1])
    save_adapter(model, tmp_path / "adapter")
    edit(tmp_path / "adapter")
    fresh, tokens = base_model(), batch()
    expected = logits(fresh, tokens)
    with pytest.raises(error, match=message):
        load_adapter(fresh, tmp_path / "adapter")
    assert not lora_modules(fresh) and not garfa_layers(fresh)
    assert all(p.requires_grad for p in fresh.parameters())  # not even frozen
    assert torch.equal(logits(fresh, tokens), expected)


def test_adapter_for_another_model_is_refused(tmp_path):
    save_adapter(lora_model(), tmp_path / "adapter")
    other = base_model(intermediate_size=80)
    with pytest.raises(ValueError, match=r"layers.0.mlp.gate_proj.lora_B.weight' has shape \(96, 4\), this model with r=4 "
                                         r"needs \(80, 4\): the adapter was made for another model"):
        load_adapter(other, tmp_path / "adapter")
    assert not lora_modules(other)


def test_loading_onto_attached_adapters_is_refused_before_attaching(tmp_path):
    model = lora_model()
    apply_garfa(model, [1])
    save_adapter(model, tmp_path / "adapter")
    target = base_model()
    apply_garfa(target, [1])
    with pytest.raises(ValueError, match=r"already has adapters on layers.1.self_attn.rope_freqs"):
        load_adapter(target, tmp_path / "adapter")
    assert not lora_modules(target) and garfa_layers(target) == [1]


# ----------------------------------------------------------------------------------------------------------------
# The independent reference: peft on transformers

def hf_twin(tmp_path, model, hf_config):
    """The same weights as `model`, loaded by transformers' LlamaForCausalLM from an HF directory."""
    transformers = reference("transformers")
    path = save_checkpoint(model, tmp_path / "hf", hf_config)
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, ("q", "v", "down")])
def test_peft_loads_our_adapter_with_the_same_logits(tmp_path, targets):
    peft = reference("peft")
    hf = hf_twin(tmp_path, base_model(), tiny_hf_config(rope_scaling=LLAMA3_SCALING))
    model, tokens = lora_model(layers=(0, 2), targets=targets), batch()
    save_adapter(model, tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / PEFT_WEIGHTS_FILE), "pt") as f:  # the checksum PEFT must read past
        assert f.metadata()[TENSORS_SHA256] == tensors_sha256(load_file(tmp_path / "adapter" / PEFT_WEIGHTS_FILE))
    expected = logits(model, tokens)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = peft_model(tokens).logits
    assert (got - expected).abs().max() < TOL
    with torch.no_grad(), peft_model.disable_adapter():  # the adapter matters: without it the logits move
        assert (peft_model(tokens).logits - expected).abs().max() > 100 * TOL


def test_our_loader_reads_a_peft_made_adapter(tmp_path, capsys):
    peft = reference("peft")
    model = base_model()
    hf = hf_twin(tmp_path, model, tiny_hf_config(rope_scaling=LLAMA3_SCALING))
    config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "o_proj", "up_proj"],
                             layers_to_transform=[1, 2], layers_pattern="layers", task_type="CAUSAL_LM",
                             init_lora_weights=False)  # False: B random too, so the adapter changes the logits
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(hf, config).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    tokens = batch()
    with torch.no_grad():
        expected = peft_model(tokens).logits
    assert load_adapter(model, tmp_path / "peft")["lora_layers"] == [1, 2]
    assert "carries no checksum of its tensors" in capsys.readouterr().err  # loaded, with a note
    assert set(lora_modules(model)) == {(l, t) for l in (1, 2) for t in ("q_proj", "o_proj", "up_proj")}
    assert (logits(model, tokens) - expected).abs().max() < TOL
    assert (logits(base_model(), tokens) - expected).abs().max() > 100 * TOL


def test_peft_parity_on_the_default_model(tmp_path):
    """The real SmolLM2-135M (GQA 3:1, tied embeddings): our LoRA on 8 layers == peft on transformers."""
    peft = reference("peft")
    transformers = reference("transformers")
    from model import Transformer

    path = default_model_dir()  # prepared on first use, as every command does
    model = Transformer.from_pretrained(path)
    torch.manual_seed(0)
    apply_lora(model, [2, 5, 9, 13, 17, 21, 25, 29])
    randomize_lora_(model, std=0.02)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(path))
    tokens = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(0))
    expected = logits(model, tokens)
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        got = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(tokens).logits
    assert (got - expected).abs().max() < TOL * max(1.0, expected.abs().max().item() / 10)
