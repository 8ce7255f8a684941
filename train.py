"""The main job: score the layers, choose them by arm, attach LS-LoRA and GARFA, fine-tune, evaluate, report.

    python train.py --arm sens-sens            # METHOD.md 4.7: LoRA on the sensitivity layers, GARFA on the same
    python train.py --arm ablation             # the paper's 4-way cross-layer ablation plus base
    python train.py --arm ablation --preset cpu-ablation --seeds 0,1,2      # the CPU ablation of the README
    python train.py --arm sens-sens --preset paper --model /path/to/Llama-3.1-8B-Instruct   # one GPU, bf16
    python train.py --arm sens-sens --preset paper --model DIR --plan       # memory and compute plan, then exit
    torchrun --nproc-per-node 8 train.py --arm ablation --preset paper --model DIR   # 8 GPUs, the same results

An arm is LORA-GARFA, each side one of sens, rope, all, random, none. Resume, determinism and atomic files:
data order, dropout and the learning rate are pure functions of (seed, step), and one checkpoint file holds the
adapter tensors, the optimizer and the step, so `--resume` continues to exactly the uninterrupted result.
Under torchrun (dist.py) every arm uses every process: each step's global batch and each benchmark's batches are
dealt out over the ranks, so N processes give the one-process result (and --resume works with any N).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from support import dist
from support import report
from support.cli import Parser, add_model_options, add_options, comma_ints, comma_list, from_args, option, resolve_dtype, run
from data import example_index, training_examples
from evaluate import EvalOptions, baseline_dir, evaluate_model, shared_evaluation
from support.files import (CACHE_DIR, CHECKPOINT, DEFAULT_MODEL_DIR, PREVIOUS_CHECKPOINT, RUNS_DIR, UserError, claim_output,
                   json_line, load_checkpoint, provenance, read_json, read_jsonl, save_checkpoint, write_atomic,
                   write_json)
from garfa import apply_garfa, garfa_multipliers
from lora import DEFAULT_TARGETS, TARGETS, apply_lora, save_adapter, set_dropout_rows, target_name
from model import Transformer, sequence_nll
from support.tokenizer import Tokenizer
from support.batching import right_pad
from prepare import ensure_data, ensure_model
from sensitivity import (ScoreOptions, add_score_args, load_or_compute_scores, model_fingerprint, options_from_args,
                         scores_key)
from support.stats import aggregate_seeds
from support.tasks import CHAT_MODES

SIDES = ("sens", "rope", "all", "random", "none")
PAPER_ARMS = ("sens-sens", "sens-rope", "rope-sens", "rope-rope")

# Sizes per preset: "default" finishes on a 2-core CPU with SmolLM2-135M; "cpu-ablation": 50 steps already move gold
# bits per byte beyond their paired CI on 4 of 5 benchmarks (the README's learning curve) and the 4 arms x 3 seeds fit
# in about an hour on 2 cores; "paper" is the documented recipe for Llama 3.1 8B on one GPU.
PRESETS = {
    "default": dict(steps=40, batch_size=4, grad_accum=1, seq_len=256, warmup=4, checkpoint_every=10, limit=40,
                    max_new_tokens=128, eval_batch_size=16, metrics=("acc", "bpb")),
    "cpu-ablation": dict(steps=50, batch_size=4, grad_accum=1, seq_len=256, warmup=10, checkpoint_every=25,
                         limit=100, max_new_tokens=None, eval_batch_size=16, metrics=("bpb",)),
    "paper": dict(steps=1000, batch_size=4, grad_accum=4, seq_len=1024, warmup=50, checkpoint_every=100, limit=None,
                  max_new_tokens=512, eval_batch_size=32, metrics=("acc", "bpb")),
}


def preset_help(key: str) -> str:
    shown = lambda v: ",".join(v) if isinstance(v, tuple) else "all" if v is None and key == "limit" else v
    return "default by --preset: " + ", ".join(f"{name} {shown(p[key])}" for name, p in PRESETS.items())


@dataclass(frozen=True)
class TrainOptions:
    """METHOD.md 4.8. Sizes left at None take the --preset's value."""
    steps: int | None = option(None, "optimizer steps; " + preset_help("steps"), type=int)
    batch_size: int | None = option(None, "sequences per micro-batch; " + preset_help("batch_size"), type=int)
    grad_accum: int | None = option(None, "micro-batches per step; " + preset_help("grad_accum"), type=int)
    seq_len: int | None = option(None, "tokens per sequence; " + preset_help("seq_len"), type=int)
    warmup: int | None = option(None, "linear warmup steps, then cosine decay; " + preset_help("warmup"), type=int)
    checkpoint_every: int | None = option(None, "steps between checkpoints; " + preset_help("checkpoint_every"),
                                          type=int)
    lr_lora: float = option(2e-4, "LoRA learning rate")
    lr_garfa: float = option(1e-2, "GARFA learning rate (its own AdamW group, no weight decay)")
    weight_decay: float = option(0.0, "LoRA weight decay")
    clip: float = option(1.0, "gradient-norm clipping")
    r: int = option(16, "LoRA rank")
    alpha: float = option(32.0, "LoRA alpha (scaling alpha / r)")
    dropout: float = option(0.05, "LoRA dropout")
    targets: tuple[str, ...] = option(DEFAULT_TARGETS, "LoRA target linears",
                                      type=comma_list(tuple(TARGETS) + tuple(t[:-5] for t in TARGETS)))
    activation_checkpointing: bool = option(False, "recompute each block in backward (less memory, ~30% slower)")

    def sized(self, preset: str) -> "TrainOptions":
        filled = {k: v for k, v in PRESETS[preset].items() if k in {f.name for f in fields(self)}}
        opts = TrainOptions(**{**filled, **{k: v for k, v in asdict(self).items() if v is not None}})
        checks = [(opts.steps >= 1, f"--steps {opts.steps}: give at least 1 (--arm base evaluates without training)"),
                  (opts.batch_size >= 1, f"--batch-size {opts.batch_size}: give at least 1"),
                  (opts.grad_accum >= 1, f"--grad-accum {opts.grad_accum}: give at least 1"),
                  (opts.seq_len >= 16, f"--seq-len {opts.seq_len}: give at least 16 tokens"),
                  (opts.warmup >= 0, f"--warmup {opts.warmup}: give 0 or more"),
                  (opts.checkpoint_every >= 1, f"--checkpoint-every {opts.checkpoint_every}: give at least 1"),
                  (opts.r >= 1, f"--r {opts.r}: the LoRA rank must be at least 1"),
                  (opts.alpha > 0 and opts.lr_lora > 0 and opts.lr_garfa > 0 and opts.clip > 0,
                   "--alpha, --lr-lora, --lr-garfa and --clip must be positive"),
                  (0 <= opts.dropout < 1, f"--dropout {opts.dropout}: give a probability in [0, 1)")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return TrainOptions(**{**asdict(opts), "targets": tuple(target_name(t) for t in opts.targets)})


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
    """The layers one side of an arm adapts (METHOD.md 4.5): top-k by S or I, all, k random ones, or none."""
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
# Training (METHOD.md 4.8): AdamW with a LoRA group and a GARFA group, warmup + cosine, clipping, accumulation.

def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model, opts: TrainOptions) -> list[dict]:
    trainable = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    lora = [p for n, p in trainable if not n.endswith("log_scale")]
    garfa = [p for n, p in trainable if n.endswith("log_scale")]
    groups = [dict(params=lora, lr=opts.lr_lora, weight_decay=opts.weight_decay, name="lora"),
              dict(params=garfa, lr=opts.lr_garfa, weight_decay=0.0, name="garfa")]
    return [g for g in groups if g["params"]]


