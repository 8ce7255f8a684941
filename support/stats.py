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


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (scipy's; (0, 1) when nothing was scored)."""
    if n == 0:
        return (0.0, 1.0)
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


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


# ----------------------------------------------------------------------------------------------------------------
# Layer profiles: r_s over layers with the dependence of neighbouring layers taken into account (METHOD.md 4.4)

NULL_SURROGATES = 1000  # surrogate profiles per test: p_null resolves down to 1 / 1001
TREND_DEGREE = 2  # the depth trend of a rank profile: a quadratic in the layer index


def lag1_autocorrelation(x) -> float:
    """The lag-1 autocorrelation of a profile over layers (the usual ACF estimator); 0 for a constant profile."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    denominator = (x * x).sum()
    return float((x[:-1] * x[1:]).sum() / denominator) if denominator > 0 else 0.0


def effective_n(x, y) -> float:
    """Bartlett's / Pyper and Peterman's effective sample size of a correlation between two autocorrelated profiles,
    n (1 - r1x r1y) / (1 + r1x r1y) with their lag-1 autocorrelations, never above n: 32 layers whose rank profiles
    both have lag-1 autocorrelation 0.8 count as about 7 independent points."""
    n, a = len(x), lag1_autocorrelation(scipy_stats.rankdata(x)) * lag1_autocorrelation(scipy_stats.rankdata(y))
    return float(min(n, n * (1 - a) / (1 + a)))


def spearman_p_eff(r: float, x, y) -> tuple[float, float]:
    """(n_eff, p): the two-sided p of Spearman's r from the t distribution with n_eff - 2 degrees of freedom, the
    test scipy's spearmanr makes with n - 2. Tests r = 0 allowing for smooth profiles; its false-positive rate is
    about 5% at p < 0.05 when both profiles are AR(1)-like. Never below the naive p (n_eff <= n)."""
    n_eff = effective_n(x, y)
    if not np.isfinite(r) or n_eff <= 2:
        return n_eff, 1.0 if np.isfinite(r) else float("nan")
    t = abs(r) * math.sqrt((n_eff - 2) / max(1 - r * r, 1e-300))
    return n_eff, float(2 * scipy_stats.t.sf(t, n_eff - 2))


def trend_surrogates(x, n: int = NULL_SURROGATES, seed: int = 0) -> np.ndarray:
    """(n, L) surrogate profiles of x that keep its depth trend: the ranks of x are fitted by a quadratic in the
    layer index, and the residuals are circularly shifted (and, in half the draws, reversed) before the trend is
    added back, which keeps the residuals' autocorrelation. The draws depend on (n, L, seed) only, so every profile
    of the same length gets the same shifts."""
    ranks = scipy_stats.rankdata(x)
    depth = np.arange(len(ranks), dtype=np.float64)
    trend = np.polyval(np.polyfit(depth, ranks, TREND_DEGREE), depth)
    rng = np.random.default_rng(seed)
    shift, reverse = rng.integers(0, len(ranks), n), rng.random(n) < 0.5
    idx = (np.arange(len(ranks))[None] + shift[:, None]) % len(ranks)  # (n, L)
    idx = np.where(reverse[:, None], idx[:, ::-1], idx)
    return trend[None] + (ranks - trend)[idx]


def surrogate_spearman(x, y, n: int = NULL_SURROGATES, seed: int = 0) -> np.ndarray:
    """(n,) Spearman r of surrogate pairs: each profile keeps its own depth trend, the rest is drawn independently
    (x with `seed`, y with `seed + 1`). The null distribution of r when x and y share nothing beyond their trends."""
    return spearman_rows(trend_surrogates(x, n, seed), trend_surrogates(y, n, seed + 1))


def null_p(r: float, null: np.ndarray) -> float:
    """Two-sided Monte Carlo p of r against a null sample: (1 + #{|null| >= |r|}) / (1 + n). Tests "nothing beyond
    the depth trends"; at p < 0.05 it is wrong about 5% of the time when that holds."""
    if not np.isfinite(r):
        return float("nan")
    null = np.nan_to_num(np.asarray(null, dtype=np.float64))
    return float((1 + np.sum(np.abs(null) >= abs(r) - 1e-12)) / (1 + len(null)))


def bca_interval(statistic, n_items: int, n_boot: int, seed: int) -> list[float]:
    """The 95% BCa interval (scipy.stats.bootstrap) of statistic(idx), where idx (..., n) are resampled item indices
    along the last axis; NaN where the statistic is constant or undefined (no interval exists)."""
    import warnings

    def vectorized(idx, axis=-1):
        idx = np.moveaxis(np.asarray(idx), axis, -1)
        return statistic(idx.reshape(-1, idx.shape[-1])).reshape(idx.shape[:-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate distribution is reported as NaN below
        ci = scipy_stats.bootstrap((np.arange(n_items),), vectorized, n_resamples=n_boot, method="BCa",
                                   vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return [float(ci.low), float(ci.high)]


def specification_joint_test(r, p_null, null_r: np.ndarray, alpha: float = 0.05) -> dict:
    """Simonsohn et al.'s joint test of a specification curve: V variants with observed r (V,) and surrogate-null
    p (V,), and null_r (n, V), draw j holding every variant's r under one shared surrogate draw (so the variants'
    dependence is kept). Under the null, how many variants reach p < alpha and what median r appears; the observed
    count (one-sided, as many or more) and median (two-sided, as far in either tail) against that distribution."""
    null_r, r = np.nan_to_num(np.asarray(null_r, dtype=np.float64)), np.asarray(r, dtype=np.float64)
    n = len(null_r)
    null_abs = np.abs(null_r)  # each draw's own p against its variant's null distribution
    ranked = np.sort(null_abs, axis=0)
    at_least = np.stack([n - np.searchsorted(ranked[:, v], null_abs[:, v] - 1e-12) for v in range(len(r))], 1)
    null_p_draw = (1 + at_least) / (1 + n)  # (n, V): as null_p would give each draw
    null_count = (null_p_draw < alpha).sum(1)
    count = int(np.sum(np.asarray(p_null, dtype=np.float64) < alpha))
    median, null_median = float(np.nanmedian(r)), np.median(null_r, axis=1)
    tail = min(np.sum(null_median <= median), np.sum(null_median >= median))
    return {"n_variants": int(len(r)), "significant": count, "null_significant_mean": float(null_count.mean()),
            "null_significant_95": float(np.percentile(null_count, 95)),
            "p_count": float((1 + np.sum(null_count >= count)) / (1 + n)),
            "median_r": median, "null_median_r_95": [float(v) for v in np.percentile(null_median, [2.5, 97.5])],
            "p_median": float(min(1.0, 2 * (1 + tail) / (1 + n))), "alpha": alpha, "surrogates": int(n)}


# ----------------------------------------------------------------------------------------------------------------
# The ablation (METHOD.md 7): seeds crossed with items, several contrasts, layer sets stable under resampling

def hierarchical_bootstrap(diffs: list, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The mean over blocks (benchmarks) of the mean of each block's (seeds, items) paired differences, with a 95%
    percentile interval and a two-sided p from a two-stage bootstrap: seeds resampled first (one draw for every
    block: a seed fixes the data order and initialisation of all benchmarks at once), then items within each block.

    It tests "the mean paired difference is zero" with the seeds and the items both random; p is twice the smaller
    share of resampled means on either side of zero (at least 1 / n_boot), so p < 0.05 exactly when the 95% interval
    excludes zero; its error rate is the interval's non-coverage (tests: coverage ~95% with 8 seeds; with 3 seeds
    the seed draw has only 10 distinct outcomes and the interval is too narrow when the seed variance dominates).
    """
    diffs = [np.asarray(d, dtype=np.float64) for d in diffs]
    n_seeds, rng = diffs[0].shape[0], np.random.default_rng(seed)
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot) / n_seeds  # (n_boot, seeds)
    boot = np.zeros(n_boot)
    for d in diffs:
        item_w = rng.multinomial(d.shape[1], np.full(d.shape[1], 1 / d.shape[1]), size=n_boot) / d.shape[1]
        boot += np.einsum("bs,sn,bn->b", seed_w, d, item_w) / len(diffs)  # (n_boot,)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = max(1 / n_boot, min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))))
    return {"mean": float(np.mean([d.mean() for d in diffs])), "ci95": [float(lo), float(hi)], "p": float(p),
            "n_seeds": int(n_seeds), "n_items": [int(d.shape[1]) for d in diffs], "resamples": int(n_boot)}


def holm(p_values) -> list[float]:
    """Holm-adjusted p values (family-wise error rate <= alpha when each adjusted p is compared with alpha), in the
    order given: the i-th smallest p times (m - i), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    order, adjusted, running = np.argsort(p, kind="stable"), np.empty(len(p)), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        adjusted[j] = running
    return adjusted.tolist()


def top_k_frequencies(per_item, k: int, reduce, n_boot: int, seed: int = 0) -> np.ndarray:
    """How often each column enters the top k of reduce(rows) over n_boot bootstrap resamples of the rows: per_item
    (items, columns, ...) -> (columns,) shares in [0, 1]. reduce maps (n_boot, items, columns, ...) to
    (n_boot, columns) (for layer scores: the score of each layer from the resampled calibration pairs)."""
    x = np.asarray(per_item, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    top = np.argsort(-reduce(x[idx]), axis=1, kind="stable")[:, :k]  # (n_boot, k)
    return np.bincount(top.ravel(), minlength=x.shape[1]) / n_boot


def stable_top_k(draws: list, k: int, reduce, n_boot: int) -> dict:
    """Columns chosen by stability: each draw's items resampled n_boot times (top_k_frequencies, seed = the draw's
    index), the shares averaged over draws, the k most frequent kept (ties to the lower column) ->
    {"layers", "frequency" (columns,), "per_draw" (draws, columns)}."""
    per_draw = np.array([top_k_frequencies(d, k, reduce, n_boot, seed=i) for i, d in enumerate(draws)])
    frequency = per_draw.mean(axis=0)
    return {"layers": top_by_frequency(frequency, k), "frequency": frequency.tolist(), "per_draw": per_draw.tolist()}


def top_by_frequency(frequency, k: int) -> list[int]:
    """The k columns with the highest frequency, ties to the lower column, sorted."""
    frequency = np.asarray(frequency, dtype=np.float64)
    return sorted(np.lexsort((np.arange(len(frequency)), -frequency))[:k].tolist())


# ----------------------------------------------------------------------------------------------------------------
# Co-localization of two layer profiles (METHOD.md 4.4): the numbers sensitivity.py reports for S and I

ALPHA = 0.05  # significance level of the verdicts


def top_k(scores, k: int) -> list[int]:
    """The k highest-scoring layers (ties to the shallower layer), sorted."""
    return sorted(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_depth(layers, n_layers: int) -> float:
    """Mean relative depth l / (L - 1) of a layer set: 0 = first layer, 1 = last."""
    return float(np.mean([layer / max(n_layers - 1, 1) for layer in layers])) if layers else float("nan")


def verdict(r: float, p: float) -> str:
    """The sign of r where p < ALPHA (wrong about 5% of the time where r is 0 and p is valid), else no relation."""
    return "no significant relation" if not p < ALPHA or r == 0 else "anti-localized" if r < 0 else "co-localized"


def depth_note(s_depth_r: float, i_depth_r: float) -> str:
    """Why the partial r_s is undefined, in words, or "" where it is defined."""
    words = [f"{name} ranks exactly like depth" if abs(r) >= 1 - 1e-12 else f"{name} is constant over layers"
             for name, r in (("S", s_depth_r), ("I", i_depth_r)) if not abs(r) < 1 - 1e-12]
    return f"{' and '.join(words)}: nothing is left once depth is held fixed" if words else ""


def colocalization(S, I, k: int, statistic=None, n_items: int = 0, n_boot: int = 0, seed: int = 0,
                   null_seed: int = 0) -> dict:
    """Spearman(S, I) over layers with its naive p, its p with the effective n of two smooth profiles (p_eff) and
    its p against surrogates that keep both depth trends (p_null), and a BCa 95% interval of statistic(idx) over
    n_items resampled items; the partial r_s with depth held fixed; each profile's Spearman with depth; top-k sets,
    their overlap and depth; a verdict on the larger corrected p (both corrections must agree), the naive one beside."""
    S, I = np.asarray(S, dtype=np.float64), np.asarray(I, dtype=np.float64)
    L, depth = len(S), np.arange(len(S))
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant profile has no rank correlation: NaN
        r, p = scipy_stats.spearmanr(S, I)
        s_depth_r, i_depth_r = scipy_stats.spearmanr(S, depth)[0], scipy_stats.spearmanr(I, depth)[0]
    n_eff, p_eff = spearman_p_eff(r, S, I)
    p_null = null_p(r, surrogate_spearman(S, I, NULL_SURROGATES, null_seed))
    ci = bca_interval(statistic, n_items, n_boot, seed) if n_boot and np.isfinite(r) else [float("nan")] * 2
    partial_r, partial_p = partial_spearman(S, I, depth)
    sens, rope = top_k(S, k), top_k(I, k)
    return {"spearman": {"r": float(r), "p": float(p), "n_eff": n_eff, "p_eff": p_eff, "p_null": p_null, "ci95": ci},
            "s_depth_r": float(s_depth_r), "i_depth_r": float(i_depth_r), "k": k,
            "partial_depth": {"r": partial_r, "p": partial_p, "verdict": verdict(partial_r, partial_p),
                              "note": depth_note(s_depth_r, i_depth_r)},
            "sens_layers": sens, "rope_layers": rope,
            "jaccard": jaccard(sens, rope), "depth": {"sens": mean_depth(sens, L), "rope": mean_depth(rope, L)},
            "verdict": verdict(r, max(p_eff, p_null)), "verdict_naive": verdict(r, p)}
