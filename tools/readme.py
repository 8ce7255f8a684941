"""Regenerate the README's results sections from run directories, so no number in them is typed by hand.

    python readme.py [--main runs/sens-sens-SmolLM2-135M-Instruct] [--multiverse runs/multiverse-SmolLM2-135M-Instruct]
                     [--curve runs/curve] [--ablation runs/ablation-SmolLM2-135M-Instruct] [--plan]
                     [--bench bench.json]

Each section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in README.md; a section whose
run directory is not given is left as it is, and one that does not exist is an error (the README is not touched).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from support.cli import Parser, run
from support.files import ROOT, UserError, read_json, read_jsonl, write_atomic, write_json
from support.report import loss_ends

README = ROOT / "README.md"
FIGURES = ROOT / "docs"  # runs/ is not committed: the README's figures and full tables are copied here


def publish(source: Path, name: str) -> str:
    """Copy a run's figure or table into docs/ and return the link the README uses."""
    FIGURES.mkdir(exist_ok=True)
    write_atomic(FIGURES / name, source.read_bytes())
    return f"docs/{name}"


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise UserError(f"{README} has no <!-- generated:{name} --> section")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main_job(run_dir: Path) -> str:
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    table = report[report.index("| benchmark |"):].split("\n\n")[0]
    notes = report.split("What the accuracy column can and cannot show:", 1)
    timing = report.split("- Time: ", 1)[1].split("\n")[0]
    return "\n\n".join([f"From `{shown(run_dir)}/report.md`. Time: {timing}.", table]
                       + ([f"What the accuracy column can and cannot show:\n\n{notes[1].strip().split(chr(10) * 2)[0]}"]
                          if len(notes) > 1 else []))


def multiverse(run_dir: Path) -> str:
    md = (run_dir / "multiverse.md").read_text(encoding="utf-8")
    summary = md[md.index("## Summary"):md.index("## Every variant")].replace("## Summary", "").strip()
    data = read_json(run_dir / "multiverse.json")
    seconds = data.get("seconds")  # scoring only, model load excluded; cached readings count as nothing
    head = md.split("\n\n")[1]
    return "\n\n".join([head, summary,
                        f"![specification curve]({publish(run_dir / 'multiverse.png', 'multiverse.png')})",
                        f"Every variant: [{publish(run_dir / 'multiverse.md', 'multiverse.md')}](docs/multiverse.md)"
                        + (f"; its scoring took {seconds / 60:.1f} min." if seconds else ".")])


def curve(root: Path) -> str:
    """The learning curve that sized --preset cpu-ablation: one sens-sens run per step count, root/steps-<S>/, each
    row its report's paired bpb difference against base per benchmark."""
    runs = sorted((int(d.name.split("-")[1]), d) for d in root.glob("steps-*") if (d / "report.md").is_file())
    if not runs:
        raise UserError(f"{root} holds no steps-<S>/report.md; "
                        f"run train.py --arm sens-sens --steps S --out {root}/steps-S")
    rows, names = [], None
    for steps, d in runs:
        report = (d / "report.md").read_text(encoding="utf-8")
        table = [line.split(" | ") for line in report[report.index("| benchmark |"):].split("\n\n")[0].splitlines()[2:]]
        cells = {row[0].strip("| ").split(" (")[0]: row[-1].strip(" |").replace(", Wilcoxon p", "; p") for row in table
                 if row[-1].strip(" |")}
        names = names or list(cells)
        ends = loss_ends(read_jsonl(d / "train_log.jsonl"))
        rows.append(f"| {steps} | {ends['loss_first_10']:.3f} -> {ends['loss_last_10']:.3f} | "
                    + " | ".join(cells.get(n, "") for n in names) + " |")
    about = (f"`python train.py --arm sens-sens --preset cpu-ablation --steps S --out {shown(root)}/steps-S`"
             " (seed 0), S per row. Each cell: the paired bpb difference sens-sens - base [95% paired bootstrap CI]"
             "; Wilcoxon p (negative: the adapters predict the gold answer better).")
    head = "| steps | training loss (mean of the first -> last 10 steps) | " + " | ".join(names) + " |"
    return "\n".join([about, "", head, "|---|---|" + "---|" * len(names)] + rows)


def ablation(run_dir: Path) -> str:
    md = (run_dir / "comparison.md").read_text(encoding="utf-8").split("\n", 2)[2].strip()
    figure = run_dir / "bpb_differences.png"  # absent when the ablation measured accuracy only
    link = f"\n\n![bpb differences]({publish(figure, 'ablation_bpb_differences.png')})" if figure.is_file() else ""
    return md + link


def bench(path: Path) -> str:
    """bench.py's table from its JSON, with the settings and versions it ran with."""
    from tools.bench import format_table, median, summarize

    data = read_json(path, "run python bench.py again", what="a bench.py result")
    settings, versions = data["settings"], data["versions"]
    command = "python bench.py" + (" --compile" if settings.get("compile") == "True" else "")
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


def main(argv=None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("main", "multiverse", "curve", "ablation", "bench"):
        p.add_argument(f"--{name}", type=Path, default=None)
    p.add_argument("--plan", action="store_const", const=ROOT, default=None,
                   help="the paper preset's plan for the published Llama 3.1 8B config")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    sections = (("main", main_job), ("multiverse", multiverse), ("curve", curve), ("ablation", ablation), ("plan", plan),
                ("bench", bench))
    for name, _ in sections:  # every directory checked before any section is built
        if getattr(args, name) is not None and not getattr(args, name).exists():
            raise UserError(f"--{name} {getattr(args, name)}: not found; give the "
                            f"{'bench.json' if name == 'bench' else 'directory'} of a finished {name} run")
    for name, build in sections:
        source = getattr(args, name)
        if source is not None:
            try:
                body = build(source.resolve())
            except UserError:
                raise
            except (OSError, ValueError, IndexError, KeyError) as e:  # a missing file, a report of another shape
                raise UserError(f"--{name} {source}: not a finished {name} run of this version "
                                f"({type(e).__name__}: {e}); run it again, or give another directory") from e
            text = replace_section(text, name, body)
            print(f"README: {name} from {source}")
    write_atomic(README, text)


if __name__ == "__main__":
    run(main)
