"""plan.py: trainable counts against PEFT, activation checkpointing, and the activation estimate against what autograd
really keeps (measured with saved_tensors_hooks on tiny models)."""
import pytest
import torch

from conftest import base_model, batch, completion_loss, tiny_hf_config
from garfa import apply_garfa
from lora import DEFAULT_TARGETS, apply_lora, count_trainable
from model import ModelConfig, Transformer
from tools.plan import format_plan, measured_activation_bytes, plan
from tools.random_checkpoint import LLAMA_3_1_8B

PAPER = dict(lora_layers=8, garfa_layers=8, r=16, targets=DEFAULT_TARGETS, batch_size=4, seq_len=1024, grad_accum=4,
             steps=1000, dtype=torch.bfloat16)  # train.py's "paper" preset on Llama 3.1 8B


def small_plan(cfg, **settings):
    defaults = dict(lora_layers=0, garfa_layers=0, r=16, targets=DEFAULT_TARGETS, batch_size=1, seq_len=8,
                    grad_accum=1, steps=1, dtype=torch.float32, activation_checkpointing=False)
    return plan(cfg, **{**defaults, **settings})


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, ("q_proj", "v_proj"), ("o", "down")])
def test_lora_count_matches_peft(targets):
    transformers, peft = pytest.importorskip("transformers"), pytest.importorskip("peft")
    hf = tiny_hf_config()
    config = transformers.LlamaConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    full = [t if t.endswith("_proj") else f"{t}_proj" for t in targets]
    ref = peft.get_peft_model(transformers.LlamaForCausalLM(config),
                              peft.LoraConfig(r=4, target_modules=full, layers_to_transform=[0, 2]))
    expected = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    cfg = ModelConfig.from_hf(hf)
    assert small_plan(cfg, lora_layers=2, r=4, targets=targets)["lora_params"] == expected
    ours = Transformer(cfg)
    apply_lora(ours, [0, 2], r=4, targets=targets)
    assert count_trainable(ours) == expected


def test_llama31_8b_counts_and_paper_preset():
    cfg = ModelConfig.from_hf(LLAMA_3_1_8B)
    assert small_plan(cfg, lora_layers=8)["lora_params"] == 10_485_760
    assert small_plan(cfg, lora_layers=32)["lora_params"] == 41_943_040
    off = plan(cfg, **PAPER, activation_checkpointing=False)
    on = plan(cfg, **PAPER, activation_checkpointing=True)
    assert off["n_params"] == 8_030_261_248 and off["weight_bytes"] == 2 * 8_030_261_248
    assert off["garfa_params"] == 64 and off["trainable_params"] == 10_485_824
    assert off["optimizer_bytes"] == 2 * 4 * off["trainable_params"]  # AdamW: two float32 moments
    assert off["tokens"] == 1000 * 4 * 4 * 1024 and off["train_flops_6nd"] == 6 * off["active_params"] * off["tokens"]
    assert on["activation_bytes"] < off["activation_bytes"] / 5
    assert not off["fits_gpu"][24] and off["fits_gpu"][80] and on["fits_gpu"][24]
    assert "peak estimate" in format_plan(off) and "GiB" in format_plan(on)


def adapted_model(dtype=torch.float32, lora_layers=(1,), garfa_layers=(0, 2), targets=DEFAULT_TARGETS):
    model = base_model().to(dtype)
    torch.manual_seed(0)
    if lora_layers:
        apply_lora(model, lora_layers, r=4, targets=targets)
    if garfa_layers:
        apply_garfa(model, garfa_layers)
    with torch.no_grad():  # B = 0 would leave A without gradient
        for name, p in model.named_parameters():
            if name.endswith(("lora_B", "log_scale")):
                p.normal_(0, 0.05)
    return model.train()  # dropout on: the recomputed blocks must replay the same masks


def test_activation_checkpointing_same_gradients_less_memory():
    model, tokens = adapted_model(), batch()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    grads, saved = {}, {}
    for on in (False, True):
        model.activation_checkpointing = on
        saved[on] = measured_activation_bytes(model, tokens, mask)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        completion_loss(model, tokens).backward()
        grads[on] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads[False]) == 7 * 2 + 2 and all(g.abs().max() > 0 for g in grads[False].values())
    for name, g in grads[False].items():
        assert torch.allclose(grads[True][name], g, atol=1e-5, rtol=0), name
    assert saved[True] < saved[False] / 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("lora_layers, garfa_layers, targets", [
    ((1, 2), (1, 2), DEFAULT_TARGETS),  # both adapters on the same layers, every target
    ((0,), (), ("q", "v")),             # LoRA alone on two targets, gradients through every layer
    ((2,), (1,), ("o", "down")),        # the lowest adapted layer has GARFA only (the estimate is high there)
])
def test_plan_activation_estimate_matches_measurement(dtype, checkpointing, lora_layers, garfa_layers, targets):
    model, tokens = adapted_model(dtype, lora_layers, garfa_layers, targets), batch()
    model.activation_checkpointing = checkpointing
    measured = measured_activation_bytes(model, tokens, torch.ones_like(tokens, dtype=torch.bool))
    B, T = tokens.shape
    d = plan(model.config, lora_layers=len(lora_layers), garfa_layers=len(garfa_layers), r=4, targets=targets,
             batch_size=B, seq_len=T, grad_accum=1, steps=1, dtype=dtype, activation_checkpointing=checkpointing,
             lowest_adapted_layer=min(lora_layers + garfa_layers))
    estimate = d["activation_bytes_ckpt" if checkpointing else "activation_bytes_no_ckpt"]
    assert 0.75 <= estimate / measured <= 1.25, (estimate, measured)
