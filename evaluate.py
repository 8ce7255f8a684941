"""Evaluation (METHOD.md section 6): one multiple-choice scorer, one generation path, gold bits per byte.

    python evaluate.py [--model DIR] [--adapter DIR] [--benchmarks a,b] [--limit N] [--metrics acc,bpb] [--out DIR]
    torchrun --nproc-per-node N evaluate.py ...      # each benchmark's batches dealt out over N processes (dist.py)

Multiple choice ("Question: ...\\nA. ..\\nB. ..\\nAnswer:") is read from the next-token log-probs of " A", " B", ...
(`--mc-format letter`), or as the log-likelihood of each answer text after "Question: ...\\nAnswer:" divided by its
length in characters (`--mc-format cloze`, OLMES' acc_per_char). Math and grade-school math are generated under the
checkpoint's chat template when it has one (`--chat auto`) and checked by answers.py; HumanEval is a raw code
completion (`--code-format completion`) or a chat request whose code block is extracted (`chat`), run in the
sandbox (sandbox.py). `--metrics bpb` scores the gold answer's bits per byte after the same prompt: no
generation, a continuous per-item measure that tells adapters apart where accuracy is at chance.
Prompt formats and the chat rule live in tasks.py; intervals and paired tests in stats.py.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from support import dist
from support import report
from support.answers import compare_math, compare_number, extract_boxed, extract_number, math_equal  # noqa: F401 (SPEC 5)
from support.cli import Parser, add_model_options, add_options, comma_list, from_args, option, resolve_dtype, run
from data import BenchmarkUnavailable, extracted, load_benchmark
from support.files import (CACHE_DIR, RUNS_DIR, UserError, claim_output, json_line, locked, read_json, write_json,
                   write_jsonl)
from lora import load_adapter
from model import Transformer, sequence_nll
from support.tokenizer import Tokenizer
from support.generate import generate
from support.batching import right_pad
from prepare import ensure_data, ensure_model
from support.sandbox import SANDBOX_WORKERS, check_program, run_program  # noqa: F401 (SPEC 5: importable from here)
from support.stats import mean_interval, wilson_interval
from support.tasks import (BENCHMARKS, CHAT_MODES, CODE_FORMATS, FAMILIES, LETTERS, MC_FORMATS, STAND_INS, TASKS,
                   code_chat_prompt, encode_prompt, extract_code, format_prompt, gold_text, mc_request, uses_chat)

METRICS = ("acc", "bpb")
BPB_BATCH_TOKENS = 8192  # long golds (MATH solutions) go in smaller batches: less padding, a bar that keeps moving


@dataclass(frozen=True)
class EvalOptions:
    benchmarks: tuple[str, ...] = option(BENCHMARKS, "benchmarks to run", type=comma_list(BENCHMARKS))
    limit: int | None = option(None, "items per benchmark: a fixed subset drawn with --seed (0 or none: all)", type=int)
    shots: int = option(0, "MC examples from MMLU dev (0-5)")
    mc_format: str = option("letter", "multiple choice read from answer letters or answer texts", MC_FORMATS)
    chat: str = option("auto", "chat template where a family uses it (math, gsm) and the checkpoint has one",
                       CHAT_MODES)
    code_format: str = option("auto", "HumanEval as a raw completion, or a chat request for the whole function "
                              "(auto: chat when the checkpoint has a chat template)", CODE_FORMATS)
    metrics: tuple[str, ...] = option(METRICS, "accuracy and/or gold bits per byte", type=comma_list(METRICS))
    max_new_tokens: int | None = option(None, "new tokens per answer (default: per family: math 512, gsm 320, "
                                              "code 384)", type=int)
    timeout: float = option(10.0, "seconds per HumanEval program in the sandbox")
    gpqa_csv: str | None = option(None, "the official GPQA csv (not obtainable offline)", type=str)
    mgsm_dir: str | None = option(None, "the official MGSM tsv files, one per language", type=str)
    seed: int = 0  # the caller's --seed: which items a --limit draws

    def __post_init__(self):
        checks = [(self.limit is None or self.limit >= 0, f"--limit {self.limit}: give a positive number of items"),
                  (0 <= self.shots <= 5, f"--shots {self.shots}: MMLU dev has 5 examples per subject, give 0-5"),
                  (self.max_new_tokens is None or self.max_new_tokens > 0,
                   f"--max-new-tokens {self.max_new_tokens}: give a positive number"),
                  (self.timeout > 0, f"--timeout {self.timeout}: give a positive number of seconds")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.limit == 0:
            object.__setattr__(self, "limit", None)

    def check_user_data(self) -> None:
        """Read the user's GPQA / MGSM files now, so a bad file stops the run before any expensive work."""
        for name in set(self.benchmarks) & {"gpqa", "mgsm"}:
            try:
                load_benchmark(name, gpqa_csv=self.gpqa_csv, mgsm_dir=self.mgsm_dir)
            except BenchmarkUnavailable:
                pass  # no file given: reported as "not run"


