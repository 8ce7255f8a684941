"""One prepared command that measures a GPU for this project, and writes what it found for the docs.

    python -m tools.gpu_check                                  # one CUDA GPU, ~5-8 min: docs/gpu_check.json and .md
    python -m tools.gpu_check --model /path/to/Llama-3.1-8B-Instruct --price 2.50
    python -m tools.gpu_check --device cpu --shape tiny        # the same code on a small shape in < 1 min (its test)

What it measures, each against an outside reference or a stated estimate:
1. Logits parity against transformers on the device, fp32 (must hold to 1e-4) and bf16 (reported: two correct
   bf16 implementations differ by up to ~0.5), on a tiny Llama 3.1 (RoPE scaling visible: sequences past its
   original context) and on one layer of the shape's full width.
2. Loading: a random checkpoint of the shape (tools/random_checkpoint.py, written once to --dir on local disk) or
   the user's `--model`: load time, host peak RSS above the interpreter's, GPU memory, against tools/plan.py.
3. The paper preset's training step (LoRA r 16 and GARFA on 8 of 32 layers, the lowest being layer 0 as the plan's
   worst case; batch 4 x 1024 tokens, bf16 weights): eager and compiled (`--no-compile` skips), activation
   checkpointing off and on: tokens/s, MFU (model FLOPs: forward and the input-gradient backward, recomputation
   not counted) against the GPU's bf16 peak (datasheet, dense) and a measured matmul peak, GPU peak memory against
   the plan's estimate; the same step in transformers + peft (LoRA only: peft has no GARFA) for the ratio.
4. Inference against transformers bf16: greedy decoding at batch 1 and the paper's evaluation batch, a prefill,
   multiple-choice scoring (tools/bench.py's measurements).
5. The projected wall time and cost of `train.py --arm ablation --preset paper` from those rates.
Output files are claimed: a file this command did not write is never overwritten.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from support.cli import Parser, device_option
from support.files import ROOT, UserError, write_atomic
from tools import bench
from tools.random_checkpoint import LLAMA_3_1_8B, is_complete, write_random_checkpoint

MARK = "tools.gpu_check"  # in every file this command writes: the only files it may overwrite
GIB = 2 ** 30
TOL_FP32 = 1e-4
# Dense bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s (sparsity not counted); first match wins.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("GH200", 989), ("B200", 2250),
                    ("A100", 312), ("L40S", 362), ("L4", 121), ("RTX 4090", 165))
PAPER_COMPUTE_USD = 100  # the paper: "$100 total compute"
# The paper preset's evaluation: items per benchmark with the official files (GPQA diamond, MGSM's 11 languages,
# HumanEval+), and which are generated (each counted at the full --max-new-tokens: an upper bound).
PAPER_ITEMS = {"mmlu": 14042, "arc_challenge": 1172, "gpqa": 198, "math500": 500, "mgsm_en": 250, "mgsm": 2750,
               "humaneval": 164, "humaneval_plus": 164}
GENERATED = ("math500", "mgsm_en", "mgsm", "humaneval", "humaneval_plus")
TINY_LLAMA31 = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=256, hidden_size=96,
                    intermediate_size=160, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                    head_dim=16, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=1024,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=64),
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu")
# What each --shape measures: the checkpoint's config, the paper step's size and the evaluation batch.
SHAPES = {
    "llama-3.1-8b": dict(config=LLAMA_3_1_8B, batch=4, seq_len=1024, layers=8, eval_batch=32, prompt_len=512,
                         new_tokens=64, parity_len=256, steps=3, repeats=3),
    "tiny": dict(config=TINY_LLAMA31 | dict(num_hidden_layers=4), batch=2, seq_len=64, layers=2, eval_batch=4,
                 prompt_len=32, new_tokens=4, parity_len=96, steps=2, repeats=1),
}


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions

def bf16_peak(device_name: str) -> float | None:
    """The datasheet's dense bf16 FLOP/s of a GPU by its name, None when not in the table."""
    return next((tflops * 1e12 for key, tflops in BF16_PEAK_TFLOPS if key in device_name), None)


def adapted_layers(n_layers: int, k: int) -> list[int]:
    """k layers spread over the depth, layer 0 included: the gradient then passes every block (the plan's worst
    case), as it does in any arm whose lowest layer is 0."""
    return sorted({round(i * n_layers / k) for i in range(k)})


