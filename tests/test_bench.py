"""bench.py's pure logic: the model-FLOPs formula behind the MFU column."""
from conftest import tiny_hf_config, tiny_model

from bench import prefill_flops
from model import ModelConfig


def test_prefill_flops_matches_hand_count():
    cfg = ModelConfig.from_hf(tiny_hf_config())  # D 64, 8 heads over 2 KV heads of 16, FFN 96, 3 layers, vocab 96
    weights = 3 * (64 * 128 + 2 * 64 * 32 + 128 * 64 + 3 * 64 * 96)  # q, k + v, o, gate + up + down per layer
    attention = 4 * 3 * 8 * 16 * (10 * 11 // 2)  # q.k and p.v for the 1 + 2 + ... + 10 keys of a causal sequence
    lm_head = 2 * 64 * 96  # logits at the last position only
    assert prefill_flops(cfg, batch=2, seq_len=10) == 2 * (2 * weights * 10 + attention + lm_head)


def test_prefill_flops_counts_every_layer_weight():
    model = tiny_model()
    n = sum(p.numel() for name, p in model.layers.named_parameters() if "norm" not in name)
    no_attention_no_head = prefill_flops(model.config, 1, 1, logit_positions=0) - 4 * 3 * 8 * 16
    assert no_attention_no_head == 2 * n