def fixed_subset(items: list[dict], limit: int | None, seed: int) -> list[dict]:
    """`limit` items drawn with `seed`, in their original order: the same items in every run with that seed."""
    if not limit or limit >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cuts = [text.index(s) for s in stops if s in text]
    return text[:min(cuts)] if cuts else text


# ----------------------------------------------------------------------------------------------------------------
# Multiple choice: log-likelihoods of the continuations

@torch.inference_mode()
def loglikelihoods(model: Transformer, requests: list[tuple[list[int], list[list[int]]]], batch_size: int = 8,
                   desc: str = "") -> list[list[float]]:
    """For each (context ids, continuation ids...), the summed log-prob of every continuation given the context.

    Batches are right-padded (causal attention: padding after a row's end is never read). When every continuation
    is one token (the answer letters), one forward pass of the context reads them all at its last position.
    """
    rows = []  # (request, continuation or None for "all one-token continuations", tokens)
    for r, (ctx, conts) in enumerate(requests):
        if all(len(c) == 1 for c in conts):
            rows.append((r, None, ctx))
        else:
            rows += [(r, j, ctx + c) for j, c in enumerate(conts)]
    rows.sort(key=lambda row: -len(row[2]))  # similar lengths share a batch
    batches = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    device = model.embed_tokens.weight.device
    scored = []  # per batch of this rank's share (dist.shard), per row: its log-prob(s)
    for batch in tqdm(dist.shard(batches), desc=desc, leave=False, dynamic_ncols=True, disable=not dist.is_main()):
        logits = model(right_pad([t for _, _, t in batch]).to(device))  # (B, T, vocab)
        scored.append([])
        for i, (r, j, t) in enumerate(batch):
            ctx, conts = requests[r]
            if j is None:
                logp = logits[i, len(ctx) - 1].float().log_softmax(-1)  # (vocab,)
                scored[-1].append([logp[c[0]].item() for c in conts])
            else:
                logp = logits[i, len(ctx) - 1:len(t) - 1].float().log_softmax(-1)  # (len(cont), vocab)
                scored[-1].append(logp.gather(-1, torch.tensor(conts[j], device=device)[:, None]).sum().item())
    out = [[0.0] * len(conts) for _, conts in requests]
    for batch, values in zip(batches, dist.gather(scored)):
        for (r, j, _), v in zip(batch, values):
            if j is None:
                out[r] = v
            else:
                out[r][j] = v
    return out


def mc_shots(item: dict, shots: int) -> list[dict]:
    """MMLU dev examples of the item's subject; items without one take a fixed draw from every subject."""
    if not shots:
        return []
    dev = extracted("mmlu_dev")
    same_subject = [d for d in dev if d["subject"] == item.get("subject")][:shots]
    return same_subject if len(same_subject) == shots else random.Random(0).sample(dev, shots)


def score_mc(model, tok: Tokenizer, items: list[dict], opts: EvalOptions, batch_size: int,
             desc: str = "") -> list[dict]:
    """Per-item records of multiple-choice scoring (letter: log-prob; cloze: log-prob per character)."""
    requests, texts = [], []
    for x in items:
        context, conts = mc_request(x, opts.mc_format, mc_shots(x, opts.shots))
        requests.append((tok.encode(context), [tok.encode(c, bos=False) for c in conts]))
        texts.append(conts)
    scores = loglikelihoods(model, requests, batch_size, desc)
    records = []
    for x, s, conts in zip(items, scores, texts):
        if opts.mc_format == "cloze":
            s = [v / len(c) for v, c in zip(s, conts)]
        pred = max(range(len(s)), key=s.__getitem__)
        records.append(dict(id=x["id"], prediction=LETTERS[pred], gold=LETTERS[x["answer"]],
                            correct=pred == x["answer"], scores=[round(v, 4) for v in s]))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Generation: one cached greedy loop per batch, finished rows leave it