def step_flops(cfg, batch: int, seq_len: int) -> int:
    """Model FLOPs of one training step with frozen weights: the forward (every position's logits) and a backward
    of the same cost for the input gradients; the adapters' own FLOPs and recomputation are not counted."""
    return 2 * bench.prefill_flops(cfg, batch, seq_len, logit_positions=seq_len)


def projection(rates: dict, shape: dict, n_arms: int, price: float) -> dict:
    """Wall time of `--arm ablation --preset paper`: n_arms trainings of steps x grad_accum micro-steps, and
    n_arms + 1 evaluations (each arm, and the base model once) of every benchmark at the measured rates."""
    from train import PRESETS

    p = PRESETS["paper"]
    train_s = p["steps"] * p["grad_accum"] * rates["micro_step_s"]
    mc_items = sum(n for name, n in PAPER_ITEMS.items() if name not in GENERATED)
    gen_tokens = sum(PAPER_ITEMS[name] for name in GENERATED) * p["max_new_tokens"]
    # letter accuracy: one forward per item; the mc metric's cloze: one per choice (4); bpb: one per item
    forwards = mc_items * (1 + 4 + 1) + sum(PAPER_ITEMS[name] for name in GENERATED)
    eval_s = forwards / rates["mc_items_per_s"] + gen_tokens / rates["decode_tokens_per_s"]
    total_s = n_arms * train_s + (n_arms + 1) * eval_s
    return dict(arms=n_arms, steps=p["steps"], grad_accum=p["grad_accum"], train_s_per_arm=train_s,
                eval_s_per_model=eval_s, total_hours=total_s / 3600, price_per_gpu_hour=price,
                cost_usd=total_s / 3600 * price, paper_usd=PAPER_COMPUTE_USD,
                assumptions="generation at the full max_new_tokens (an upper bound); sensitivity scoring and "
                            "held-out losses not counted; one seed")


# ----------------------------------------------------------------------------------------------------------------
# Measurements

def sync_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def hf_checkpoint(hf_config: dict, path: Path, std: float | None) -> Path:
    """A random transformers LlamaForCausalLM saved as an HF directory (std: weights' std, None: HF's init)."""
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config))
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return path


@torch.inference_mode()
def parity(device: torch.device, shape: dict, work: Path) -> list[dict]:
    """Logits of ours against transformers on the same checkpoint, fp32 and bf16, on the device."""
    import transformers
    from model import Transformer

    width = {k: shape["config"][k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                             "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling")}
    cases = [("tiny Llama 3.1 (2 layers, RoPE scaling past its original context)", TINY_LLAMA31, 0.2,
              shape["parity_len"]),
             (f"one full-width layer ({width['hidden_size']} wide)", TINY_LLAMA31 | width | dict(
                 num_hidden_layers=1, vocab_size=2048), None, shape["parity_len"])]
    rows = []
    for name, config, std, T in cases:
        path = hf_checkpoint(config, work / f"parity-{len(rows)}", std)
        tokens = torch.randint(3, config["vocab_size"], (2, T), generator=torch.Generator().manual_seed(0))
        row = dict(case=name, tokens=T)
        for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            ours = Transformer.from_pretrained(path, dtype=dtype, device=device)
            hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
            a, b = ours(tokens.to(device)).float(), hf(input_ids=tokens.to(device)).logits.float()
            row[f"{key}_max_abs_diff"] = (a - b).abs().max().item()
            row[f"{key}_argmax_agree"] = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
            del ours, hf
        row["fp32_ok"] = row["fp32_max_abs_diff"] <= TOL_FP32
        rows.append(row)
    return rows


def load_ours(model_dir: Path, device: torch.device):
    """Our model in bf16 on the device: seconds, host peak RSS above the interpreter's, GPU memory."""
    from model import Transformer

    sync_reset(device)
    rss_before = bench.rss_bytes()
    bench.reset_peak_rss()
    t0 = time.perf_counter()
    model = Transformer.from_pretrained(model_dir, dtype=torch.bfloat16, device=device)
    bench.sync(device)
    return model, dict(load_s=time.perf_counter() - t0, host_peak_rss_gib=(bench.peak_rss_bytes() - rss_before) / GIB,
                       gpu_gib=(gpu_peak(device) or 0) / GIB or None,
                       weight_gib=sum(p.numel() * p.element_size() for p in model.parameters()) / GIB)


