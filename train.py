"""The main job: score the layers, choose them by arm, attach LS-LoRA and GARFA, fine-tune, evaluate, report.

    python train.py --arm sens-sens            # SPEC 4.7: LoRA on the sensitivity layers, GARFA on the same
    python train.py --arm ablation             # the paper's 4-way cross-layer ablation plus base
    python train.py --arm sens-sens --preset paper --model /path/to/Llama-3.1-8B-Instruct   # one GPU, bf16

An arm is LORA-GARFA, each side one of sens, rope, all, random, none. Resume, determinism and atomic files:
data order, dropout and the learning rate are pure functions of (seed, step), and one checkpoint file holds the
adapter tensors, the optimizer and the step, so `--resume` continues to exactly the uninterrupted result.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors
import tokenizers
import torch
from tqdm import tqdm

from data import training_mixture
from evaluate import (DEFAULT_BENCHMARKS, MC_FORMATS, STAND_INS, benchmark_list, evaluate_model, mcnemar_exact,
                      uses_chat)
from garfa import apply_garfa, garfa_multipliers
from lora import DEFAULT_TARGETS, apply_lora, save_adapter
from model import Tokenizer, Transformer, right_pad, sequence_nll
from prepare import CACHE_DIR, DEFAULT_MODEL_DIR, ROOT, RUNS_DIR, ensure_model, write_atomic
from sensitivity import add_score_args, load_or_compute_scores, model_fingerprint, options_from_args, summary

SIDES = ("sens", "rope", "all", "random", "none")
PAPER_ARMS = ("sens-sens", "sens-rope", "rope-sens", "rope-rope")

# Defaults sized for the 2-core CPU and SmolLM2-135M ("default"), and the documented GPU recipe for Llama 3.1 8B.
PRESETS = {
    "default": dict(steps=40, batch_size=4, grad_accum=1, seq_len=256, warmup=4, limit=40, max_new_tokens=128,
                    eval_batch_size=16, checkpoint_every=10),
    "paper": dict(steps=1000, batch_size=4, grad_accum=4, seq_len=1024, warmup=50, limit=None, max_new_tokens=512,
                  eval_batch_size=32, checkpoint_every=100),
}


# ----------------------------------------------------------------------------------------------------------------
# Arms: the grammar and the layer sets, defined once.

@dataclass(frozen=True)
class Arm:
    lora: str
    garfa: str

    @property
    def name(self) -> str:
        return "base" if self.lora == self.garfa == "none" else f"{self.lora}-{self.garfa}"


def parse_arm(text: str) -> Arm:
    if text == "base":
        return Arm("none", "none")
    sides = text.split("-")
    if len(sides) != 2 or any(s not in SIDES for s in sides):
        raise argparse.ArgumentTypeError(
            f"invalid arm '{text}': use LORA-GARFA with each side one of {', '.join(SIDES)} "
            f"(e.g. sens-sens), 'base', or 'ablation'")
    return Arm(*sides)


def resolve_layers(side: str, scores: dict, n_layers: int, seed: int) -> list[int]:
    """The layers one side of an arm adapts (SPEC 4.5): top-k by S or I, all, k random ones, or none."""
    k = scores["k"]
    if side == "sens":
        return sorted(scores["sens_layers"])
    if side == "rope":
        return sorted(scores["rope_layers"])
    if side == "all":
        return list(range(n_layers))
    if side == "random":
        return sorted(np.random.default_rng(seed).choice(n_layers, size=k, replace=False).tolist())
    return []


# ----------------------------------------------------------------------------------------------------------------
# Data: SFT examples as (token ids, which of them are completion tokens).

def encode_example(tok: Tokenizer, prompt: str, completion: str, seq_len: int,
                   chat: bool) -> tuple[list[int], list[bool]] | None:
    """Prompt and completion as one sequence; the loss sees only completion tokens. None if the prompt fills it.

    With the chat template the split is made on the rendered text, not on token ids: BPE may merge across the
    boundary (a completion that starts with a newline), so the prompt is tokenised exactly as evaluation sees it.
    """
    if chat and tok.chat_template:
        user = [{"role": "user", "content": prompt}]
        head_text = tok.apply_chat_template(user, add_generation_prompt=True)
        full_text = tok.apply_chat_template(user + [{"role": "assistant", "content": completion}],
                                            add_generation_prompt=False)
        if not full_text.startswith(head_text):
            raise ValueError("the chat template renders the prompt differently with and without the answer")
        head, body = tok.encode(head_text, bos=False), tok.encode(full_text[len(head_text):], bos=False)
    else:
        head = tok.encode(prompt)
        body = tok.encode(completion, bos=False) + tok.eos_ids[:1]
    if len(head) >= seq_len - 1:
        return None
    ids = (head + body)[:seq_len]
    return ids, [False] * len(head) + [True] * (len(ids) - len(head))


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, n: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def example_index(seed: int, n: int, position: int) -> int:
    """Which example fills slot `position` of the whole run: a fresh seeded permutation every epoch."""
    epoch, offset = divmod(position, n)
    return int(epoch_order(seed, n, epoch)[offset])


def make_batch(examples, indices, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) tokens and the completion mask; padding is never a target."""
    tokens = right_pad([examples[i][0] for i in indices], pad_id)
    mask = right_pad([examples[i][1] for i in indices], False, torch.bool)
    return tokens.to(device), mask.to(device)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------------------------
