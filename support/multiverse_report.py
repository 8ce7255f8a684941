"""The multiverse's summary, Markdown table and figures (METHOD.md 4.4b): what sensitivity.py --multiverse writes.

The summary is computed from the records' own S and I (the surrogate null is seeded), so every number in
multiverse.json can be recomputed from the file; its `summary` block is what a README generator reads.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from support.files import write_atomic
from support.report import PAPER_SPEARMAN, VERDICT_COLORS, layer_ranges, png_bytes, pyplot
from support.stats import specification_joint_test, surrogate_spearman

DEFAULT_MODEL_NOTE = "a Q4_1-dequantized SmolLM2-135M-Instruct"  # how the default model was made (prepare.py)
SIGNIFICANCE = {"naive": "p", "p_eff": "p_eff", "p_null": "p_null"}  # the three p-values of r_s, by their names
PROFILE_PANELS = (("sensitivity", "S (default reading)"), ("influence", "I (default reading)"),
                  ("logit_lens", "logit-lens margin gain"), ("block_influence", "Block Influence (ShortGPT)"),
                  ("layer_drop", "layer-drop delta NLL"))


def model_name(mv: dict) -> str:
    name = mv["model"] + (" (random-weight copy)" if mv.get("random_weights") else "")
    return f"{name}, {DEFAULT_MODEL_NOTE}" if mv["model"] == "SmolLM2-135M-Instruct" else name


def rank_r(a, b) -> float:
    from scipy import stats

    with np.errstate(invalid="ignore", divide="ignore"):
        return float(stats.spearmanr(a, b)[0])


def choice_effects(mv: dict) -> dict:
    """Per choice: the mean r_s at each value (the design is full factorial, so the others average out), the range of
    those means, and how many matched groups of variants (same calibration set and other choices) do not share
    one sign of r_s across the choice's values."""
    recs, readings, effects = mv["records"], list(mv["about"]), {}
    for choice in readings:
        values = mv["choices"][choice]
        mean_r = {v: float(np.nanmean([x["spearman"]["r"] for x in recs if x["options"][choice] == v])) for v in values}
        matched = {}
        for x in recs:
            rest = (x["calib_set"],) + tuple(x["options"][c] for c in readings if c != choice)
            matched.setdefault(rest, []).append(float(np.sign(np.nan_to_num(x["spearman"]["r"]))))  # undefined: 0
        effects[choice] = {"mean_r": mean_r, "effect": max(mean_r.values()) - min(mean_r.values()),
                           "matched": len(matched), "sign_flips": sum(int(len(set(m)) > 1) for m in matched.values())}
    return effects


def joint_test(mv: dict) -> dict:
    """Simonsohn et al.'s joint test, every variant's surrogate null drawn with the same seed (so draw j is one
    shared draw) from its own S and I."""
    recs, null = mv["records"], mv["null"]
    null_r = np.stack([surrogate_spearman(x["sensitivity"], x["influence"], null["surrogates"], null["seed"])
                       for x in recs], 1)  # (n, V)
    return specification_joint_test([x["spearman"]["r"] for x in recs], [x["spearman"]["p_null"] for x in recs],
                                    null_r, null["alpha"])


def null_model_record(null_mv: dict, path: str) -> dict:
    """What the real model's report needs from the random-weight multiverse: each variant's r_s and interval, and its
    summary counts."""
    s, nan = null_mv["summary"], lambda v: float("nan") if v is None else v  # the file writes NaN as null
    return {"path": path, "r": [nan(x["spearman"]["r"]) for x in null_mv["records"]],
            "ci95": [x["spearman"]["ci95"] for x in null_mv["records"]], "significant": s["significant"],
            "median_r": s["joint_test"]["median_r"], "references": s["references"]}


