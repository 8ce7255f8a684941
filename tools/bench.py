"""Speed and memory of our model against `transformers` (+ `peft` for LoRA) on the same checkpoint.

Both sides run the default model with the same dtype, device and thread count. Timing sections run the models in
one process, interleaved (ours, HF, ours, HF, ...) after a warm-up: each row is the median of --repeats (default 5)
timed calls per side, shown with the min-max range of those calls, so noise on a shared machine is visible. Each
side's LoRA step runs in its own fresh subprocess so that its peak memory is its own. `--compile` adds our compiled
path (compiled.py) as a third side, timed after its compilation, which is reported separately. Prints a table,
writes bench.json.

    pip install -r requirements-dev.txt   # transformers and peft are the reference, not dependencies of the repo
    python bench.py                       # ~10 minutes on a 2-core CPU; --quick for a smoke run
    python bench.py --compile             # + ours compiled (CPU: several minutes of compilation on top)
    python bench.py --device cuda --dtype bf16 --compile
    python bench.py --shape llama-3.1-8b --dir /tmp/llama8b   # Llama 3.1 8B's real shape, random bf16 weights

Rates: prefill is one forward pass over the prompt (no cache, next-token logits only, as in generation). Decode
times a whole greedy `generate` call (prefill of the prompt included) and divides the new tokens by it; stopping is
disabled on both sides, so each produces exactly `--new-tokens` tokens per prompt. The decode step rate leaves the
prefill out: (new tokens - 1) / (time of the call - time of a 1-token call). Its ceiling at batch 1 is the
weight-streaming bound: one matrix-vector product over every weight matrix a decoding step reads (each nn.Linear,
the tied output layer once), timed alone; a step cannot read its weights faster than that.

`--shape llama-3.1-8b --dir DIR` checks the real shape instead of the default model: it writes (or reuses) a
random-weight checkpoint of Llama 3.1 8B's config in DIR (random_checkpoint.py: 16 GB of bf16 shards laid out like
the hub's), then, for ours and for transformers, each in its own fresh process: the load time, the peak resident
memory above the interpreter's, and the time of one forward of a short prompt (`--prompt-len`, default 16 tokens,
batch 1) on `--device` with bf16 weights (the first forward and a second one). `--memory-limit-gb` caps each
process's private memory (RLIMIT_DATA), so a side that would not fit fails with an error instead of waking the
kernel's OOM killer on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from support.cli import Parser, device_option, run
from tools.compiled import compile_model, compile_seconds
from evaluate import loglikelihoods
from support.files import DEFAULT_MODEL_DIR, ROOT, UserError, write_atomic
from lora import DEFAULT_TARGETS, apply_lora
from model import ModelConfig, Transformer, sequence_nll
from support.generate import generate
from support.batching import right_pad
from prepare import ensure_model
from tools.random_checkpoint import SHAPES, is_complete, write_random_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PREFILL_SHAPES = ((1, 512), (8, 128))  # (batch, tokens)
LORA = dict(r=16, alpha=32, dropout=0.05, lr=2e-4, batch=4, seq_len=256)  # completion = last half of each row
MC = dict(questions=16, prompt_len=150, letters=4)
MATMUL_N = 2048
# Targets: speed ratios ours / transformers (+ peft), the batch-1 decoding step against the
# weight-streaming bound, batched decode against transformers' batch-1 rate, LoRA peak memory ours / peft (a ceiling).
# The compiled rows carry the same targets, except the LoRA step's, which asks more of the compiled path.
TARGETS = {"decode b1 step tok/s (vs bound)": 0.9, "decode b16 tok/s (vs HF b1)": 8.0, "LoRA step (speed-up)": 1.0,
           "LoRA peak RSS (ratio, max)": 0.7, "decode b1 step tok/s (vs bound) compiled": 0.9,
           "decode b16 tok/s (vs HF b1) compiled": 8.0, "LoRA step compiled (speed-up)": 1.25,
           "LoRA peak RSS (ratio, max) compiled": 0.7}


def require_reference():
    """Import transformers and peft, or say how to get them."""
    try:
        import peft
        import transformers
    except ImportError as e:
        sys.exit(f"bench.py compares against transformers and peft ({e.name} is missing): "
                 f"pip install -r requirements-dev.txt")
    return transformers, peft


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions

def prefill_flops(cfg: ModelConfig, batch: int, seq_len: int, logit_positions: int = 1) -> int:
    """Model FLOPs of one forward pass (multiply-add = 2 FLOPs; norms, RoPE and softmax not counted).

    2 * N * tokens for the N non-embedding weights of the layers (every weight is one multiply-add per token)
    + 4 * L * n_heads * head_dim * T(T+1)/2 per sequence for causal attention (q.k and p.v over the keys each
    query sees) + 2 * D * vocab per position whose logits are formed.
    """
    D, hd = cfg.hidden_size, cfg.head_dim
    attn_weights = D * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)  # q, o and k, v
    n_layer_weights = cfg.n_layers * (attn_weights + 3 * D * cfg.intermediate_size)
    attention = 4 * cfg.n_layers * cfg.n_heads * hd * seq_len * (seq_len + 1) // 2
    return batch * (2 * n_layer_weights * seq_len + attention + 2 * D * cfg.vocab_size * logit_positions)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each fn, alternating the sides every round so drift hits both alike."""
    times = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux VmHWM, since ru_maxrss starts from the parent's RSS at fork
    (the kernel carries it across exec), which would charge the parent's loaded models to the child."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux 4.0+), so the peak measured next is that of what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def random_tokens(cfg: ModelConfig, *shape: int, seed: int) -> torch.Tensor:
    return torch.randint(3, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# Loading and the measurements

def load_models(args) -> dict:
    """The sides of the in-process timings: ours, ours compiled (with --compile), transformers."""
    transformers, _ = require_reference()
    models = {"ours": Transformer.from_pretrained(args.model, dtype=args.torch_dtype, device=args.device)}
    if args.compile:
        models["compiled"] = compile_model(Transformer.from_pretrained(args.model, dtype=args.torch_dtype,
                                                                       device=args.device))
    models["hf"] = transformers.LlamaForCausalLM.from_pretrained(args.model, dtype=args.torch_dtype).to(
        args.device).eval()
    return models


def ours(models: dict) -> dict:
    return {name: m for name, m in models.items() if name != "hf"}


@torch.inference_mode()
def matmul_peak(args) -> float:
    """FLOP/s of a large square matmul (2 n^3 FLOPs), median of a few: the ceiling for MFU."""
    a, b = (torch.randn(MATMUL_N, MATMUL_N, dtype=args.torch_dtype, device=args.device) for _ in range(2))
    times = interleaved({"mm": lambda: a @ b}, repeats=max(args.repeats, 5), warmup=2, device=args.device)
    return 2 * MATMUL_N ** 3 / median(times["mm"])


@torch.inference_mode()
def weight_stream_bound(model: Transformer, args) -> list[float]:
    """Seconds of one matrix-vector product over every weight matrix a decoding step reads (each distinct
    nn.Linear weight; a tied output layer is the embedding, read once): the batch-1 decoding step's floor."""
    weights = {m.weight.data_ptr(): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    vectors = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) for w in weights.values()}

    def one_pass():
        for w in weights.values():
            F.linear(vectors[w.shape[1]], w)

    return interleaved({"bound": one_pass}, repeats=max(args.repeats, 5), warmup=2, device=args.device)["bound"]


