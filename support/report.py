"""Reports: the summary lines, Markdown tables and figures that people read (JSON is written where it is made).

Every figure names the model, the options and the number of pairs or items in its title.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from support.files import read_jsonl, write_atomic, write_json, write_jsonl
from support.stats import mcnemar_exact, paired_difference
from support.tasks import STAND_INS

READING_KEYS = ("calib", "sens_pool", "sens_repr", "sens_dist", "sens_control", "influence")


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
    """The choices of a reading (METHOD.md 4.2-4.3), e.g. "sens_pool=last, ..., influence=grad"."""
    return ", ".join(f"{key}={options[key]}" for key in READING_KEYS[1:] if key in options)


def scores_summary(result: dict) -> str:
    sp, pd, d, c = result["spearman"], result["partial_depth"], result["depth"], result["depth_confound"]
    return "\n".join([
        f"Spearman r_s = {sp['r']:.3f}, naive p = {sp['p']:.3g}, 95% BCa CI [{sp['ci95'][0]:.3f}, "
        f"{sp['ci95'][1]:.3f}] ({result['n_pairs']} {result['options']['calib']} pairs, "
        f"{reading_label(result['options'])})",
        f"p with the effective n of two smooth profiles (n_eff {sp.get('n_eff', float('nan')):.1f}) = "
        f"{sp.get('p_eff', float('nan')):.3g}; p against depth-trend surrogates = {sp.get('p_null', float('nan')):.3g}"
        f" -> {result['verdict']}",
        "with layer depth held fixed: " + (pd.get("note") or f"partial r_s = {pd['r']:.3f}, p = {pd['p']:.3g}"),
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
    return mc, (f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], Wilcoxon p {d['wilcoxon_p']:.3g}"
                + (f", seed sd {sd:.4f}" if sd is not None else ""))


def loss_ends(log: list[dict], n: int = 10) -> dict[str, float]:
    """Mean training loss of the first and of the last n steps: one step covers a few hundred target tokens, too few
    to read a trend from a single step."""
    return {f"loss_{end}_{n}": round(float(np.mean([r["loss"] for r in part])), 5)
            for end, part in (("first", log[:n]), ("last", log[-n:])) if part}


def arm_table(results: dict, base: dict, tests: dict) -> tuple[list[str], list[str]]:
    """Base vs arm per benchmark with paired tests (Markdown rows), and what each accuracy can and cannot show."""
    lines = ["| benchmark | base accuracy | arm accuracy | McNemar p | base bpb | arm bpb | bpb difference |",
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
    return lines, notes


def write_arm_report(arm_dir: Path, results: dict, base: dict, tests: dict, scores: dict, seconds: float,
                     command_seconds: float) -> None:
    """report.json (what the README generator reads) and report.md of one arm."""
    data = dict(results=results, base=base, tests=tests, scores=scores, seconds=seconds,
                command_seconds=command_seconds)
    write_json(arm_dir / "report.json", data)
    write_atomic(arm_dir / "report.md", arm_report(**data))


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
             f"scores all 48 (docs/results.md).",
             f"- Training loss, mean of the first -> last 10 steps: {losses or 'no training (evaluation only)'}",
             f"- Time: {seconds / 60:.1f} min of training and evaluation (summed over seeds); "
             f"{command_seconds / 60:.1f} min wall for the command that wrote this report", "",
             "Accuracy % [95% Wilson CI]; gold bits per byte (lower is better) [95% bootstrap CI]. Paired tests on "
             "the same items: exact McNemar p (only base / only arm correct); bpb difference arm - base (negative: "
             "the arm predicts the gold answer better) [95% paired bootstrap CI], Wilcoxon signed-rank p.", ""]
    table, notes = arm_table(results, base, tests)
    lines += table
    if notes:
        lines += ["", "What the accuracy column can and cannot show:", ""] + notes
    multipliers = results.get("garfa_multipliers") or {}
    if multipliers:
        n_kv = len(next(iter(multipliers.values())))
        lines += ["", "GARFA frequency multipliers exp(log_scale), per layer and KV head:", "",
                  "| layer | " + " | ".join(f"kv {g}" for g in range(n_kv)) + " |", "|---|" + "---|" * n_kv]
        lines += [f"| {layer} | " + " | ".join(f"{m:.4f}" for m in ms) + " |" for layer, ms in multipliers.items()]
    return "\n".join(lines) + "\n"


def phase_line(job, arms, out, scores_cached: bool, base_cached: bool) -> str:
    """One line up front: the phases that will run, and which of them a cache already holds."""
    n_train = (len(arms) - (arms[-1].name == "base")) * len(job.seeds)
    phases = {"layer scoring": scores_cached, "base evaluation": base_cached,
              f"training (up to {n_train} x {job.train.steps} steps)": False, f"evaluation ({n_train} run(s))": False}
    text = " -> ".join(f"{name} (cached)" if cached else name for name, cached in phases.items())
    return f"phases: {text} -> reports in {out}"
