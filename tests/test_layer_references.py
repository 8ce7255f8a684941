"""The reference layer rankings (logit lens, Block Influence, layer drop) and the random-weight copy of a model, on
tiny random-weight models where a direct computation is the reference."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_model_dir
from test_sensitivity import random_pairs

import sensitivity as sens


def test_logit_lens_margin_at_the_last_layer_is_the_models_own_margin(monkeypatch):
    from support.batching import right_pad
    monkeypatch.setattr("support.layer_references.LENS_ROWS", 5)  # chunks that split a layer's rows
    model, pairs = tiny_model(num_hidden_layers=3), random_pairs(ragged=True)
    pairs[0] = pairs[0]._replace(correct=[5, 6, 7, 8], incorrect=[5, 6, 9])  # a shared first token, unequal lengths
    gains = sens.hidden_pass(model, pairs)["logit_lens"]  # (P, L): margin after block l minus margin entering it
    with torch.no_grad():
        for pair, gain in zip(pairs, gains):
            rows = [pair.prompt + c for c in (pair.correct, pair.incorrect)]
            completion_logp = lambda logits, c: torch.log_softmax(logits.double(), -1)[
                torch.arange(len(pair.prompt) - 1, len(pair.prompt) + len(c) - 1), c].sum()
            own = [completion_logp(model(torch.tensor([row]))[0], c) for row, c in zip(rows, (pair.correct,
                                                                                             pair.incorrect))]
            tokens = right_pad(rows)
            margin = sens.logit_lens_margin(model, [model.embed_tokens(tokens)] + model(
                tokens, output_hidden_states=True)[1], pair)  # (L + 1,)
            assert margin[-1].item() == pytest.approx((own[0] - own[1]).item(), abs=1e-4)
            assert gain == pytest.approx(np.diff(margin.numpy()), abs=1e-4)


def test_block_influence_and_layer_drop_equal_a_direct_computation():
    model, pairs = tiny_model(num_hidden_layers=4), random_pairs(ragged=True)
    d, drop = sens.hidden_pass(model, pairs), sens.layer_drop_per_pair(model, pairs)
    with torch.no_grad():
        base = sens.completion_nll(model, pairs)
        for p, pair in enumerate(pairs):
            x = torch.tensor([pair.prompt + pair.correct])
            h = [model.embed_tokens(x)[0]] + [s[0] for s in model(x, output_hidden_states=True)[1]]
            direct = [1 - torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(h, h[1:])]
            assert d["block_influence"][p] == pytest.approx(direct, abs=1e-5)
        for layer in range(4):  # the block replaced by the identity, everything else as it was
            block = model.layers[layer]
            model.layers[layer] = Skip()
            try:
                skipped = sens.completion_nll(model, pairs)
            finally:
                model.layers[layer] = block
            assert drop[:, layer] == pytest.approx((skipped - base).numpy(), abs=1e-4)
    assert np.abs(drop).min() > 1e-4


class Skip(torch.nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


def test_random_weights_copy_keeps_config_and_tokenizer_and_is_seeded(tmp_path):
    from tools.random_checkpoint import write_random_copy
    from model import Transformer
    model_dir = tiny_model_dir(tmp_path / "tiny", num_hidden_layers=2)
    a, b = (write_random_copy(model_dir, tmp_path / name, seed=0) for name in ("a", "b"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (model_dir / name).read_bytes()
    assert {k: v for k, v in json.loads((a / "config.json").read_text()).items() if k != "torch_dtype"} == {
        k: v for k, v in json.loads((model_dir / "config.json").read_text()).items() if k != "torch_dtype"}
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    weights = Transformer.from_pretrained(a).state_dict()
    assert weights["layers.0.self_attn.q_proj.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(weights["norm.weight"], torch.ones_like(weights["norm.weight"]))
    c = write_random_copy(model_dir, tmp_path / "c", seed=1)
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()