@torch.inference_mode()
def bench_prefill(models: dict, args, batch: int, seq_len: int) -> dict:
    tokens = random_tokens(models["ours"].config, batch, seq_len, seed=args.seed).to(args.device)
    fns = {name: (lambda m=m: m(tokens, last_only=True)) for name, m in ours(models).items()}
    fns["hf"] = lambda: models["hf"](input_ids=tokens, use_cache=False, logits_to_keep=1)
    return dict(times=interleaved(fns, args.repeats, args.warmup, args.device), units=batch * seq_len,
                flops=prefill_flops(models["ours"].config, batch, seq_len))


def bench_decode(models: dict, args, batch: int) -> dict:
    """Whole generate calls of --new-tokens tokens, and of one token (the prefill alone), interleaved."""
    prompts = random_tokens(models["ours"].config, batch, args.prompt_len, seed=args.seed)

    def call(name, model, n):
        if name == "hf":
            kwargs = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, temperature=None, top_p=None,
                          top_k=None, pad_token_id=model.config.pad_token_id,
                          attention_mask=torch.ones_like(prompts).to(args.device))
            return lambda: model.generate(prompts.to(args.device), **kwargs)
        return lambda: generate(model, prompts.tolist(), max_new_tokens=n, stop_ids=[])

    fns = {}
    for name, model in models.items():
        fns[name], fns[f"{name}@1"] = call(name, model, args.new_tokens), call(name, model, 1)
    return dict(times=interleaved(fns, args.repeats, args.warmup, args.device), units=batch * args.new_tokens,
                batch=batch, new_tokens=args.new_tokens)


