"""Regenerate the results sections of README.md and docs/ from the runs' JSON files: no number there is typed by hand.

    python -m tools.readme [--main runs/sens-sens-SmolLM2-135M-Instruct] [--multiverse runs/multiverse-...]
                           [--curve runs/curve] [--ablation runs/ablation-...]
                           [--bench docs/bench.json] [--gpu docs/gpu_check.json] [--plan]

Each section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in one of the documents below; a
section whose source is not given is left as it is, and a source that does not exist is an error before any
document is touched. The claims table is rebuilt from whichever of --main, --multiverse, --ablation are given.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from support.cli import Parser, run
from support.files import ROOT, UserError, read_json, write_atomic, write_json
from support.report import arm_table

README = ROOT / "README.md"
DOCS = ROOT / "docs"  # runs/ is not committed: the figures and full tables a document links are copied here
RESULTS, ENGINEERING = DOCS / "results.md", DOCS / "engineering.md"
NOISE_MULTIPLE, HELDOUT_WINDOW = 3, 5  # "fallen clearly": more than 3x the step-to-step noise


def publish(source: Path, name: str) -> str:
    """Copy a run's figure or table into docs/ and return its name (documents in docs/ link it by name)."""
    DOCS.mkdir(exist_ok=True)
    write_atomic(DOCS / name, source.read_bytes())
    return name


def shown(path: Path) -> str:
    """A path as a generated document may show it: relative to the repository, else its name only."""
    path = Path(path)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name)


def python_command(argv: str) -> str:
    """A run's recorded command line (sys.argv joined) as a reader would type it."""
    return argv if argv.startswith("python") else f"python {argv}"


def replace_section(text: str, name: str, body: str, document: Path = README) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise UserError(f"{shown(document)} has no <!-- generated:{name} --> section")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


# ----------------------------------------------------------------------------------------------------------------
# One builder per section: a run's JSON in, Markdown out.

def main_job(run_dir: Path) -> str:
    data = read_json(run_dir / "report.json", "run the main job again", what="a train.py report")
    table, notes = arm_table(data["results"], data["base"], data["tests"])
    head = (f"From `{shown(run_dir)}/report.json` (`python train.py --arm sens-sens`): "
            f"{data['command_seconds'] / 60:.1f} min wall for the command, {data['seconds'] / 60:.1f} min of it "
            "training and evaluation. Accuracy % [95% Wilson CI]; gold bits per byte (lower is better) [95% "
            "bootstrap CI]; paired tests on the same items: exact McNemar p (only base / only arm correct), bpb "
            "difference arm - base [95% paired bootstrap CI], Wilcoxon signed-rank p.")
    body = [head, "\n".join(table)]
    if notes:
        body.append("What the accuracy column can and cannot show:\n\n" + "\n".join(notes))
    return "\n\n".join(body)


def multiverse(run_dir: Path) -> str:
    """The multiverse's setup and findings from multiverse.json, its figures and every variant copied to docs/."""
    from support.multiverse_report import multiverse_findings, multiverse_setup

    mv = read_json(run_dir / "multiverse.json", "run the multiverse again", what="a multiverse result")
    for name in ("multiverse.json", "multiverse.md"):
        publish(run_dir / name, name)
    return "\n\n".join([
        f"From `{shown(run_dir)}/multiverse.json` (`python sensitivity.py --multiverse`). {multiverse_setup(mv)}. The "
        f"partial r_s holds the layer index fixed; p_eff uses the effective number of layers left by the two profiles' "
        f"autocorrelation; p_null is the rank of r_s among surrogates that keep each profile's depth trend.",
        "\n".join(multiverse_findings(mv)),
        f"![specification curve]({publish(run_dir / 'multiverse.png', 'multiverse.png')})",
        f"![layer profiles]({publish(run_dir / 'layer_profiles.png', 'layer_profiles.png')})",
        "Every variant: [multiverse.md](multiverse.md); every number: [multiverse.json](multiverse.json)."])


