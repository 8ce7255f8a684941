"""Speed and memory of our model against `transformers` (+ `peft` for LoRA) on the same checkpoint.

Both sides run the default model with the same dtype, device and thread count. Timing sections run the two models
in one process, interleaved (ours, HF, ours, HF, ...) after a warm-up, and report medians; each side's LoRA step
runs in its own fresh subprocess so that its peak memory is its own. Prints a table, writes bench.json.

    pip install -r requirements-dev.txt   # transformers and peft are the reference, not dependencies of the repo
    python bench.py                       # ~10 minutes on a 2-core CPU; --quick for a smoke run
    python bench.py --device cuda --dtype bf16
    python bench.py --shape llama-3.1-8b --dir /tmp/llama8b   # Llama 3.1 8B's real shape, random bf16 weights

Rates: prefill is one forward pass over the prompt (no cache, next-token logits only, as in generation). Decode
times a whole greedy `generate` call (prefill of the prompt included) and divides the new tokens by it; stopping is
disabled on both sides, so each produces exactly `--new-tokens` tokens per prompt.

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

from evaluate import loglikelihoods
from files import DEFAULT_MODEL_DIR, ROOT, write_atomic
from lora import DEFAULT_TARGETS, apply_lora
from model import ModelConfig, Transformer, generate, right_pad, sequence_nll
from prepare import ensure_model
from random_checkpoint import SHAPES, is_complete, write_random_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PREFILL_SHAPES = ((1, 512), (8, 128))  # (batch, tokens)
LORA = dict(r=16, alpha=32, dropout=0.05, lr=2e-4, batch=4, seq_len=256)  # completion = last half of each row
MC = dict(questions=16, prompt_len=150, letters=4)
MATMUL_N = 2048
# Issue targets: ours / transformers for speed, ours / transformers' batch-1 rate for batched decode,
# ours / transformers for LoRA peak memory (a ceiling).
TARGETS = {"prefill 1x512 tok/s": 1.1, "prefill 8x128 tok/s": 1.1, "decode b1 tok/s": 1.3,
           "decode b16 tok/s (vs HF b1)": 8.0, "LoRA step (speed-up)": 1.25, "LoRA peak RSS (ratio, max)": 0.6}


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

def load_models(args):
    transformers, _ = require_reference()
    ours = Transformer.from_pretrained(args.model, dtype=args.torch_dtype, device=args.device)
    hf = transformers.LlamaForCausalLM.from_pretrained(args.model, dtype=args.torch_dtype).to(args.device).eval()
    return ours, hf


@torch.inference_mode()
def matmul_peak(args) -> float:
    """FLOP/s of a large square matmul (2 n^3 FLOPs), median of a few: the ceiling for MFU."""
    a, b = (torch.randn(MATMUL_N, MATMUL_N, dtype=args.torch_dtype, device=args.device) for _ in range(2))
    times = interleaved({"mm": lambda: a @ b}, repeats=max(args.repeats, 5), warmup=2, device=args.device)
    return 2 * MATMUL_N ** 3 / median(times["mm"])


@torch.inference_mode()
def bench_prefill(ours, hf, args, batch: int, seq_len: int) -> dict:
    tokens = random_tokens(ours.config, batch, seq_len, seed=args.seed).to(args.device)
    fns = {"ours": lambda: ours(tokens, last_only=True),
           "hf": lambda: hf(input_ids=tokens, use_cache=False, logits_to_keep=1)}
    return dict(times=interleaved(fns, args.repeats, args.warmup, args.device), tokens=batch * seq_len,
                flops=prefill_flops(ours.config, batch, seq_len))


def bench_decode(ours, hf, args, batch: int, sides=("ours", "hf")) -> dict:
    prompts = random_tokens(ours.config, batch, args.prompt_len, seed=args.seed)
    n = args.new_tokens
    hf_kwargs = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, temperature=None, top_p=None, top_k=None,
                     pad_token_id=ours.config.pad_token_id, attention_mask=torch.ones_like(prompts).to(args.device))
    fns = {"ours": lambda: generate(ours, prompts.tolist(), max_new_tokens=n, stop_ids=[]),
           "hf": lambda: hf.generate(prompts.to(args.device), **hf_kwargs)}
    times = interleaved({k: fns[k] for k in sides}, args.repeats, args.warmup, args.device)
    return dict(times=times, tokens=batch * n)


@torch.inference_mode()
def bench_mc(ours, hf, args) -> dict:
    """Multiple-choice letter scoring: one right-padded forward per batch, log-probs of 4 letters at the last token."""
    cfg, rng = ours.config, random.Random(args.seed)
    lengths = [MC["prompt_len"] + rng.randint(-10, 10) for _ in range(MC["questions"])]
    letters = random_tokens(cfg, MC["letters"], seed=args.seed).tolist()
    requests = [(random_tokens(cfg, n, seed=args.seed + i).tolist(), [[c] for c in letters])
                for i, n in enumerate(lengths)]
    tokens = right_pad([ctx for ctx, _ in requests])  # the same right-padded batch as ours
    tokens, last = tokens.to(args.device), torch.tensor(lengths, device=args.device) - 1

    def hf_scores():  # padding comes after each row's end: causal attention never reads it, no mask needed
        logits = hf(input_ids=tokens, use_cache=False).logits  # (B, T, vocab)
        logp = logits[torch.arange(len(lengths)), last].float().log_softmax(-1)  # (B, vocab)
        return logp[:, letters].tolist()

    fns = {"ours": lambda: loglikelihoods(ours, requests, batch_size=MC["questions"]), "hf": hf_scores}
    return dict(times=interleaved(fns, args.repeats, args.warmup, args.device), questions=len(requests))


def lora_step_child(args) -> dict:
    """One side's LoRA training steps in this (fresh) process: seconds per step and peak RSS."""
    torch.manual_seed(args.seed)
    cfg = ModelConfig.from_json(args.model / "config.json")
    B, T = LORA["batch"], LORA["seq_len"]
    tokens = random_tokens(cfg, B, T, seed=args.seed).to(args.device)
    completion = torch.zeros(B, T, dtype=torch.bool, device=args.device)
    completion[:, T // 2:] = True
    if args.lora_child == "ours":
        model = Transformer.from_pretrained(args.model, dtype=args.torch_dtype, device=args.device)
        apply_lora(model, range(cfg.n_layers), r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"])

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
    out = dict(times=times, rss_loaded=rss_loaded, rss_peak=peak_rss_bytes())
    if args.device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def bench_lora(args, side: str) -> dict:
    """Run lora_step_child in a fresh interpreter so each side's peak memory is its own."""
    cmd = [sys.executable, __file__, "--lora-child", side, "--model", str(args.model), "--device", str(args.device),
           "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed),
           "--lora-repeats", str(args.lora_repeats)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


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
        cmd = [sys.executable, __file__, "--load-child", side, "--model", str(args.dir), "--device", str(args.device),
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

def summarize(results: dict) -> list[tuple]:
    """Rows of (metric, ours, transformers, ratio, target); ratio > 1 is better for ours except peak memory."""
    rows, peak = [], results["matmul_peak_flops"]
    for key, r in results["prefill"].items():
        ours, hf = (r["tokens"] / median(r["times"][s]) for s in ("ours", "hf"))
        rows.append((f"prefill {key} tok/s", ours, hf, ours / hf))
        mfu = [r["flops"] / median(r["times"][s]) / peak * 100 for s in ("ours", "hf")]
        rows.append((f"prefill {key} MFU %", *mfu, mfu[0] / mfu[1]))
    d1, d16 = results["decode_b1"], results["decode_b16"]
    ours, hf = (d1["tokens"] / median(d1["times"][s]) for s in ("ours", "hf"))
    rows.append(("decode b1 tok/s", ours, hf, ours / hf))
    ours16, hf16 = (d16["tokens"] / median(d16["times"][s]) for s in ("ours", "hf"))
    rows.append(("decode b16 tok/s", ours16, hf16, ours16 / hf16))
    rows.append(("decode b16 tok/s (vs HF b1)", ours16, hf, ours16 / hf))
    mc = results["mc"]
    ours, hf = (mc["questions"] / median(mc["times"][s]) for s in ("ours", "hf"))
    rows.append(("MC scoring questions/s", ours, hf, ours / hf))
    lo, lh = results["lora"]["ours"], results["lora"]["hf"]
    rows.append(("LoRA step s", median(lo["times"]), median(lh["times"]), None))
    rows.append(("LoRA step (speed-up)", None, None, median(lh["times"]) / median(lo["times"])))
    gb = 2 ** -30
    rows.append(("LoRA peak RSS GiB", lo["rss_peak"] * gb, lh["rss_peak"] * gb, None))
    rows.append(("LoRA peak RSS (ratio, max)", None, None, lo["rss_peak"] / lh["rss_peak"]))
    rows.append(("LoRA step RSS increment GiB", (lo["rss_peak"] - lo["rss_loaded"]) * gb,
                 (lh["rss_peak"] - lh["rss_loaded"]) * gb, None))
    return [(*row, TARGETS.get(row[0])) for row in rows]


def print_table(rows: list[tuple]):
    fmt = lambda v: "" if v is None else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    print("\n| metric | ours | transformers | ratio | target | pass |\n|---|---|---|---|---|---|")
    for metric, ours, hf, ratio, target in rows:
        ok = "" if target is None else "PASS" if (ratio <= target if "max" in metric else ratio >= target) else "FAIL"
        bound = "" if target is None else f"{'<=' if 'max' in metric else '>='} {target}"
        print(f"| {metric} | {fmt(ours)} | {fmt(hf)} | {fmt(ratio)} | {bound} | {ok} |")


def write_json(path, data: dict):
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
    ours, hf = load_models(args)
    results["prefill"] = {}
    for batch, seq_len in PREFILL_SHAPES:
        results["prefill"][f"{batch}x{seq_len}"] = bench_prefill(ours, hf, args, batch, seq_len)
        print(f"prefill {batch}x{seq_len} done", flush=True)
    results["decode_b1"] = bench_decode(ours, hf, args, batch=1)
    print("decode batch 1 done", flush=True)
    results["decode_b16"] = bench_decode(ours, hf, args, batch=16)
    print("decode batch 16 done", flush=True)
    results["mc"] = bench_mc(ours, hf, args)
    print("multiple-choice scoring done", flush=True)
    del ours, hf
    results["lora"] = {side: bench_lora(args, side) for side in ("ours", "hf")}
    print("LoRA steps done", flush=True)
    results["rows"] = summarize(results)
    results["wall_s"] = time.perf_counter() - start
    print_table(results["rows"])
    print(f"\nbench wall time {results['wall_s']:.0f} s; raw timings in {args.out}")
    write_json(args.out, results)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=str, default=None, help=f"HF model directory (default: {DEFAULT_MODEL_DIR.name})")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights and activations (default fp32; bf16 with --shape)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for both sides")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lora-repeats", type=int, default=3, help="timed LoRA steps per side, after one warm-up step")
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
    p.add_argument("--lora-child", choices=("ours", "hf"), help=argparse.SUPPRESS)  # internal: one side's LoRA step
    p.add_argument("--load-child", choices=("ours", "hf"), help=argparse.SUPPRESS)  # internal: one side's load
    args = p.parse_args(argv)
    if args.shape and args.dir is None:
        p.error("--shape needs --dir (where the random checkpoint is written or reused)")
    real_shape = args.shape or args.load_child
    args.dtype = args.dtype or ("bf16" if real_shape else "fp32")
    args.prompt_len = args.prompt_len or (16 if real_shape else 128)
    args.out = args.out or (f"bench-{args.shape}.json" if args.shape else "bench.json")
    if args.quick:
        args.repeats, args.lora_repeats, args.new_tokens = 1, 1, 16
    args.torch_dtype = DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.load_child:
        print(json.dumps(load_child(args)))
    elif args.shape:
        shape_bench(args)
    else:
        args.model = ensure_model(args.model)
        if args.lora_child:
            print(json.dumps(lora_step_child(args)))
        else:
            main(args)
