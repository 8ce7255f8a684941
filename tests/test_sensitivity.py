"""Layer scoring (METHOD.md 4.1-4.4b) on tiny random-weight models and hand-built inputs whose answers are known."""
import argparse
import json
import math
import re
from dataclasses import fields

import numpy as np
import pytest
import torch
from conftest import WordTokenizer, tiny_model, tiny_model_dir
from scipy import stats

import sensitivity as sens
from support.files import UserError
from support.stats import (bca_interval, depth_note, jaccard, mean_depth, null_p, partial_spearman, spearman_p_eff,
                           surrogate_spearman, top_k, verdict)
from sensitivity import EncodedPair, ScoreOptions
from support.tasks import SKILLS, SOURCES


def random_pairs(n=4, seed=0, prompt_len=24, ragged=False):
    """Pairs whose completions differ in their first token only; `ragged` gives each prompt its own length."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(3, 96, (k,), generator=g).tolist()
    pairs = []
    for i in range(n):
        prompt, tail = ids(prompt_len + (7 * i if ragged else 0)), ids(3 + (i % 3 if ragged else 0))
        pairs.append(EncodedPair(prompt, [10] + tail, [11] + tail, [12] + tail))
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
# Small pure functions and options

def test_distance_pool_top_k_jaccard_depth_verdict_known_values():
    assert sens.distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), "cosine").item() == pytest.approx(1.0)
    assert sens.distance(torch.tensor([1.0, 1.0]), torch.tensor([-2.0, -2.0]), "cosine").item() == pytest.approx(2.0)
    assert sens.distance(torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0]), "l2").item() == pytest.approx(5.0)
    assert sens.distance(torch.tensor([3.0, 4.0]), torch.tensor([-3.0, -4.0]), "rel-l2").item() == pytest.approx(2.0)
    assert sens.distance(100 * torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0]), "rel-l2").item() == 2.0  # scale-free
    assert sens.distance(torch.zeros(2, 4), torch.zeros(2, 4), "rel-l2").tolist() == [0.0, 0.0]
    assert sens.distance(torch.zeros(2, 4), torch.zeros(2, 4), "cosine").tolist() == [0.0, 0.0]  # no update: no change
    h = torch.arange(12.0).view(6, 2)  # (T, D)
    assert sens.pool_hidden(h, 3, 5, "last").tolist() == [8.0, 9.0]
    assert sens.pool_hidden(h, 3, 5, "mean").tolist() == [7.0, 8.0]
    assert top_k([0.1, 0.9, 0.3, 0.9, 0.0], 2) == [1, 3]
    assert top_k([0.5, 0.5, 0.5], 2) == [0, 1]  # ties go to the shallower layer
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert mean_depth([0, 4], 5) == pytest.approx(0.5) and mean_depth([29], 30) == 1.0
    assert verdict(-0.5, 0.01) == "anti-localized"
    assert verdict(0.5, 0.049) == "co-localized"
    assert verdict(0.9, 0.05) == verdict(-0.9, 0.2) == verdict(math.nan, math.nan) == \
        "no significant relation"
    assert depth_note(0.3, -0.2) == ""
    assert depth_note(1.0, -0.2) == "S ranks exactly like depth: nothing is left once depth is held fixed"
    assert depth_note(0.5, math.nan).startswith("I is constant over layers")


def test_options_validate_and_come_from_args_with_every_default_shown():
    with pytest.raises(UserError, match="sens-dist"):
        ScoreOptions(sens_dist="cos")
    p = sens.build_parser()
    opts = sens.options_from_args(p.parse_args(["--sens-dist", "l2", "--k", "3", "--seed", "7", "--chat", "off"]))
    assert opts == ScoreOptions(sens_dist="l2", k=3, seed=7, chat="off")
    assert sens.options_from_args(p.parse_args([])) == ScoreOptions()  # the defaults are written once
    help_text = " ".join(p.format_help().split())
    for f in fields(ScoreOptions):
        shown = f"(default: {f.default})" if f.default is not None else f.metadata["help"].split("(")[-1]
        assert f"--{f.name.replace('_', '-')}" in help_text and shown in help_text, f.name  # k: "ceil(L / 4))"
    q = argparse.ArgumentParser()
    sens.add_score_args(q, skip=("seed", "chat"))  # the caller (train.py) owns these
    assert {"--seed", "--chat", "--model", "--out"}.isdisjoint(q._option_string_actions)
    assert sens.options_from_args(q.parse_args([]), seed=3, chat="off") == ScoreOptions(seed=3, chat="off")


def test_partial_spearman_equals_the_correlation_of_rank_residuals():
    rng = np.random.default_rng(0)
    z = np.arange(20.0)
    x, y = z + rng.normal(0, 4, 20), z ** 1.5 + rng.normal(0, 15, 20)
    r, p = partial_spearman(x, y, z)
    rz = np.c_[np.ones(20), stats.rankdata(z)]
    res = [v - rz @ np.linalg.lstsq(rz, v, rcond=None)[0] for v in (stats.rankdata(x), stats.rankdata(y))]
    direct = stats.pearsonr(*res)[0]
    t = direct * np.sqrt((20 - 3) / (1 - direct ** 2))
    assert r == pytest.approx(direct, abs=1e-12) and p == pytest.approx(2 * stats.t.sf(abs(t), 17), rel=1e-9)
    assert all(map(math.isnan, partial_spearman(z ** 2, y, z)))  # x ranks exactly like z: nothing is left


def test_l2_on_a_growing_stream_correlates_through_depth_only():
    """A stream whose norm grows with depth: S_l2 follows the norm, so it correlates with any depth-trending I,
    but not once depth is held fixed; the scale-free cosine S does not see the growth at all."""
    rng = np.random.default_rng(0)
    P, L, D = 12, 120, 16
    growth = torch.tensor(1.03 ** np.arange(L))[None, :, None]  # (1, L, 1)
    base = torch.tensor(rng.normal(size=(P, L, D)))
    plus, minus = (growth * (base + 0.3 * torch.tensor(rng.normal(size=(P, L, D)))) for _ in range(2))
    I_pair = np.arange(L)[None, :] + rng.normal(0, 20, (P, L))  # an influence that also trends with depth
    I = sens.influence_from_per_pair(I_pair, "fd")
    for dist in ("l2", "cosine"):
        per_S = sens.distance(plus, minus, dist).numpy()
        a = sens.analyze(per_S.mean(0), I, 10, per_S, I_pair, "fd", 200, seed=0)
        raw, partial = a["spearman"]["r"], a["partial_depth"]["r"]
        if dist == "l2":  # the naive p calls depth a relation; the corrected p and the partial r_s do not
            assert raw > 0.9 and a["verdict_naive"] == "co-localized" and a["spearman"]["p"] < 1e-10, a
            assert a["verdict"] == "no significant relation" and a["spearman"]["p_null"] > 0.05, a
            assert a["s_depth_r"] > 0.9 and a["i_depth_r"] > 0.9 and a["spearman"]["p_eff"] > a["spearman"]["p"]
            assert abs(partial) < 0.2 and a["partial_depth"]["verdict"] == "no significant relation", a
        else:
            assert abs(raw) < 0.25 and abs(partial) < 0.25, a


# ----------------------------------------------------------------------------------------------------------------
# S: every reading from one pass; only one block changes anything

def test_hidden_pass_gives_every_reading_from_one_pass_per_pair_equal_to_the_definition(monkeypatch):
    model, pairs = tiny_model(num_hidden_layers=4), random_pairs(ragged=True)
    calls = []
    original = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda *a, **k: calls.append(1) or original(*a, **k))
    d = sens.hidden_pass(model, pairs)
    assert len(calls) == len(pairs) and len(d["S"]) == 2 * 2 * 3 * 2
    monkeypatch.undo()
    for (pool, repr_, dist, control), per_pair in d["S"].items():  # METHOD 4.2 as written, one pass per sequence
        S = sens.sensitivity_score(model, pairs, pool, repr_, dist, control)
        assert np.allclose(per_pair.mean(0), S, rtol=1e-4, atol=1e-6), (pool, repr_, dist, control)
    assert not np.allclose(d["S"]["mean", "output", "cosine", "off"], d["S"]["last", "output", "cosine", "off"])
    assert not np.allclose(d["S"]["last", "output", "l2", "on"], d["S"]["last", "output", "l2", "off"])
    pair = pairs[-1]  # one reading by hand: mean-pooled block updates, Euclidean distance
    with torch.no_grad():
        rows = [torch.tensor([pair.prompt + c]) for c in (pair.correct, pair.incorrect)]
        pooled = [np.stack([h[0, len(pair.prompt):].mean(0).numpy() for h in [model.embed_tokens(x)] +
                            model(x, output_hidden_states=True)[1]]) for x in rows]  # (L + 1, D)
    updates = [np.diff(x, axis=0) for x in pooled]
    assert np.allclose(d["S"]["mean", "delta", "l2", "off"][-1], np.linalg.norm(updates[0] - updates[1], axis=-1),
                       rtol=1e-4)


def test_control_subtracts_the_distance_of_the_two_incorrect_completions():
    model, pairs = tiny_model(num_hidden_layers=3), random_pairs()
    same = [p._replace(incorrect2=p.incorrect) for p in pairs]  # the control pair differs in nothing
    swapped = [p._replace(incorrect2=p.correct) for p in pairs]  # the control pair is the pair itself
    for dist in ("cosine", "l2", "rel-l2"):
        S, control = sens.sensitivity_score(model, same, dist=dist), sens.sensitivity_score(model, same, dist=dist,
                                                                                            control="on")
        assert S.min() > 1e-4 and np.array_equal(S, control)
        assert np.abs(sens.sensitivity_score(model, swapped, dist=dist, control="on")).max() < 1e-6
        fast = sens.hidden_pass(model, same)["S"]
        assert np.array_equal(fast["last", "output", dist, "on"], fast["last", "output", dist, "off"])


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_sensitivity_changes_only_at_the_one_active_block(pool):
    j, model = 2, silence(tiny_model(num_hidden_layers=5), keep=2)
    d = sens.hidden_pass(model, random_pairs())["S"]
    for dist in ("cosine", "l2", "rel-l2"):
        S = d[pool, "delta", dist, "off"].mean(0)  # h_{-1} is the embedding output
        assert S[j] > 1e-3 and np.abs(np.delete(S, j)).max() < 1e-6, (dist, S)
        S = d[pool, "output", dist, "off"].mean(0)  # block l -> index l
        assert np.allclose(S[:j], S[0], atol=1e-6) and np.allclose(S[j:], S[j], atol=1e-6)
        assert abs(S[j] - S[j - 1]) > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# I: GARFA at identity, gradient vs finite differences, the fast finite difference vs the full recompute

def full_recompute_fd(model, pairs, eps):
    """The finite difference as first written: every layer, both signs, a whole forward pass of every pair."""
    out = np.zeros((len(pairs), model.config.n_layers))
    with sens.identity_garfa(model) as scales, torch.no_grad():
        for layer in range(model.config.n_layers):
            losses = []
            for sign in (1, -1):
                scales[layer].fill_(sign * eps)
                losses.append(sens.completion_nll(model, pairs).double())
            scales[layer].zero_()
            out[:, layer] = ((losses[0] - losses[1]) / (2 * eps)).numpy()
    return out


@pytest.mark.parametrize("fd_batch", [1, 3])  # the default, and batches with padding in them
def test_fast_fd_equals_the_full_recompute(fd_batch, monkeypatch):
    """In float64, so that the test sees the algorithm: in float32 the two differ by about 1e-6 of the largest value
    (differently shaped batches round differently, and the quotient divides that by 2 eps)."""
    monkeypatch.setattr(sens, "FD_BATCH", fd_batch)
    model = tiny_model(num_hidden_layers=5).double()
    pairs = random_pairs(n=fd_batch + 3, prompt_len=20, ragged=True)  # two batches or more
    fast, full = sens.influence_per_pair(model, pairs, "fd", 0.05), full_recompute_fd(model, pairs, 0.05)
    assert np.abs(full).min() > 1e-3 and np.abs(fast - full).max() <= 1e-9 * np.abs(full).max()


@pytest.mark.parametrize("method", ["grad", "fd"])
def test_rope_influence_as_defined_equals_the_per_pair_fast_path(method):
    model = tiny_model(num_hidden_layers=4).double()
    pairs = random_pairs(n=3, prompt_len=30, ragged=True)
    fast = sens.influence_from_per_pair(sens.influence_per_pair(model, pairs, method, 0.05), method)
    I = sens.rope_influence(model, pairs, method, 0.05)
    assert I.min() > 1e-6 and I == pytest.approx(fast, rel=1e-9 if method == "fd" else 1e-5)  # grads kept in fp32


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
    per_pair = sens.influence_per_pair(model, pairs, "grad")
    assert per_pair.shape == (4, 3, 2) and np.allclose(per_pair.mean(0), torch.stack(grads).numpy(), atol=1e-5)
    assert all(block.self_attn.rope_freqs is None for block in model.layers)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)


@pytest.mark.parametrize("method", ["grad", "fd"])
def test_influence_is_nonzero_only_where_attention_reaches_the_stream(method):
    j = 1
    model = silence(tiny_model(num_hidden_layers=4), keep=j, parts=("self_attn.o_proj",))  # MLPs ignore positions
    I = sens.influence_from_per_pair(sens.influence_per_pair(model, random_pairs(prompt_len=100), method), method)
    assert I[j] > 1e-4 and np.delete(I, j).max() == 0.0, I


def test_gradient_matches_finite_differences():
    model, pairs = tiny_model(num_hidden_layers=5), random_pairs(prompt_len=40)
    grad = sens.influence_per_pair(model, pairs, "grad")  # (P, L, n_kv)
    eps = 1e-4  # std-0.2 random weights make the loss very curved in log_scale: a small step for a derivative
    fd = sens.influence_per_pair(model, pairs, "fd", eps)  # (P, L)
    # fd moves every KV head of a layer together, so it measures the sum over heads of the gradient
    assert np.abs(grad.sum(-1) - fd).max() < 1e-2 * np.abs(grad).max()
    layer, head = np.unravel_index(np.abs(grad[0]).argmax(), grad[0].shape)  # one component, perturbed by hand
    with sens.identity_garfa(model) as scales, torch.no_grad():
        losses = []
        for sign in (1, -1):
            scales[layer][head] = sign * eps
            losses.append(sens.completion_nll(model, pairs[:1]).double().item())
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(grad[0, layer, head], rel=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# The analysis, the cache, the multiverse

def test_analysis_spearman_and_bootstrap():
    rng = np.random.default_rng(0)
    per_S, per_I = rng.random((10, 8)), rng.normal(size=(10, 8, 2)) + np.linspace(0, 2, 8)[None, :, None]
    S, I = per_S.mean(0), sens.influence_from_per_pair(per_I, "grad")
    assert np.allclose(I, np.linalg.norm(per_I.mean(0), axis=-1))
    a = sens.analyze(S, I, 3, per_S, per_I, "grad", 500, seed=1)
    r, p = stats.spearmanr(S, I)
    assert a["spearman"]["r"] == pytest.approx(r) and a["spearman"]["p"] == pytest.approx(p)
    assert (a["partial_depth"]["r"], a["partial_depth"]["p"]) == partial_spearman(S, I, np.arange(8))
    assert a["s_depth_r"] == pytest.approx(stats.spearmanr(S, np.arange(8))[0])
    assert a["i_depth_r"] == pytest.approx(stats.spearmanr(I, np.arange(8))[0])
    assert (a["spearman"]["n_eff"], a["spearman"]["p_eff"]) == spearman_p_eff(r, S, I)
    assert a["spearman"]["p_null"] == null_p(r, surrogate_spearman(S, I, 1000, sens.NULL_SEED))
    assert a["verdict"] == verdict(r, max(a["spearman"]["p_eff"], a["spearman"]["p_null"]))
    lo, hi = a["spearman"]["ci95"]
    ci = bca_interval(lambda idx: sens.spearman_rows(per_S[idx].mean(-2), np.linalg.norm(per_I[idx].mean(-3), axis=-1)),
                      10, 500, seed=1)  # test_stats.py checks bca_interval against scipy.stats.bootstrap
    assert -1 <= lo < hi <= 1 and [lo, hi] == ci
    assert a == sens.analyze(S, I, 3, per_S, per_I, "grad", 500, seed=1)
    assert a["spearman"]["ci95"] != sens.analyze(S, I, 3, per_S, per_I, "grad", 500, seed=2)["spearman"]["ci95"]
    assert a["sens_layers"] == top_k(S, 3) and a["verdict"] == verdict(r, p)
    assert sens.spearman_rows(np.stack([S, S]), np.stack([I, -I])) == pytest.approx([r, -r])


def no_recompute(*args):
    raise AssertionError("recomputed despite the cache")


def test_scores_are_cached_per_options(tiny_checkpoint, tmp_path, monkeypatch):
    model_dir, model = tiny_checkpoint
    monkeypatch.setattr(sens, "CACHE_DIR", tmp_path / "cache")
    tok, opts = WordTokenizer(), ScoreOptions(bootstrap=200)
    first = sens.load_or_compute_scores(model_dir, model, tok, opts, out_dir=tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert (tmp_path / "run" / "layer_scores.png").stat().st_size > 0 and stored == first
    assert stored["spearman"]["r"] == pytest.approx(stats.spearmanr(stored["sensitivity"], stored["influence"])[0])
    lo, hi = stored["spearman"]["ci95"]
    assert -1 <= lo <= hi <= 1 and stored["k"] == math.ceil(3 / 4) and stored["n_pairs"] == 15
    monkeypatch.setattr(sens, "score_layers", no_recompute)
    assert sens.load_or_compute_scores(model_dir, model, tok, opts) == first
    assert sens.scores_key(model_dir, model, opts) != sens.scores_key(model_dir, model, ScoreOptions(sens_dist="l2"))
    with pytest.raises(AssertionError, match="recomputed"):
        sens.load_or_compute_scores(model_dir, model, tok, ScoreOptions(bootstrap=200, seed=1))
    monkeypatch.undo()
    again = sens.score_layers(model, tok, [opts])[0]  # deterministic: same options, same numbers
    assert again["sensitivity"] == first["sensitivity"] and again["influence"] == first["influence"]


def test_fingerprint_sees_weights_not_just_the_header(tiny_checkpoint, tmp_path):
    from conftest import save_checkpoint, tiny_hf_config
    model_dir, model = tiny_checkpoint
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # same names, shapes and file size
    other = save_checkpoint(model, tmp_path / "other", tiny_hf_config())
    assert sens.model_fingerprint(model_dir) == sens.model_fingerprint(model_dir)
    assert sens.model_fingerprint(other) != sens.model_fingerprint(model_dir)


def test_multiverse_scores_every_reading_on_every_set_and_reuses_the_cache(tmp_path, monkeypatch):
    from support.multiverse_report import joint_test
    model_dir = tiny_model_dir(tmp_path / "tiny", num_hidden_layers=6)
    monkeypatch.setattr(sens, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(sens, "RUNS_DIR", tmp_path / "runs")
    shipped = json.loads(sens.CALIB_FILE.read_text())
    monkeypatch.setattr(sens, "CALIB_FILE", tmp_path / "pairs.json")  # one or two pairs per family: fast
    sens.CALIB_FILE.write_text(json.dumps([shipped[i] for i in (0, 3, 7, 10, 12)]))
    common = ["--model", str(model_dir), "--bootstrap", "100", "--n-pairs", "4"]
    sens.main(common + ["--multiverse", "--calib-seeds", "", "--random-weights"])  # the null, where it belongs
    null = json.loads((tmp_path / "runs" / "multiverse-tiny-random-weights" / "multiverse.json").read_text())
    calls = []
    for name in ("hidden_pass", "influence_per_pair", "layer_drop_per_pair"):
        original = getattr(sens, name)
        monkeypatch.setattr(sens, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    sens.main(common + ["--multiverse", "--calib-seeds", "3", "--out", str(tmp_path / "mv")])
    assert sorted(calls) == ["hidden_pass"] * 2 + ["influence_per_pair"] * 4 + ["layer_drop_per_pair"]  # shipped
    text = (tmp_path / "mv" / "multiverse.json").read_text()
    mv = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in multiverse.json is not JSON"))
    records, summary = mv["records"], mv["summary"]
    assert len(records) == 48 * 2 and len({json.dumps(x["options"], sort_keys=True) for x in records}) == 96
    assert {x["calib_set"] for x in records} == {"file", "auto seed 3"}
    nan = lambda v: math.nan if v is None else v
    for x in records:  # every field recomputed from the record's own S and I
        S, I, depth = x["sensitivity"], x["influence"], np.arange(6)
        r, p = stats.spearmanr(S, I)
        assert (x["spearman"]["r"], x["spearman"]["p"]) == pytest.approx((r, p), abs=1e-12)
        assert [x["spearman"]["n_eff"], x["spearman"]["p_eff"]] == pytest.approx(spearman_p_eff(r, S, I))
        assert x["spearman"]["p_null"] == pytest.approx(null_p(r, surrogate_spearman(S, I, 1000, mv["null"]["seed"])))
        assert [x["s_depth_r"], x["i_depth_r"]] == pytest.approx([stats.spearmanr(S, depth)[0],
                                                                  stats.spearmanr(I, depth)[0]])
        stored = [nan(x["partial_depth"]["r"]), nan(x["partial_depth"]["p"])]
        assert stored == pytest.approx(partial_spearman(S, I, depth), abs=1e-12, nan_ok=True)
        assert x["partial_depth"]["note"] == depth_note(x["s_depth_r"], x["i_depth_r"])
        assert x["verdict"] == verdict(r, max(x["spearman"]["p_eff"], x["spearman"]["p_null"]))
        assert x["verdict_naive"] == verdict(r, p) and x["sens_layers"] == top_k(S, 2)
        for name, ref in x["references"].items():
            assert [x["reference_spearman"][name][k] for k in ("S", "I", "depth")] == pytest.approx(
                [stats.spearmanr(ref, v)[0] for v in (S, I, depth)], nan_ok=True)
        assert set(x["by_family"]) == ({"mc", "math", "gsm", "code"} if x["calib_set"] == "file" else
                                       set(x["by_family"])) and len(x["by_family"]) >= 3
    significant = lambda key: sum(x["spearman"][key] < 0.05 for x in records)
    assert summary["significant"] == {"naive": significant("p"), "p_eff": significant("p_eff"),
                                      "p_null": significant("p_null")}
    assert summary["joint_test"] == json.loads(json.dumps(joint_test(mv)))
    assert summary["joint_line"].startswith("Joint test over 96 variants") and summary["joint_line"] in \
        (tmp_path / "mv" / "multiverse.md").read_text()
    assert summary["random_weights"]["significant"] == null["summary"]["significant"]
    assert mv["null_model"]["r"] == [x["spearman"]["r"] for x in null["records"]]
    assert set(summary["references"]) == {"logit_lens", "block_influence", "layer_drop"}
    assert {name: r["variants"] for name, r in summary["references"].items()} == {
        "logit_lens": 96, "block_influence": 96, "layer_drop": 48}  # layer drop: the shipped pairs only
    assert all(("layer_drop" in x["references"]) == (x["calib_set"] == "file") for x in records)
    assert "(48 variants: the shipped pairs)" in (tmp_path / "mv" / "multiverse.md").read_text()
    monkeypatch.setattr(sens, "CACHE_DIR", tmp_path / "alone")  # `python sensitivity.py`, computed on its own
    sens.main(common + ["--out", str(tmp_path / "single")])
    single = json.loads((tmp_path / "single" / "scores.json").read_text(), parse_constant=lambda _: None)  # as mv
    default = next(x for x in records if x["options"] == single["options"])
    for key in ("sensitivity", "influence", "spearman", "partial_depth", "sens_layers", "rope_layers", "verdict"):
        assert default[key] == single[key], key
    effect = summary["effects"]["sens_dist"]
    for value in ("cosine", "l2", "rel-l2"):
        assert effect["mean_r"][value] == pytest.approx(np.mean(
            [x["spearman"]["r"] for x in records if x["options"]["sens_dist"] == value]))
    assert sum(summary["verdicts"].values()) == 96 and summary["sign_decided_by"] in sens.READINGS
    assert "--" + summary["sign_decided_by"].replace("_", "-") in summary["in_words"]
    md = (tmp_path / "mv" / "multiverse.md").read_text()
    assert md.count("| auto seed 3 |") == 48 and (tmp_path / "mv" / "multiverse.png").stat().st_size > 10_000
    assert (tmp_path / "mv" / "layer_profiles.png").stat().st_size > 10_000
    monkeypatch.setattr(sens, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(sens, "score_layers", no_recompute)  # every variant is cached now
    sens.main(common + ["--multiverse", "--calib-seeds", "3", "--out", str(tmp_path / "again")])
    assert json.loads((tmp_path / "again" / "multiverse.json").read_text())["records"] == records


def test_k_beyond_the_model_is_a_one_line_error_before_loading(tmp_path, monkeypatch):
    model_dir = tiny_model_dir(tmp_path / "tiny", num_hidden_layers=3)
    monkeypatch.setattr(sens.Transformer, "from_pretrained", no_recompute)
    with pytest.raises(UserError, match=r"^--k 4: the model has 3 layers; pass --k 3 or fewer$"):
        sens.main(["--model", str(model_dir), "--k", "4", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_an_output_directory_takes_the_same_command_again_but_no_other_settings(tmp_path, monkeypatch):
    model_dir = tiny_model_dir(tmp_path / "tiny", num_hidden_layers=3)
    monkeypatch.setattr(sens, "CACHE_DIR", tmp_path / "cache")
    shipped = json.loads(sens.CALIB_FILE.read_text())
    monkeypatch.setattr(sens, "CALIB_FILE", tmp_path / "pairs.json")  # three pairs: fast
    sens.CALIB_FILE.write_text(json.dumps(shipped[:3]))
    common = ["--model", str(model_dir), "--bootstrap", "10", "--n-pairs", "3", "--out", str(tmp_path / "out")]
    sens.main(common)
    first = (tmp_path / "out" / "scores.json").read_text()
    sens.main(common)  # the same command again: the same files
    assert (tmp_path / "out" / "scores.json").read_text() == first
    with pytest.raises(UserError, match=r"holds a layer-score run made with different settings: options="):
        sens.main(common + ["--sens-dist", "l2"])
    with pytest.raises(UserError, match=r"holds a layer-score run made with different settings: kind="):
        sens.main(common + ["--multiverse", "--calib-seeds", ""])
    assert (tmp_path / "out" / "scores.json").read_text() == first


# ----------------------------------------------------------------------------------------------------------------
# Calibration pairs

def test_shipped_pairs_cover_six_skills_and_no_evaluation_item():
    from data import OFFLINE_BENCHMARKS, load_benchmark, question_key
    pairs = sens.calibration_pairs(ScoreOptions())
    assert len(pairs) == 15 and {p["skill"] for p in pairs} == set(SKILLS)
    assert all(len({p["correct"], p["incorrect"], p["incorrect2"]}) == 3 for p in pairs)
    for p in pairs:  # the control is wrong the same way: another letter, another final number, another code line
        if SKILLS[p["skill"]] == "mc":
            assert p["incorrect2"] in (" A", " B", " C", " D")
        elif SKILLS[p["skill"]] in ("math", "gsm"):
            assert re.search(r"(\\boxed\{.+\}\.|The answer is -?\d+\.)$", p["incorrect2"]), p["incorrect2"]
        else:
            assert p["incorrect2"].startswith("    return ") and p["incorrect2"].endswith("\n")
    prompts = [" ".join(p["prompt"].lower().split()) for p in pairs]
    for name in OFFLINE_BENCHMARKS:
        for item in load_benchmark(name):
            key = question_key(item)
            assert not any(key in prompt for prompt in prompts if len(key) > 20), (name, item["id"])


def test_pairs_use_the_chat_template_where_evaluation_does():
    pairs = [dict(skill="knowledge_mc", prompt="Q", correct=" A", incorrect=" B", incorrect2=" C"),
             dict(skill="grade_school_math", prompt="Q", correct=" 1", incorrect=" 2", incorrect2=" 3")]
    mc, gsm = sens.encode_pairs(WordTokenizer(chat_template="x"), pairs, "auto")
    assert mc.prompt == WordTokenizer().encode("Q") and gsm.prompt[0] == 1 and gsm.prompt != mc.prompt
    assert sens.encode_pairs(WordTokenizer(chat_template="x"), pairs, "off")[1].prompt == mc.prompt


def test_auto_pairs_come_from_training_data_and_are_seeded():
    from data import load_train
    pairs = sens.calibration_pairs(ScoreOptions(calib="auto", n_pairs=12, seed=3))
    assert len(pairs) == 12 and all(len({p["correct"], p["incorrect"], p["incorrect2"]}) == 3 for p in pairs)
    assert {p["source"] for p in pairs} <= set(SOURCES) and {p["skill"] for p in pairs} >= {
        "code", "competition_math", "grade_school_math"}
    for p in pairs:  # drawn verbatim from their training source (evaluation items were removed there)
        assert (p["prompt"], p["correct"]) in {(x["prompt"], x["completion"]) for x in load_train(p["source"])}
    assert pairs == sens.calibration_pairs(ScoreOptions(calib="auto", n_pairs=12, seed=3))
    assert pairs != sens.calibration_pairs(ScoreOptions(calib="auto", n_pairs=12, seed=4))