def plan_for(cfg, shape: dict, checkpointing: bool) -> dict:
    from lora import DEFAULT_TARGETS
    from tools.plan import plan

    return plan(cfg, lora_layers=shape["layers"], garfa_layers=shape["layers"], r=16, targets=DEFAULT_TARGETS,
                batch_size=shape["batch"], seq_len=shape["seq_len"], grad_accum=1, steps=1, dtype=torch.bfloat16,
                activation_checkpointing=checkpointing)


def time_steps(step, shape: dict, device: torch.device) -> dict:
    sync_reset(device)
    times = bench.interleaved({"step": step}, repeats=shape["steps"], warmup=1, device=device)["step"]
    return dict(step_s=bench.median(times), times=times, gpu_peak_gib=(gpu_peak(device) or 0) / GIB or None)


def training_rows(model, shape: dict, device: torch.device, peak: float, compile_: bool) -> list[dict]:
    """The paper's step on our model (LoRA + GARFA on the same layers): eager, then compiled, x checkpointing."""
    from garfa import apply_garfa
    from lora import apply_lora
    from model import sequence_nll
    from tools.compiled import compile_model, compile_seconds

    cfg, B, T = model.config, shape["batch"], shape["seq_len"]
    layers = adapted_layers(cfg.n_layers, shape["layers"])
    apply_lora(model, layers, r=16, alpha=32, dropout=0.05)
    apply_garfa(model, layers)
    model.train()
    tokens = bench.random_tokens(cfg, B, T, seed=0).to(device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)  # every position a target: the plan's upper bound
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():  # train.train_step's work: bf16 autocast on CUDA (the adapters are float32), backward, AdamW
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            nll, count = sequence_nll(model, tokens, mask)
        (nll.sum() / count.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rows = []
    for compiled in (False, True) if compile_ else (False,):
        if compiled:
            compile_model(model)
        for checkpointing in (False, True):
            model.activation_checkpointing = checkpointing
            row = dict(side="ours", compiled=compiled, checkpointing=checkpointing,
                       plan_peak_gib=plan_for(cfg, shape, checkpointing)["peak_bytes"] / GIB)
            try:
                r = time_steps(step, shape, device)
            except Exception as e:  # GPU time is scarce: one failing variant is reported, the others still run
                rows.append(row | dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"))
                optimizer.zero_grad(set_to_none=True)
                continue
            rows.append(row | r | dict(tokens_per_s=B * T / r["step_s"],
                                       mfu=step_flops(cfg, B, T) / r["step_s"] / peak))
    model.activation_checkpointing = False
    rows[-1]["compile_s"] = compile_seconds() if compile_ else None
    return rows


def peft_row(model_dir: Path, shape: dict, device: torch.device, peak: float) -> dict:
    """transformers + peft's LoRA step on the same layers (their standard path: labels, full-vocabulary logits)."""
    import peft
    import transformers
    from lora import DEFAULT_TARGETS

    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=str(device))
    cfg = hf.config
    layers = adapted_layers(cfg.num_hidden_layers, shape["layers"])
    model = peft.get_peft_model(hf, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                    target_modules=list(DEFAULT_TARGETS), layers_to_transform=layers))
    model.train()
    B, T = shape["batch"], shape["seq_len"]
    tokens = torch.randint(3, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    r = time_steps(step, shape, device)
    del model, hf, optimizer
    return dict(side="transformers + peft (LoRA only)", compiled=False, checkpointing=False, **r,
                tokens_per_s=B * T / r["step_s"], mfu=None, plan_peak_gib=None)


def inference_rows(model_dir: Path, shape: dict, device: torch.device, compile_: bool) -> dict:
    """tools/bench.py's decode, prefill and multiple-choice measurements, ours against transformers bf16."""
    args = SimpleNamespace(model=model_dir, torch_dtype=torch.bfloat16, device=device, compile=compile_,
                           repeats=shape["repeats"], warmup=1, seed=0, prompt_len=shape["prompt_len"],
                           new_tokens=shape["new_tokens"])
    models = bench.load_models(args)
    out = {}
    for batch in (1, shape["eval_batch"]):
        r = bench.bench_decode(models, args, batch)
        out[f"decode b{batch}"] = {side: r["units"] / bench.median(t) for side, t in r["times"].items()
                                   if "@" not in side}  # "@1": the 1-token calls that time the prefill
    r = bench.bench_prefill(models, args, 1, shape["prompt_len"])
    out["prefill b1"] = {side: r["units"] / bench.median(t) for side, t in r["times"].items()}
    r = bench.bench_mc(models, args)
    out["multiple choice"] = {side: r["units"] / bench.median(t) for side, t in r["times"].items()}
    del models
    return out


# ----------------------------------------------------------------------------------------------------------------
# Output

def claim(path: Path) -> None:
    """Refuse to overwrite a file this command did not write."""
    if path.exists() and MARK not in path.read_text(errors="replace")[:400]:
        raise UserError(f"{path} exists and was not written by {MARK}; pass another --out or move the file")


def markdown(r: dict) -> str:
    gib = lambda v: "-" if v is None else f"{v:.2f}"
    lines = [f"<!-- written by {MARK}; regenerate with: {r['command']} -->",
             f"## GPU check: {r['device']['name']}", "",
             f"torch {r['device']['torch']}, {r['shape']} shape ({r['model']}); bf16 peak "
             f"{r['device']['bf16_peak_tflops'] or '-'} TFLOP/s (datasheet), {r['device']['matmul_tflops']:.1f} "
             f"TFLOP/s measured (bf16 matmul); wall time of this check {r['wall_s']:.0f} s ("
             + ", ".join(f"{k} {v:.0f} s" for k, v in r["phases_s"].items()) + ").", "",
             "| parity vs transformers | tokens | fp32 max abs diff (<= 1e-4) | bf16 max abs diff | bf16 argmax "
             "agree |",
             "|---|---|---|---|---|"]
    lines += [f"| {p['case']} | {p['tokens']} | {p['fp32_max_abs_diff']:.2e} {'ok' if p['fp32_ok'] else 'FAIL'} | "
              f"{p['bf16_max_abs_diff']:.3f} | {p['bf16_argmax_agree']:.1%} |" for p in r["parity"]]
    ld = r["load"]
    lines += ["", f"Load (bf16): {ld['load_s']:.1f} s, host peak RSS +{ld['host_peak_rss_gib']:.2f} GiB, GPU "
              f"{gib(ld['gpu_gib'])} GiB (weights {ld['weight_gib']:.2f} GiB; plan {ld['plan_weight_gib']:.2f} GiB).",
              "", f"Training step, batch {r['step']['batch']} x {r['step']['seq_len']}, LoRA r16 + GARFA on layers "
              f"{r['step']['layers']}:", "",
              "| side | compiled | act. ckpt | step s | tokens/s | MFU (datasheet) | GPU peak GiB | plan GiB |",
              "|---|---|---|---|---|---|---|---|"]
    for t in r["training"]:
        if "error" in t:
            lines.append(f"| {t['side']} | {'yes' if t['compiled'] else 'no'} | "
                         f"{'on' if t['checkpointing'] else 'off'} | failed: {t['error']} | | | | |")
            continue
        mfu = "-" if t["mfu"] is None else f"{t['mfu']:.1%}"
        lines.append(f"| {t['side']} | {'yes' if t['compiled'] else 'no'} | {'on' if t['checkpointing'] else 'off'} "
                     f"| {t['step_s']:.3f} | {t['tokens_per_s']:.0f} | {mfu} | {gib(t['gpu_peak_gib'])} | "
                     f"{gib(t['plan_peak_gib'])} |")
    compiled = [t["compile_s"] for t in r["training"] if t.get("compile_s") is not None]
    if compiled:
        lines += ["", f"Compilation (the first calls of each shape, not in the step times): {compiled[0]:.0f} s."]
    lines += ["", "| inference (per second) | " + " | ".join(r["inference_sides"]) + " |",
              "|---|" + "---|" * len(r["inference_sides"])]
    for name, sides in r["inference"].items():
        unit = "items" if name == "multiple choice" else "tokens"
        lines.append(f"| {name} ({unit}) | " + " | ".join(f"{sides.get(s, float('nan')):.1f}"
                                                          for s in r["inference_sides"]) + " |")
    p = r["projection"]
    lines += ["", f"Projected `python train.py --arm ablation --preset paper`: {p['arms']} arms x {p['steps']} steps "
              f"x {p['grad_accum']} micro-batches ({p['train_s_per_arm'] / 60:.0f} min each) and {p['arms'] + 1} "
              f"evaluations ({p['eval_s_per_model'] / 60:.0f} min each): {p['total_hours']:.1f} GPU-hours, "
              f"${p['cost_usd']:.0f} at ${p['price_per_gpu_hour']:.2f}/GPU-hour (the paper: ${p['paper_usd']} total "
              f"compute). Assumptions: {p['assumptions']}."
              + ("" if r["shape"] == "llama-3.1-8b" else " (This shape is not the paper's model: the projection only "
                 "exercises the arithmetic.)")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=device_option, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=SHAPES, default=None,
                   help="llama-3.1-8b (default on CUDA) or tiny (default on the CPU)")
    p.add_argument("--model", type=Path, default=None, help="a real checkpoint instead of the random one")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "gpu_check_llama8b",
                   help="where the random checkpoint is written once and reused (local disk, 16 GB for 8B)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows (compilation takes minutes)")
    p.add_argument("--price", type=float, default=3.0, help="USD per GPU-hour for the projection (default 3.00)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu_check",
                   help="writes OUT.json and OUT.md (default docs/gpu_check)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    shape_name = args.shape or ("llama-3.1-8b" if device.type == "cuda" else "tiny")
    shape = SHAPES[shape_name]
    if args.price <= 0:
        raise UserError(f"--price {args.price}: give a positive price per GPU-hour")
    if args.model is not None and not (args.model / "config.json").is_file():
        raise UserError(f"--model {args.model}: no config.json there; give a Hugging Face model directory")
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    for path in (json_path, md_path):
        claim(path)
    bench.require_reference()
    t0 = time.perf_counter()
    phases = {}  # seconds of each part of this check: where a GPU's 8 minutes go
    lap = lambda name: phases.__setitem__(name, time.perf_counter() - t0 - sum(phases.values()))
    with tempfile.TemporaryDirectory() as work:
        print("parity against transformers ...", flush=True)
        rows = parity(device, shape, Path(work))
        lap("parity")
        model_dir = args.model
        if model_dir is None:
            model_dir = args.dir if shape_name == "llama-3.1-8b" else Path(work) / "random"
            if not is_complete(model_dir, shape["config"], torch.bfloat16):
                print(f"writing a random {shape_name} checkpoint to {model_dir} ...", flush=True)
                write_random_checkpoint(model_dir, shape["config"], dtype=torch.bfloat16)
        lap("checkpoint")
        cfg_json = json.loads((model_dir / "config.json").read_text())
        matmul = bench.matmul_peak(SimpleNamespace(repeats=5, torch_dtype=torch.bfloat16, device=device))
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        peak = bf16_peak(name) or matmul
        print("loading and the training step ...", flush=True)
        model, load = load_ours(model_dir, device)
        load["plan_weight_gib"] = plan_for(model.config, shape, False)["weight_bytes"] / GIB
        layers = adapted_layers(model.config.n_layers, shape["layers"])
        lap("load")
        training = training_rows(model, shape, device, peak, not args.no_compile)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        training.append(peft_row(model_dir, shape, device, peak))
        for t in training:
            if "error" not in t:
                t["ratio_vs_peft"] = training[-1]["step_s"] / t["step_s"]
        lap("training")
        print("inference against transformers ...", flush=True)
        inference = inference_rows(model_dir, shape, device, not args.no_compile)
        lap("inference")
    from train import PAPER_ARMS

    ours_eval = inference[f"decode b{shape['eval_batch']}"]
    rates = dict(micro_step_s=min(t["step_s"] for t in training if t["side"] == "ours" and "error" not in t),
                 decode_tokens_per_s=max(v for k, v in ours_eval.items() if k != "hf"),
                 mc_items_per_s=max(v for k, v in inference["multiple choice"].items() if k != "hf"))
    result = dict(generated_by=MARK, command="python -m tools.gpu_check " + " ".join(argv or []),
                  device=dict(name=name, torch=torch.__version__, matmul_tflops=matmul / 1e12,
                              bf16_peak_tflops=(bf16_peak(name) or 0) / 1e12 or None),
                  shape=shape_name, model=str(args.model) if args.model else f"random {cfg_json.get('model_type')}",
                  parity=rows, load=load, step=dict(batch=shape["batch"], seq_len=shape["seq_len"], layers=layers),
                  training=training, inference=inference, inference_sides=sorted({s for v in inference.values()
                                                                                  for s in v}),
                  rates=rates, projection=projection(rates, shape, len(PAPER_ARMS), args.price),
                  phases_s=phases, wall_s=time.perf_counter() - t0)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(json_path, json.dumps(result, indent=1, default=float) + "\n")
    write_atomic(md_path, markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}")
    if not all(p["fp32_ok"] for p in rows):
        raise SystemExit(f"fp32 logits differ from transformers by more than {TOL_FP32}: see {md_path}")
    return result


if __name__ == "__main__":
    from support.cli import run

    run(main)