# Files: every file of a run directory is written whole or not at all.

def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_checkpoint(path: Path, model, optimizer, step: int) -> None:
    state = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "adapter": state, "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Training (SPEC 4.8): AdamW with a LoRA group and a GARFA group, warmup + cosine, clipping, accumulation.

@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    grad_accum: int
    seq_len: int
    warmup: int
    lr_lora: float
    lr_garfa: float
    weight_decay: float
    clip: float
    seed: int
    checkpoint_every: int


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    trainable = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    lora = [p for n, p in trainable if not n.endswith("log_scale")]
    garfa = [p for n, p in trainable if n.endswith("log_scale")]
    groups = [dict(params=lora, lr=cfg.lr_lora, weight_decay=cfg.weight_decay, name="lora"),
              dict(params=garfa, lr=cfg.lr_garfa, weight_decay=0.0, name="garfa")]
    return [g for g in groups if g["params"]]


def train(model, examples, cfg: TrainConfig, pad_id: int, run_dir: Path, resume: bool) -> list[dict]:
    """Fine-tune the attached adapters; returns the log. Checkpoints to run_dir/checkpoint.pt."""
    device = model.embed_tokens.weight.device
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "train_log.jsonl"
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.999))
    peak = [g["lr"] for g in optimizer.param_groups]  # before a resumed state overwrites them with scheduled rates
    start, log = 0, []
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["adapter"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        if log_path.is_file():  # keep the log consistent with the checkpoint
            log = [json.loads(line) for line in log_path.read_text().splitlines()][:start]
        print(f"resuming from step {start} of {cfg.steps}")
    write_atomic(log_path, "".join(json.dumps(r) + "\n" for r in log))
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", dynamic_ncols=True)
    t0, completed = time.time(), start
    try:
        with log_path.open("a") as log_file:
            for step in bar:
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks are a function of the step
                for g, lr in zip(optimizer.param_groups, peak):
                    g["lr"] = lr * lr_factor(step, cfg.steps, cfg.warmup)
                loss_sum, n_tokens = 0.0, 0
                for micro in range(cfg.grad_accum):
                    first = (step * cfg.grad_accum + micro) * cfg.batch_size
                    idx = [example_index(cfg.seed, len(examples), first + j) for j in range(cfg.batch_size)]
                    tokens, mask = make_batch(examples, idx, pad_id, device)
                    with autocast:
                        nll, count = sequence_nll(model, tokens, mask)
                    # Each micro-batch's mean token loss, averaged over the accumulation steps.
                    (nll.sum() / count.sum().clamp(min=1) / cfg.grad_accum).backward()
                    loss_sum, n_tokens = loss_sum + nll.sum().item(), n_tokens + count.sum().item()
                loss = loss_sum / max(1, n_tokens)
                if not math.isfinite(loss):
                    optimizer.zero_grad(set_to_none=True)
                    raise FloatingPointError(f"loss is {loss} at step {step}; the last good checkpoint "
                                             f"({ckpt_path}) is kept. Lower --lr-lora/--lr-garfa and --resume.")
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip).item()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                completed = step + 1
                record = dict(step=step + 1, loss=round(loss, 5),
                              **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
                              grad_norm=round(grad_norm, 4), tokens=n_tokens, elapsed_s=round(time.time() - t0, 2))
                log.append(record)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                    save_checkpoint(ckpt_path, model, optimizer, step + 1)
    except KeyboardInterrupt:
        save_checkpoint(ckpt_path, model, optimizer, completed)  # parameters change only at whole steps
        raise SystemExit(f"\ninterrupted after step {completed}; checkpoint saved. Continue with the same command "
                         f"plus --resume.")
    finally:
        bar.close()
        model.eval()
    return log


