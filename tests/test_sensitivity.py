"""Layer scoring (SPEC 4.1-4.4) on tiny random-weight models whose answers are known by construction."""
import json
import math
import re
import zlib

import numpy as np
import pytest
import torch
from conftest import tiny_model
from scipy import stats

import sensitivity as sens
from sensitivity import EncodedPair, ScoreOptions


class WordTokenizer:
    """Words (with their leading whitespace) hashed onto the tiny model's 96 ids; no chat template."""
    chat_template, eos_ids, pad_id, bos_id = None, [2], 0, 1

    def encode(self, text, bos=None):
        return [3 + zlib.crc32(w.encode()) % 93 for w in re.findall(r"\s*\S+", text)]


def random_pairs(n=4, seed=0, prompt_len=24):
    """Pairs sharing a prompt whose completions differ in their first token only."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(3, 96, (k,), generator=g).tolist()
    pairs = []
    for _ in range(n):
        prompt, tail = ids(prompt_len), ids(3)
        pairs.append(EncodedPair(prompt, [10] + tail, [11] + tail))
    return pairs


def silence(model, keep: int, parts=("self_attn.o_proj", "mlp.down_proj")):
    """Zero the output projections of every block except `keep`: those blocks then add exactly nothing."""
    with torch.no_grad():
        for i, block in enumerate(model.layers):
            if i != keep:
                for part in parts:
                    block.get_submodule(part).weight.zero_()
    return model


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions

def test_distance_known_values():
    assert sens.distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), "cosine").item() == pytest.approx(1.0)
    assert sens.distance(torch.tensor([1.0, 1.0]), torch.tensor([-2.0, -2.0]), "cosine").item() == pytest.approx(2.0)
    assert sens.distance(torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0]), "l2").item() == pytest.approx(5.0)
    assert sens.distance(torch.zeros(2, 4), torch.zeros(2, 4), "cosine").tolist() == [0.0, 0.0]  # no update: no change


def test_pool_hidden_last_and_mean():
    h = torch.arange(12.0).view(6, 2)  # (T, D)
    assert sens.pool_hidden(h, 3, 5, "last").tolist() == [8.0, 9.0]
    assert sens.pool_hidden(h, 3, 5, "mean").tolist() == [7.0, 8.0]


def test_top_k_jaccard_depth_known_values():
    assert sens.top_k([0.1, 0.9, 0.3, 0.9, 0.0], 2) == [1, 3]
    assert sens.top_k([0.5, 0.5, 0.5], 2) == [0, 1]  # ties go to the shallower layer
    assert sens.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert sens.mean_depth([0, 4], 5) == pytest.approx(0.5) and sens.mean_depth([29], 30) == 1.0


def test_verdict_thresholds():
    assert sens.verdict(-0.5, 0.01) == "anti-localized"
    assert sens.verdict(0.5, 0.049) == "co-localized"
    assert sens.verdict(0.9, 0.05) == sens.verdict(-0.9, 0.2) == "no significant relation"


def test_options_validate_and_come_from_args():
    with pytest.raises(ValueError, match="sens_dist"):
        ScoreOptions(sens_dist="cos")
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    sens.add_score_args(p)
    opts = sens.options_from_args(p.parse_args(["--sens-dist", "l2", "--k", "3", "--seed", "7"]))
    assert opts == ScoreOptions(sens_dist="l2", k=3, seed=7)
    assert {"--seed", "--model", "--out", "--chat"} <= set(sens.build_parser()._option_string_actions)
    q = argparse.ArgumentParser()
    sens.add_score_args(q)
    assert {"--seed", "--model", "--out"}.isdisjoint(q._option_string_actions)  # the caller owns these


# ----------------------------------------------------------------------------------------------------------------
# S: only one block changes anything

@pytest.mark.parametrize("pool", ["last", "mean"])
def test_delta_sensitivity_is_nonzero_only_at_the_one_active_block(pool):
    j, model = 2, silence(tiny_model(num_hidden_layers=5), keep=2)
    pairs = random_pairs()
    for dist in ("cosine", "l2"):
        S = sens.sensitivity_per_pair(model, pairs, ScoreOptions(sens_pool=pool, sens_repr="delta",
                                                                 sens_dist=dist)).mean(0)
        assert S[j] > 1e-3 and np.abs(np.delete(S, j)).max() < 1e-6, (dist, S)  # h_{-1} is the embedding output


def test_output_sensitivity_changes_only_at_the_active_block():
    j, model = 2, silence(tiny_model(num_hidden_layers=5), keep=2)
    S = sens.sensitivity_per_pair(model, random_pairs(), ScoreOptions(sens_pool="mean")).mean(0)
    assert np.allclose(S[:j], S[0], atol=1e-6) and np.allclose(S[j:], S[j], atol=1e-6)  # block l -> index l
    assert abs(S[j] - S[j - 1]) > 1e-3


def test_l2_and_cosine_share_one_pass():
    model, pairs = tiny_model(num_hidden_layers=4), random_pairs()
    d = sens.hidden_distances(model, pairs, "last", "output")
    assert d["cosine"].shape == d["l2"].shape == d["norm"].shape == (4, 4)
    assert np.array_equal(d["l2"], sens.sensitivity_per_pair(model, pairs, ScoreOptions(sens_dist="l2")))


# ----------------------------------------------------------------------------------------------------------------
# I: GARFA at identity, gradient vs finite differences

def test_identity_garfa_keeps_loss_has_gradient_and_leaves_model_clean():
    model, pairs = tiny_model(), random_pairs(prompt_len=40)
    tokens = torch.tensor([pairs[0].prompt + pairs[0].correct])
    with torch.no_grad():
        logits, base = model(tokens), sens.completion_nll(model, pairs)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with sens.identity_garfa(model) as scales:
        loss = sens.completion_nll(model, pairs).mean()
        assert torch.allclose(loss, base.mean(), atol=1e-6)
        grads = torch.autograd.grad(loss, scales)
        assert all(g.abs().sum() > 0 for g in grads)
    per_pair = sens.influence_per_pair(model, pairs, ScoreOptions())
    assert per_pair.shape == (4, 3, 2) and np.allclose(per_pair.mean(0), torch.stack(grads).numpy(), atol=1e-5)
    assert all(block.self_attn.rope_freqs is None for block in model.layers)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)


@pytest.mark.parametrize("method", ["grad", "fd"])
def test_influence_is_nonzero_only_where_attention_reaches_the_stream(method):
    j = 1
    model = silence(tiny_model(num_hidden_layers=4), keep=j, parts=("self_attn.o_proj",))  # MLPs ignore positions
    per_pair = sens.influence_per_pair(model, random_pairs(prompt_len=100), ScoreOptions(influence=method))
    I = sens.influence_from_per_pair(per_pair, method)
    assert I[j] > 1e-4 and np.delete(I, j).max() == 0.0, I


def test_gradient_matches_finite_differences():
    model, pairs = tiny_model(num_hidden_layers=5), random_pairs(prompt_len=40)
    grad = sens.influence_per_pair(model, pairs, ScoreOptions(influence="grad"))  # (P, L, n_kv)
    eps = 1e-4  # std-0.2 random weights make the loss very curved in log_scale: a small step for a derivative
    fd = sens.influence_per_pair(model, pairs, ScoreOptions(influence="fd", fd_eps=eps))  # (P, L)
    # fd moves every KV head of a layer together, so it measures the sum over heads of the gradient
    scale = np.abs(grad).max()
    assert np.abs(grad.sum(-1) - fd).max() < 1e-2 * scale
    I_grad, I_fd = np.abs(grad.sum(-1).mean(0)), sens.influence_from_per_pair(fd, "fd")
    assert stats.spearmanr(I_grad, I_fd)[0] > 0.9
    layer, head = np.unravel_index(np.abs(grad[0]).argmax(), grad[0].shape)  # one component, perturbed by hand
    with sens.identity_garfa(model) as scales, torch.no_grad():
        losses = []
        for sign in (1, -1):
            scales[layer][head] = sign * eps
            losses.append(sens.completion_nll(model, pairs[:1]).double().item())
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(grad[0, layer, head], rel=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# The analysis

def test_analysis_spearman_and_bootstrap():
    rng = np.random.default_rng(0)
    per_S, per_I = rng.random((10, 8)), rng.normal(size=(10, 8, 2)) + np.linspace(0, 2, 8)[None, :, None]
    S, I = per_S.mean(0), sens.influence_from_per_pair(per_I, "grad")
    assert np.allclose(I, np.linalg.norm(per_I.mean(0), axis=-1))
    a = sens.analyze(S, I, 3, per_S, per_I, "grad", 500, seed=1)
    r, p = stats.spearmanr(S, I)
    assert a["spearman"]["r"] == pytest.approx(r) and a["spearman"]["p"] == pytest.approx(p)
    lo, hi = a["spearman"]["ci95"]
    assert -1 <= lo < hi <= 1
    assert a == sens.analyze(S, I, 3, per_S, per_I, "grad", 500, seed=1)
    assert a["spearman"]["ci95"] != sens.analyze(S, I, 3, per_S, per_I, "grad", 500, seed=2)["spearman"]["ci95"]
    assert a["sens_layers"] == sens.top_k(S, 3) and a["verdict"] == sens.verdict(r, p)
    boot = sens.spearman_rows(np.stack([S, S]), np.stack([I, -I]))
    assert boot == pytest.approx([r, -r])


def test_scores_are_cached_per_options(tiny_checkpoint, tmp_path, monkeypatch):
    model_dir, model = tiny_checkpoint
    monkeypatch.setattr(sens, "CACHE_DIR", tmp_path / "cache")
    tok, opts = WordTokenizer(), ScoreOptions(bootstrap=200)
    first = sens.load_or_compute_scores(model_dir, model, tok, opts, out_dir=tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert (tmp_path / "run" / "layer_scores.png").stat().st_size > 0
    assert stored["spearman"]["r"] == pytest.approx(stats.spearmanr(stored["sensitivity"], stored["influence"])[0])
    lo, hi = stored["spearman"]["ci95"]
    assert -1 <= lo <= hi <= 1 and stored["k"] == math.ceil(3 / 4) and stored["n_pairs"] == 15

    def no_recompute(*args):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(sens, "compute_scores", no_recompute)
    assert sens.load_or_compute_scores(model_dir, model, tok, opts) == first
    assert sens.scores_key(model_dir, model, opts) != sens.scores_key(model_dir, model, ScoreOptions(sens_dist="l2"))
    with pytest.raises(AssertionError, match="recomputed"):
        sens.load_or_compute_scores(model_dir, model, tok, ScoreOptions(bootstrap=200, seed=1))
    monkeypatch.undo()
    again = sens.compute_scores(model, tok, opts)  # deterministic: same options, same numbers
    assert again["sensitivity"] == first["sensitivity"] and again["influence"] == first["influence"]


def test_fingerprint_sees_weights_not_just_the_header(tiny_checkpoint, tmp_path):
    from conftest import save_checkpoint, tiny_hf_config
    model_dir, model = tiny_checkpoint
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # same names, shapes and file size
    other = save_checkpoint(model, tmp_path / "other", tiny_hf_config())
    assert sens.model_fingerprint(model_dir) == sens.model_fingerprint(model_dir)
    assert sens.model_fingerprint(other) != sens.model_fingerprint(model_dir)


# ----------------------------------------------------------------------------------------------------------------
# Calibration pairs

def test_shipped_pairs_cover_six_skills_and_no_evaluation_item():
    from data import OFFLINE_BENCHMARKS, load_benchmark, question_key
    pairs = sens.calibration_pairs(ScoreOptions())
    assert len(pairs) == 15 and {p["skill"] for p in pairs} == set(sens.SKILLS)
    assert all(p["correct"] != p["incorrect"] for p in pairs)
    prompts = [" ".join(p["prompt"].lower().split()) for p in pairs]
    for name in OFFLINE_BENCHMARKS:
        for item in load_benchmark(name):
            key = question_key(item)
            assert not any(key in prompt for prompt in prompts if len(key) > 20), (name, item["id"])


class ChatTokenizer(WordTokenizer):
    chat_template = "fake"

    def encode_chat(self, messages, add_generation_prompt=True):
        return [1] + self.encode(messages[0]["content"])


def test_pairs_use_the_chat_template_where_evaluation_does():
    pairs = [dict(skill="knowledge_mc", prompt="Q", correct=" A", incorrect=" B"),
             dict(skill="grade_school_math", prompt="Q", correct=" 1", incorrect=" 2")]
    mc, gsm = sens.encode_pairs(ChatTokenizer(), pairs, "auto")
    assert mc.prompt == WordTokenizer().encode("Q") and gsm.prompt[0] == 1
    assert sens.encode_pairs(ChatTokenizer(), pairs, "off")[1].prompt == mc.prompt


def test_auto_pairs_come_from_training_data_and_are_seeded():
    from data import TRAIN_SOURCES
    pairs = sens.calibration_pairs(ScoreOptions(calib="auto", n_pairs=12, seed=3))
    assert len(pairs) == 12 and all(p["correct"] != p["incorrect"] for p in pairs)
    assert {p["source"] for p in pairs} <= set(TRAIN_SOURCES) and {p["skill"] for p in pairs} >= {
        "code", "competition_math", "grade_school_math"}
    from data import load_train
    for p in pairs:  # drawn verbatim from their training source (evaluation items were removed there)
        assert (p["prompt"], p["correct"]) in {(x["prompt"], x["completion"]) for x in load_train(p["source"])}
    assert pairs == sens.calibration_pairs(ScoreOptions(calib="auto", n_pairs=12, seed=3))
    assert pairs != sens.calibration_pairs(ScoreOptions(calib="auto", n_pairs=12, seed=4))
