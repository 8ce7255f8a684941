"""The ablation's outputs, computed from the run directory's prediction files: ablation.json (everything),
ablation.csv (arm x benchmark x seed), ablation.md (the tables and the conclusion) and ablation.png.

The primary endpoint, fixed before any run: for arm B against arm A, the mean over the benchmarks of the paired
per-item difference in gold bits per byte (B - A), each benchmark's differences divided by the base model's sd of
per-item bpb on that benchmark (so no benchmark dominates by its scale); its interval and p come from the seed-paired
hierarchical bootstrap (stats.hierarchical_bootstrap: seeds, then items), and Holm's adjustment runs over the three
paper contrasts (sens-sens against sens-rope, rope-sens, rope-rope). Micro bpb (total NLL over total bytes) is shown
beside it. Positive differences against sens-sens mean sens-sens predicts the gold answers better.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from support import dist
from support.files import read_json, read_jsonl, write_atomic, write_json
from support.report import layer_ranges, paired_tests, png_bytes, pyplot, write_arm_report, write_mean_predictions
from support.stats import aggregate_seeds, hierarchical_bootstrap, holm, mean_interval

PAPER_CONTRASTS = ("sens-rope", "rope-sens", "rope-rope")  # each against sens-sens, Holm-adjusted together
CONTROL_QUESTIONS = {"sens-none": "LoRA alone (no GARFA)", "none-sens": "GARFA alone (no LoRA)",
                     "random-random": "the same k random layers for both (placement null)",
                     "late-late": "the last k layers by index (depth alone)"}
CSV_FIELDS = ("arm", "benchmark", "seed", "n", "mean_bpb", "micro_bpb", "mc_logloss", "cloze_accuracy",
              "diff_vs_base", "diff_vs_sens_sens")


def seed_averaged_intervals(arm_dir: Path, benchmarks: dict) -> None:
    """Each benchmark's bpb interval of a several-seed arm: a bootstrap of its seed-averaged items (the arm's
    predictions/), in place of anything built from the per-seed intervals."""
    for name, r in benchmarks.items():
        path = arm_dir / "predictions" / f"{name}.jsonl"
        if "bpb" in r and path.is_file():
            r["bpb"]["ci95"] = mean_interval([x["bpb"] for x in read_jsonl(path) if "bpb" in x])["ci95"]
            r["bpb"]["interval"] = "bootstrap over items of the seed-averaged bpb"


def lora_update_norms(model) -> dict[int, float]:
    """Per layer, the Frobenius norm of its LoRA updates, scale x B A, over every adapted linear (the root of the
    sum of squares): how far training moved each layer."""
    squares = {}
    for name, module in model.named_modules():
        if hasattr(module, "delta_weight"):  # a LoRALinear, named layers.<l>.<...>
            layer = int(name.split(".")[1])
            squares[layer] = squares.get(layer, 0.0) + float(module.delta_weight().detach().norm() ** 2)
    return {layer: math.sqrt(v) for layer, v in sorted(squares.items())}


def finish_arm(arm_dir: Path, per_seed: dict[int, dict], seed_dirs: list[Path], several: bool, base: tuple,
               scores: dict, seconds: float, wall: float, rewrite: bool) -> dict:
    """One arm's results over its seeds (results.json; predictions/ averaged per item, the intervals from them) and
    its report against the base model, which a resume that ran nothing leaves as it was (its wall time included).
    Under torchrun only rank 0 writes."""
    results = aggregate_seeds(per_seed) if several else next(iter(per_seed.values()))
    if not dist.is_main():
        return results
    if several:
        write_mean_predictions(arm_dir, seed_dirs, results["benchmarks"])
        seed_averaged_intervals(arm_dir, results["benchmarks"])
        write_json(arm_dir / "results.json", results)
    if rewrite or not (arm_dir / "report.md").is_file():
        write_arm_report(arm_dir, results, base[1], paired_tests(base[0], arm_dir, results["benchmarks"]), scores,
                         seconds, wall)
    return results


def heldout_curve(log: list[dict]) -> list[list]:
    """[[step, held-out loss], ...] from a training log, step 0 (before training) first."""
    start = [[0, log[0]["heldout_loss_start"]]] if log and "heldout_loss_start" in log[0] else []
    return start + [[r["step"], r["heldout_loss"]] for r in log if "heldout_loss" in r]


def copy_predictions(base: tuple[Path, dict], run_dir: Path) -> dict:
    """The base arm is the shared baseline itself: its prediction files copied into run_dir, its results returned."""
    if dist.is_main():
        (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
        for path in (base[0] / "predictions").glob("*.jsonl"):
            write_atomic(run_dir / "predictions" / path.name, path.read_bytes())
    return base[1]


def prepare_arm_dir(out: Path, arm: str, config: dict) -> None:
    """out/<arm>/ as a complete run directory of its own: its config.json and the shared layer scores."""
    if dist.is_main():
        (out / arm).mkdir(exist_ok=True)
        write_json(out / arm / "config.json", config)
        for name in ("scores.json", "layer_scores.png"):
            write_atomic(out / arm / name, (out / name).read_bytes())


def run_dirs(out: Path, arm: str, seeds) -> dict[int, Path]:
    """seed -> the directory holding that seed's predictions (base: one, shared by every seed)."""
    if arm == "base" or len(seeds) == 1:
        return {s: out / arm for s in seeds}
    return {s: out / arm / f"seed-{s}" for s in seeds}