# ----------------------------------------------------------------------------------------------------------------
# Evaluation, the shared baseline, and the paired comparison against it.

def evaluation_settings(args) -> dict:
    """Everything that decides which items are scored and how: base and arms must agree on all of it."""
    path = lambda p: str(p) if p is not None else None
    return dict(benchmarks=args.benchmarks, limit=args.limit, seed=args.seed, shots=args.shots,
                mc_format=args.mc_format, max_new_tokens=args.max_new_tokens, gpqa_csv=path(args.gpqa_csv),
                mgsm_dir=path(args.mgsm_dir))


def run_evaluation(model, tok, args, out_dir: Path) -> dict:
    settings = evaluation_settings(args)
    results = evaluate_model(model, tok, out_dir=out_dir, batch_size=args.eval_batch_size, **settings)
    write_json(out_dir / "eval_results.json", {"settings": settings, "benchmarks": results})
    return results


def baseline_dir(args, model_dir: Path) -> Path:
    """The base model's evaluation, computed once per model and evaluation settings and shared by every arm."""
    key = json.dumps([model_fingerprint(model_dir), evaluation_settings(args)], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return CACHE_DIR / f"base-{model_dir.name}-{digest}"


def ensure_baseline(model, tok, args, model_dir: Path) -> tuple[Path, dict]:
    out = baseline_dir(args, model_dir)
    done = out / "eval_results.json"
    if done.is_file():
        print(f"base evaluation: reusing {out}")
        return out, json.loads(done.read_text())["benchmarks"]
    out.mkdir(parents=True, exist_ok=True)
    print("base evaluation (shared by every arm with these settings)")
    return out, run_evaluation(model, tok, args, out)


def read_predictions(run_dir: Path, benchmark: str) -> dict[str, bool]:
    path = run_dir / "predictions" / f"{benchmark}.jsonl"
    if not path.is_file():
        return {}
    return {str(r["id"]): bool(r["correct"]) for r in map(json.loads, path.read_text().splitlines())}


def paired_tests(dir_a: Path, dir_b: Path, benchmarks) -> dict[str, dict]:
    """Exact McNemar per benchmark on the items both runs scored."""
    out = {}
    for name in benchmarks:
        a, b = read_predictions(dir_a, name), read_predictions(dir_b, name)
        if a and b:
            only_a, only_b, p = mcnemar_exact(a, b)
            out[name] = dict(only_a=only_a, only_b=only_b, p=p, n=len(a.keys() & b.keys()))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reports: JSON for machines, Markdown and PNG for people.

def fmt_score(r: dict | None) -> str:
    if not r or "accuracy" not in r:
        return "not run" if r else "—"
    lo, hi = r["ci95"]
    return f"{100 * r['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"


def write_report(run_dir: Path, results: dict, base: dict, tests: dict, scores: dict, multipliers: dict,
                 log: list[dict], elapsed: float) -> None:
    sp = scores["spearman"]
    lines = [f"# {results['arm']} on {results['model']}", "",
             f"- LoRA layers ({results['arm'].split('-')[0] if results['arm'] != 'base' else 'none'}): "
             f"{results['lora_layers']}",
             f"- GARFA layers: {results['garfa_layers']}",
             f"- Co-localization: Spearman r_s = {sp['r']:.3f}, p = {sp['p']:.2g}, 95% CI "
             f"[{sp['ci95'][0]:.3f}, {sp['ci95'][1]:.3f}] -> {scores.get('verdict', '')}; "
             f"top-{scores['k']} sensitivity {scores['sens_layers']}, RoPE-influence {scores['rope_layers']}",
             (f"- Training: {len(log)} steps, loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f}" if log
              else "- Training: none (evaluation only)"),
             f"- Wall time: {elapsed / 60:.1f} min", "",
             "| benchmark | base (% [95% CI]) | this arm | delta | McNemar exact p (only base / only arm) |",
             "|---|---|---|---|---|"]
    for name, r in results["benchmarks"].items():
        b, t = base.get(name), tests.get(name)
        delta = (f"{100 * (r['accuracy'] - b['accuracy']):+.1f}" if "accuracy" in r and b and "accuracy" in b
                 else "")
        test = f"{t['p']:.3g} ({t['only_a']}/{t['only_b']})" if t else ""
        label = f"{name} ({STAND_INS[name]})" if name in STAND_INS else name
        lines.append(f"| {label} | {fmt_score(b)} | {fmt_score(r)} | {delta} | {test} |")
    not_run = [f"- {name} not run: {r.get('why', 'no data')}" for name, r in results["benchmarks"].items()
               if "accuracy" not in r]
    lines += [""] + not_run if not_run else []
    if multipliers:
        n_kv = len(next(iter(multipliers.values())))
        lines += ["", "GARFA frequency multipliers exp(log_scale), per layer and KV head:", "",
                  "| layer | " + " | ".join(f"kv {g}" for g in range(n_kv)) + " |",
                  "|---|" + "---|" * n_kv]
        lines += [f"| {layer} | " + " | ".join(f"{m:.4f}" for m in ms) + " |" for layer, ms in multipliers.items()]
    write_atomic(run_dir / "report.md", "\n".join(lines) + "\n")


def write_comparison(out_dir: Path, arm_results: dict[str, dict], tests: dict[str, dict]) -> None:
    """comparison.md (arms x benchmarks, paired tests of sens-sens against each arm) and comparison.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [b for b in next(iter(arm_results.values()))["benchmarks"]
               if any("accuracy" in r["benchmarks"].get(b, {}) for r in arm_results.values())]
    lines = ["# Cross-layer ablation", "", "Accuracy % [95% Wilson CI] (n).", "",
             "| arm | LoRA layers | GARFA layers | " + " | ".join(benches) + " |",
             "|---|---|---|" + "---|" * len(benches)]
    for arm, r in arm_results.items():
        lines.append(f"| {arm} | {r['lora_layers']} | {r['garfa_layers']} | "
                     + " | ".join(fmt_score(r["benchmarks"].get(b)) for b in benches) + " |")
    lines += ["", "Exact McNemar tests, sens-sens against each arm (items only sens-sens got right / only the "
              "other arm got right, p):", "", "| arm | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for arm, t in tests.items():
        lines.append(f"| {arm} | " + " | ".join(
            f"{t[b]['only_a']}/{t[b]['only_b']}, p={t[b]['p']:.3g}" if b in t else "" for b in benches) + " |")
    write_atomic(out_dir / "comparison.md", "\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(benches)), 4))
    width = 0.8 / len(arm_results)
    for i, (arm, r) in enumerate(arm_results.items()):
        acc = [100 * r["benchmarks"].get(b, {}).get("accuracy", float("nan")) for b in benches]
        ci = [r["benchmarks"].get(b, {}).get("ci95", [float("nan")] * 2) for b in benches]
        err = [[a - 100 * c[0] for a, c in zip(acc, ci)], [100 * c[1] - a for a, c in zip(acc, ci)]]
        ax.bar(np.arange(len(benches)) + (i - (len(arm_results) - 1) / 2) * width, acc, width, yerr=err,
               capsize=2, label=arm)
    ax.set_xticks(np.arange(len(benches)), benches)
    ax.set_ylabel("accuracy (%) with 95% CI")
    ax.set_title("LS-LoRA x GARFA cross-layer ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_atomic(out_dir / "comparison.png", png.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# One arm, end to end; the ablation; the command line.

RESUME_KEYS = ("arm", "model", "steps", "batch_size", "grad_accum", "seq_len", "warmup", "lr_lora", "lr_garfa",
               "weight_decay", "clip", "seed", "r", "alpha", "dropout", "targets", "benchmarks", "limit", "shots",
               "mc_format", "max_new_tokens")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_config(args, arm: Arm, model_dir: Path) -> dict:
    return {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "arm": arm.name,
            "model": str(model_dir), "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                                  "tokenizers": tokenizers.__version__,
                                                  "safetensors": safetensors.__version__},
            "git_commit": git_commit(), "command": " ".join(sys.argv)}


def claim_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    """A run directory is never overwritten: a new run needs a new --out, an old one continues with --resume."""
    old = run_dir / "config.json"
    if old.is_file():
        if not resume:
            raise SystemExit(f"{run_dir} already holds a run. Continue it with --resume, or pass another --out.")
        previous, config = json.loads(old.read_text()), json.loads(json.dumps(config))  # tuples read back as lists
        changed = [k for k in RESUME_KEYS if previous.get(k) != config.get(k)]
        if changed:
            raise SystemExit(f"--resume: {run_dir} was run with different settings "
                             + ", ".join(f"{k}={previous.get(k)!r} (now {config.get(k)!r})" for k in changed))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(old, config)


def training_examples(tok: Tokenizer, args) -> list[tuple[list[int], list[bool]]]:
    """The SFT mixture, each family in its evaluation format (chat template where evaluation uses it)."""
    items = training_mixture(seed=args.seed)
    encoded = [encode_example(tok, it["prompt"], it["completion"], args.seq_len,
                              uses_chat(tok, it["family"], "auto" if args.chat else "off")) for it in items]
    examples = [e for e in encoded if e is not None]
    print(f"training mixture: {len(examples)} examples ({len(items) - len(examples)} with prompts over "
          f"--seq-len {args.seq_len} dropped)")
    return examples


def load_model(args, model_dir: Path) -> tuple[Transformer, Tokenizer]:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    return Transformer.from_pretrained(model_dir, dtype=dtype, device=args.device), Tokenizer.from_pretrained(model_dir)


def run_arm(arm: Arm, args, model_dir: Path, scores: dict, scores_dir: Path, run_dir: Path,
            claim: bool = True, examples: list | None = None,
            loaded: tuple[Transformer, Tokenizer] | None = None) -> dict:
    """Select, attach, train, evaluate, report: one arm into one run directory (scores and examples shared).

    `loaded` is a model without adapters to use instead of loading one (the one that scored the layers).
    """
    t0 = time.time()
    if args.resume and (run_dir / "results.json").is_file():
        print(f"{arm.name}: already complete in {run_dir}")
        return json.loads((run_dir / "results.json").read_text())
    if claim:
        claim_run_dir(run_dir, run_config(args, arm, model_dir), args.resume)
    if scores_dir != run_dir:
        for name in ("scores.json", "layer_scores.png"):
            write_atomic(run_dir / name, (scores_dir / name).read_bytes())
    model, tok = loaded or load_model(args, model_dir)
    base_dir, base = ensure_baseline(model, tok, args, model_dir)
    n = model.config.n_layers
    lora_layers = resolve_layers(arm.lora, scores, n, args.seed)
    garfa_layers = resolve_layers(arm.garfa, scores, n, args.seed + 1)
    print(f"{arm.name}: LoRA on {lora_layers or 'no layers'}, GARFA on {garfa_layers or 'no layers'}")
    log, multipliers = [], {}
    torch.manual_seed(args.seed)  # LoRA's A initialisation
    if lora_layers or garfa_layers:
        if lora_layers:
            apply_lora(model, lora_layers, r=args.r, alpha=args.alpha, dropout=args.dropout, targets=args.targets)
        if garfa_layers:
            apply_garfa(model, garfa_layers)
        cfg = TrainConfig(args.steps, args.batch_size, args.grad_accum, args.seq_len, args.warmup, args.lr_lora,
                          args.lr_garfa, args.weight_decay, args.clip, args.seed, args.checkpoint_every)
        log = train(model, examples or training_examples(tok, args), cfg, tok.pad_id, run_dir, args.resume)
        save_adapter(model, run_dir / "adapter", base_model_name_or_path=str(model_dir))
        multipliers = garfa_multipliers(model)
        benchmarks = run_evaluation(model, tok, args, run_dir)
    else:  # the base arm is the shared baseline itself
        benchmarks = base
        for path in (base_dir / "predictions").glob("*.jsonl"):
            (run_dir / "predictions").mkdir(exist_ok=True)
            write_atomic(run_dir / "predictions" / path.name, path.read_bytes())
    results = {"arm": arm.name, "model": model_dir.name, "lora_layers": lora_layers, "garfa_layers": garfa_layers,
               "spearman": {"r": scores["spearman"]["r"], "p": scores["spearman"]["p"]}, "benchmarks": benchmarks,
               "garfa_multipliers": multipliers}
    write_json(run_dir / "results.json", results)
    write_report(run_dir, results, base, paired_tests(base_dir, run_dir, benchmarks), scores, multipliers, log,
                 time.time() - t0)
    print(f"{arm.name}: done in {(time.time() - t0) / 60:.1f} min -> {run_dir / 'report.md'}")
    return results


def compute_scores(args, model_dir: Path, out_dir: Path) -> tuple[dict, tuple[Transformer, Tokenizer]]:
    """The layer scores (cached), written into out_dir; also returns the loaded model, still without adapters."""
    model, tok = load_model(args, model_dir)
    scores = load_or_compute_scores(model_dir, model, tok, options_from_args(args), out_dir=out_dir)
    print(summary(scores))
    return scores, (model, tok)


def arm_or_ablation(text: str) -> str:
    return text if text == "ablation" else parse_arm(text).name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", required=True, type=arm_or_ablation,
                   help=f"LORA-GARFA with sides in {{{','.join(SIDES)}}}, 'base', or 'ablation' ({', '.join(PAPER_ARMS)}"
                        " + base)")
    p.add_argument("--model", type=Path, default=None, help=f"HF model directory (default: {DEFAULT_MODEL_DIR.name}, "
                                                             "prepared on first use)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<arm>-<model>)")
    p.add_argument("--preset", choices=PRESETS, default="default", help="sizes below default to this preset")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="model weights (default: bfloat16 on CUDA, float32 on CPU)")
    g = p.add_argument_group("training (SPEC 4.8)")
    for name, kind in (("steps", int), ("batch-size", int), ("grad-accum", int), ("seq-len", int), ("warmup", int),
                       ("checkpoint-every", int)):
        g.add_argument(f"--{name}", type=kind, default=None)
    g.add_argument("--lr-lora", type=float, default=2e-4)
    g.add_argument("--lr-garfa", type=float, default=1e-2)
    g.add_argument("--weight-decay", type=float, default=0.0, help="LoRA group; GARFA never decays")
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--r", type=int, default=16)
    g.add_argument("--alpha", type=float, default=32)
    g.add_argument("--dropout", type=float, default=0.05)
    g.add_argument("--targets", type=lambda s: tuple(s.split(",")), default=DEFAULT_TARGETS)
    g.add_argument("--no-chat", dest="chat", action="store_false",
                   help="never use the chat template (default: where evaluation uses it: math and gsm prompts)")
    e = p.add_argument_group("evaluation (SPEC 4.9)")
    e.add_argument("--benchmarks", type=benchmark_list, default=list(DEFAULT_BENCHMARKS))
    e.add_argument("--limit", type=int, default=None, help="items per benchmark (a fixed seeded subset); 0 = all")
    e.add_argument("--shots", type=int, default=0)
    e.add_argument("--mc-format", choices=MC_FORMATS, default="letter")
    e.add_argument("--max-new-tokens", type=int, default=None)
    e.add_argument("--eval-batch-size", type=int, default=None)
    e.add_argument("--gpqa-csv", type=Path, default=None, help="official GPQA csv (not obtainable offline)")
    e.add_argument("--mgsm-dir", type=Path, default=None, help="official MGSM tsv files, one per language")
    add_score_args(p.add_argument_group("layer scoring (SPEC 4.1-4.4)"))
    return p


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.limit = args.limit or None
    args.dtype = args.dtype or ("bfloat16" if str(args.device).startswith("cuda") else "float32")
    try:
        model_dir = ensure_model(args.model)
    except FileNotFoundError as e:
        parser.error(str(e))
    arms = [parse_arm(a) for a in PAPER_ARMS] + [parse_arm("base")] if args.arm == "ablation" else [parse_arm(args.arm)]
    out = args.out or RUNS_DIR / f"{args.arm}-{model_dir.name}"
    claim_run_dir(out, run_config(args, parse_arm("base") if args.arm == "ablation" else arms[0], model_dir)
                  | {"arm": args.arm}, args.resume)
    scores, loaded = compute_scores(args, model_dir, out)
    if args.arm != "ablation":
        run_arm(arms[0], args, model_dir, scores, out, out, claim=False, loaded=loaded)
        return
    del loaded  # every arm of the ablation starts from a freshly loaded model
    t0 = time.time()
    examples = training_examples(Tokenizer.from_pretrained(model_dir), args)
    results = {arm.name: run_arm(arm, args, model_dir, scores, out, out / arm.name, examples=examples)
               for arm in arms}
    tests = {arm: paired_tests(out / "sens-sens", out / arm, results["sens-sens"]["benchmarks"])
             for arm in results if arm != "sens-sens"}
    write_comparison(out, results, tests)
    print(f"ablation: done in {(time.time() - t0) / 60:.1f} min -> {out / 'comparison.md'}")


if __name__ == "__main__":
    main()