def multiverse_summary(mv: dict) -> dict:
    """The summary block of multiverse.json (keys documented in METHOD.md 4.4b)."""
    recs, alpha = mv["records"], mv["null"]["alpha"]
    effects = choice_effects(mv)
    top = max(effects, key=lambda c: (effects[c]["sign_flips"], effects[c]["effect"]))
    e = effects[top]
    means = ", ".join(f"{r:+.3f} with {v}" for v, r in e["mean_r"].items())
    decides = len({np.sign(r) for r in e["mean_r"].values()}) > 1
    words = (f"The {mv['about'][top]} (--{top.replace('_', '-')}) " + ("decides the sign" if decides else
             "flips the sign most often, though no single choice flips the sign of the mean r_s") + f": mean r_s "
             f"{means}; switching it alone changes the sign of r_s in {e['sign_flips']} of {e['matched']} matched "
             "groups of variants.")
    count = lambda verdicts: {v: verdicts.count(v) for v in VERDICT_COLORS}
    joint = joint_test(mv)
    significant = {name: sum(int(x["spearman"][key] < alpha) for x in recs) for name, key in SIGNIFICANCE.items()}
    med = lambda values: float(np.nanmedian(values)) if len(values) else float("nan")
    scored = {name: [x["reference_spearman"][name] for x in recs if name in x["reference_spearman"]]
              for name in dict.fromkeys(n for x in recs for n in x["reference_spearman"])}  # layer drop: shipped set
    references = {name: {against: med([r[against] for r in rs]) for against in ("S", "I", "depth")}
                  | {"variants": len(rs)} for name, rs in scored.items()}
    control = {v: {"mean_r": effects["sens_control"]["mean_r"][v],
                   "median_s_depth_r": med([x["s_depth_r"] for x in recs if x["options"]["sens_control"] == v])}
               for v in mv["choices"]["sens_control"]}
    families = sorted({f for x in recs for f in x["by_family"]})
    by_family = {f: med([x["by_family"][f]["spearman_r"] for x in recs if f in x["by_family"]]) for f in families}
    null_model = mv.get("null_model")
    beyond = joint["p_count"] < alpha or joint["p_median"] < alpha
    joint_line = (f"Joint test over {joint['n_variants']} variants (surrogate null keeping each profile's depth trend, "
                  f"{joint['surrogates']} draws): {joint['significant']} of them significant at p_null < {alpha} "
                  f"(null expects {joint['null_significant_mean']:.1f}, p = {joint['p_count']:.3g}); median r_s "
                  f"{joint['median_r']:+.3f} (null 95% range [{joint['null_median_r_95'][0]:+.3f}, "
                  f"{joint['null_median_r_95'][1]:+.3f}], p = {joint['p_median']:.3g}): "
                  + ("S and I share something beyond depth." if beyond else "nothing beyond depth links S and I."))
    return {"n_variants": len(recs), "verdicts": count([x["verdict"] for x in recs]),
            "verdicts_naive": count([x["verdict_naive"] for x in recs]),
            "partial_verdicts": count([x["partial_depth"]["verdict"] for x in recs]),
            "significant": significant, "joint_test": joint, "joint_line": joint_line,
            "beyond_depth": bool(beyond),
            "depth": {"median_s_depth_r": med([x["s_depth_r"] for x in recs]),
                      "median_i_depth_r": med([x["i_depth_r"] for x in recs]),
                      "s_exactly_depth": sum(int(abs(x["s_depth_r"]) >= 1 - 1e-12) for x in recs)},
            "references": references, "control": control, "by_family": by_family,
            "random_weights": None if null_model is None else {
                "path": null_model["path"], "significant": null_model["significant"],
                "median_r": null_model["median_r"], "references": null_model["references"]},
            "covers_paper": sum(int(lo <= PAPER_SPEARMAN <= hi) for lo, hi in (x["spearman"]["ci95"] for x in recs)),
            "effects": effects, "sign_decided_by": top, "in_words": words}


