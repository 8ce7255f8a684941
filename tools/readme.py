"""Regenerate the results sections of README.md and docs/ from the runs' JSON files: no number there is typed by hand.

    python -m tools.readme [--main runs/sens-sens-SmolLM2-135M-Instruct] [--multiverse runs/multiverse-...]
                           [--null runs/multiverse-random-...] [--curve runs/curve] [--ablation runs/ablation-...]
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

from support.cli import Parser, run
from support.files import ROOT, UserError, read_json, write_atomic, write_json
from support.report import arm_table

README = ROOT / "README.md"
DOCS = ROOT / "docs"  # runs/ is not committed: the figures and full tables a document links are copied here
RESULTS, ENGINEERING = DOCS / "results.md", DOCS / "engineering.md"


def publish(source: Path, name: str) -> str:
    """Copy a run's figure or table into docs/ and return its name (documents in docs/ link it by name)."""
    DOCS.mkdir(exist_ok=True)
    write_atomic(DOCS / name, source.read_bytes())
    return name


def shown(path: Path) -> str:
    """A path as a generated document may show it: relative to the repository, else its name only."""
    path = Path(path)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name)


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
SECTIONS = [("main", README, main_job), ("multiverse", RESULTS, multiverse), ("plan", ENGINEERING, plan),
            ("bench", ENGINEERING, bench)]


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
    texts = {}
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
        print(f"{shown(document)}: {name} from {shown(source)}")
    for document, text in texts.items():
        write_atomic(document, text)


if __name__ == "__main__":
    run(main)