def ablation(run_dir: Path) -> str:
    """The ablation's tables and conclusion from ablation.json; its CSV, JSON and figure copied to docs/."""
    from support.ablation_report import markdown

    data = read_json(run_dir / "ablation.json", "run the ablation again", what="an ablation result")
    for name in ("ablation.json", "ablation.csv"):
        publish(run_dir / name, name)
    command = python_command(read_json(run_dir / "config.json").get("command", "train.py --arm ablation ..."))
    body = markdown(data).split("\n", 2)[2].replace("\n## ", "\n### ")  # its title is the section's
    return "\n\n".join([f"From `{shown(run_dir)}/ablation.json` (`{command}`); every arm x benchmark x seed: "
                          "[ablation.csv](ablation.csv).", body.strip(),
                          f"![ablation]({publish(run_dir / 'ablation.png', 'ablation.png')})"])


def curve(run_dir: Path) -> str:
    """The held-out learning curve that sized the ablation's steps, from the run's train_log.jsonl."""
    from support.ablation_report import heldout_curve
    from support.files import read_jsonl

    log = read_jsonl(run_dir / "train_log.jsonl")
    points = heldout_curve(log)
    if len(points) < 3:
        raise UserError(f"{shown(run_dir)}: fewer than 3 held-out losses in train_log.jsonl; run train.py with "
                        "--heldout-every")
    steps, losses = zip(*points)
    # Step-to-step noise without the trend: second differences remove a locally linear trend, and iid noise of sd
    # sigma gives second differences of sd sigma * sqrt(6).
    noise = float(np.median(np.abs(np.diff(losses, 2)))) / np.sqrt(6)
    clear = next((s for s, x in points if losses[0] - x > NOISE_MULTIPLE * noise), None)
    command = python_command(read_json(run_dir / "config.json").get("command", "train.py ..."))
    window = lambda s: np.mean([r["loss"] for r in log if s - HELDOUT_WINDOW < r["step"] <= s] or [np.nan])
    rows = [f"| {s} | {x:.4f} | {losses[0] - x:+.4f} | {'-' if s == 0 else format(window(s), '.4f')} |"
            for s, x in points]
    verdict = (f"Held-out loss first falls below its start by more than {NOISE_MULTIPLE}x its step-to-step noise "
               f"({noise:.4f}: the median absolute second difference of the curve / sqrt 6, which leaves the trend "
               f"out) at step {clear}." if clear else
               f"Held-out loss never falls below its start by more than {NOISE_MULTIPLE}x its step-to-step noise "
               f"({noise:.4f}).")
    return "\n".join([f"From `{shown(run_dir)}/train_log.jsonl` (`{command}`). {verdict}", "",
                      f"| step | held-out loss | drop since step 0 | training loss (mean of the last "
                      f"{HELDOUT_WINDOW} steps) |", "|---|---|---|---|", *rows])


PAPER = {"r": -0.735, "p": 1.66e-6, "sens": "23-31", "rope": "0-9", "win": "+4 to +16 points on six benchmarks",
         "humaneval_plus": "67.1%"}