def multiverse_setup(mv: dict) -> str:
    """The one sentence that says what the variants share: model, calibration sets, pairs, k, bootstrap, null."""
    recs, s = mv["records"], mv["summary"]
    sets = {x["calib_set"]: x["n_pairs"] for x in recs}
    auto = list(dict.fromkeys(x["options"]["seed"] for x in recs if x["options"]["calib"] == "auto"))
    drawn = f" and --calib auto draws with seeds {', '.join(map(str, auto))} ({recs[-1]['n_pairs']} pairs each)"
    o, L = recs[0]["options"], len(recs[0]["sensitivity"])
    return (f"{model_name(mv)}: {s['n_variants']} variants = {s['n_variants'] // len(sets)} readings x "
            f"{len(sets)} calibration sets (the shipped {sets.get('file')} pairs{drawn if auto else ''}), "
            f"top-{recs[0]['k']} of {L} layers, {o['bootstrap']} BCa bootstrap resamples, fd eps {o['fd_eps']}, "
            f"{mv['null']['surrogates']} surrogates per null")


def multiverse_findings(mv: dict) -> list[str]:
    """The summary in lines: the joint test first, then counts, references, control, random weights, effects."""
    s = mv["summary"]
    counts = lambda verdicts: ", ".join(f"{n} {v}" for v, n in verdicts.items())
    sig = s["significant"]
    refs = "; ".join(f"{name} {r['S']:+.2f} / {r['I']:+.2f} / {r['depth']:+.2f}" + (
        f" ({r['variants']} variants: the shipped pairs)" if r.get("variants", s["n_variants"]) < s["n_variants"]
        else "") for name, r in s["references"].items())
    ctrl = s["control"]
    rw = s["random_weights"]
    table = ["| choice | mean r_s per value | range of the means | sign flips (matched groups) |", "|---|---|---|---|"]
    for choice, e in s["effects"].items():
        values = ", ".join(f"{v}: {r:+.3f}" for v, r in e["mean_r"].items())
        table.append(f"| `--{choice.replace('_', '-')}` | {values} | {e['effect']:.3f} | {e['sign_flips']} of "
                     f"{e['matched']} |")
    return [f"- **{s['joint_line']}**",
            f"- significant at p < 0.05: {sig['naive']} of {s['n_variants']} with the naive p (layers as independent "
            f"points), {sig['p_eff']} with the effective-n p, {sig['p_null']} against the surrogate null",
            f"- verdicts (on the larger of p_eff and p_null): {counts(s['verdicts'])}; naive: "
            f"{counts(s['verdicts_naive'])}; with depth held fixed (partial r_s): {counts(s['partial_verdicts'])}",
            f"- depth: median Spearman with the layer index {s['depth']['median_s_depth_r']:+.2f} for S, "
            f"{s['depth']['median_i_depth_r']:+.2f} for I; S ranks exactly like depth in "
            f"{s['depth']['s_exactly_depth']} variants",
            f"- reference rankings, median Spearman with S / I / depth: {refs}",
            f"- control pairs (S minus the distance of two incorrect completions): mean r_s "
            f"{ctrl['off']['mean_r']:+.3f} off, {ctrl['on']['mean_r']:+.3f} on; median Spearman of S with depth "
            f"{ctrl['off']['median_s_depth_r']:+.2f} off, {ctrl['on']['median_s_depth_r']:+.2f} on",
            "- per pair family, median r_s: " + ", ".join(f"{f} {r:+.3f}" for f, r in s["by_family"].items()),
            "- random-weight copy: " + ("not run (`python sensitivity.py --multiverse --random-weights`)" if rw is None
                                        else f"{rw['significant']['p_null']} variants significant against the "
                                        f"surrogate null, {rw['significant']['naive']} naive, median r_s "
                                        f"{rw['median_r']:+.3f} ({rw['path']})"),
            f"- 95% CI covers the paper's r_s = {PAPER_SPEARMAN}: {s['covers_paper']} of {s['n_variants']}",
            f"- {s['in_words']}", ""] + table