@torch.inference_mode()
def bench_mc(models: dict, args) -> dict:
    """Multiple-choice letter scoring: one right-padded forward per batch, log-probs of 4 letters at the last token."""
    cfg, rng = models["ours"].config, random.Random(args.seed)
    lengths = [MC["prompt_len"] + rng.randint(-10, 10) for _ in range(MC["questions"])]
    letters = random_tokens(cfg, MC["letters"], seed=args.seed).tolist()
    requests = [(random_tokens(cfg, n, seed=args.seed + i).tolist(), [[c] for c in letters])
                for i, n in enumerate(lengths)]
    tokens = right_pad([ctx for ctx, _ in requests])  # the same right-padded batch as ours
    tokens, last = tokens.to(args.device), torch.tensor(lengths, device=args.device) - 1

    def hf_scores():  # padding comes after each row's end: causal attention never reads it, no mask needed
        logits = models["hf"](input_ids=tokens, use_cache=False).logits  # (B, T, vocab)
        logp = logits[torch.arange(len(lengths)), last].float().log_softmax(-1)  # (B, vocab)
        return logp[:, letters].tolist()

    fns = {name: (lambda m=m: loglikelihoods(m, requests, batch_size=MC["questions"]))
           for name, m in ours(models).items()}
    fns["hf"] = hf_scores
    return dict(times=interleaved(fns, args.repeats, args.warmup, args.device), units=len(requests))


