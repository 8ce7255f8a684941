"""stats.py against scipy and known values."""
import numpy as np
import pytest
from conftest import reference

from support.stats import mcnemar_exact, mean_interval, paired_difference, wilson_interval


def test_wilson_interval_against_scipy_and_a_known_value():
    scipy_stats = reference("scipy.stats")
    for k, n in ((0, 10), (3, 10), (10, 10), (37, 120)):
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


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