def claims(sources: dict[str, Path]) -> str:
    """The abstract's claims, what this project computes for each, its value here next to the paper's, a status."""
    from sensitivity import READINGS, ScoreOptions
    from support.report import layer_ranges

    DEFAULT_READING = {k: getattr(ScoreOptions(), k) for k in READINGS}  # the reading the claims table quotes
    rows = []
    mv_dir, ab_dir, main_dir = sources.get("multiverse"), sources.get("ablation"), sources.get("main")
    if mv_dir:
        mv = read_json(mv_dir / "multiverse.json")
        s, default = mv["summary"], next(x for x in mv["records"] if x["calib_set"] == "file" and x["options"] ==
                                         {**x["options"], **DEFAULT_READING})
        sp, l2 = default["spearman"], next(x for x in mv["records"] if x["calib_set"] == "file" and x["options"] ==
                                           {**x["options"], **DEFAULT_READING, "sens_dist": "l2"})
        sig = s["significant"]
        rows.append(("Anti-localization: S and I rank the layers in opposite orders",
                     "Spearman r_s of S and I over layers, default reading, shipped pairs; p naive / effective-n / "
                     "depth-trend surrogate", f"r_s {PAPER['r']}, p {PAPER['p']:.3g}",
                     f"r_s {sp['r']:+.3f}, p {sp['p']:.2g} / {sp['p_eff']:.2g} / {sp['p_null']:.2g}; under l2 "
                     f"r_s {l2['spearman']['r']:+.3f}, p_null {l2['spearman']['p_null']:.2g}",
                     ("reproduced here" if default["verdict"] == "anti-localized" else "contradicted here") +
                     f": {default['verdict']} under the default reading; {sig['naive']} of "
                     f"{s['n_variants']} readings significant naively, {sig['p_null']} against the surrogate null"))
        rows.append(("Is it more than depth?", "the joint test of the specification curve against surrogates that "
                     "keep each profile's depth trend", "not reported", s["joint_line"].rstrip("."),
                     ("tested here: something beyond depth" if s["beyond_depth"] else
                      "contradicted here: nothing beyond depth") + (
                         f"; a random-weight copy gives {s['random_weights']['significant']['naive']} naive "
                         "significances" if s.get("random_weights") else "")))
        rows.append(("Layer ranges: sensitivity late, RoPE influence early", "top-k layers of S and of I",
                     f"S {PAPER['sens']}, I {PAPER['rope']} (of 32)",
                     f"default: S {layer_ranges(default['sens_layers'])}, I {layer_ranges(default['rope_layers'])}; "
                     f"l2: S {layer_ranges(l2['sens_layers'])}, I {layer_ranges(l2['rope_layers'])} (of "
                     f"{len(default['sensitivity'])})", "tested here: the paper's geometry appears only under l2, "
                     "whose S follows the residual norm, i.e. depth"))
    if ab_dir:
        ab = read_json(ab_dir / "ablation.json")
        paper = {a: c["primary"] for a, c in ab["vs_sens_sens"].items() if "p_holm" in c["primary"]}
        wins = sum(p["p_holm"] < 0.05 and p["mean"] > 0 for p in paper.values())
        rows.append(("LoRA + GARFA both on the sensitivity layers wins", "primary endpoint: other arm minus "
                     "sens-sens, mean base-sd-scaled paired bpb difference over the benchmarks; Holm over 3",
                     PAPER["win"], "; ".join(f"{a} {p['mean']:+.3f} (Holm p {p['p_holm']:.2g})"
                                             for a, p in paper.items()),
                     f"tested here (bpb, not accuracy): sens-sens beats {wins} of {len(paper)} paper arms"))
    else:
        rows.append(("LoRA + GARFA both on the sensitivity layers wins", "primary endpoint of the ablation with "
                     "controls (docs/results.md)", PAPER["win"], "not yet run on this version",
                     "testable here in bpb; accuracy is at chance at 135M"))
    if main_dir:
        bench = read_json(main_dir / "report.json")["results"]["benchmarks"]
        he = bench.get("humaneval_plus") if "accuracy" in bench.get("humaneval_plus", {}) else bench.get("humaneval")
        name = "humaneval_plus" if he is bench.get("humaneval_plus") else "humaneval (stand-in: base tests)"
        rows.append(("HumanEval+ of the winning arm", "pass@1 in the sandbox, sens-sens arm of the main job",
                     PAPER["humaneval_plus"], f"{name} {100 * he['accuracy']:.1f}% (n={he['n']})" if he else "not run",
                     "not testable at 135M (a 135M model, a few training steps)"))
    head = ["| claim of the abstract | what this project computes | paper (Llama 3.1 8B) | here (SmolLM2-135M, "
            "Q4_1-dequantized) | status |", "|---|---|---|---|---|"]
    return "\n".join(head + [f"| {' | '.join(r)} |" for r in rows])


def gpu(path: Path) -> str:
    """tools/gpu_check.py's tables from its JSON (the check itself writes the JSON next to its Markdown)."""
    from tools.gpu_check import markdown

    text = markdown(read_json(path, "run python -m tools.gpu_check again", what="a tools/gpu_check.py result"))
    return text.split("\n", 2)[2].replace("\n## ", "\n### ").strip()  # its marker comment and title are the page's