def records(out: Path, arm: str, seeds, name: str) -> dict[int, list[dict]]:
    """seed -> the benchmark's per-item records, sorted by item id (every arm scores the same items)."""
    found = {}
    for s, d in run_dirs(out, arm, seeds).items():
        path = d / "predictions" / f"{name}.jsonl"
        found[s] = sorted(read_jsonl(path), key=lambda r: str(r["id"])) if path.is_file() else []
    return found


def seed_row(rows: list[dict]) -> dict:
    """One arm, seed and benchmark: mean and micro bpb, MC log-loss and cloze accuracy (None where not measured)."""
    bpb = [r["bpb"] for r in rows if "bpb" in r]
    nll, n_bytes = sum(r.get("nll", 0.0) for r in rows), sum(r.get("n_bytes", 0) for r in rows)
    mc = [r for r in rows if "mc_logloss" in r]
    return {"n": len(rows), "mean_bpb": float(np.mean(bpb)) if bpb else None,
            "micro_bpb": nll / (math.log(2) * n_bytes) if n_bytes else None,
            "mc_logloss": float(np.mean([r["mc_logloss"] for r in mc])) if mc else None,
            "cloze_accuracy": float(np.mean([r["cloze_correct"] for r in mc])) if mc else None}


def bpb_matrix(out: Path, arm: str, seeds, name: str) -> np.ndarray:
    """(seeds, items) per-item bpb; the base model's single row stands for every seed."""
    per_seed = records(out, arm, seeds, name)
    return np.array([[r["bpb"] for r in rows] for rows in per_seed.values()], dtype=np.float64)


def contrast(out: Path, a: str, b: str, seeds, benches: list[str], base_sd: dict[str, float]) -> dict:
    """b - a: the primary endpoint (scaled, seed-paired hierarchical bootstrap), and per benchmark the raw paired
    bpb difference with its own bootstrap, its per-seed means and the micro-bpb difference."""
    scaled, per_bench = [], {}
    for name in benches:
        d = bpb_matrix(out, b, seeds, name) - bpb_matrix(out, a, seeds, name)  # (seeds, items); base broadcasts
        scaled.append(d / base_sd[name])
        micro = [seed_row(rb)["micro_bpb"] - seed_row(ra)["micro_bpb"] for ra, rb in
                 zip(records(out, a, seeds, name).values(), records(out, b, seeds, name).values())]
        per_bench[name] = hierarchical_bootstrap([d]) | {"per_seed": d.mean(axis=1).tolist(),
                                                         "micro_bpb_diff": float(np.mean(micro))}
    primary = hierarchical_bootstrap(scaled)
    primary["per_seed"] = np.mean([x.mean(axis=1) for x in scaled], axis=0).tolist()
    return {"a": a, "b": b, "primary": primary, "benchmarks": per_bench}


