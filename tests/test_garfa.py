"""garfa.py: per-KV-head RoPE frequency multipliers (METHOD 4.6), alone and next to LS-LoRA."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import T, TOL, base_model, batch, completion_loss, logits
from garfa import (GARFA_FILE, apply_garfa, garfa_layers, garfa_multipliers, garfa_state, load_garfa_state,
                   read_garfa)
from lora import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, apply_lora, load_adapter, lora_layers, lora_modules, save_adapter


def set_log_scales_(model, seed=0, std=0.3):
    """Trained-looking scales (an untrained GARFA has log_scale = 0 and changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in garfa_layers(model):
            p = model.layers[layer].self_attn.rope_freqs.log_scale
            p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def garfa_model(layers=(0, 1, 2), seed=0):
    model = base_model(seed)
    apply_garfa(model, layers)
    return set_log_scales_(model, seed)


def test_garfa_identity_is_base_model():
    model, tokens = base_model(), batch()
    expected = logits(model, tokens)
    assert apply_garfa(model, [2, 0, 1]) == [0, 1, 2]
    assert torch.equal(logits(model, tokens), expected)


def test_only_log_scale_requires_grad():
    model = base_model()
    apply_garfa(model, [0, 2])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {"layers.0.self_attn.rope_freqs.log_scale", "layers.2.self_attn.rope_freqs.log_scale"}
    assert all(p.shape == (model.config.n_kv_heads,) and p.dtype == torch.float32 for p in trainable.values())


def test_gradients_reach_every_log_scale():
    model = garfa_model()
    completion_loss(model, batch()).backward()
    for layer in range(3):
        grad = model.layers[layer].self_attn.rope_freqs.log_scale.grad
        assert grad is not None and (grad.abs() > 0).all(), (layer, grad)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith("log_scale"))
    # At identity too (this is the RoPE-influence score of METHOD 4.3).
    fresh = base_model()
    apply_garfa(fresh, [0, 1, 2])
    completion_loss(fresh, batch()).backward()
    assert all((fresh.layers[i].self_attn.rope_freqs.log_scale.grad.abs() > 0).all() for i in range(3))


def test_garfa_keeps_attention_a_function_of_relative_position():
    """Queries and keys of a group rotate with the same frequencies: shifting every position changes nothing.

    Up to float32 rounding of the angles: a shift moves logits by ~2e-5 of their scale (exactly 0 with float64 RoPE).
    """
    model, tokens = garfa_model(), batch()
    positions = torch.arange(T).expand(2, T)
    at_zero = logits(model, tokens, positions=positions)
    scale = at_zero.abs().max()
    assert (logits(base_model(), tokens) - at_zero).abs().max() > 0.1 * scale  # the scales do change the model
    for offset in (1, 37, 200):
        assert (logits(model, tokens, positions=positions + offset) - at_zero).abs().max() < TOL * scale, offset


@pytest.mark.parametrize("group", [0, 1])
def test_query_heads_use_exactly_the_scale_of_their_kv_group(group):
    """Scaling KV group g changes the attention output of query heads g*n_rep .. (g+1)*n_rep - 1 and no other."""
    model, tokens = base_model(), batch()
    cfg = model.config
    apply_garfa(model, [1])
    heads = {}

    def keep(name):  # the input of o_proj is the attention output, (B, T, n_heads * hd)
        return lambda module, args: heads.__setitem__(name, args[0].view(2, T, cfg.n_heads, cfg.head_dim))

    hook = model.layers[1].self_attn.o_proj.register_forward_pre_hook(keep("identity"))
    logits(model, tokens)
    hook.remove()
    with torch.no_grad():
        model.layers[1].self_attn.rope_freqs.log_scale[group] = math.log(1.5)
    hook = model.layers[1].self_attn.o_proj.register_forward_pre_hook(keep("scaled"))
    logits(model, tokens)
    hook.remove()
    change = (heads["scaled"] - heads["identity"]).abs().amax(dim=(0, 1, 3))  # (n_heads,)
    changed = {h for h in range(cfg.n_heads) if change[h] > 1e-3}
    assert changed == set(range(group * cfg.n_rep, (group + 1) * cfg.n_rep))
    assert all(change[h] == 0 for h in range(cfg.n_heads) if h not in changed)