def multiverse_markdown(mv: dict) -> str:
    """multiverse.md: the summary, the main effects, and every variant sorted by r_s."""
    fmt = lambda x, spec=".3f": "n/a" if x is None or x != x else format(x, spec)
    lines = [f"# Co-localization under every reading: {model_name(mv)}", "", multiverse_setup(mv) + ".",
             f"The partial r_s holds the layer index fixed. The paper reports r_s = {PAPER_SPEARMAN} (Llama 3.1 8B).",
             "", "## Summary", "", *multiverse_findings(mv), "", "## Every variant, sorted by r_s", "",
             "| # | calibration | pool | repr | dist | control | influence | r_s | p | p_eff (n_eff) | p_null | "
             "95% BCa CI | S~depth | I~depth | partial r_s | verdict | top-k S | top-k I |", "|" + "---|" * 18]
    for i, x in enumerate(sorted(mv["records"], key=lambda x: x["spearman"]["r"]), 1):
        o, sp, pd = x["options"], x["spearman"], x["partial_depth"]
        partial = pd["note"] or f"{fmt(pd['r'], '+.3f')} (p {fmt(pd['p'], '.2g')})"
        lines.append(f"| {i} | {x['calib_set']} | {o['sens_pool']} | {o['sens_repr']} | {o['sens_dist']} | "
                     f"{o['sens_control']} | {o['influence']} | {sp['r']:+.3f} | {fmt(sp['p'], '.2g')} | "
                     f"{fmt(sp['p_eff'], '.2g')} ({sp['n_eff']:.1f}) | {fmt(sp['p_null'], '.2g')} | "
                     f"[{fmt(sp['ci95'][0])}, {fmt(sp['ci95'][1])}] | {fmt(x['s_depth_r'], '+.2f')} | "
                     f"{fmt(x['i_depth_r'], '+.2f')} | {partial} | {x['verdict']} | {layer_ranges(x['sens_layers'])} | "
                     f"{layer_ranges(x['rope_layers'])} |")
    return "\n".join(lines) + "\n"


def plot_multiverse(mv: dict) -> bytes:
    """The specification curve: r_s with its 95% CI per variant, sorted, the paper's value as a line, the
    random-weight copy's sorted curve as a grey band; under it, one row of dots per (choice, value)."""
    plt = pyplot()
    s, recs = mv["summary"], sorted(mv["records"], key=lambda x: x["spearman"]["r"])
    x, nan = np.arange(len(recs)), lambda v: np.nan if v is None else v
    r = np.array([v["spearman"]["r"] for v in recs])
    ci = np.array([[nan(c) for c in v["spearman"]["ci95"]] for v in recs], dtype=float)
    rows = [(choice, value) for choice, values in mv["choices"].items() for value in values]
    width = max(9.0, 3 + 0.05 * len(recs))
    fig, (ax, dots) = plt.subplots(2, 1, sharex=True, figsize=(width, 9),
                                   gridspec_kw=dict(height_ratios=[3, 0.28 * len(rows)]))
    if mv.get("null_model"):
        order = np.argsort(mv["null_model"]["r"])
        null_r = np.array(mv["null_model"]["r"])[order]
        null_ci = np.array([[nan(c) for c in mv["null_model"]["ci95"][i]] for i in order], dtype=float)
        nx = np.linspace(0, len(recs) - 1, len(null_r))
        ax.fill_between(nx, null_ci[:, 0], null_ci[:, 1], color="0.85", label="random-weight copy: r_s, 95% CI")
        ax.plot(nx, null_r, color="0.6", lw=1)
    for name, color in VERDICT_COLORS.items():
        idx = [i for i, v in enumerate(recs) if v["verdict"] == name]
        if idx:
            ax.errorbar(x[idx], r[idx], yerr=np.abs(ci[idx].T - r[idx]), fmt="o", ms=3, color=color,
                        elinewidth=0.6, capsize=0, label=f"{name} ({len(idx)}; corrected p)")
    ax.scatter(x, [nan(v["partial_depth"]["r"]) for v in recs], marker="_", s=30, color="black",
               label="partial r_s, depth held fixed")
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(PAPER_SPEARMAN, color="tab:green", ls="--", lw=1.2, label=f"paper: r_s = {PAPER_SPEARMAN} "
               "(Llama 3.1 8B)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman r_s(S, I), 95% BCa CI")
    ax.legend(fontsize=8, loc="upper left")  # sorted ascending: the upper left stays empty
    title = f"Spearman r_s(S, I) under every reading. {multiverse_setup(mv)}. {s['joint_line']}"
    ax.set_title("\n".join(textwrap.wrap(title, int(13 * width))), fontsize=8.5)  # ~13 characters an inch
    for j, (choice, value) in enumerate(rows):
        used = [i for i, v in enumerate(recs) if v["options"][choice] == value]
        default = mv["choices"][choice].index(value) == 0
        dots.scatter(x[used], np.full(len(used), j), s=6, color="black" if default else "tab:gray")
    dots.set_yticks(range(len(rows)), [f"{c.replace('_', '-')} = {v}" for c, v in rows], fontsize=8)
    dots.set_ylim(len(rows) - 0.5, -0.5)
    dots.set_xlabel("variant, sorted by r_s (black dots: the default value of each choice)")
    dots.grid(axis="y", lw=0.3)
    return png_bytes(fig)


