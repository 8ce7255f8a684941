"""compiled.py (--compile): the compiled path gives the eager path's losses, gradients and greedy tokens.

Inductor really compiles here (gcc, on the CPU): the same backend that `--compile` uses, on the tiny model.
"""
import copy

import pytest
import torch
import torch._dynamo.eval_frame as eval_frame
from conftest import base_model, batch

from tools.compiled import compile_model
from garfa import apply_garfa
from lora import apply_lora, lora_modules, set_dropout_rows
from model import Transformer, sequence_nll
from support.generate import generate


@pytest.fixture(scope="module")
def pair():
    """An adapted model (LoRA with dropout on two layers, GARFA on one of them) and a compiled deep copy."""
    torch.manual_seed(0)
    eager = base_model()
    apply_lora(eager, [0, 2], r=4, alpha=8, dropout=0.2)
    apply_garfa(eager, [2])
    with torch.no_grad():  # a trained-looking adapter, so that every adapter parameter moves the loss
        for m in lora_modules(eager).values():
            m.lora_B.normal_(0, 0.05)
        eager.layers[2].self_attn.rope_freqs.log_scale.normal_(0, 0.1)
    return eager, compile_model(copy.deepcopy(eager))


def loss_and_grads(model, tokens, mask):
    """One training forward and backward, dropout masks tied to the rows as train.py ties them."""
    model.train()
    set_dropout_rows(model, [((0, row), int(mask[row].nonzero().max()) + 1) for row in range(len(tokens))])
    nll, count = sequence_nll(model, tokens, mask)
    loss = nll.sum() / count.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    set_dropout_rows(model, None)
    model.eval()
    return loss.detach(), grads


def test_compiled_training_step_matches_eager_loss_and_gradients(pair):
    eager, compiled = pair
    tokens = batch(B=3, length=40)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 10:], mask[1, 5:30], mask[2, 20:] = True, True, True  # row 1 ends early: its padding is never read
    want_loss, want = loss_and_grads(eager, tokens, mask)
    got_loss, got = loss_and_grads(compiled, tokens, mask)
    assert want.keys() == got.keys() and any("log_scale" in n for n in want) and any("lora_A" in n for n in want)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=1e-5)
    for name in want:
        assert want[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
    # The dropout masks are part of what is compared: without them the gradients differ well beyond the tolerance.
    for m in lora_modules(compiled).values():
        m.dropout = 0.0
    _, undropped = loss_and_grads(compiled, tokens, mask)
    for m in lora_modules(compiled).values():
        m.dropout = 0.2
    assert max((undropped[n] - want[n]).abs().max() for n in want) > 1e-3


def test_compiled_decoding_gives_the_same_greedy_tokens_with_one_graph(pair):
    """Padded prompts of different lengths, a stop id that ends some rows early (they stay in the static batch,
    unread), and a long run of steps: the same tokens as eager, and one compiled decoding graph for all the steps."""
    eager, compiled = pair
    prompts = [batch(B=1, length=n, seed=n)[0].tolist() for n in (5, 12, 9)]
    for stop_ids in ([], [7, 11]):
        want = generate(eager, prompts, max_new_tokens=24, stop_ids=stop_ids)
        assert generate(compiled, prompts, max_new_tokens=24, stop_ids=stop_ids) == want
        assert stop_ids == [] or min(map(len, want)) < 24  # some row did stop early
    assert len(eval_frame._debug_get_cache_entry_list(Transformer.forward.__code__)) == 1


def test_compile_model_twice_changes_nothing(pair):
    _, compiled = pair
    forward, hooks = compiled.layers[0].forward, len(compiled.layers[0]._forward_pre_hooks)
    assert compile_model(compiled) is compiled
    assert compiled.layers[0].forward is forward and len(compiled.layers[0]._forward_pre_hooks) == hooks


def test_a_missing_cpp_compiler_is_one_line_before_any_compilation(monkeypatch):
    import torch._inductor.config as inductor_config

    from support.files import UserError

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-compiler++"))
    model = base_model()
    with pytest.raises(UserError, match="--compile on the CPU needs a C\\+\\+ compiler .*install g\\+\\+ or set CXX"):
        compile_model(model)
    assert getattr(model, "decode_step", None) is None  # nothing was changed