def lora_step_child(args) -> dict:
    """One side's LoRA training steps in this (fresh) process: seconds per step and peak RSS."""
    torch.manual_seed(args.seed)
    cfg = ModelConfig.from_json(args.model / "config.json")
    B, T = LORA["batch"], LORA["seq_len"]
    tokens = random_tokens(cfg, B, T, seed=args.seed).to(args.device)
    completion = torch.zeros(B, T, dtype=torch.bool, device=args.device)
    completion[:, T // 2:] = True
    if args.lora_child in ("ours", "compiled"):
        model = Transformer.from_pretrained(args.model, dtype=args.torch_dtype, device=args.device)
        apply_lora(model, range(cfg.n_layers), r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"])
        if args.lora_child == "compiled":
            compile_model(model)

        def loss_fn():
            nll, count = sequence_nll(model, tokens, completion)
            return nll.sum() / count.sum()
    else:
        transformers, peft = require_reference()
        hf = transformers.LlamaForCausalLM.from_pretrained(args.model, dtype=args.torch_dtype).to(args.device)
        model = peft.get_peft_model(hf, peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                                        lora_dropout=LORA["dropout"],
                                                        target_modules=list(DEFAULT_TARGETS)))
        labels = tokens.masked_fill(~completion, -100)  # HF's standard path: full-vocabulary logits, -100 = ignored

        def loss_fn():
            return model(input_ids=tokens, labels=labels).loss
    model.train()
    rss_loaded = peak_rss_bytes()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LORA["lr"])

    def step():
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = interleaved({"step": step}, args.lora_repeats, warmup=1, device=args.device)["step"]
    out = dict(times=times, rss_loaded=rss_loaded, rss_peak=peak_rss_bytes(), compile_s=compile_seconds())
    if args.device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def bench_lora(args, sides: list[str]) -> dict:
    """lora_step_child of each side in a fresh interpreter (so each side's peak memory is its own), the sides taking
    turns for --lora-rounds rounds: each side's timed steps are the union of its rounds, its peak the largest."""
    out = {side: dict(times=[], rss_peak=0) for side in sides}
    for _ in range(args.lora_rounds):
        for side in sides:
            cmd = [sys.executable, "-m", "tools.bench", "--lora-child", side, "--model", str(args.model), "--device",
                   str(args.device), "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed),
                   "--lora-repeats", str(args.lora_repeats)]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            o = out[side]
            o["times"] += r["times"]
            o.setdefault("compile_s", r["compile_s"])  # the first round's: later rounds hit inductor's disk cache
            if r["rss_peak"] > o["rss_peak"]:
                o.update(rss_peak=r["rss_peak"], rss_loaded=r["rss_loaded"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# The real shape: load and one forward, each side in a fresh process

def load_child(args) -> dict:
    """Load one side's model in this (fresh) process, then time two forwards of a short prompt."""
    if args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    cfg = ModelConfig.from_json(Path(args.model) / "config.json")
    if args.load_child == "hf":
        transformers, _ = require_reference()
    with torch.device("meta"):  # torch loads its meta-device kernels on first use (~70 MB, once): not the load's
        Transformer(cfg)
    out = dict(rss_base=rss_bytes())
    reset_peak_rss()
    t0 = time.perf_counter()
    try:
        if args.load_child == "ours":
            model = Transformer.from_pretrained(args.model, dtype=args.torch_dtype, device=args.device)
            forward = lambda tokens: model(tokens, last_only=True)
        else:
            model = transformers.LlamaForCausalLM.from_pretrained(args.model, dtype=args.torch_dtype,
                                                                  device_map=str(args.device)).eval()
            forward = lambda tokens: model(input_ids=tokens, use_cache=False, logits_to_keep=1).logits
    except (MemoryError, RuntimeError) as e:  # RLIMIT_DATA reached: report it, the parent goes on
        return dict(out, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", rss_peak=peak_rss_bytes())
    sync(args.device)
    out.update(load_s=time.perf_counter() - t0, rss_peak_load=peak_rss_bytes(), rss_loaded=rss_bytes(),
               param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    tokens = random_tokens(cfg, 1, args.prompt_len, seed=args.seed).to(args.device)
    with torch.inference_mode():
        times = interleaved({"forward": lambda: forward(tokens)}, repeats=2, warmup=0, device=args.device)["forward"]
    out.update(forward_first_s=times[0], forward_s=times[1], rss_peak=peak_rss_bytes())
    return out


def shape_bench(args):
    """Write (or reuse) the random checkpoint of args.shape in args.dir, then measure each side in its own process."""
    transformers, _ = require_reference()
    hf_config = SHAPES[args.shape]
    if is_complete(args.dir, hf_config, torch.bfloat16):
        print(f"reusing {args.dir}", flush=True)
    else:
        t0 = time.perf_counter()
        print(f"writing a random {args.shape} checkpoint (bf16) into {args.dir} ...", flush=True)
        write_random_checkpoint(args.dir, hf_config)
        print(f"written in {time.perf_counter() - t0:.0f} s", flush=True)
    size = sum(f.stat().st_size for f in Path(args.dir).glob("*.safetensors"))
    results = dict(shape=args.shape, checkpoint_bytes=size, settings={k: str(v) for k, v in vars(args).items()},
                   versions=dict(torch=torch.__version__, transformers=transformers.__version__), sides={})
    for side in ("ours", "hf"):
        cmd = [sys.executable, "-m", "tools.bench", "--load-child", side, "--model", str(args.dir), "--device", str(args.device),
               "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed),
               "--prompt-len", str(args.prompt_len)]
        if args.memory_limit_gb:
            cmd += ["--memory-limit-gb", str(args.memory_limit_gb)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        lines = done.stdout.strip().splitlines()
        results["sides"][side] = (json.loads(lines[-1]) if done.returncode == 0 and lines else
                                  dict(error=f"exit code {done.returncode} (killed? out of memory?)"))
        print(f"{side}: {results['sides'][side]}", flush=True)
    print_shape_table(results, args)
    write_json(args.out, results)


def print_shape_table(results: dict, args):
    gib, sides = 2 ** -30, results["sides"]
    print(f"\n{args.shape}, random weights, {results['checkpoint_bytes'] / 1e9:.2f} GB of {args.dtype} shards; "
          f"{args.device}, {args.threads} threads, {args.dtype} weights\n")
    rows = [("load s", "load_s", 1), ("peak RSS during load, above interpreter, GiB", "load_rss", gib),
            ("RSS after load, above interpreter, GiB", "loaded_rss", gib),
            (f"first forward 1x{args.prompt_len} s", "forward_first_s", 1),
            (f"second forward 1x{args.prompt_len} s", "forward_s", 1),
            ("peak RSS incl. forwards, above interpreter, GiB", "peak_rss", gib)]
    derived = {}
    for side, r in sides.items():
        above = {new: r[old] - r["rss_base"] for new, old in
                 (("load_rss", "rss_peak_load"), ("loaded_rss", "rss_loaded"), ("peak_rss", "rss_peak")) if old in r}
        derived[side] = {**r, **above}
    print("| metric | ours | transformers |\n|---|---|---|")
    for label, key, scale in rows:
        cells = [f"{derived[s][key] * scale:.3g}" if key in derived[s] else "n/a" for s in ("ours", "hf")]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    for side in ("ours", "hf"):
        if "error" in sides[side]:
            print(f"{side}: {sides[side]['error']}")


# ----------------------------------------------------------------------------------------------------------------
# Report

def rate(units: float, times: list[float]) -> tuple[float, float, float]:
    """units per second at the median call, and at the slowest and the fastest (the spread)."""
    return units / median(times), units / max(times), units / min(times)


def summarize(results: dict) -> list[dict]:
    """One row per metric: each side's value with its (low, high) range over the repeats, the ratio ours /
    reference (> 1 is better for ours, except peak memory) and the target. A compiled row compares ours compiled with
    transformers eager, the way users run it."""
    rows = []

    def row(metric, values: dict, ratio=None):
        rows.append(dict(metric=metric, values=values, ratio=ratio, target=TARGETS.get(metric)))

    peak, sides = results["matmul_peak_flops"], [s for s in ("ours", "compiled") if s in results["sides"]]
    for side in sides:
        tag = "" if side == "ours" else " compiled"
        for key, r in results["prefill"].items():
            v = {s: rate(r["units"], r["times"][s]) for s in (side, "hf")}
            row(f"prefill {key} tok/s{tag}", v, v[side][0] / v["hf"][0])
            row(f"prefill {key} MFU %{tag}", {s: tuple(x * r["flops"] / r["units"] / peak * 100 for x in v[s])
                                              for s in (side, "hf")})
        for key in ("decode_b1", "decode_b16"):
            d = results[key]
            v = {s: rate(d["units"], d["times"][s]) for s in (side, "hf")}
            row(f"decode b{d['batch']} tok/s{tag}", v, v[side][0] / v["hf"][0])
            steps = {s: d["batch"] * (d["new_tokens"] - 1) / (median(d["times"][s]) - median(d["times"][f"{s}@1"]))
                     for s in (side, "hf")}
            row(f"decode b{d['batch']} step tok/s{tag}", {s: (x,) for s, x in steps.items()},
                steps[side] / steps["hf"])
            if d["batch"] == 1:
                bound = 1 / median(results["weight_stream_s"])
                row(f"decode b1 step tok/s (vs bound){tag}", {side: (steps[side],), "bound": (bound,)},
                    steps[side] / bound)
            else:
                hf1 = rate(results["decode_b1"]["units"], results["decode_b1"]["times"]["hf"])[0]
                row(f"decode b16 tok/s (vs HF b1){tag}", {side: v[side], "hf b1": (hf1,)}, v[side][0] / hf1)
        mc = results["mc"]
        v = {s: rate(mc["units"], mc["times"][s]) for s in (side, "hf")}
        row(f"MC scoring questions/s{tag}", v, v[side][0] / v["hf"][0])
    gb, lora = 2 ** -30, results["lora"]
    for side in [s for s in ("ours", "compiled") if s in lora]:
        tag = "" if side == "ours" else " compiled"
        lo, lh = lora[side], lora["hf"]
        row(f"LoRA step s{tag}", {side: (median(lo["times"]), min(lo["times"]), max(lo["times"])),
                                  "hf": (median(lh["times"]), min(lh["times"]), max(lh["times"]))})
        row(f"LoRA step{tag} (speed-up)", {}, median(lh["times"]) / median(lo["times"]))
        row(f"LoRA peak RSS GiB{tag}", {side: (lo["rss_peak"] * gb,), "hf": (lh["rss_peak"] * gb,)})
        row(f"LoRA peak RSS (ratio, max){tag}", {}, lo["rss_peak"] / lh["rss_peak"])
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table: value [slowest-fastest] per side, the ratio, the target and whether it is met."""
    fmt = lambda v: "" if v is None else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    cell = lambda v: fmt(v[0]) + (f" [{fmt(v[1])}-{fmt(v[2])}]" if len(v) == 3 else "")
    lines = ["| metric | ours | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        ours_side = next((s for s in ("ours", "compiled") if s in r["values"]), None)
        ref = next((s for s in r["values"] if s != ours_side), None)
        target, ratio, cap = r["target"], r["ratio"], "max" in r["metric"]
        ok = "" if target is None else "yes" if (ratio <= target if cap else ratio >= target) else "**no**"
        bound = "" if target is None else f"{'<=' if cap else '>='} {target}"
        ours_cell = cell(r["values"][ours_side]) if ours_side else ""
        ref_cell = f"{cell(r['values'][ref])}{'' if ref == 'hf' else f' ({ref})'}" if ref else ""
        lines.append(f"| {r['metric']} | {ours_cell} | {ref_cell} | {fmt(ratio)} | {bound} | {ok} |")
    return "\n".join(lines)


def is_bench_result(path: Path) -> bool:
    """Whether `path` holds what this tool writes (a JSON object with its settings and sides): the only file
    --out may replace."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("settings"), dict) and "sides" in data


def check_out(path: Path) -> None:
    """--out is claimed like every command's output: a new file, or a bench result this tool wrote before."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file path such as {path / 'bench.json'}")
    if path.exists() and not is_bench_result(path):
        raise UserError(f"--out {path} exists and is not a bench result; give a new file path (it is never "
                        f"overwritten)")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: directory {path.parent} does not exist")


def write_json(path, data: dict):
    check_out(path)  # again: a file may have appeared there while the benchmark ran
    write_atomic(Path(path), json.dumps(data, indent=2))


def main(args):
    transformers, peft = require_reference()
    start = time.perf_counter()
    results = dict(settings={k: str(v) for k, v in vars(args).items()},
                   versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                                 peft=peft.__version__, python=platform.python_version()),
                   threads=torch.get_num_threads(), device_name=platform.processor() or platform.machine())
    if args.device.type == "cuda":
        results["device_name"] = torch.cuda.get_device_name(args.device)
    results["matmul_peak_flops"] = matmul_peak(args)
    print(f"matmul peak ({MATMUL_N}^2, {args.dtype}): {results['matmul_peak_flops'] / 1e9:.1f} GFLOP/s", flush=True)
    models = load_models(args)
    results["sides"] = list(models)
    results["weight_stream_s"] = weight_stream_bound(models["ours"], args)
    print(f"weight-streaming bound: {1 / median(results['weight_stream_s']):.1f} tok/s at batch 1", flush=True)
    results["compile_s"] = {}

    def section(key, fn, *fn_args, **kwargs):  # compilation happens in each section's warm-up: timed apart
        before = compile_seconds()
        out = fn(models, args, *fn_args, **kwargs)
        if args.compile:
            results["compile_s"][key] = compile_seconds() - before
        print(f"{key} done", flush=True)
        return out

    results["prefill"] = {f"{b}x{t}": section(f"prefill {b}x{t}", bench_prefill, b, t) for b, t in PREFILL_SHAPES}
    results["decode_b1"] = section("decode batch 1", bench_decode, batch=1)
    results["decode_b16"] = section("decode batch 16", bench_decode, batch=16)
    results["mc"] = section("multiple-choice scoring", bench_mc)
    models.clear()  # freed before the LoRA processes start
    results["lora"] = bench_lora(args, ["ours", "hf"] + (["compiled"] if args.compile else []))
    if args.compile:
        results["compile_s"]["LoRA step"] = results["lora"]["compiled"]["compile_s"]
    print("LoRA steps done", flush=True)
    results["rows"] = summarize(results)
    results["wall_s"] = time.perf_counter() - start
    print("\n" + format_table(results["rows"]))
    if args.compile:
        print("\ncompilation, seconds (excluded from the rates): "
              + ", ".join(f"{k} {v:.0f}" for k, v in results["compile_s"].items()))
    print(f"\nbench wall time {results['wall_s']:.0f} s; raw timings in {args.out}")
    write_json(args.out, results)


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=str, default=None, help=f"HF model directory (default: {DEFAULT_MODEL_DIR.name})")
    p.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights and activations (default fp32; bf16 with --shape)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for both sides")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side, interleaved (median and range)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (compilation happens here)")
    p.add_argument("--lora-repeats", type=int, default=3,
                   help="timed LoRA steps per side and round, after one warm-up step")
    p.add_argument("--lora-rounds", type=int, default=2,
                   help="fresh processes per side, the sides taking turns (default 2: 6 timed steps per side)")
    p.add_argument("--compile", action="store_true", help="add our compiled path (compiled.py) as a third side")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 128; 16 with --shape)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one timed run each, short decode: a smoke test")
    p.add_argument("--out", default=None, help="results JSON (default bench.json; bench-SHAPE.json with --shape)")
    p.add_argument("--shape", choices=SHAPES, default=None,
                   help="instead of the default model: write (or reuse) a random bf16 checkpoint of this real shape "
                        "in --dir, then load time, peak RSS and one forward of a short prompt, ours vs transformers, "
                        "each side in its own process (CPU: bf16 weights)")
    p.add_argument("--dir", type=Path, default=None, help="with --shape: where the checkpoint is written (16 GB)")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="with --shape: cap each side's private memory (RLIMIT_DATA); beyond it the side reports an "
                        "error instead of waking the OOM killer")
    p.add_argument("--lora-child", choices=("ours", "compiled", "hf"),
                   help=argparse.SUPPRESS)  # internal: one side's LoRA step
    p.add_argument("--load-child", choices=("ours", "hf"), help=argparse.SUPPRESS)  # internal: one side's load
    args = p.parse_args(argv)
    if args.shape and args.dir is None:
        p.error("--shape needs --dir (where the random checkpoint is written or reused)")
    for name in ("repeats", "lora_repeats", "lora_rounds", "new_tokens"):
        if getattr(args, name) < 1 + (name == "new_tokens"):  # a decoding-step rate needs 2 tokens or more
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least {1 + (name == 'new_tokens')}")
    if args.warmup < 0:
        p.error(f"--warmup {args.warmup}: give 0 or more")
    if args.threads < 1:
        p.error(f"--threads {args.threads}: give at least 1 (this machine has {os.cpu_count()} cores)")
    real_shape = args.shape or args.load_child
    args.dtype = args.dtype or ("bf16" if real_shape else "fp32")
    args.prompt_len = args.prompt_len or (16 if real_shape else 128)
    args.out = args.out or (f"bench-{args.shape}.json" if args.shape else "bench.json")
    if args.quick:
        args.repeats, args.lora_repeats, args.lora_rounds, args.new_tokens = 1, 1, 1, 16
    args.torch_dtype, args.device = DTYPES[args.dtype], torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


def cli(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.load_child:
        print(json.dumps(load_child(args)))
        return
    if not args.lora_child:
        check_out(args.out)  # before any model is loaded or anything is timed
    if args.shape:
        shape_bench(args)
        return
    args.model = ensure_model(args.model)
    if args.lora_child:
        print(json.dumps(lora_step_child(args)))
    else:
        main(args)


if __name__ == "__main__":
    run(cli)