def plot_layer_profiles(mv: dict) -> bytes:
    """S, I and the reference rankings against the layer index, one line per calibration set (the default reading),
    top-k marked, each line's Spearman with depth in the legend."""
    plt = pyplot()
    default = {c: v[0] for c, v in mv["choices"].items() if c != "calib"}
    recs = [x for x in mv["records"] if all(x["options"][c] == v for c, v in default.items())]
    fig, axes = plt.subplots(1, len(PROFILE_PANELS), figsize=(4 * len(PROFILE_PANELS), 4))
    for ax, (key, label) in zip(axes, PROFILE_PANELS):
        for x in recs:
            scores = x if key in ("sensitivity", "influence") else x["references"]
            if key not in scores:
                continue  # layer drop is scored on the shipped pairs only (sensitivity.LAYER_DROP_CALIB)
            y = np.array(scores[key])
            legend = f"{x['calib_set']} (r_depth {rank_r(y, np.arange(len(y))):+.2f})"
            line, = ax.plot(np.arange(len(y)), y, lw=1, label=legend)
            top = x["sens_layers"] if key == "sensitivity" else x["rope_layers"] if key == "influence" else \
                sorted(np.argsort(-y, kind="stable")[:x["k"]].tolist())
            ax.scatter(top, y[top], s=14, color=line.get_color())
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer")
        ax.legend(fontsize=6)
    fig.suptitle(f"{model_name(mv)}: layer profiles (dots: top-{recs[0]['k'] if recs else '?'}), reading "
                 + ", ".join(f"{c}={v}" for c, v in default.items()), fontsize=9)
    return png_bytes(fig)


def write_multiverse(out: Path, mv: dict) -> str:
    """multiverse.json (the records plus their summary; an undefined number is null), .md, the specification curve
    (multiverse.png) and the layer profiles (layer_profiles.png) in `out`; returns the console summary."""
    mv = mv | {"summary": multiverse_summary(mv)}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "multiverse.json", json.dumps(json.loads(json.dumps(mv), parse_constant=lambda _: None),
                                                      indent=1) + "\n")
    write_atomic(out / "multiverse.md", multiverse_markdown(mv))
    write_atomic(out / "multiverse.png", plot_multiverse(mv))
    write_atomic(out / "layer_profiles.png", plot_layer_profiles(mv))
    return "\n".join([multiverse_setup(mv), *multiverse_findings(mv)])