def train(model, examples, opts: TrainOptions, seed: int, pad_id: int, run_dir: Path, resume: bool,
          previous: bool = False) -> list[dict]:
    """Fine-tune the attached adapters; returns the log. Checkpoints to run_dir/checkpoint.pt.

    Data-parallel under torchrun: each step's global batch (batch_size x grad_accum rows) is dealt out over the
    ranks, each rank's loss is its rows' share of the one-process loss and the gradients are summed (dist.py), so
    N processes take the one-process steps; a row's dropout masks follow from (seed, its slot in the data order).
    """
    device = model.embed_tokens.weight.device
    log_path = run_dir / "train_log.jsonl"
    optimizer = torch.optim.AdamW(param_groups(model, opts), betas=(0.9, 0.999))
    peak = [g["lr"] for g in optimizer.param_groups]  # before a resumed state overwrites them with scheduled rates
    start, log = 0, []
    ckpt = dist.from_main(load_checkpoint(run_dir, "cpu", previous) if resume and dist.is_main() else None)
    if ckpt is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["adapter"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        log = read_jsonl(log_path)[:start] if log_path.is_file() else []  # consistent with the checkpoint
        print(f"resuming from step {start} of {opts.steps}")
    if dist.is_main():
        write_atomic(log_path, "".join(json_line(r) for r in log))
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.activation_checkpointing = opts.activation_checkpointing
    model.train()
    B, per_step = opts.batch_size, opts.batch_size * opts.grad_accum
    mine = dist.shard(range(per_step))  # this rank's slots of every step's global batch
    if dist.world_size() > per_step:
        print(f"{dist.world_size()} processes, {per_step} rows per step: {dist.world_size() - per_step} idle in "
              f"training (raise --batch-size or --grad-accum)")
    bar = tqdm(range(start, opts.steps), initial=start, total=opts.steps, desc="training", dynamic_ncols=True,
               disable=not dist.is_main())
    t0, completed, saved = time.time(), start, start
    try:
        with log_path.open("a") if dist.is_main() else open(os.devnull, "w") as log_file:
            for step in bar:
                for g, lr in zip(optimizer.param_groups, peak):
                    g["lr"] = lr * lr_factor(step, opts.steps, opts.warmup)
                first = step * per_step
                idx = [example_index(seed, len(examples), first + s) for s in range(per_step)]
                # Each micro-batch's mean token loss, averaged over the accumulation steps, written as one weight per
                # row, 1 / (target tokens of its micro-batch x grad_accum), so that a rank can take any rows' share.
                counts = [sum(sum(examples[i][1][1:]) for i in idx[m * B:(m + 1) * B]) for m in range(opts.grad_accum)]
                weight = [1 / (max(1, counts[s // B]) * opts.grad_accum) for s in range(per_step)]
                nll_sum = 0.0
                for rows in (mine[i:i + B] for i in range(0, len(mine), B)):  # at most batch_size rows per pass
                    set_dropout_rows(model, [((seed, first + s), len(examples[idx[s]][0])) for s in rows])
                    tokens = right_pad([examples[idx[s]][0] for s in rows], pad_id).to(device)
                    mask = right_pad([examples[idx[s]][1] for s in rows], False, torch.bool).to(device)
                    with autocast:
                        nll, _ = sequence_nll(model, tokens, mask)  # (rows,)
                    (nll @ torch.tensor([weight[s] for s in rows], device=device)).backward()
                    nll_sum += nll.sum().item()
                dist.sum_gradients(trainable)
                n_tokens = sum(counts)
                loss = dist.sum_value(nll_sum, device) / max(1, n_tokens)
                if not math.isfinite(loss):
                    raise UserError(f"loss is {loss} at step {step}; the last good checkpoint is kept in {run_dir}. "
                                    f"Lower --lr-lora/--lr-garfa and --resume.")
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, opts.clip).item()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                completed = step + 1
                record = dict(step=step + 1, loss=round(loss, 5),
                              **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
                              grad_norm=round(grad_norm, 4), tokens=n_tokens, elapsed_s=round(time.time() - t0, 2))
                log.append(record)
                log_file.write(json_line(record))
                log_file.flush()
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if (step + 1) % opts.checkpoint_every == 0 or step + 1 == opts.steps:
                    saved = step + 1  # set first: a Ctrl-C inside the save must not save the same step twice
                    save_checkpoint(run_dir, model, optimizer, step + 1)
    except KeyboardInterrupt:
        if completed > saved:  # parameters change only at whole steps
            save_checkpoint(run_dir, model, optimizer, completed)
        raise
    finally:
        bar.close()
        set_dropout_rows(model, None)
        model.eval()
    return log


# ----------------------------------------------------------------------------------------------------------------
# One arm (one seed), end to end; seeds; the ablation; the command line.

@dataclass(frozen=True)
class Job:
    """Everything one invocation decided, built once in main."""
    model_dir: Path
    train: TrainOptions
    eval: EvalOptions
    scores: ScoreOptions
    seeds: tuple[int, ...]
    device: str
    dtype: torch.dtype
    chat: str
    eval_batch_size: int
    resume: bool
    restart: bool
    previous: bool
    compile: bool = False


def load_model(job: Job) -> tuple[Transformer, Tokenizer]:
    return (Transformer.from_pretrained(job.model_dir, dtype=job.dtype, device=job.device),
            Tokenizer.from_pretrained(job.model_dir))


def run_seed(arm: Arm, job: Job, seed: int, scores: dict, run_dir: Path, base: tuple[Path, dict],
             examples: list, loaded=None) -> dict:
    """Select, attach, train, evaluate: one arm and one seed into run_dir (scores, examples, baseline shared)."""
    if job.resume and dist.from_main((run_dir / "results.json").is_file()):
        print(f"{arm.name} seed {seed}: already complete in {run_dir}")
        return read_json(run_dir / "results.json")
    if dist.is_main():  # rank 0 writes every file of the run; train() reads the checkpoint on rank 0 only
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT) if job.restart else ():
            (run_dir / name).unlink(missing_ok=True)
    model, tok = loaded or load_model(job)
    n = model.config.n_layers
    lora_layers = resolve_layers(arm.lora, scores, n, seed)
    garfa_layers = resolve_layers(arm.garfa, scores, n, seed + 1)
    print(f"{arm.name} (seed {seed}): LoRA on {lora_layers or 'no layers'}, GARFA on {garfa_layers or 'no layers'}")
    log, multipliers, t0 = [], {}, time.time()
    if lora_layers or garfa_layers:
        torch.manual_seed(seed)  # LoRA's A initialisation
        if lora_layers:
            apply_lora(model, lora_layers, r=job.train.r, alpha=job.train.alpha, dropout=job.train.dropout,
                       targets=job.train.targets)
        if garfa_layers:
            apply_garfa(model, garfa_layers)
        if job.compile:
            from tools.compiled import compile_model

            compile_model(model)
        log = train(model, examples, job.train, seed, tok.pad_id, run_dir, job.resume and not job.restart,
                    job.previous)
        if dist.is_main():
            save_adapter(model, run_dir / "adapter", base_model_name_or_path=str(job.model_dir))
        multipliers = garfa_multipliers(model)
        benchmarks = evaluate_model(model, tok, job.eval, run_dir, job.eval_batch_size)
    else:  # the base arm is the shared baseline itself
        benchmarks = base[1]
        if dist.is_main():
            (run_dir / "predictions").mkdir(exist_ok=True)
            for path in (base[0] / "predictions").glob("*.jsonl"):
                write_atomic(run_dir / "predictions" / path.name, path.read_bytes())
    results = {"arm": arm.name, "model": job.model_dir.name, "seed": seed, "lora_layers": lora_layers,
               "garfa_layers": garfa_layers, "spearman": {k: scores["spearman"][k] for k in ("r", "p")},
               "benchmarks": benchmarks, "garfa_multipliers": multipliers,
               "training": {"steps": len(log), "first_loss": log[0]["loss"] if log else None,
                            "last_loss": log[-1]["loss"] if log else None, "seconds": round(time.time() - t0, 1),
                            **report.loss_ends(log)}}
    if job.compile:  # this process's compilation so far (scoring, the base evaluation and earlier arms included)
        from tools.compiled import compile_seconds

        results["compile_s"] = round(compile_seconds(), 1)
    if dist.is_main():
        write_json(run_dir / "results.json", results)
    return results


def run_arm(arm: Arm, job: Job, scores: dict, arm_dir: Path, base: tuple[Path, dict], examples: list,
            loaded=None, started: float | None = None) -> dict:
    """One arm over every seed: seed-<s>/ per seed when there are several, then the aggregate and the report."""
    t0 = time.time()
    several = len(job.seeds) > 1 and arm.name != "base"
    per_seed = {s: run_seed(arm, job, s, scores, arm_dir / f"seed-{s}" if several else arm_dir, base, examples,
                            loaded if i == 0 else None)
                for i, s in enumerate(job.seeds if arm.name != "base" else job.seeds[:1])}
    results = aggregate_seeds(per_seed) if several else next(iter(per_seed.values()))
    if not dist.is_main():  # rank 0 writes the aggregate and the report
        return results
    seed_dirs = [arm_dir / f"seed-{s}" for s in per_seed] if several else [arm_dir]
    if several:
        write_json(arm_dir / "results.json", results)
        report.write_mean_predictions(arm_dir, seed_dirs, results["benchmarks"])
    tests = report.paired_tests(base[0], arm_dir, results["benchmarks"])
    seconds = sum(r["training"]["seconds"] for r in per_seed.values())  # training + evaluation; kept over --resume
    write_atomic(arm_dir / "report.md", report.arm_report(results, base[1], tests, scores, seconds,
                                                         time.time() - (started or t0)))
    print(f"{arm.name}: done in {(time.time() - t0) / 60:.1f} min -> {arm_dir / 'report.md'}")
    return results


RESUME_KEYS = ("arm", "model", "seeds", "dtype", "chat", "train", "eval", "scores")


def run_config(arm_text: str, job: Job) -> dict:
    return {"arm": arm_text, "model": str(job.model_dir), "seeds": list(job.seeds), "dtype": str(job.dtype),
            "chat": job.chat, "train": asdict(job.train), "eval": asdict(job.eval), "scores": asdict(job.scores),
            "device": job.device, "processes": dist.world_size(), "compile": job.compile, **provenance()}


def arm_or_ablation(text: str) -> str:
    return text if text == "ablation" else parse_arm(text).name


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", required=True, type=arm_or_ablation,
                   help=f"LORA-GARFA with sides in {{{','.join(SIDES)}}}, 'base', or 'ablation' ({', '.join(PAPER_ARMS)}"
                        " + base)")
    add_model_options(p, f"HF model directory (default: {DEFAULT_MODEL_DIR.name}, prepared on first use)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<arm>-<model>)")
    p.add_argument("--preset", choices=PRESETS, default="default", help="run sizes (default: default)")
    p.add_argument("--seed", type=int, default=0, help="LoRA init, dropout, data order, --limit draw (default: 0)")
    p.add_argument("--seeds", type=comma_ints, default=None,
                   help="train each arm once per seed, e.g. 0,1,2 (default: --seed alone)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--restart", action="store_true", help="with --resume: train unfinished arms from step 0")
    p.add_argument("--previous-checkpoint", action="store_true",
                   help="with --resume: continue from checkpoint.prev.pt (when checkpoint.pt is damaged)")
    p.add_argument("--plan", action="store_true", help="print the memory and compute plan from config.json, exit")
    p.add_argument("--chat", choices=CHAT_MODES, default="auto",
                   help="chat template for the families that use it (math, gsm), in scoring, training and "
                        "evaluation alike (default: auto)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="sequences per evaluation batch; " + preset_help("eval_batch_size"))
    add_options(p.add_argument_group("training (METHOD.md 4.8)"), TrainOptions)
    e = p.add_argument_group("evaluation (METHOD.md 6); --limit, --max-new-tokens, --metrics default to the preset")
    add_options(e, EvalOptions, skip=("limit", "max_new_tokens", "metrics", "chat"))
    e.add_argument("--limit", type=int, default=None, help="items per benchmark (0: all); " + preset_help("limit"))
    e.add_argument("--max-new-tokens", type=int, default=None,
                   help="new tokens per answer (None: per family); " + preset_help("max_new_tokens"))
    e.add_argument("--metrics", type=comma_list(("acc", "bpb")), default=None,
                   help="accuracy and/or gold bits per byte; " + preset_help("metrics"))
    add_score_args(p.add_argument_group("layer scoring (METHOD.md 4.1-4.4)"), skip=("seed", "chat"))
    return p


def build_job(args) -> Job:
    """Every option checked and every input file read before any expensive work (and before --out is claimed)."""
    preset = PRESETS[args.preset]
    pick = lambda key: getattr(args, key) if getattr(args, key) is not None else preset[key]
    seeds = args.seeds or (args.seed,)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {','.join(map(str, seeds))}: each seed once")
    if (args.restart or args.previous_checkpoint) and not args.resume:
        raise UserError("--restart and --previous-checkpoint go with --resume")
    eval_opts = from_args(EvalOptions, args, limit=pick("limit"), max_new_tokens=pick("max_new_tokens"),
                          metrics=tuple(pick("metrics")))
    eval_opts.check_user_data()
    eval_batch_size = pick("eval_batch_size")
    if eval_batch_size < 1:
        raise UserError(f"--eval-batch-size {eval_batch_size}: give at least 1")
    if args.compile and not args.plan:
        from tools.compiled import check_toolchain

        check_toolchain(torch.device(args.device))
    if args.plan:  # config.json only
        model_dir = args.model or DEFAULT_MODEL_DIR
    else:
        with dist.main_first():  # rank 0 prepares a missing default model and data; the others then find them
            model_dir = ensure_model(args.model)
            ensure_data(full=True)
    return Job(model_dir=model_dir, train=from_args(TrainOptions, args).sized(args.preset), eval=eval_opts,
               scores=options_from_args(args, seed=args.seed, chat=args.chat), seeds=tuple(seeds),
               device=args.device, dtype=resolve_dtype(args.dtype, args.device), chat=args.chat,
               eval_batch_size=eval_batch_size, resume=args.resume, restart=args.restart,
               previous=args.previous_checkpoint, compile=args.compile)


def print_plan(job: Job, arm_text: str) -> None:
    from tools.plan import run_plan

    arms = [parse_arm(a) for a in PAPER_ARMS] if arm_text == "ablation" else [parse_arm(arm_text)]
    print(run_plan(job, [(a.name, a.lora, a.garfa) for a in arms]))


def main(argv=None) -> None:
    started, args = time.time(), build_parser().parse_args(argv)
    args.device = dist.init(args.device)  # torchrun: this rank's process group and device; else unchanged
    job = build_job(args)
    if args.plan:
        print_plan(job, args.arm)
        return
    arms = [parse_arm(a) for a in PAPER_ARMS] + [parse_arm("base")] if args.arm == "ablation" else [parse_arm(args.arm)]
    out = args.out or RUNS_DIR / f"{args.arm}-{job.model_dir.name}"
    with claim_output(out, run_config(args.arm, job), job.resume, RESUME_KEYS):
        model, tok = load_model(job)
        scores_cached = (CACHE_DIR / f"scores-{scores_key(job.model_dir, model, job.scores)}.json").is_file()
        base_cached = (baseline_dir(model, job.eval, model_fingerprint(job.model_dir)) / "eval_results.json").is_file()
        print(report.phase_line(job, arms, out, scores_cached, base_cached))
        if job.compile:
            from tools.compiled import compile_line, compile_model

            compile_model(model)
        with dist.main_first():  # scored once, by rank 0; the other ranks read its cached result
            scores = load_or_compute_scores(job.model_dir, model, tok, job.scores,
                                            out_dir=out if dist.is_main() else None)
        print(report.scores_summary(scores))
        base = shared_evaluation(model, tok, job.eval, model_fingerprint(job.model_dir), job.eval_batch_size)
        examples = training_examples(tok, args.seed, job.train.seq_len, job.chat)
        if args.arm != "ablation":
            run_arm(arms[0], job, scores, out, base, examples, loaded=(model, tok), started=started)
            if job.compile:
                print(compile_line())
            return
        del model  # every arm of the ablation starts from a freshly loaded model
        t0, results = time.time(), {}
        for arm in arms:  # each arm's directory is a complete run directory of its own
            if dist.is_main():
                (out / arm.name).mkdir(exist_ok=True)
                write_json(out / arm.name / "config.json", run_config(arm.name, job))
                for name in ("scores.json", "layer_scores.png"):
                    write_atomic(out / arm.name / name, (out / name).read_bytes())
            results[arm.name] = run_arm(arm, job, scores, out / arm.name, base, examples)
        if not dist.is_main():  # every arm used every rank; rank 0 writes the comparison
            return
        benchmarks = results["sens-sens"]["benchmarks"]
        tests = {arm: report.paired_tests(out / "sens-sens", out / arm, benchmarks) for arm in results
                 if arm != "sens-sens"}
        vs_base = {arm: report.paired_tests(out / "base", out / arm, benchmarks) for arm in results if arm != "base"}
        report.write_comparison(out, results, tests, vs_base)
        print(f"ablation: done in {(time.time() - t0) / 60:.1f} min -> {out / 'comparison.md'}")
        if job.compile:
            print(compile_line())


if __name__ == "__main__":
    run(main)