def generate_until(model, tok: Tokenizer, prompts: list[list[int]], finished, max_new_tokens: int,
                   batch_size: int = 8, desc: str = "") -> list[str]:
    """Greedy continuations, each ending at EOS or once `finished(text so far)` holds (the caller cuts it)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    mine = dist.shard(batches)  # the one-process batches, dealt out over the ranks
    texts = []
    bar = tqdm(total=sum(map(len, mine)), desc=desc, leave=False, dynamic_ncols=True, disable=not dist.is_main())
    for batch in mine:
        new = generate(model, [prompts[i] for i in batch], max_new_tokens, tok.eos_ids,
                       stop=lambda i, ids: finished(tok.decode(ids)),
                       on_step=lambda active: bar.set_postfix(generating=active, refresh=True))
        texts.append([tok.decode(ids) for ids in new])
        bar.update(len(batch))
    bar.close()
    outputs = [""] * len(prompts)
    for batch, decoded in zip(batches, dist.gather(texts)):
        for i, text in zip(batch, decoded):
            outputs[i] = text
    return outputs


def chat_code(tok: Tokenizer, opts: EvalOptions) -> bool:
    """HumanEval as a chat request: asked for, or `auto` on a checkpoint with a chat template (on the default
    instruct model, 3/40 pass as chat and 0/40 as a raw completion: README)."""
    return tok.chat_template is not None and opts.code_format in ("auto", "chat")


def generation_prompt(tok: Tokenizer, family: str, item: dict, opts: EvalOptions) -> list[int]:
    if family == "code" and chat_code(tok, opts):
        return encode_prompt(tok, code_chat_prompt(item), True)
    return encode_prompt(tok, format_prompt(family, item), uses_chat(tok, family, opts.chat))


def grade(family: str, items: list[dict], outputs: list[str], opts: EvalOptions, code_chat: bool) -> list[dict]:
    """Per-item records for generated outputs: what was compared (or the sandbox's verdict) and correctness."""
    if family == "code":
        programs = [(extract_code(out, x) if code_chat else f"{x['prompt']}{out}")
                    + f"\n\n{x['test']}\ncheck({x['entry_point']})\n" for x, out in zip(items, outputs)]
        with ThreadPoolExecutor(SANDBOX_WORKERS) as pool:
            verdicts = list(pool.map(lambda p: run_program(p, opts.timeout), programs))
        return [dict(id=x["id"], prediction=why, gold="passed", correct=ok, output=out)
                for x, out, (ok, why) in zip(items, outputs, verdicts)]
    records = []
    for x, out in zip(items, outputs):
        pred = extract_boxed(out) if family == "math" else extract_number(out)
        compared = compare_math(pred, x["answer"]) if family == "math" else compare_number(pred, x["answer"])
        records.append(dict(id=x["id"], prediction=pred, gold=x["answer"], correct=compared["equal"],
                            compared=compared, output=out))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Gold bits per byte: the gold answer's likelihood after the benchmark's own prompt

def bpb_request(tok: Tokenizer, name: str, item: dict, opts: EvalOptions) -> tuple[str, str, list[int], list[int]]:
    """(context text, gold text, context ids, gold ids). The gold is encoded on its own, so its tokens decode to
    exactly its bytes whatever BPE would have merged across the boundary."""
    family, gold = TASKS[name], gold_text(name, item)
    if family == "mc":
        context, _ = mc_request(item, "cloze", mc_shots(item, opts.shots))
        ids = tok.encode(context)
    else:
        text = format_prompt(family, item)
        chat = uses_chat(tok, family, opts.chat)
        context = tok.apply_chat_template([{"role": "user", "content": text}]) if chat else text
        ids = encode_prompt(tok, text, chat)
    return context, gold, ids, tok.encode(gold, bos=False)


@torch.inference_mode()
def score_bpb(model, tok: Tokenizer, name: str, items: list[dict], opts: EvalOptions, batch_size: int,
              desc: str = "") -> list[dict]:
    """Per item: the gold completion's NLL (nats), its UTF-8 bytes, bpb = nll / (ln 2 * bytes), and the texts."""
    requests = [bpb_request(tok, name, x, opts) for x in items]
    order = sorted(range(len(items)), key=lambda i: -len(requests[i][2]) - len(requests[i][3]))
    batches = []  # longest first, at most batch_size rows and BPB_BATCH_TOKENS padded tokens (the first row sets T)
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * max(
                len(requests[batches[-1][0]][2]) + len(requests[batches[-1][0]][3]), 1) <= BPB_BATCH_TOKENS:
            batches[-1].append(i)
        else:
            batches.append([i])
    device = model.embed_tokens.weight.device
    totals = []  # per batch of this rank's share (dist.shard): each row's NLL
    for batch in tqdm(dist.shard(batches), desc=f"{desc} (bpb)", leave=False, dynamic_ncols=True,
                      disable=not dist.is_main()):
        tokens = right_pad([requests[i][2] + requests[i][3] for i in batch], tok.pad_id)
        mask = right_pad([[False] * len(requests[i][2]) + [True] * len(requests[i][3]) for i in batch], False,
                         torch.bool)
        total, _ = sequence_nll(model, tokens.to(device), mask.to(device))
        totals.append(total.tolist())
    nll = [0.0] * len(items)
    for batch, values in zip(batches, dist.gather(totals)):
        for i, v in zip(batch, values):
            nll[i] = v
    out = []
    for x, (context, gold, _, _), v in zip(items, requests, nll):
        n_bytes = len(gold.encode("utf-8"))
        out.append(dict(id=x["id"], bpb=v / (math.log(2) * n_bytes), nll=v, n_bytes=n_bytes, context=context,
                        gold_text=gold))
    return out


# ----------------------------------------------------------------------------------------------------------------
# One benchmark, all benchmarks

def summarize(name: str, items: list[dict], records: list[dict], metrics: tuple[str, ...]) -> dict:
    n, family = len(records), TASKS[name]
    result = {"n": n, "metric": FAMILIES[family].metric}
    if "acc" in metrics:
        k = sum(r["correct"] for r in records)
        result |= dict(accuracy=k / n if n else 0.0, ci95=list(wilson_interval(k, n)))
        if family == "mc":  # uniform guessing; ARC has some 3- and 5-choice items
            result["chance"] = sum(1 / len(x["choices"]) for x in items) / max(1, n)
            letters = [r["prediction"] for r in records]
            top = max(set(letters), key=letters.count) if letters else None
            result["most_common_answer"] = {"letter": top, "share": letters.count(top) / max(1, n)}
    if "bpb" in metrics:
        result["bpb"] = mean_interval([r["bpb"] for r in records])
    if name in STAND_INS:
        result["note"] = STAND_INS[name]
    return result


def evaluate_benchmark(model, tok: Tokenizer, name: str, items: list[dict], opts: EvalOptions,
                       batch_size: int) -> list[dict]:
    """Per-item records of one benchmark: accuracy fields and/or bpb fields, merged by item."""
    family = TASKS[name]
    records = [{"id": x["id"]} for x in items]
    if "acc" in opts.metrics:
        if family == "mc":
            acc = score_mc(model, tok, items, opts, batch_size, desc=name)
        else:
            code_chat = family == "code" and chat_code(tok, opts)
            stops = FAMILIES[family].stops
            # A chat answer is complete when its code block closes; a completion at the family's first stop string.
            finished = (lambda text: text.count("```") >= 2) if code_chat else \
                (lambda text: any(s in text for s in stops))
            prompts = [generation_prompt(tok, family, x, opts) for x in items]
            outputs = generate_until(model, tok, prompts, finished,
                                     opts.max_new_tokens or FAMILIES[family].max_new_tokens, batch_size, desc=name)
            outputs = outputs if code_chat else [cut_at_stop(o, stops) for o in outputs]
            acc = dist.gather(grade(family, dist.shard(items), dist.shard(outputs), opts, code_chat))  # sandbox too
        records = [r | a for r, a in zip(records, acc)]
    if "bpb" in opts.metrics:
        records = [r | b for r, b in zip(records, score_bpb(model, tok, name, items, opts, batch_size, desc=name))]
    return records


def evaluate_model(model, tok: Tokenizer, opts: EvalOptions, out_dir: str | Path | None = None,
                   batch_size: int = 8) -> dict[str, dict]:
    """Score `model` on each benchmark -> {name: {accuracy, n, ci95, bpb, ...} or {status: "not run", why}}.

    Writes <out_dir>/predictions/<name>.jsonl, one record per item. Under torchrun every rank scores its share of
    each benchmark's batches and returns the whole result; rank 0 writes, the same bytes as one process.
    """
    model.eval()
    results = {}
    for name in opts.benchmarks:
        try:
            items = fixed_subset(load_benchmark(name, gpqa_csv=opts.gpqa_csv, mgsm_dir=opts.mgsm_dir), opts.limit,
                                 opts.seed)
        except BenchmarkUnavailable as e:
            results[name] = {"status": "not run", "why": str(e)}
            print(f"{name}: not run ({e})")
            continue
        t0 = time.time()
        records = evaluate_benchmark(model, tok, name, items, opts, batch_size)
        if out_dir is not None and dist.is_main():
            (Path(out_dir) / "predictions").mkdir(parents=True, exist_ok=True)
            write_jsonl(Path(out_dir) / "predictions" / f"{name}.jsonl", records)
        results[name] = summarize(name, items, records, opts.metrics)  # no wall time: results are reproducible
        print(report.benchmark_line(name, results[name], time.time() - t0))
    return results


def baseline_dir(model, opts: EvalOptions, fingerprint: str) -> Path:
    key = json_line([fingerprint, str(model.embed_tokens.weight.dtype), asdict(opts)])
    return CACHE_DIR / f"base-{fingerprint}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def shared_evaluation(model, tok: Tokenizer, opts: EvalOptions, fingerprint: str, batch_size: int) -> tuple[Path, dict]:
    """The base model's evaluation, computed once per (weights, dtype, evaluation settings) and shared by every arm
    (train.py): (its directory under runs/.cache, its results)."""
    out = baseline_dir(model, opts, fingerprint)
    with locked(out, "base evaluation"):
        if dist.from_main((out / "eval_results.json").is_file()):
            print(f"base evaluation: reusing {out}")
            return out, read_json(out / "eval_results.json")["benchmarks"]
        print("base evaluation (shared by every arm with these settings)")
        results = evaluate_model(model, tok, opts, out, batch_size)
        if dist.is_main():
            write_json(out / "eval_results.json", {"settings": asdict(opts), "benchmarks": results})
    return out, results


# ----------------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, "HF model directory (default: the prepared default, prepared on first use)")
    p.add_argument("--adapter", type=Path, default=None, help="adapter directory written by train.py")
    p.add_argument("--out", type=Path, default=None,
                   help="new or empty output directory (default: runs/eval-<model>[-<adapter path>])")
    p.add_argument("--seed", type=int, default=0, help="which items a --limit draws")
    p.add_argument("--batch-size", type=int, default=8)
    add_options(p.add_argument_group("evaluation (METHOD.md 6)"), EvalOptions)
    return p


def default_out(model_dir: Path, adapter: Path | None) -> Path:
    """Unique per model and adapter path: runs/a/adapter and runs/b/adapter never share a folder."""
    if adapter is None:
        return RUNS_DIR / f"eval-{model_dir.name}"
    where = hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:8]
    return RUNS_DIR / f"eval-{model_dir.name}-{adapter.resolve().parent.name}-{adapter.name}-{where}"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.device = dist.init(args.device)  # torchrun: this rank's process group and device; else unchanged
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give a positive number")
    opts = from_args(EvalOptions, args)
    opts.check_user_data()
    if args.compile:
        from tools.compiled import check_toolchain, compile_line, compile_model

        check_toolchain(torch.device(args.device))
    with dist.main_first():  # rank 0 prepares a missing default model and data; the others then find them
        model_dir = ensure_model(args.model)
        ensure_data(full=True)
    if args.adapter is not None and not args.adapter.is_dir():
        raise UserError(f"--adapter {args.adapter}: no such directory (give the adapter/ folder of a train.py run)")
    out = args.out or default_out(model_dir, args.adapter)
    config = {"model": str(model_dir), "adapter": str(args.adapter) if args.adapter else None,
              "options": asdict(opts)}
    with claim_output(out, config, resume=False, kind="evaluation"):
        torch.manual_seed(args.seed)
        model = Transformer.from_pretrained(model_dir, dtype=resolve_dtype(args.dtype, args.device),
                                            device=args.device)
        tok = Tokenizer.from_pretrained(model_dir)
        if args.adapter:
            load_adapter(model, args.adapter)
        if args.compile:
            compile_model(model)
        results = evaluate_model(model, tok, opts, out, args.batch_size)
        if dist.is_main():
            write_json(out / "results.json", config | {"benchmarks": results})
    print(report.results_table(results))
    print(f"predictions: {out / 'predictions'}")
    if args.compile:
        print(compile_line())


if __name__ == "__main__":
    run(main, interrupted="Evaluation does not resume: delete --out (or pass another) and run the command again.")