def adapters(out: Path, arm: str, seeds) -> dict:
    """The learned GARFA multipliers (per layer and KV head) and LoRA update norms (per layer), each the mean over
    the seeds that adapted that layer (random-random draws its layers per seed)."""
    per_seed = [read_json(d / "results.json") for d in run_dirs(out, arm, seeds).values()]
    layers = lambda key: sorted({layer for r in per_seed for layer in r.get(key) or {}}, key=int)
    mean = lambda key: {layer: np.mean([r[key][layer] for r in per_seed if layer in r[key]], axis=0).tolist()
                        for layer in layers(key)}
    return {"garfa_multipliers": mean("garfa_multipliers"), "lora_update_norms": mean("lora_update_norms"),
            "layers_per_seed": {str(r["seed"]): [r["lora_layers"], r["garfa_layers"]] for r in per_seed}}


def summarize(out: Path, results: dict[str, dict], same: dict[str, str], scores: dict, seeds) -> dict:
    """Everything ablation.json holds, recomputed from the prediction files and each seed's results.json."""
    seeds = list(seeds)
    arms = list(results)
    first = results[arms[0]]["benchmarks"]
    benches = [b for b in first if "bpb" in first[b]]
    base = {name: bpb_matrix(out, "base", seeds[:1], name)[0] for name in benches}
    base_sd = {name: float(np.std(v, ddof=1)) if len(v) > 1 and np.ptp(v) > 0 else 1.0 for name, v in base.items()}
    rows = []
    for arm in arms:
        arm_seeds = seeds[:1] if arm == "base" else seeds
        for name in benches:
            for s, recs in records(out, arm, arm_seeds, name).items():
                bpb = np.array([r["bpb"] for r in recs])
                other = lambda o: (bpb - bpb_matrix(out, o, seeds, name)[seeds.index(s) if o != "base" else 0]).mean()
                rows.append({"arm": arm, "benchmark": name, "seed": s, **seed_row(recs),
                             "diff_vs_base": float(other("base")),
                             "diff_vs_sens_sens": float(other("sens-sens")) if "sens-sens" in results else None})
    vs_base = {arm: contrast(out, "base", arm, seeds, benches, base_sd) for arm in arms if arm != "base"}
    vs_sens = {arm: contrast(out, "sens-sens", arm, seeds, benches, base_sd) for arm in arms
               if arm not in ("sens-sens", "base") and "sens-sens" in results}
    paper = [a for a in PAPER_CONTRASTS if a in vs_sens]
    for arm, p in zip(paper, holm([vs_sens[a]["primary"]["p"] for a in paper])):
        vs_sens[arm]["primary"]["p_holm"] = p
    arm_info = {arm: {"lora_layers": r["lora_layers"], "garfa_layers": r["garfa_layers"],
                      "curves": {str(s): t.get("heldout_curve", []) for s, t in (
                          r["training"].items() if "steps" not in r["training"] else [(seeds[0], r["training"])])},
                      **adapters(out, arm, seeds[:1] if arm == "base" else seeds)} for arm, r in results.items()}
    return {"model": results[arms[0]]["model"], "seeds": seeds, "benchmarks": benches,
            "base_sd": base_sd, "k": scores["k"], "sens_layers": scores["sens_layers"],
            "rope_layers": scores["rope_layers"], "stable": scores.get("stable"), "same_as": same,
            "reading": {k: scores.get("options", {}).get(k) for k in ("calib", "sens_pool", "sens_repr", "sens_dist",
                                                                      "influence")},
            "arms": arm_info, "rows": rows, "vs_base": vs_base, "vs_sens_sens": vs_sens,
            "primary_endpoint": __doc__.split("\n\n")[1].replace("\n", " ")}


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else round(r[k], 6) if isinstance(r[k], float) else r[k])
                         for k in CSV_FIELDS})
    return buffer.getvalue()


def fmt_primary(p: dict) -> str:
    holm_p = f", Holm p {p['p_holm']:.3g}" if "p_holm" in p else ""
    return f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], p {p['p']:.3g}{holm_p}"


