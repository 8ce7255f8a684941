"""The main job: score the layers, choose them by arm, attach LS-LoRA and GARFA, fine-tune, evaluate, report.

    python train.py --arm sens-sens            # METHOD.md 4.7: LoRA on the sensitivity layers, GARFA on the same
    python train.py --arm ablation --controls --sens-dist l2 --preset cpu-ablation --seeds 0,1,2   # the README's
    python train.py --arm sens-sens --preset paper --model /path/to/Llama-3.1-8B-Instruct [--plan]   # one GPU, bf16
    torchrun --nproc-per-node 8 train.py --arm ablation --preset paper --model DIR   # 8 GPUs, the same results

Data order, dropout and the learning rate are pure functions of (seed, step) and one checkpoint holds the adapters,
the optimizer and the step, so `--resume` continues to exactly the uninterrupted result, arm by arm and seed by seed.
Under torchrun (dist.py) each step's global batch and each benchmark's batches are dealt out over the ranks.
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

from support import ablation_report, dist, report
from support.batching import right_pad
from support.cli import Parser, add_model_options, add_options, comma_ints, comma_list, from_args, option, resolve_dtype, run
from support.files import (CACHE_DIR, CHECKPOINT, DEFAULT_MODEL_DIR, PREVIOUS_CHECKPOINT, RUNS_DIR, UserError,
                           claim_output, json_line, load_checkpoint, model_fingerprint, read_json, read_jsonl,
                           save_checkpoint, write_atomic, write_json)
from support.runs import RESUME_KEYS, Job, run_config, stable_layer_sets
from support.tasks import CHAT_MODES
from support.tokenizer import Tokenizer
from data import example_index, training_examples
from evaluate import METRICS, EvalOptions, baseline_dir, evaluate_model, shared_evaluation
from garfa import apply_garfa, garfa_multipliers
from lora import DEFAULT_TARGETS, TARGETS, apply_lora, save_adapter, set_dropout_rows, target_name
from model import Transformer, sequence_nll
from prepare import ensure_data, ensure_model
from sensitivity import add_score_args, load_or_compute_scores, options_from_args, scores_key

SIDES = ("sens", "rope", "all", "random", "late", "early", "none")
PAPER_ARMS = ("sens-sens", "sens-rope", "rope-sens", "rope-rope")
CONTROL_ARMS = ("sens-none", "none-sens", "random-random", "late-late")  # LoRA alone, GARFA alone, placement, depth

# Sizes per preset: "default" finishes on a 2-core CPU with SmolLM2-135M; "cpu-ablation" runs the paper arms and the
# controls x 3 seeds on 2 cores within two hours (steps from the held-out learning curve, METHOD.md 4.8); "paper" is
# the documented recipe for Llama 3.1 8B on one GPU. heldout: training-mixture examples never trained on.
PRESETS = {
    "default": dict(steps=40, batch_size=4, grad_accum=1, seq_len=256, warmup=4, checkpoint_every=10, heldout=16,
                    heldout_every=10, limit=40, max_new_tokens=128, eval_batch_size=16, metrics=("acc", "bpb")),
    "cpu-ablation": dict(steps=50, batch_size=4, grad_accum=1, seq_len=256, warmup=5, checkpoint_every=25,
                         heldout=32, heldout_every=25, limit=50, max_new_tokens=None, eval_batch_size=16,
                         metrics=("bpb", "mc")),
    "paper": dict(steps=1000, batch_size=4, grad_accum=4, seq_len=1024, warmup=50, checkpoint_every=100, heldout=128,
                  heldout_every=50, limit=None, max_new_tokens=512, eval_batch_size=32, metrics=("acc", "bpb", "mc")),
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
    checkpoint_every: int | None = option(None, "steps per checkpoint; " + preset_help("checkpoint_every"), type=int)
    heldout: int | None = option(None, "examples never trained on, for the curve; " + preset_help("heldout"), type=int)
    heldout_every: int | None = option(None, "steps between held-out losses; " + preset_help("heldout_every"), type=int)
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
                  *((getattr(opts, k) >= 1, f"--{k.replace('_', '-')} {getattr(opts, k)}: give at least 1")
                    for k in ("batch_size", "grad_accum", "checkpoint_every", "heldout_every", "r")),
                  (opts.seq_len >= 16, f"--seq-len {opts.seq_len}: give at least 16 tokens"),
                  *((getattr(opts, k) >= 0, f"--{k} {getattr(opts, k)}: give 0 or more")
                    for k in ("warmup", "heldout")),
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
    """The layers one side of an arm adapts (METHOD.md 4.7): top-k by S or I, all, the last or first k by index,
    k random ones (one draw per seed, shared by both sides of random-random), or none."""
    k = scores["k"]
    sets = {"sens": lambda: sorted(scores["sens_layers"]), "rope": lambda: sorted(scores["rope_layers"]),
            "all": lambda: list(range(n_layers)), "late": lambda: list(range(n_layers - k, n_layers)),
            "early": lambda: list(range(k)), "none": lambda: [],
            "random": lambda: sorted(np.random.default_rng(seed).choice(n_layers, size=k, replace=False).tolist())}
    return sets[side]()


def duplicate_arms(arms: list[Arm], scores: dict, n_layers: int) -> dict[str, str]:
    """Arm -> the earlier arm that adapts exactly its layers (trained once; random sides differ per seed)."""
    seen, same = {}, {}
    for arm in (a for a in arms if "random" not in (a.lora, a.garfa)):
        key = tuple(tuple(resolve_layers(side, scores, n_layers, 0)) for side in (arm.lora, arm.garfa))
        if seen.setdefault(key, arm.name) != arm.name:
            same[arm.name] = seen[key]
    return same


def layer_reducers(influence: str) -> dict:
    """S_l and I_l from per-pair arrays (..., pairs, layers[, kv]) -> (..., layers): the mean distance over pairs
    (4.2); the norm of the mean gradient, or |mean finite difference| (4.3). stable_layer_sets resamples the pairs."""
    return {"sensitivity": lambda x: x.mean(axis=-2),
            "influence": (lambda x: np.linalg.norm(x.mean(axis=-3), axis=-1)) if influence == "grad"
            else (lambda x: np.abs(x.mean(axis=-2)))}


# ----------------------------------------------------------------------------------------------------------------
# Training (METHOD.md 4.8): AdamW with a LoRA group and a GARFA group, warmup + cosine, clipping, accumulation.

def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def param_groups(model, opts: TrainOptions) -> list[dict]:
    trainable = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    groups = [dict(params=[p for n, p in trainable if not n.endswith("log_scale")], lr=opts.lr_lora,
                   weight_decay=opts.weight_decay, name="lora"),
              dict(params=[p for n, p in trainable if n.endswith("log_scale")], lr=opts.lr_garfa, weight_decay=0.0,
                   name="garfa")]
    return [g for g in groups if g["params"]]


def global_batch(examples, seed: int, step: int, opts: TrainOptions, pad_id: int, device):
    """This rank's micro-batches of step `step` -> ([(tokens, mask, row weights, dropout rows)], target tokens).
    Each micro-batch's mean token loss, averaged over accumulation, is one weight per row, 1 / (its micro-batch's
    target tokens x grad_accum), so a rank can take any rows' share; dropout follows (seed, the row's slot)."""
    B, per_step = opts.batch_size, opts.batch_size * opts.grad_accum
    first = step * per_step  # the step's first slot in the data order
    idx = [example_index(seed, len(examples), first + s) for s in range(per_step)]
    counts = [sum(sum(examples[i][1][1:]) for i in idx[m * B:(m + 1) * B]) for m in range(opts.grad_accum)]
    weight = [1 / (max(1, counts[s // B]) * opts.grad_accum) for s in range(per_step)]
    mine = dist.shard(range(per_step))
    micro = []
    for rows in (mine[i:i + B] for i in range(0, len(mine), B)):  # at most batch_size rows per pass
        micro.append((right_pad([examples[idx[s]][0] for s in rows], pad_id).to(device),
                      right_pad([examples[idx[s]][1] for s in rows], False, torch.bool).to(device),
                      torch.tensor([weight[s] for s in rows], device=device),
                      [((seed, first + s), len(examples[idx[s]][0])) for s in rows]))
    return micro, sum(counts)


def train_step(model, optimizer, micro_batches, n_tokens: int, clip: float) -> tuple[float, float]:
    """One AdamW step (METHOD.md 4.8) on one global batch -> (mean token loss, gradient norm before clipping); a
    non-finite loss returns before the step, so the parameters stay those of the last good step."""
    device = model.embed_tokens.weight.device
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    nll_sum = 0.0
    for tokens, mask, weight, dropout_rows in micro_batches:  # gradient accumulation
        set_dropout_rows(model, dropout_rows)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            nll, _ = sequence_nll(model, tokens, mask)  # (rows,)
        (nll @ weight).backward()
        nll_sum += nll.sum().item()
    dist.sum_gradients(trainable)
    loss = dist.sum_value(nll_sum, device) / max(1, n_tokens)
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return loss, float("nan")
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, clip).item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


@torch.no_grad()
def heldout_loss(model, heldout, pad_id: int, batch_size: int) -> float:
    """Mean target-token loss on the held-out slice of the training mixture (never trained on), dropout off."""
    device, total, count = model.embed_tokens.weight.device, 0.0, 0
    model.eval()
    mine = dist.shard(heldout)
    for rows in (mine[i:i + batch_size] for i in range(0, len(mine), batch_size)):
        nll, n = sequence_nll(model, right_pad([r[0] for r in rows], pad_id).to(device),
                              right_pad([r[1] for r in rows], False, torch.bool).to(device))
        total, count = total + nll.sum().item(), count + int(n.sum().item())
    model.train()
    return dist.sum_value(total, device) / max(1, dist.sum_value(count, device))


def train(model, examples, opts: TrainOptions, seed: int, pad_id: int, run_dir: Path, resume: bool,
          previous: bool = False, heldout=()) -> list[dict]:
    """Fine-tune the attached adapters; returns the log (train_log.jsonl), the held-out loss every
    opts.heldout_every steps in it. Resume, the log file, torchrun and Ctrl-C live here; the step in train_step."""
    log_path = run_dir / "train_log.jsonl"
    optimizer = torch.optim.AdamW(param_groups(model, opts), betas=(0.9, 0.999))
    peak = [g["lr"] for g in optimizer.param_groups]  # before a resumed state overwrites them with scheduled rates
    start, log = 0, []
    ckpt = dist.from_main(load_checkpoint(run_dir, "cpu", previous) if resume and dist.is_main() else None)
    if ckpt is not None:
        model.load_state_dict(ckpt["adapter"], strict=False)  # the adapter tensors only
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        log = read_jsonl(log_path)[:start] if log_path.is_file() else []  # consistent with the checkpoint
        print(f"resuming from step {start} of {opts.steps}")
    if dist.is_main():
        write_atomic(log_path, "".join(json_line(r) for r in log))
    device = model.embed_tokens.weight.device
    model.activation_checkpointing = opts.activation_checkpointing
    model.train()
    if dist.world_size() > opts.batch_size * opts.grad_accum:  # a rank without rows would still sum gradients
        print(f"{dist.world_size()} processes: some idle in training (raise --batch-size or --grad-accum)")
    before = heldout_loss(model, heldout, pad_id, opts.batch_size) if heldout and start == 0 else None  # step 0
    bar = tqdm(range(start, opts.steps), initial=start, total=opts.steps, desc="training", dynamic_ncols=True,
               disable=not dist.is_main())
    t0, completed, saved = time.time(), start, start
    try:
        with log_path.open("a") if dist.is_main() else open(os.devnull, "w") as log_file:
            for step in bar:
                for g, lr in zip(optimizer.param_groups, peak):
                    g["lr"] = lr * lr_factor(step, opts.steps, opts.warmup)
                micro_batches, n_tokens = global_batch(examples, seed, step, opts, pad_id, device)
                loss, grad_norm = train_step(model, optimizer, micro_batches, n_tokens, opts.clip)
                if not math.isfinite(loss):
                    raise UserError(f"loss is {loss} at step {step}; the last good checkpoint is kept in {run_dir}, "
                                    f"but --resume keeps this run's settings: start a new run (another --out) with a "
                                    f"lower --lr-lora/--lr-garfa")
                completed = step + 1
                record = dict(step=step + 1, loss=round(loss, 5),
                              **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
                              grad_norm=round(grad_norm, 4), tokens=n_tokens, elapsed_s=round(time.time() - t0, 2),
                              **({"heldout_loss_start": round(before, 5)} if step == 0 and before is not None else {}))
                if heldout and ((step + 1) % opts.heldout_every == 0 or step + 1 == opts.steps):
                    record["heldout_loss"] = round(heldout_loss(model, heldout, pad_id, opts.batch_size), 5)
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

def load_model(job: Job) -> tuple[Transformer, Tokenizer]:
    return (Transformer.from_pretrained(job.model_dir, dtype=job.dtype, device=job.device),
            Tokenizer.from_pretrained(job.model_dir))


def run_seed(arm: Arm, job: Job, seed: int, scores: dict, run_dir: Path, base: tuple[Path, dict], data: tuple,
             loaded=None) -> dict:
    """Select, attach, train, evaluate: one arm and one seed into run_dir (scores, data, baseline shared)."""
    if job.resume and dist.from_main((run_dir / "results.json").is_file()):
        print(f"{arm.name} seed {seed}: already complete in {run_dir}")
        return read_json(run_dir / "results.json")
    if dist.is_main():  # rank 0 writes every file of the run; train() reads the checkpoint on rank 0 only
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT) if job.restart else ():
            (run_dir / name).unlink(missing_ok=True)
    model, tok = loaded or load_model(job)
    lora_layers, garfa_layers = (resolve_layers(s, scores, model.config.n_layers, seed) for s in (arm.lora, arm.garfa))
    print(f"{arm.name} (seed {seed}): LoRA on {lora_layers or 'no layers'}, GARFA on {garfa_layers or 'no layers'}")
    log, t0 = [], time.time()
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
        log = train(model, data[0], job.train, seed, tok.pad_id, run_dir, job.resume and not job.restart,
                    job.previous, heldout=data[1])
        if dist.is_main():
            save_adapter(model, run_dir / "adapter", base_model_name_or_path=str(job.model_dir))
        benchmarks = evaluate_model(model, tok, job.eval, run_dir, job.eval_batch_size)
    else:  # the base arm is the shared baseline itself
        benchmarks = ablation_report.copy_predictions(base, run_dir)
    results = {"arm": arm.name, "model": job.model_dir.name, "seed": seed, "lora_layers": lora_layers,
               "garfa_layers": garfa_layers, "spearman": {k: scores["spearman"][k] for k in ("r", "p")},
               "benchmarks": benchmarks, "garfa_multipliers": garfa_multipliers(model),
               "lora_update_norms": ablation_report.lora_update_norms(model),
               "training": {"steps": len(log), "first_loss": log[0]["loss"] if log else None,
                            "last_loss": log[-1]["loss"] if log else None, "seconds": round(time.time() - t0, 1),
                            "heldout_curve": ablation_report.heldout_curve(log), **report.loss_ends(log)}}
    if job.compile:  # this process's compilation so far (scoring, the base evaluation and earlier arms included)
        from tools.compiled import compile_seconds

        results["compile_s"] = round(compile_seconds(), 1)
    if dist.is_main():
        write_json(run_dir / "results.json", results)
    return results


def run_arm(arm: Arm, job: Job, scores: dict, arm_dir: Path, base: tuple[Path, dict], data: tuple,
            loaded=None, started: float | None = None) -> dict:
    """One arm over every seed: seed-<s>/ per seed when there are several, then the aggregate and the report."""
    t0, several = time.time(), len(job.seeds) > 1 and arm.name != "base"
    seed_dirs = {s: arm_dir / f"seed-{s}" if several else arm_dir for s in job.seeds[:None if several else 1]}
    finished = job.resume and all((d / "results.json").is_file() for d in seed_dirs.values())  # nothing to run
    per_seed = {s: run_seed(arm, job, s, scores, d, base, data, loaded if i == 0 else None)
                for i, (s, d) in enumerate(seed_dirs.items())}
    seconds = sum(r["training"]["seconds"] for r in per_seed.values())  # training + evaluation; kept over --resume
    results = ablation_report.finish_arm(arm_dir, per_seed, list(seed_dirs.values()), several, base, scores, seconds,
                                         time.time() - (started or t0), rewrite=not finished)
    print(f"{arm.name}: done in {(time.time() - t0) / 60:.1f} min -> {arm_dir / 'report.md'}")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", required=True, type=lambda t: t if t == "ablation" else parse_arm(t).name,
                   help=f"LORA-GARFA, sides in {{{','.join(SIDES)}}}; base; ablation ({', '.join(PAPER_ARMS)}, base)")
    p.add_argument("--controls", action="store_true", help=f"with --arm ablation: also {', '.join(CONTROL_ARMS)}")
    p.add_argument("--layer-sets", choices=("stable", "single"), default=None, help="top-k by frequency over "
                   "calibration draws and resamples, or from one draw (default: stable for the ablation, else single)")
    add_model_options(p, f"HF model directory (default: {DEFAULT_MODEL_DIR.name}, prepared on first use)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<arm>-<model>)")
    p.add_argument("--preset", choices=PRESETS, default="default", help="run sizes (default: default)")
    p.add_argument("--seed", type=int, default=0, help="LoRA init, dropout, data order, --limit draw (default: 0)")
    p.add_argument("--seeds", type=comma_ints, default=None, help="train each arm once per seed, e.g. 0,1,2")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--restart", action="store_true", help="with --resume: train unfinished arms from step 0")
    p.add_argument("--previous-checkpoint", action="store_true", help="with --resume: from checkpoint.prev.pt")
    p.add_argument("--plan", action="store_true", help="print the memory and compute plan from config.json, exit")
    p.add_argument("--chat", choices=CHAT_MODES, default="auto", help="chat template for math and gsm, in scoring, "
                   "training and evaluation alike (default: auto)")
    add_options(p.add_argument_group("training (METHOD.md 4.8)"), TrainOptions)
    e = p.add_argument_group("evaluation (METHOD.md 6); sizes default to the preset; --metrics mc: multiple-choice "
                             "log-loss and cloze accuracy")
    add_options(e, EvalOptions, skip=("limit", "max_new_tokens", "metrics", "chat"))
    for flag, kind, what in (("--limit", int, "items per benchmark"), ("--eval-batch-size", int, "sequences "
                             "per evaluation batch"), ("--max-new-tokens", int, "new tokens per answer (None: per "
                             "family)"), ("--metrics", comma_list(METRICS), "acc, bpb and/or mc")):
        e.add_argument(flag, type=kind, default=None, help=f"{what}; " + preset_help(flag[2:].replace("-", "_")))
    add_score_args(p.add_argument_group("layer scoring (METHOD.md 4.1-4.4)"), skip=("seed", "chat"))
    return p


def build_job(args) -> Job:
    """Every option checked and every input file read before any expensive work (and before --out is claimed)."""
    pick = lambda key: getattr(args, key) if getattr(args, key) is not None else PRESETS[args.preset][key]
    seeds = args.seeds or (args.seed,)
    checks = [(len(set(seeds)) == len(seeds), f"--seeds {','.join(map(str, seeds))}: each seed once"),
              (args.resume or not (args.restart or args.previous_checkpoint),
               "--restart and --previous-checkpoint go with --resume"),
              (args.arm == "ablation" or not args.controls, "--controls adds the control arms to --arm ablation; "
               "name one control arm with --arm instead"),
              (pick("eval_batch_size") >= 1, f"--eval-batch-size {pick('eval_batch_size')}: give at least 1")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    eval_opts = from_args(EvalOptions, args, limit=pick("limit"), max_new_tokens=pick("max_new_tokens"),
                          metrics=tuple(pick("metrics")))
    eval_opts.check_user_data()
    if args.compile and not args.plan:
        from tools.compiled import check_toolchain

        check_toolchain(torch.device(args.device))
    model_dir = args.model or DEFAULT_MODEL_DIR  # --plan reads config.json only
    if not args.plan:
        with dist.main_first():  # rank 0 prepares a missing default model and data; the others then find them
            model_dir = ensure_model(args.model)
            ensure_data(full=True)
    return Job(model_dir=model_dir, train=from_args(TrainOptions, args).sized(args.preset), eval=eval_opts,
               scores=options_from_args(args, seed=args.seed, chat=args.chat), seeds=tuple(seeds),
               device=args.device, dtype=resolve_dtype(args.dtype, args.device), chat=args.chat,
               eval_batch_size=pick("eval_batch_size"), resume=args.resume, restart=args.restart,
               previous=args.previous_checkpoint, compile=args.compile, controls=args.controls,
               layer_sets=args.layer_sets or ("stable" if args.arm == "ablation" else "single"))


def main(argv=None) -> None:
    started, args = time.time(), build_parser().parse_args(argv)
    args.device = dist.init(args.device)  # torchrun: this rank's process group and device; else unchanged
    job = build_job(args)
    ablation = PAPER_ARMS + (CONTROL_ARMS if job.controls else ()) + ("base",)
    arms = [parse_arm(a) for a in (ablation if args.arm == "ablation" else [args.arm])]
    if args.plan:
        from tools.plan import run_plan

        return print(run_plan(job, [(a.name, a.lora, a.garfa) for a in arms if a.name != "base"]))
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
            if job.layer_sets == "stable":  # top-k by frequency over calibration draws and resamples (4.7)
                scores |= stable_layer_sets(job.scores, lambda o: load_or_compute_scores(job.model_dir, model, tok, o),
                                            layer_reducers(job.scores.influence))
        print(report.scores_summary(scores))
        base = shared_evaluation(model, tok, job.eval, model_fingerprint(job.model_dir), job.eval_batch_size)
        examples = training_examples(tok, args.seed, job.train.seq_len, job.chat)
        if not job.train.heldout < len(examples):
            raise UserError(f"--heldout {job.train.heldout}: the mixture has {len(examples)} examples; give fewer")
        data = examples[:len(examples) - job.train.heldout], examples[len(examples) - job.train.heldout:]
        if args.arm != "ablation":
            run_arm(arms[0], job, scores, out, base, data, loaded=(model, tok), started=started)
        else:  # every arm in out/<arm>/, each from a freshly loaded model; an arm adapting an earlier arm's layers
            same = duplicate_arms(arms, scores, model.config.n_layers)  # is reported as equal to it, not trained
            print("".join(f"{a} adapts the layers of {b}: reported as equal, not trained; " for a, b in same.items())
                  + f"{(len(arms) - 1 - len(same)) * len(job.seeds)} training run(s) of {job.train.steps} steps")
            del model
            results = {}
            for arm in (a for a in arms if a.name not in same):
                ablation_report.prepare_arm_dir(out, arm.name, run_config(arm.name, job))
                results[arm.name] = run_arm(arm, job, scores, out / arm.name, base, data)
            if dist.is_main():  # every arm used every rank; rank 0 writes the comparison
                ablation_report.write_ablation(out, results, same, scores, job.seeds)
            print(f"ablation: done in {(time.time() - started) / 60:.1f} min -> {out / 'ablation.md'}")
        if job.compile:
            print(compile_line())


if __name__ == "__main__":
    run(main)
