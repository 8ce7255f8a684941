"""Reports: the summary lines, Markdown tables and figures that people read (JSON is written where it is made).

Every figure names the model, the options and the number of pairs or items in its title.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from support.files import read_jsonl, write_atomic, write_jsonl
from support.stats import mcnemar_exact, paired_difference
from support.tasks import STAND_INS

READING_KEYS = ("calib", "sens_pool", "sens_repr", "sens_dist", "influence")


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (written with files.write_atomic by the caller), then closed."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.tight_layout()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------------------------
# Layer scores and the multiverse (sensitivity.py)

PAPER_SPEARMAN = -0.735  # the paper's headline: Llama 3.1 8B, Spearman over its 32 layers
VERDICT_COLORS = {"anti-localized": "tab:red", "co-localized": "tab:blue", "no significant relation": "tab:gray"}


def layer_ranges(layers) -> str:
    """[0, 1, 2, 7] -> "0-2, 7"."""
    runs = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def reading_label(options: dict) -> str:
    """The four choices of a reading (METHOD.md 4.2-4.3), e.g. "sens_pool=last, ..., influence=grad"."""
    return ", ".join(f"{key}={options[key]}" for key in READING_KEYS[1:])


def scores_summary(result: dict) -> str:
    sp, pd, d, c = result["spearman"], result["partial_depth"], result["depth"], result["depth_confound"]
    return "\n".join([
        f"Spearman r_s = {sp['r']:.3f}, p = {sp['p']:.3g}, 95% CI [{sp['ci95'][0]:.3f}, {sp['ci95'][1]:.3f}] "
        f"({result['n_pairs']} {result['options']['calib']} pairs, {reading_label(result['options'])}) -> "
        f"{result['verdict']}",
        f"with layer depth held fixed: partial r_s = {pd['r']:.3f}, p = {pd['p']:.3g}",
        f"top-{result['k']} sensitivity {layer_ranges(result['sens_layers'])} (mean depth {d['sens']:.2f}); "
        f"top-{result['k']} RoPE influence {layer_ranges(result['rope_layers'])} (mean depth {d['rope']:.2f}); "
        f"Jaccard {result['jaccard']:.2f}",
        f"depth confound: Spearman vs layer index of S_l2 {c['l2_vs_depth_r']:.2f}, S_cosine "
        f"{c['cosine_vs_depth_r']:.2f}, mean pooled-state norm {c['norm_vs_depth_r']:.2f}"])


def plot_scores(result: dict) -> bytes:
    """Both scores per layer, min-max normalised, top-k sets marked: PNG bytes."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)

    plt = pyplot()
    S, I = unit(result["sensitivity"]), unit(result["influence"])
    layers, k = np.arange(len(S)), result["k"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(layers, S, "o-", color="tab:blue", label="sensitivity S (normalised)")
    ax.plot(layers, I, "s-", color="tab:orange", label="RoPE influence I (normalised)")
    ax.scatter(result["sens_layers"], S[result["sens_layers"]], s=160, facecolors="none", edgecolors="tab:blue",
               linewidths=2, label=f"top-{k} S")
    ax.scatter(result["rope_layers"], I[result["rope_layers"]], s=160, marker="D", facecolors="none",
               edgecolors="tab:orange", linewidths=2, label=f"top-{k} I")
    sp, pd = result["spearman"], result["partial_depth"]
    ax.set_title(f"{Path(result['model']).name}, {result['n_pairs']} calibration pairs ({result['options']['calib']}), "
                 f"{reading_label(result['options'])}\nSpearman r_s = {sp['r']:.3f}, p = {sp['p']:.2g} "
                 f"({result['verdict']}); with depth held fixed r_s = {pd['r']:.3f}, p = {pd['p']:.2g}", fontsize=9)
    ax.set_xlabel("layer")
    ax.set_ylabel("score, min-max normalised")
    ax.set_xticks(layers[::max(1, len(layers) // 15)])
    ax.legend(fontsize=8, loc="best")
    return png_bytes(fig)


def multiverse_summary(mv: dict) -> dict:
    """Verdict counts (raw and with depth held fixed); per choice the mean r_s at each value (the others averaged:
    the design is full factorial) and how many matched variants (same calibration set and other choices) change
    sign when it alone switches; and, in words, the choice that decides the sign."""
    recs, readings, values = mv["records"], list(mv["about"]), mv["choices"]
    effects = {}
    for choice in readings:
        a, b = values[choice]
        mean_r = {v: float(np.mean([x["spearman"]["r"] for x in recs if x["options"][choice] == v])) for v in (a, b)}
        matched = {}
        for x in recs:
            rest = (x["calib_set"],) + tuple(x["options"][c] for c in readings if c != choice)
            matched.setdefault(rest, {})[x["options"][choice]] = x["spearman"]["r"]
        effects[choice] = {"mean_r": mean_r, "effect": mean_r[b] - mean_r[a], "matched": len(matched),
                           "sign_flips": sum(int(np.sign(m[a]) != np.sign(m[b])) for m in matched.values())}
    top = max(readings, key=lambda c: (effects[c]["sign_flips"], abs(effects[c]["effect"])))
    (a, b), e = values[top], effects[top]
    how = (f"mean r_s {e['mean_r'][a]:+.3f} with {a}, {e['mean_r'][b]:+.3f} with {b}; switching it alone flips the "
           f"sign of r_s in {e['sign_flips']} of {e['matched']} matched pairs of variants")
    decides = np.sign(e["mean_r"][a]) != np.sign(e["mean_r"][b])
    words = (f"The {mv['about'][top]} (--{top.replace('_', '-')}) " + ("decides the sign" if decides else
             "flips the sign most often, though no single choice flips the sign of the mean r_s") + f": {how}.")
    count = lambda verdicts: {v: verdicts.count(v) for v in VERDICT_COLORS}
    return {"n_variants": len(recs), "verdicts": count([x["verdict"] for x in recs]),
            "partial_verdicts": count([x["partial_depth"]["verdict"] for x in recs]),
            "covers_paper": sum(int(lo <= PAPER_SPEARMAN <= hi) for lo, hi in (x["spearman"]["ci95"] for x in recs)),
            "effects": effects, "sign_decided_by": top, "in_words": words}


def multiverse_setup(mv: dict) -> str:
    """The one sentence that says what the variants share: model, calibration sets, pairs, k, bootstrap."""
    recs, s = mv["records"], mv["summary"]
    sets = {x["calib_set"]: x["n_pairs"] for x in recs}
    auto = list(dict.fromkeys(x["options"]["seed"] for x in recs if x["options"]["calib"] == "auto"))
    drawn = f" and --calib auto draws with seeds {', '.join(map(str, auto))} ({recs[-1]['n_pairs']} pairs each)"
    o, L = recs[0]["options"], len(recs[0]["sensitivity"])
    return (f"{Path(mv['model']).name}: {s['n_variants']} variants = {s['n_variants'] // len(sets)} readings x "
            f"{len(sets)} calibration sets (the shipped {sets.get('file')} pairs{drawn if auto else ''}), "
            f"top-{recs[0]['k']} of {L} layers, {o['bootstrap']} bootstrap resamples, fd eps {o['fd_eps']}")


def multiverse_findings(mv: dict) -> list[str]:
    """The summary in lines: verdict counts, raw and with depth held fixed, the paper's value, the sign."""
    s = mv["summary"]
    counts = lambda verdicts: ", ".join(f"{n} {v}" for v, n in verdicts.items())
    table = ["| choice | mean r_s | mean r_s | main effect | sign flips (matched pairs) |", "|---|---|---|---|---|"]
    for choice, e in s["effects"].items():
        (a, ra), (b, rb) = e["mean_r"].items()
        table.append(f"| `--{choice.replace('_', '-')}` | {a}: {ra:+.3f} | {b}: {rb:+.3f} | {e['effect']:+.3f} "
                     f"({b} - {a}) | {e['sign_flips']} of {e['matched']} |")
    return [f"- verdicts: {counts(s['verdicts'])}", f"- with depth held fixed (partial r_s): "
            f"{counts(s['partial_verdicts'])}", f"- 95% CI covers the paper's r_s = {PAPER_SPEARMAN}: "
            f"{s['covers_paper']} of {s['n_variants']}", f"- {s['in_words']}", ""] + table


def multiverse_markdown(mv: dict) -> str:
    """multiverse.md: the summary, the main effects, and every variant sorted by r_s."""
    fmt = lambda x, spec=".3f": "n/a" if x is None or x != x else format(x, spec)
    lines = [f"# Co-localization under every reading: {Path(mv['model']).name}", "", multiverse_setup(mv) + ".",
             f"The partial r_s holds the layer index fixed. The paper reports r_s = {PAPER_SPEARMAN} (Llama 3.1 8B).",
             "", "## Summary", "", *multiverse_findings(mv), "", "## Every variant, sorted by r_s", "",
             "| # | calibration | pool | repr | dist | influence | r_s | p | 95% CI | partial r_s | partial p | "
             "verdict | top-k S | top-k I | Jaccard | depth S / I |", "|" + "---|" * 16]
    for i, x in enumerate(sorted(mv["records"], key=lambda x: x["spearman"]["r"]), 1):
        o, sp, pd = x["options"], x["spearman"], x["partial_depth"]
        lines.append(f"| {i} | {x['calib_set']} | {o['sens_pool']} | {o['sens_repr']} | {o['sens_dist']} | "
                     f"{o['influence']} | {sp['r']:+.3f} | {fmt(sp['p'], '.2g')} | [{fmt(sp['ci95'][0])}, "
                     f"{fmt(sp['ci95'][1])}] | {fmt(pd['r'], '+.3f')} | {fmt(pd['p'], '.2g')} | {x['verdict']} | "
                     f"{layer_ranges(x['sens_layers'])} | {layer_ranges(x['rope_layers'])} | {x['jaccard']:.2f} | "
                     f"{x['depth']['sens']:.2f} / {x['depth']['rope']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_multiverse(mv: dict) -> bytes:
    """The specification curve: r_s with its 95% CI per variant, sorted, the paper's value as a line; under it,
    one row of dots per (choice, value) marking which variants use it."""
    import textwrap

    plt = pyplot()
    s, recs = mv["summary"], sorted(mv["records"], key=lambda x: x["spearman"]["r"])
    x, nan = np.arange(len(recs)), lambda v: np.nan if v is None else v
    r = np.array([v["spearman"]["r"] for v in recs])
    ci = np.array([[nan(c) for c in v["spearman"]["ci95"]] for v in recs], dtype=float)
    rows = [(choice, value) for choice, values in mv["choices"].items() for value in values]
    fig, (ax, dots) = plt.subplots(2, 1, sharex=True, figsize=(max(9.0, 3 + 0.11 * len(recs)), 8),
                                   gridspec_kw=dict(height_ratios=[3, 0.28 * len(rows)]))
    for name, color in VERDICT_COLORS.items():
        idx = [i for i, v in enumerate(recs) if v["verdict"] == name]
        if idx:
            ax.errorbar(x[idx], r[idx], yerr=np.abs(ci[idx].T - r[idx]), fmt="o", ms=3.5, color=color,
                        elinewidth=0.8, capsize=0, label=f"{name} ({len(idx)})")
    ax.scatter(x, [nan(v["partial_depth"]["r"]) for v in recs], marker="_", s=40, color="black",
               label="partial r_s, depth held fixed")
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(PAPER_SPEARMAN, color="tab:green", ls="--", lw=1.2, label=f"paper: r_s = {PAPER_SPEARMAN} "
               "(Llama 3.1 8B)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman r_s(S, I), 95% CI")
    ax.legend(fontsize=8, loc="upper left")  # sorted ascending: the upper left stays empty
    title = f"Spearman r_s(S, I) under every reading. {multiverse_setup(mv)}. {s['in_words']}"
    ax.set_title("\n".join(textwrap.wrap(title, 150)), fontsize=8.5)
    for j, (choice, value) in enumerate(rows):
        used = [i for i, v in enumerate(recs) if v["options"][choice] == value]
        default = mv["choices"][choice].index(value) == 0
        dots.scatter(x[used], np.full(len(used), j), s=9, color="black" if default else "tab:gray")
    dots.set_yticks(range(len(rows)), [f"{c.replace('_', '-')} = {v}" for c, v in rows], fontsize=8)
    dots.set_ylim(len(rows) - 0.5, -0.5)
    dots.set_xlabel("variant, sorted by r_s (black dots: the default value of each choice)")
    dots.grid(axis="y", lw=0.3)
    return png_bytes(fig)


def write_multiverse(out: Path, mv: dict) -> str:
    """multiverse.json (the records plus their summary; an undefined number is null), .md and .png in `out`;
    returns the console summary."""
    mv = mv | {"summary": multiverse_summary(mv)}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "multiverse.json", json.dumps(json.loads(json.dumps(mv), parse_constant=lambda _: None),
                                                      indent=1) + "\n")
    write_atomic(out / "multiverse.md", multiverse_markdown(mv))
    write_atomic(out / "multiverse.png", plot_multiverse(mv))
    return "\n".join([multiverse_setup(mv), *multiverse_findings(mv)])


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks, arms and the ablation (evaluate.py, train.py)

def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def fmt_score(r: dict | None) -> str:
    if not r or "accuracy" not in r:
        return "not run" if r and "status" in r else "—"
    lo, hi = r["ci95"]
    sd = f" ±{pct(r['accuracy_sd'])} sd" if "accuracy_sd" in r else ""
    return f"{pct(r['accuracy'])} [{pct(lo)}, {pct(hi)}]{sd} (n={r['n']})"


def fmt_bpb(r: dict | None) -> str:
    if not r or "bpb" not in r:
        return "—"
    b = r["bpb"]
    sd = f" ±{b['sd']:.4f} sd" if "sd" in b else ""
    return f"{b['mean']:.4f} [{b['ci95'][0]:.4f}, {b['ci95'][1]:.4f}]{sd}"


def benchmark_line(name: str, r: dict, seconds: float) -> str:
    parts = [name + ":"]
    if "accuracy" in r:
        parts.append(f"{pct(r['accuracy'])}% [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}]")
        if "chance" in r:
            parts.append(f"(chance {pct(r['chance'])}%)")
    if "bpb" in r:
        parts.append(f"bpb {r['bpb']['mean']:.4f} [{r['bpb']['ci95'][0]:.4f}, {r['bpb']['ci95'][1]:.4f}]")
    return " ".join(parts + [f"n={r['n']} in {seconds:.0f} s"])


def results_table(results: dict[str, dict]) -> str:
    lines = ["| benchmark | accuracy % [95% CI] | chance % | gold bpb [95% CI] | note |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        if "status" in r:
            lines.append(f"| {name} | not run | | | {r['why']} |")
            continue
        chance = pct(r["chance"]) if "chance" in r else ""
        lines.append(f"| {name} | {fmt_score(r)} | {chance} | {fmt_bpb(r)} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)


def what_accuracy_means(name: str, r: dict) -> str | None:
    """A plain sentence when accuracy says little: at or below chance, or one answer letter for most items."""
    notes = []
    if "chance" in r and r["ci95"][0] <= r["chance"]:
        notes.append(f"not above chance ({pct(r['chance'])}%)")
    top = r.get("most_common_answer")
    if top and top["share"] >= 0.8:
        notes.append(f"answers {top['letter']} to {pct(top['share'])}% of items")
    if "chance" not in r and r.get("accuracy") == 0:
        notes.append("solves no item")
    return f"{name}: " + "; ".join(notes) if notes else None


# ----------------------------------------------------------------------------------------------------------------
# Comparisons: runs on the same items, seeds averaged per item

def item_values(run_dir: Path, benchmark: str) -> tuple[dict[str, bool], dict[str, float]]:
    """(id -> correct, id -> bpb) from a run's predictions (either may be empty)."""
    path = run_dir / "predictions" / f"{benchmark}.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    return ({str(r["id"]): bool(r["correct"]) for r in rows if "correct" in r},
            {str(r["id"]): float(r["bpb"]) for r in rows if "bpb" in r})


def paired_tests(dir_a: Path, dir_b: Path, benchmarks) -> dict[str, dict]:
    """Per benchmark: exact McNemar on correctness and the paired bpb difference (b - a) on shared items."""
    out = {}
    for name in benchmarks:
        (acc_a, bpb_a), (acc_b, bpb_b) = item_values(dir_a, name), item_values(dir_b, name)
        test = {}
        if acc_a and acc_b:
            only_a, only_b, p = mcnemar_exact(acc_a, acc_b)
            test["mcnemar"] = dict(only_a=only_a, only_b=only_b, p=p, n=len(acc_a.keys() & acc_b.keys()))
        if bpb_a and bpb_b:
            test["bpb_diff"] = paired_difference(bpb_a, bpb_b)
        if test:
            out[name] = test
    return out


def write_mean_predictions(arm_dir: Path, seed_dirs: list[Path], benchmarks) -> None:
    """predictions/<name>.jsonl of the arm: per item, the bpb averaged over seeds and correct by majority."""
    for name in benchmarks:
        runs = [item_values(d, name) for d in seed_dirs]
        ids = runs[0][1].keys() or runs[0][0].keys()
        if not ids:
            continue
        rows = []
        for i in ids:
            row = {"id": i}
            if all(i in acc for acc, _ in runs):
                row["correct"] = 2 * sum(acc[i] for acc, _ in runs) > len(runs)
            if all(i in bpb for _, bpb in runs):
                row["bpb"] = float(np.mean([bpb[i] for _, bpb in runs]))
            rows.append(row)
        (arm_dir / "predictions").mkdir(parents=True, exist_ok=True)
        write_jsonl(arm_dir / "predictions" / f"{name}.jsonl", rows)


def fmt_tests(t: dict | None, sd: float | None = None) -> tuple[str, str]:
    """(McNemar cell, bpb-difference cell) of a comparison table."""
    if not t:
        return "", ""
    m = t.get("mcnemar")
    mc = f"{m['p']:.3g} ({m['only_a']}/{m['only_b']})" if m else ""
    d = t.get("bpb_diff")
    if not d:
        return mc, ""
    beyond = "" if sd is None else ("more than 2 sd" if abs(d["mean"]) > 2 * sd else "within 2 sd")
    return mc, (f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], Wilcoxon p {d['wilcoxon_p']:.3g}"
                + (f", seed sd {sd:.4f}: {beyond}" if sd is not None else ""))


def loss_ends(log: list[dict], n: int = 10) -> dict[str, float]:
    """Mean training loss of the first and of the last n steps: one step covers a few hundred target tokens, too few
    to read a trend from a single step."""
    return {f"loss_{end}_{n}": round(float(np.mean([r["loss"] for r in part])), 5)
            for end, part in (("first", log[:n]), ("last", log[-n:])) if part}


def arm_report(results: dict, base: dict, tests: dict, scores: dict, seconds: float,
               command_seconds: float) -> str:
    """report.md of one arm: layers, the co-localization reading, and base vs arm per benchmark with paired tests."""
    sp, opts = scores["spearman"], scores.get("options", {})
    training = results.get("training", {})
    runs = training.values() if "steps" not in training else [training]
    losses = "; ".join(f"{t.get('loss_first_10', t['first_loss']):.4f} -> {t.get('loss_last_10', t['last_loss']):.4f}"
                       for t in runs if t.get("steps"))
    lines = [f"# {results['arm']} on {results['model']}", "",
             f"- LoRA layers: {results['lora_layers']}; GARFA layers: {results['garfa_layers']}"
             + (f"; seeds {results['seeds']}" if "seeds" in results else ""),
             f"- Co-localization under this run's reading ({', '.join(f'{k}={opts[k]}' for k in READING_KEYS if k in opts)}): "
             f"r_s = {sp['r']:.3f}, p = {sp['p']:.2g}, 95% CI [{sp['ci95'][0]:.3f}, {sp['ci95'][1]:.3f}] -> "
             f"{scores.get('verdict', '')}. The verdict depends on the reading: `python sensitivity.py --multiverse` "
             f"scores all 16 (README, \"Every reading at once\").",
             f"- Training loss, mean of the first -> last 10 steps: {losses or 'no training (evaluation only)'}",
             f"- Time: {seconds / 60:.1f} min of training and evaluation (summed over seeds); "
             f"{command_seconds / 60:.1f} min wall for the command that wrote this report", "",
             "Accuracy % [95% Wilson CI]; gold bits per byte (lower is better) [95% bootstrap CI]. Paired tests on "
             "the same items: exact McNemar p (only base / only arm correct); bpb difference arm - base (negative: "
             "the arm predicts the gold answer better) [95% paired bootstrap CI], Wilcoxon signed-rank p.", "",
             "| benchmark | base accuracy | arm accuracy | McNemar p | base bpb | arm bpb | bpb difference |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for name, r in results["benchmarks"].items():
        b = base.get(name)
        sd = r.get("bpb", {}).get("sd") if isinstance(r.get("bpb"), dict) else None
        mc, diff = fmt_tests(tests.get(name), sd)
        label = f"{name} ({STAND_INS[name]})" if name in STAND_INS else name
        lines.append(f"| {label} | {fmt_score(b)} | {fmt_score(r)} | {mc} | {fmt_bpb(b)} | {fmt_bpb(r)} | {diff} |")
        if "status" in r:
            notes.append(f"- {name} not run: {r['why']}")
        for run_name, res in (("base", b), ("arm", r)):
            note = what_accuracy_means(f"{name} ({run_name})", res) if res and "accuracy" in res else None
            if note:
                notes.append(f"- {note}")
    if notes:
        lines += ["", "What the accuracy column can and cannot show:", ""] + notes
    multipliers = results.get("garfa_multipliers") or {}
    if multipliers:
        n_kv = len(next(iter(multipliers.values())))
        lines += ["", "GARFA frequency multipliers exp(log_scale), per layer and KV head:", "",
                  "| layer | " + " | ".join(f"kv {g}" for g in range(n_kv)) + " |", "|---|" + "---|" * n_kv]
        lines += [f"| {layer} | " + " | ".join(f"{m:.4f}" for m in ms) + " |" for layer, ms in multipliers.items()]
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: Path, arm_results: dict[str, dict], tests: dict[str, dict],
                     vs_base: dict[str, dict] | None = None) -> None:
    """comparison.md (arms x benchmarks; each arm against base; sens-sens against each arm), comparison.png and
    bpb_differences.png. `tests`: paired_tests(sens-sens, arm) per arm; `vs_base`: paired_tests(base, arm)."""
    first = next(iter(arm_results.values()))
    model = first["model"]
    benches = [b for b in first["benchmarks"] if any("n" in r["benchmarks"].get(b, {}) for r in arm_results.values())]
    lines = ["# Cross-layer ablation", "", f"Model {model}. Accuracy % [95% Wilson CI] and gold bits per byte "
             "[95% CI]; with several seeds, the across-seed mean ± sd.", "",
             "| arm | LoRA layers | GARFA layers | " + " | ".join(benches) + " |", "|---|---|---|" + "---|" * len(benches)]
    for arm, r in arm_results.items():
        cells = [" / ".join(x for x in (fmt_score(r["benchmarks"].get(b)), fmt_bpb(r["benchmarks"].get(b)))
                            if x != "—") for b in benches]
        lines.append(f"| {arm} | {r['lora_layers']} | {r['garfa_layers']} | " + " | ".join(cells) + " |")
    if vs_base:
        lines += ["", "Each arm against the base model on the same items: bpb difference arm - base (negative: the "
                  "adapters predict the gold answer better) [95% paired bootstrap CI], Wilcoxon p, the arm's seed sd; "
                  "exact McNemar p where accuracy was measured.", "",
                  "| arm | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
        for arm, t in vs_base.items():
            sds = [arm_results[arm]["benchmarks"].get(b, {}).get("bpb", {}).get("sd") for b in benches]
            cells = [fmt_tests(t.get(b), sd) for b, sd in zip(benches, sds)]
            lines.append(f"| {arm} | " + " | ".join("; ".join(x for x in (d, f"McNemar {mc}" if mc else "") if x)
                                                    for mc, d in cells) + " |")
    lines += ["", "sens-sens against each arm on the same items: exact McNemar p (only sens-sens / only the other arm "
              "correct); bpb difference other - sens-sens (positive: sens-sens predicts the gold answer better), "
              "paired bootstrap CI, Wilcoxon p, and the larger seed sd of the two arms.", "",
              "| arm | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    separated, compared = [], 0  # sens-sens vs another arm: paired CI excludes 0 and |difference| > 2 seed sd
    for arm, t in tests.items():
        cells = []
        for b in benches:
            sds = [r["benchmarks"].get(b, {}).get("bpb", {}).get("sd") for r in (arm_results[arm],
                                                                                  arm_results["sens-sens"])]
            sds = [s for s in sds if s is not None]
            mc, diff = fmt_tests(t.get(b), max(sds) if sds else None)
            cells.append("; ".join(x for x in (f"McNemar {mc}" if mc else "", diff) if x))
            d = t.get(b, {}).get("bpb_diff")
            if d and arm != "base":
                compared += 1
                if (d["ci95"][0] > 0 or d["ci95"][1] < 0) and abs(d["mean"]) > 2 * max(sds, default=0):
                    separated.append(f"{arm} on {b} ({d['mean']:+.4f})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if compared:
        lines += ["", f"Of the {compared} bpb comparisons of sens-sens with the other paper arms, {len(separated)} have a "
                  "95% paired CI that excludes zero and a difference larger than 2 seed sd"
                  + (": " + ", ".join(separated) + "." if separated else ".")]
    write_atomic(out_dir / "comparison.md", "\n".join(lines) + "\n")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(benches)), 4))
    width = 0.8 / len(arm_results)
    metric = "accuracy" if any("accuracy" in first["benchmarks"].get(b, {}) for b in benches) else "bpb"
    for i, (arm, r) in enumerate(arm_results.items()):
        rs = [r["benchmarks"].get(b, {}) for b in benches]
        val = [x["accuracy"] if metric == "accuracy" else x["bpb"]["mean"] if "bpb" in x else np.nan for x in rs]
        ci = [x.get("ci95") if metric == "accuracy" else x.get("bpb", {}).get("ci95") for x in rs]
        ci = [c or [np.nan, np.nan] for c in ci]
        ax.bar(np.arange(len(benches)) + (i - (len(arm_results) - 1) / 2) * width, val, width, capsize=2, label=arm,
               yerr=[[v - c[0] for v, c in zip(val, ci)], [c[1] - v for v, c in zip(val, ci)]])
    ax.set_xticks(np.arange(len(benches)), benches)
    ax.set_ylabel(f"{metric} with 95% CI")
    ax.set_title(f"LS-LoRA x GARFA cross-layer ablation, {model}, n={first['benchmarks'][benches[0]].get('n')}/benchmark")
    ax.legend(fontsize=8)
    write_atomic(out_dir / "comparison.png", png_bytes(fig))

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(benches)), 4))
    width = 0.8 / max(1, len(tests))
    for i, (arm, t) in enumerate(tests.items()):
        d = [t.get(b, {}).get("bpb_diff") for b in benches]
        mean = [x["mean"] if x else np.nan for x in d]
        lo = [m - x["ci95"][0] if x else np.nan for m, x in zip(mean, d)]
        hi = [x["ci95"][1] - m if x else np.nan for m, x in zip(mean, d)]
        ax.errorbar(np.arange(len(benches)) + (i - (len(tests) - 1) / 2) * width, mean, yerr=[lo, hi], fmt="o",
                    capsize=3, label=f"{arm} - sens-sens")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(benches)), benches)
    ax.set_ylabel("paired bpb difference, 95% CI")
    n = first["benchmarks"][benches[0]].get("bpb", {}).get("n") if benches else None
    seeds = len(first.get("seeds", [])) or 1
    ax.set_title(f"Gold bits per byte: other arm minus sens-sens\n{model}, {n} items per benchmark, "
                 f"{seeds} seed(s) per arm (per-item mean over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    write_atomic(out_dir / "bpb_differences.png", png_bytes(fig))


def phase_line(job, arms, out, scores_cached: bool, base_cached: bool) -> str:
    """One line up front: the phases that will run, and which of them a cache already holds."""
    n_train = (len(arms) - (arms[-1].name == "base")) * len(job.seeds)
    phases = {"layer scoring": scores_cached, "base evaluation": base_cached,
              f"training ({n_train} x {job.train.steps} steps)": False, f"evaluation ({n_train} run(s))": False}
    text = " -> ".join(f"{name} (cached)" if cached else name for name, cached in phases.items())
    return f"phases: {text} -> reports in {out}"
