"""stats.py against scipy and known values."""
import numpy as np
import pytest
from conftest import reference

from support.stats import mcnemar_exact, mean_interval, paired_difference, wilson_interval


def test_wilson_interval_known_values():
    # Hand-computed: center (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(37, 120) == pytest.approx((0.2327, 0.3958), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_known_value_on_items_both_ran():
    a = {str(i): i < 8 for i in range(20)} | {"only_in_a": True}
    b = {str(i): 6 <= i < 10 for i in range(20)}
    only_a, only_b, p = mcnemar_exact(a, b)  # a right on 0-5 where b is wrong; b right on 8, 9 where a is wrong
    assert (only_a, only_b) == (6, 2) and p == pytest.approx(0.2890625)
    assert mcnemar_exact(a, a) == (0, 0, 1.0)


def test_paired_difference_against_scipy_on_fixed_data():
    scipy_stats = reference("scipy.stats")
    rng = np.random.default_rng(3)
    a = {str(i): float(v) for i, v in enumerate(rng.normal(1.0, 0.2, 60))}
    b = {k: v - 0.05 + float(rng.normal(0, 0.05)) for k, v in a.items()} | {"extra": 9.0}
    d = np.array([b[k] - a[k] for k in sorted(a)])
    out = paired_difference(a, b, n_boot=4000, seed=1)
    assert out["n"] == 60 and out["mean"] == pytest.approx(d.mean())
    assert out["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(d).pvalue)
    boot = scipy_stats.bootstrap((d,), np.mean, n_resamples=4000, method="percentile",
                                 random_state=np.random.default_rng(0)).confidence_interval
    assert out["ci95"] == pytest.approx([boot.low, boot.high], abs=0.004)  # two bootstraps of the same mean
    assert out["ci95"][1] < 0 and out["wilcoxon_p"] < 1e-6  # b is better, clearly
    same = paired_difference(a, a)
    assert same["mean"] == 0 and same["wilcoxon_p"] == 1.0


def test_mean_interval_is_seeded():
    x = np.arange(30.0)
    assert mean_interval(x, seed=5) == mean_interval(x, seed=5)
    assert mean_interval(x, seed=5)["ci95"] != mean_interval(x, seed=6)["ci95"]


# ----------------------------------------------------------------------------------------------------------------
# Layer profiles: effective n, the surrogate null, BCa, the joint test

def trending_profiles(rng, L=32, phi=0.6):
    """Two independent profiles over L layers that share nothing but a depth trend (AR(1) noise around it)."""
    def ar1():
        e = np.zeros(L)
        for i in range(L):
            e[i] = (phi * e[i - 1] if i else 0.0) + rng.normal()
        return e
    depth = np.arange(L)
    return 0.15 * depth + ar1(), -0.15 * depth + ar1()


def test_surrogate_null_holds_its_error_rate_where_the_naive_p_does_not():
    from support.stats import null_p, spearman_p_eff, surrogate_spearman
    scipy_stats = reference("scipy.stats")
    rng = np.random.default_rng(0)
    naive, eff, null = [], [], []
    for _ in range(200):
        x, y = trending_profiles(rng)
        r, p = scipy_stats.spearmanr(x, y)
        naive.append(p)
        eff.append(spearman_p_eff(r, x, y)[1])
        null.append(null_p(r, surrogate_spearman(x, y, 1000, seed=0)))
    naive, eff, null = map(np.array, (naive, eff, null))
    assert 0.005 <= np.mean(null < 0.05) <= 0.10  # about 5%: nothing beyond the trends links them
    assert np.mean(naive < 0.05) > 0.8 and np.median(naive) < 1e-3  # the trend alone makes the naive p tiny
    assert np.all(eff >= naive) and np.mean(eff < 0.05) < np.mean(naive < 0.05)


def test_effective_n_is_bartletts_and_the_p_uses_its_degrees_of_freedom():
    from support.stats import effective_n, lag1_autocorrelation, spearman_p_eff
    scipy_stats = reference("scipy.stats")
    x, y = trending_profiles(np.random.default_rng(1))
    rx, ry = (scipy_stats.rankdata(v) - scipy_stats.rankdata(v).mean() for v in (x, y))
    acf = lambda v: (v[:-1] * v[1:]).sum() / (v * v).sum()
    assert lag1_autocorrelation(scipy_stats.rankdata(x)) == pytest.approx(acf(rx))
    a = acf(rx) * acf(ry)
    assert effective_n(x, y) == pytest.approx(32 * (1 - a) / (1 + a))
    r = scipy_stats.spearmanr(x, y)[0]
    n_eff, p = spearman_p_eff(r, x, y)
    t = abs(r) * np.sqrt((n_eff - 2) / (1 - r * r))
    assert p == pytest.approx(2 * scipy_stats.t.sf(t, n_eff - 2))
    alternating = np.array([0.0, 1.0] * 16) + np.arange(32) * 1e-3  # autocorrelations of opposite sign: n_eff is
    assert effective_n(alternating, np.arange(32.0)) == 32  # capped at n (the p at the naive p)


def test_surrogates_keep_the_trend_and_are_seeded():
    from support.stats import trend_surrogates
    x = np.arange(20.0) ** 2
    s = trend_surrogates(x, 50, seed=3)
    assert s.shape == (50, 20) and np.array_equal(s, trend_surrogates(x, 50, seed=3))
    assert np.allclose(s, np.arange(1, 21), atol=1.0)  # ranks of a monotone profile: all trend, tiny residuals
    assert not np.array_equal(s, trend_surrogates(x, 50, seed=4)) or np.allclose(s, s[0])


def test_bca_interval_equals_scipy_bootstrap_on_the_same_draws():
    from support.stats import bca_interval, spearman_rows
    scipy_stats = reference("scipy.stats")
    rng = np.random.default_rng(0)
    per_S, per_I = rng.random((10, 8)), rng.normal(size=(10, 8)) + np.linspace(0, 2, 8)[None, :]
    ours = bca_interval(lambda idx: spearman_rows(per_S[idx].mean(-2), np.abs(per_I[idx].mean(-2))), 10, 500, 3)

    def statistic(s, i, axis):  # (L, ..., P): the pairs resampled together, layers first
        return spearman_rows(np.moveaxis(s.mean(axis), 0, -1), np.moveaxis(np.abs(i.mean(axis)), 0, -1))
    ci = scipy_stats.bootstrap((per_S.T, per_I.T), statistic, paired=True, vectorized=True, axis=-1, n_resamples=500,
                               method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert ours == pytest.approx([ci.low, ci.high], abs=1e-12) and ours[0] < ours[1]


def test_joint_test_counts_against_the_null_distribution():
    from support.stats import specification_joint_test
    rng = np.random.default_rng(0)
    null_r = rng.normal(0, 0.2, (999, 6))  # six variants, their null r under shared draws
    p_null = lambda r: (1 + (np.abs(null_r) >= np.abs(r)).sum(0)) / 1000
    far = np.full(6, 0.9)
    out = specification_joint_test(far, p_null(far), null_r)
    assert out["significant"] == 6 and out["p_count"] == pytest.approx(0.001, abs=1e-3)
    assert out["median_r"] == 0.9 and out["p_median"] < 0.01
    assert out["null_significant_mean"] == pytest.approx(6 * 0.05, abs=0.1)
    typical = null_r[0]
    out = specification_joint_test(typical, p_null(typical), null_r)
    assert out["p_count"] > 0.2 and out["p_median"] > 0.05


# ----------------------------------------------------------------------------------------------------------------
# The ablation's statistics: seeds crossed with items, Holm, layer sets stable under resampling

def crossed_differences(rng, n_seeds, n_items, effect, seed_sd, item_sd, noise_sd):
    """Paired differences of two arms: a true effect, a per-seed shift (data order, initialisation), a per-item
    shift and noise; the truth the interval must cover is `effect`."""
    return (effect + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, item_sd, (1, n_items))
            + rng.normal(0, noise_sd, (n_seeds, n_items)))


def test_hierarchical_bootstrap_covers_a_known_effect_about_95_percent():
    from support.stats import hierarchical_bootstrap

    rng, truth, hits, reps = np.random.default_rng(0), 0.3, 0, 200
    for r in range(reps):
        blocks = [crossed_differences(rng, 8, 40, truth, 0.3, 1.0, 0.5) for _ in range(2)]
        ci = hierarchical_bootstrap(blocks, n_boot=1000, seed=r)["ci95"]
        hits += ci[0] <= truth <= ci[1]
    assert 0.91 <= hits / reps <= 0.98  # 0.94 measured; the binomial sd of 200 repetitions is 0.015
    # Where seeds vary more, resampling the seed-averaged items alone (ignoring the seed level) undercovers, and
    # the two-stage bootstrap does not.
    rng, narrow, both = np.random.default_rng(1), 0, 0
    for r in range(100):
        d = crossed_differences(rng, 8, 40, truth, 1.0, 1.0, 0.5)
        lo, hi = np.percentile(d.mean(0)[rng.integers(0, 40, (1000, 40))].mean(1), [2.5, 97.5])
        narrow += lo <= truth <= hi
        ci = hierarchical_bootstrap([d], n_boot=1000, seed=r)["ci95"]
        both += ci[0] <= truth <= ci[1]
    assert narrow / 100 < 0.8 and both / 100 >= 0.88


def test_hierarchical_bootstrap_mean_p_and_interval_agree():
    from support.stats import hierarchical_bootstrap

    rng = np.random.default_rng(2)
    blocks = [crossed_differences(rng, 3, 50, 0.0, 0.1, 0.5, 0.2), crossed_differences(rng, 3, 30, 0.0, 0.1, 2.0, 0.2)]
    out = hierarchical_bootstrap(blocks, n_boot=2000, seed=0)
    assert out["mean"] == pytest.approx(np.mean([b.mean() for b in blocks]))  # each block weighs the same
    assert out["n_seeds"] == 3 and out["n_items"] == [50, 30]
    assert (out["p"] < 0.05) == (out["ci95"][0] > 0 or out["ci95"][1] < 0)
    shifted = hierarchical_bootstrap([b + 1.0 for b in blocks], n_boot=2000, seed=0)
    assert shifted["p"] == pytest.approx(1 / 2000) and shifted["ci95"][0] > 0
    assert hierarchical_bootstrap(blocks, n_boot=500, seed=4) == hierarchical_bootstrap(blocks, n_boot=500, seed=4)


def test_holm_equals_a_hand_computation():
    from support.stats import holm

    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 to stay monotone
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001, 0.2]) == pytest.approx([0.5, 0.003, 0.4])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_stable_selection_on_hand_made_frequencies():
    from support.stats import top_by_frequency

    assert top_by_frequency([0.1, 0.9, 0.5, 0.9, 0.0], 2) == [1, 3]
    assert top_by_frequency([0.5, 0.2, 0.5, 0.5], 2) == [0, 2]  # ties go to the lower layer
    assert top_by_frequency([0.0, 0.3, 1.0], 1) == [2]


def test_top_k_frequencies_count_bootstrap_membership():
    from support.stats import stable_top_k, top_k_frequencies

    # Layer 2 always scores highest; layer 0 beats layer 1 on 14 of 15 pairs, so it is in the top 2 on nearly every
    # resample of the pairs; layer 3 never is.
    per_pair = np.tile([0.5, 0.0, 9.0, -9.0], (15, 1))
    per_pair[0, :2] = [-100.0, 100.0]
    mean = lambda x: x.mean(axis=-2)
    freq = top_k_frequencies(per_pair, 2, mean, n_boot=400, seed=0)
    assert freq[2] == 1.0 and freq[3] == 0.0 and freq.sum() == pytest.approx(2.0)
    assert freq[1] == pytest.approx(1 - (14 / 15) ** 15, abs=0.06)  # layer 1 wins when pair 0 is drawn enough
    out = stable_top_k([per_pair, per_pair[1:]], 2, mean, n_boot=400)
    assert out["layers"] == [0, 2] and len(out["per_draw"]) == 2 and out["per_draw"][1][:2] == [1.0, 0.0]