@pytest.mark.parametrize("lora_on, garfa_on", [((1, 2), (1, 2)), ((2,), (0, 1))], ids=["same", "different"])
def test_lora_and_garfa_together(tmp_path, lora_on, garfa_on):
    model, tokens = garfa_model(garfa_on), batch()
    torch.manual_seed(0)
    apply_lora(model, lora_on, r=4, alpha=8)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(std=0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.endswith("log_scale")} == \
           {f"layers.{l}.self_attn.rope_freqs.log_scale" for l in garfa_on}
    assert {int(n.split(".")[1]) for n in trainable if "lora_" in n} == set(lora_on)
    completion_loss(model, tokens).backward()
    assert all(p.grad.abs().max() > 0 for p in model.parameters() if p.requires_grad)
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE,
                                                                         GARFA_FILE]
    fresh = base_model()
    info = load_adapter(fresh, tmp_path / "adapter")
    assert info["lora_layers"] == lora_layers(fresh) == list(lora_on)
    assert info["garfa_layers"] == garfa_layers(fresh) == list(garfa_on)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == trainable
    assert torch.equal(logits(fresh, tokens), logits(model, tokens))


def test_garfa_file_round_trip(tmp_path):
    model, tokens = garfa_model((0, 2)), batch()
    save_adapter(model, tmp_path / "adapter")
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == [GARFA_FILE]  # no LoRA, no PEFT files
    state = load_file(tmp_path / "adapter" / GARFA_FILE)
    assert set(state) == {"layers.0.log_scale", "layers.2.log_scale"}
    assert torch.equal(state["layers.2.log_scale"], model.layers[2].self_attn.rope_freqs.log_scale.detach())
    fresh = base_model()
    assert load_adapter(fresh, tmp_path / "adapter") == dict(lora_layers=[], lora_targets=[], garfa_layers=[0, 2])
    assert not lora_modules(fresh) and garfa_state(fresh).keys() == state.keys()
    assert garfa_multipliers(fresh)[2] == pytest.approx(state["layers.2.log_scale"].exp().tolist())
    assert torch.equal(logits(fresh, tokens), logits(model, tokens))


def test_bf16_model_keeps_log_scale_in_float32():
    """bf16 is a smoke test (two correct bf16 runs differ by up to ~0.5)."""
    model, tokens = base_model().to(torch.bfloat16), batch(length=32)
    apply_garfa(model, [1])
    set_log_scales_(model)
    assert model.layers[1].self_attn.rope_freqs.log_scale.dtype == torch.float32
    out = logits(model, tokens)
    assert out.dtype == torch.bfloat16 and (out.float() - logits(garfa_model([1]), tokens)).abs().max() < 1.0


def test_bad_layers_are_named_and_nothing_is_half_attached():
    model = base_model()
    with pytest.raises(ValueError, match=r"layer indices \[3, 7\] are out of range for a 3-layer model"):
        apply_garfa(model, [0, 3, 7])
    assert garfa_layers(model) == []
    apply_garfa(model, [1])
    with pytest.raises(ValueError, match=r"layers \[1\] already have GARFA attached"):
        apply_garfa(model, [0, 1])
    assert garfa_layers(model) == [1]


@pytest.mark.parametrize("state, message", [
    ({"layers.0.log_scale": torch.zeros(3)}, r"'layers.0.log_scale' of shape \(3,\) does not fit this model "
                                             r"\(3 layers, 2 KV heads\)"),
    ({"layers.5.log_scale": torch.zeros(2)}, r"'layers.5.log_scale' of shape \(2,\) does not fit this model"),
    ({"layers.0.scale": torch.zeros(2)}, r"unexpected tensor 'layers.0.scale' \(expected 'layers.<l>.log_scale'\)"),
])
def test_bad_garfa_files_are_named(tmp_path, state, message):
    path = tmp_path / GARFA_FILE
    save_file(state, str(path))
    model = base_model()
    with pytest.raises(ValueError, match=f"{GARFA_FILE}: {message}"):
        read_garfa(path, model)
    with pytest.raises(ValueError, match=message):
        load_adapter(model, tmp_path)
    assert garfa_layers(model) == []
    load_garfa_state(model, {1: torch.full((2,), 0.25)})  # a valid state attaches and sets the scales
    assert garfa_multipliers(model) == {1: pytest.approx([math.exp(0.25)] * 2)}