def conclusion(s: dict) -> str:
    """One paragraph from the primary endpoint: the paper contrasts, then what the controls say."""
    vs, base = s["vs_sens_sens"], s["vs_base"]
    paper = [a for a in PAPER_CONTRASTS if a in vs]
    if not paper:
        return "No paper contrast was run."
    beats = [a for a in paper if vs[a]["primary"]["p_holm"] < 0.05 and vs[a]["primary"]["mean"] > 0]
    loses = [a for a in paper if vs[a]["primary"]["p_holm"] < 0.05 and vs[a]["primary"]["mean"] < 0]
    overlap = len(set(s["sens_layers"]) & set(s["rope_layers"]))
    text = [f"With sensitivity layers {layer_ranges(s['sens_layers'])} and RoPE-influence layers "
            f"{layer_ranges(s['rope_layers'])} ({overlap} shared; top-{s['k']}, {s['reading']['sens_dist']} "
            f"distance), over {len(s['seeds'])} seed(s), sens-sens "
            + ("beats every other paper arm" if len(beats) == len(paper) else
               f"beats {', '.join(beats)} but not {', '.join(a for a in paper if a not in beats)}" if beats else
               "beats none of the other paper arms")
            + " on the primary endpoint (other minus sens-sens, base-sd units, Holm over 3 contrasts at 5%: "
            + "; ".join(f"{a} {fmt_primary(vs[a]['primary'])}" for a in paper) + ")"
            + (f"; {', '.join(loses)} beat{'s' if len(loses) == 1 else ''} sens-sens." if loses else ".")]
    for arm, what in CONTROL_QUESTIONS.items():
        if arm in s["same_as"]:
            text.append(f"{arm} ({what}) adapts exactly the {s['same_as'][arm]} layers, so it equals "
                        f"{s['same_as'][arm]}: this reading's sensitivity ranking is the depth rule.")
        elif arm in base:
            b, v = base[arm]["primary"], vs[arm]["primary"]
            text.append(f"{arm} ({what}): {fmt_primary(b)} against base, {fmt_primary(v)} minus sens-sens.")
    return " ".join(text) + (" Control contrasts are not adjusted for multiplicity." if len(text) > 1 else "")


def markdown(s: dict) -> str:
    benches, vs_base, vs = s["benchmarks"], s["vs_base"], s["vs_sens_sens"]
    mean_of = lambda arm, key, name: np.mean([r[key] for r in s["rows"] if r["arm"] == arm and r["benchmark"] == name
                                              and r[key] is not None] or [np.nan])
    lines = [f"# Cross-layer ablation: {s['model']}", "", conclusion(s), "",
             f"Primary endpoint: {s['primary_endpoint']}", "", "## Mean gold bpb per arm (seed mean; lower is better)", "",
             "| arm | LoRA layers | GARFA layers | " + " | ".join(benches) + " | vs base (primary) | "
             "minus sens-sens (primary) |", "|---|---|---|" + "---|" * (len(benches) + 2)]
    for arm, info in s["arms"].items():
        cells = [f"{mean_of(arm, 'mean_bpb', b):.4f}" for b in benches]
        sets = [" / ".join(dict.fromkeys(layer_ranges(x[side]) or "-" for x in info["layers_per_seed"].values()))
                for side in (0, 1)]  # a random arm: one set per seed
        lines.append(f"| {arm} | {sets[0]} | {sets[1]}"
                     f" | " + " | ".join(cells) + f" | {fmt_primary(vs_base[arm]['primary']) if arm in vs_base else ''}"
                     f" | {fmt_primary(vs[arm]['primary']) if arm in vs else ''} |")
    lines += [f"| {arm} | = {other} | | " + " | " * len(benches) + " |" for arm, other in s["same_as"].items()]
    lines += ["", "## Minus sens-sens per benchmark: paired bpb difference [95% hierarchical bootstrap CI]; per seed",
              "", "| arm | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for arm, c in vs.items():
        lines.append(f"| {arm} | " + " | ".join(
            f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]; " + ", ".join(f"{x:+.4f}" for x in
                                                                                         d["per_seed"])
            for d in (c["benchmarks"][b] for b in benches)) + " |")
    mc = [b for b in benches if any(r["mc_logloss"] is not None for r in s["rows"] if r["benchmark"] == b)]
    if mc:
        lines += ["", "## Multiple choice: gold log-loss renormalised over the choices / cloze accuracy (seed mean)",
                  "", "| arm | " + " | ".join(mc) + " |", "|---|" + "---|" * len(mc)]
        lines += [f"| {arm} | " + " | ".join(f"{mean_of(arm, 'mc_logloss', b):.4f} / "
                                             f"{100 * mean_of(arm, 'cloze_accuracy', b):.1f}%" for b in mc) + " |"
                  for arm in s["arms"]]
    lines += ["", "## What the adapters learned (seed mean)", "",
              "| arm | LoRA update norm per layer (Frobenius, scale x B A) | GARFA multipliers per layer (KV heads) |",
              "|---|---|---|"]
    for arm, info in s["arms"].items():
        norms = ", ".join(f"{layer}: {v:.3f}" for layer, v in info["lora_update_norms"].items())
        mults = ", ".join(f"{layer}: " + "/".join(f"{m:.3f}" for m in ms) for layer, ms in
                          info["garfa_multipliers"].items())
        lines.append(f"| {arm} | {norms or '-'} | {mults or '-'} |")
    if s.get("stable"):
        st = s["stable"]
        lines += ["", f"## Layer sets: how often each layer is in the top-{s['k']} ({len(st['draws'])} calibration "
                  f"draws x {st['resamples']} resamples of their pairs)", "",
                  "| layer | " + " | ".join(str(i) for i in range(len(st["sensitivity"]["frequency"]))) + " |",
                  "|---|" + "---|" * len(st["sensitivity"]["frequency"])]
        lines += [f"| {key} | " + " | ".join(f"{f:.2f}" for f in st[key]["frequency"]) + " |"
                  for key in ("sensitivity", "influence")]
        lines += ["", f"One draw alone ({st['draws'][0]}): sensitivity {layer_ranges(st['single_draw']['sens_layers'])}"
                  f", RoPE influence {layer_ranges(st['single_draw']['rope_layers'])}."]
    return "\n".join(lines) + "\n"


