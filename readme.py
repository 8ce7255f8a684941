"""Regenerate the README's results sections from run directories, so no number in them is typed by hand.

    python readme.py [--main runs/sens-sens-SmolLM2-135M-Instruct] [--multiverse runs/multiverse-SmolLM2-135M-Instruct]
                     [--ablation runs/cpu-ablation] [--plan]

Each section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in README.md; a section whose
run directory is not given (or does not exist) is left as it is.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cli import run
from files import ROOT, UserError, read_json, write_atomic, write_json

README = ROOT / "README.md"
FIGURES = ROOT / "docs"  # runs/ is not committed: the README's figures and full tables are copied here


def publish(source: Path, name: str) -> str:
    """Copy a run's figure or table into docs/ and return the link the README uses."""
    FIGURES.mkdir(exist_ok=True)
    write_atomic(FIGURES / name, source.read_bytes())
    return f"docs/{name}"


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise UserError(f"{README} has no <!-- generated:{name} --> section")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main_job(run_dir: Path) -> str:
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    table = report[report.index("| benchmark |"):].split("\n\n")[0]
    notes = report.split("What the accuracy column can and cannot show:", 1)
    minutes = report.split("- Wall time: ", 1)[1].split("\n")[0]
    return "\n\n".join([f"From `{run_dir.relative_to(ROOT)}/report.md` (wall time {minutes}):", table]
                       + ([f"What the accuracy column can and cannot show:{notes[1].split(chr(10) * 2)[0]}"]
                          if len(notes) > 1 else []))


def multiverse(run_dir: Path) -> str:
    md = (run_dir / "multiverse.md").read_text(encoding="utf-8")
    summary = md[md.index("## Summary"):md.index("## Every variant")].replace("## Summary", "").strip()
    data = read_json(run_dir / "multiverse.json")
    seconds = data.get("summary", {}).get("seconds")
    head = md.split("\n\n")[1]
    return "\n\n".join([head, summary,
                        f"![specification curve]({publish(run_dir / 'multiverse.png', 'multiverse.png')})",
                        f"Every variant: [{publish(run_dir / 'multiverse.md', 'multiverse.md')}](docs/multiverse.md)"
                        + (f"; the run took {seconds / 60:.1f} min." if seconds else ".")])


def ablation(run_dir: Path) -> str:
    md = (run_dir / "comparison.md").read_text(encoding="utf-8")
    return md.split("\n", 2)[2].strip() + \
        f"\n\n![bpb differences]({publish(run_dir / 'bpb_differences.png', 'ablation_bpb_differences.png')})"


def plan(_) -> str:
    """train.py --plan on the published Llama 3.1 8B config (random_checkpoint.LLAMA_3_1_8B), as on a GPU (bf16)."""
    from random_checkpoint import LLAMA_3_1_8B

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "Llama-3.1-8B-Instruct"
        model_dir.mkdir()
        write_json(model_dir / "config.json", LLAMA_3_1_8B)
        cmd = [sys.executable, "train.py", "--arm", "sens-sens", "--preset", "paper", "--model", str(model_dir),
               "--plan", "--dtype", "bfloat16"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return "```\n$ python train.py --arm sens-sens --preset paper --model Llama-3.1-8B-Instruct --plan\n" + out + "```"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("main", "multiverse", "ablation"):
        p.add_argument(f"--{name}", type=Path, default=None)
    p.add_argument("--plan", action="store_const", const=ROOT, default=None,
                   help="the paper preset's plan for the published Llama 3.1 8B config")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    for name, build in (("main", main_job), ("multiverse", multiverse), ("ablation", ablation), ("plan", plan)):
        source = getattr(args, name)
        if source is not None and source.exists():
            text = replace_section(text, name, build(source.resolve()))
            print(f"README: {name} from {source}")
    write_atomic(README, text)


if __name__ == "__main__":
    run(main)