def plan(_) -> str:
    """train.py --plan on the published Llama 3.1 8B config (random_checkpoint.LLAMA_3_1_8B), as on a GPU (bf16)."""
    from tools.random_checkpoint import LLAMA_3_1_8B

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "Llama-3.1-8B-Instruct"
        model_dir.mkdir()
        write_json(model_dir / "config.json", LLAMA_3_1_8B)
        cmd = [sys.executable, "train.py", "--arm", "sens-sens", "--preset", "paper", "--model", str(model_dir),
               "--plan", "--dtype", "bfloat16"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return "```\n$ python train.py --arm sens-sens --preset paper --model Llama-3.1-8B-Instruct --plan\n" + out + "```"


def bench(path: Path) -> str:
    """tools/bench.py's table from its JSON, with the settings and versions it ran with."""
    from tools.bench import format_table, median, summarize

    data = read_json(path, "run python -m tools.bench again", what="a tools/bench.py result")
    settings, versions = data["settings"], data["versions"]
    command = "python -m tools.bench" + (" --compile" if settings.get("compile") == "True" else "")
    bound = 1 / median(data["weight_stream_s"])
    head = (f"`{command}` ({data['wall_s'] / 60:.0f} min): {settings['device']} ({data['device_name']}), "
            f"{settings['dtype']}, {data['threads']} threads; torch {versions['torch']}, transformers "
            f"{versions['transformers']}, peft {versions['peft']}. Matmul peak {data['matmul_peak_flops'] / 1e9:.0f} "
            f"GFLOP/s, weight-streaming bound {bound:.1f} tok/s. Each cell is the median of {settings['repeats']} "
            f"interleaved calls [slowest-fastest]; the LoRA step is the median of "
            f"{int(settings['lora_rounds']) * int(settings['lora_repeats'])} steps over {settings['lora_rounds']} "
            f"fresh processes per side.")
    compiled = data.get("compile_s") or {}
    tail = ("Compilation, seconds, excluded from the rates: "
            + ", ".join(f"{k} {v:.0f}" for k, v in compiled.items()) + ".") if compiled else ""
    return "\n\n".join(x for x in (head, format_table(summarize(data)), tail) if x)


# (name, document, builder). Each builder takes the resolved path the option gave.
SECTIONS = [("main", README, main_job), ("multiverse", RESULTS, multiverse), ("curve", RESULTS, curve),
            ("ablation", RESULTS, ablation),
            ("plan", ENGINEERING, plan), ("bench", ENGINEERING, bench), ("gpu", ENGINEERING, gpu)]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, document, build in SECTIONS:
        if name != "plan":
            p.add_argument(f"--{name}", type=Path, default=None, help=f"{(build.__doc__ or name).splitlines()[0]} "
                                                                       f"(into {shown(document)})")
    p.add_argument("--plan", action="store_const", const=ROOT, default=None,
                   help="the paper preset's plan for the published Llama 3.1 8B config")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    for name, _, _ in SECTIONS:  # every source checked before any section is built
        source = getattr(args, name)
        if source is not None and not source.exists():
            raise UserError(f"--{name} {source}: not found; give the JSON file or the directory of a finished "
                            f"{name} run")
    texts, built = {}, []
    for name, document, build in SECTIONS:
        source = getattr(args, name)
        if source is None:
            continue
        try:
            body = build(source.resolve())
        except UserError:
            raise
        except (OSError, ValueError, IndexError, KeyError, TypeError) as e:  # a missing file, a result of another shape
            raise UserError(f"--{name} {source}: not a finished {name} run of this version "
                            f"({type(e).__name__}: {e}); run it again, or give another directory") from e
        text = texts.get(document) or document.read_text(encoding="utf-8")
        texts[document] = replace_section(text, name, body, document)
        built.append(f"{shown(document)}: {name} from {shown(source)}")
    given = {name: getattr(args, name).resolve() for name in ("main", "multiverse", "ablation")
             if getattr(args, name, None)}
    if given:
        text = texts.get(README) or README.read_text(encoding="utf-8")
        try:
            body = claims(given)
        except (OSError, ValueError, IndexError, KeyError, TypeError, StopIteration) as e:
            raise UserError(f"the claims table: {', '.join(given)} not of this version ({type(e).__name__}: {e}); "
                            "run them again") from e
        texts[README] = replace_section(text, "claims", body, README)
        built.append(f"README.md: claims from {', '.join(given)}")
    for document, text in texts.items():
        write_atomic(document, text)
    print("\n".join(built))


if __name__ == "__main__":
    run(main)