def plot(s: dict) -> bytes:
    """Left: each arm minus sens-sens; middle: each arm minus base; primary endpoint with its 95% CI, and one dot per
    seed (that seed's endpoint). Right, with stable layer sets: how often each layer is in the top-k, per
    calibration draw, for S and for I."""
    plt = pyplot()
    stable = s.get("stable")
    fig, axes = plt.subplots(1, 3 if stable else 2, figsize=(18 if stable else 12, 4.5))
    if stable:
        rows = [(f"{key[:4]} {draw}", f) for key in ("sensitivity", "influence")
                for draw, f in zip(stable["draws"], stable[key]["per_draw"])]
        image = axes[2].imshow([f for _, f in rows], aspect="auto", cmap="viridis", vmin=0, vmax=1)
        axes[2].set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
        axes[2].set_xlabel("layer")
        axes[2].set_title(f"share of {stable['resamples']} pair resamples with the layer in the top-{s['k']}",
                          fontsize=9)
        fig.colorbar(image, ax=axes[2])
    for ax, (title, contrasts) in zip(axes[:2], (("other arm minus sens-sens (positive: sens-sens better)",
                                              s["vs_sens_sens"]), ("arm minus base (negative: arm better)",
                                                                   s["vs_base"]))):
        for i, (arm, c) in enumerate(contrasts.items()):
            p = c["primary"]
            ax.errorbar([i], [p["mean"]], yerr=[[p["mean"] - p["ci95"][0]], [p["ci95"][1] - p["mean"]]], fmt="s",
                        color="black", capsize=4)
            ax.scatter(np.full(len(p["per_seed"]), i) + np.linspace(-0.15, 0.15, len(p["per_seed"])), p["per_seed"],
                       color="tab:blue", s=14, zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(contrasts)), list(contrasts), rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("primary endpoint: mean bpb difference / base sd, 95% CI; dots: seeds", fontsize=8)
    fig.suptitle(f"{s['model']}: cross-layer ablation, {len(s['seeds'])} seed(s), "
                 f"{', '.join(s['benchmarks'])}", fontsize=10)
    return png_bytes(fig)


def write_ablation(out: Path, results: dict[str, dict], same: dict[str, str], scores: dict, seeds) -> dict:
    """ablation.json, ablation.csv, ablation.md and ablation.png in `out` (the lead copies them to docs/)."""
    s = summarize(out, results, same, scores, seeds)
    write_json(out / "ablation.json", s)
    write_atomic(out / "ablation.csv", csv_text(s["rows"]))
    write_atomic(out / "ablation.md", markdown(s))
    write_atomic(out / "ablation.png", plot(s))
    return s
