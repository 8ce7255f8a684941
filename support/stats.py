"""Statistics, next to each other: intervals for one run, paired tests for two runs on the same items.

METHOD.md section 7. Accuracy gets a Wilson interval and two runs' correctness an exact McNemar test; a per-item
continuous value (bits per byte) gets the mean paired difference with a seeded paired-bootstrap interval and the
two-sided Wilcoxon signed-rank p. Pure functions over plain numbers; scipy is the reference the tests compare to.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

BOOTSTRAP_RESAMPLES = 10_000


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p, zz = k / n, z * z
    center = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    return (max(0.0, center - half), min(1.0, center + half))


def mean_interval(values, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Mean of per-item values with a percentile-bootstrap 95% interval: {"mean", "ci95", "n"}."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95": [float(lo), float(hi)], "n": int(len(x))}


def mcnemar_exact(a: dict[str, bool], b: dict[str, bool]) -> tuple[int, int, float]:
    """Exact McNemar test on the items both runs scored -> (only a correct, only b correct, two-sided p)."""
    from scipy.stats import binomtest

    both = a.keys() & b.keys()
    only_a = sum(1 for i in both if a[i] and not b[i])
    only_b = sum(1 for i in both if b[i] and not a[i])
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def paired_difference(a: dict[str, float], b: dict[str, float], n_boot: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict:
    """b - a on the items both scored: mean, paired-bootstrap 95% interval, two-sided Wilcoxon signed-rank p.

    For bits per byte a negative difference means run b predicts the gold answers better than run a.
    """
    from scipy.stats import wilcoxon

    both = sorted(a.keys() & b.keys())
    d = np.array([b[i] - a[i] for i in both], dtype=np.float64)
    out = mean_interval(d, n_boot, seed)
    out["wilcoxon_p"] = float(wilcoxon(d).pvalue) if len(d) and np.any(d != 0) else 1.0
    return out


def aggregate_seeds(per_seed: dict[int, dict]) -> dict:
    """One arm over seeds: per-seed values, and the across-seed mean and sd of accuracy and mean bpb."""
    first = next(iter(per_seed.values()))
    benchmarks = {}
    for name, r in first["benchmarks"].items():
        runs = [res["benchmarks"][name] for res in per_seed.values()]
        if "status" in r:
            benchmarks[name] = r
            continue
        agg = {"n": r["n"], "seeds": {str(s): {k: res["benchmarks"][name].get(k) for k in ("accuracy", "bpb")}
                                      for s, res in per_seed.items()}}
        if "accuracy" in r:
            acc = np.array([x["accuracy"] for x in runs])
            k, n = round(acc.mean() * r["n"]), r["n"]
            agg |= dict(accuracy=float(acc.mean()), accuracy_sd=float(acc.std(ddof=1)), ci95=list(wilson_interval(k, n)),
                        **{key: r[key] for key in ("chance", "metric", "note") if key in r})
        if "bpb" in r:
            means = np.array([x["bpb"]["mean"] for x in runs])
            agg["bpb"] = {"mean": float(means.mean()), "sd": float(means.std(ddof=1)), "n": r["n"],
                          "ci95": [float(np.mean([x["bpb"]["ci95"][i] for x in runs])) for i in (0, 1)]}
        benchmarks[name] = agg
    return {**{k: v for k, v in first.items() if k not in ("benchmarks", "seed", "training")},
            "seeds": list(per_seed), "benchmarks": benchmarks,
            "training": {str(s): res["training"] for s, res in per_seed.items()}}


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman r of each row pair of (N, L) arrays: Pearson r of average ranks (scipy's definition)."""
    ra, rb = scipy_stats.rankdata(a, axis=-1), scipy_stats.rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant row has no rank correlation: NaN
        return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


def partial_spearman(x, y, z) -> tuple[float, float]:
    """Spearman r of x and y with z held fixed (the Pearson r of the ranks of x and y after each is regressed on the
    ranks of z) and its two-sided p (t test, n - 3 degrees of freedom). With z = layer index: do S and I agree
    beyond both following depth? NaN when x or y ranks exactly like z (nothing is left once depth is removed)."""
    r_xy, r_xz, r_yz = (scipy_stats.spearmanr(a, b)[0] for a, b in ((x, y), (x, z), (y, z)))
    if not max(abs(r_xz), abs(r_yz)) < 1 - 1e-12:  # rounding keeps r_xz a hair below 1 where ranks are equal
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):  # |r| = 1: t = inf, p = 0
        r = np.clip((r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz ** 2) * (1 - r_yz ** 2)), -1, 1)
        t = r * np.sqrt((len(x) - 3) / (1 - r * r))
    return float(r), float(2 * scipy_stats.t.sf(abs(t), len(x) - 3))
