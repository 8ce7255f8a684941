"""Evaluation (METHOD.md section 6): one multiple-choice scorer, one generation path, gold bits per byte.

    python evaluate.py [--model DIR] [--adapter DIR] [--benchmarks a,b] [--limit N] [--metrics acc,bpb] [--out DIR]
    torchrun --nproc-per-node N evaluate.py ...      # each benchmark's batches dealt out over N processes (dist.py)

Multiple choice ("Question: ...\\nA. ..\\nB. ..\\nAnswer:") is read from the next-token log-probs of " A", " B", ...
(`--mc-format letter`), or as the log-likelihood of each answer text after "Question: ...\\nAnswer:" divided by its
length in characters (`--mc-format cloze`, OLMES' acc_per_char). Math and grade-school math are generated under the
checkpoint's chat template when it has one (`--chat auto`) and checked by answers.py; HumanEval is a raw code
completion (`--code-format completion`) or a chat request whose code block is extracted (`chat`), run in the
sandbox (sandbox.py); HumanEval+ (`--humaneval-plus`, EvalPlus's file) runs every base and plus input against the
canonical solution's outputs (tasks.code_program). `--metrics bpb` scores the gold answer's bits per byte after the
same prompt: no generation, a continuous per-item measure that tells adapters apart where accuracy is at chance.
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

from support import dist
from support import report
from support.answers import compare_math, compare_number, extract_boxed, extract_number, math_equal  # noqa: F401 (METHOD 8)
# (answer checking and the sandbox stay importable from here: METHOD.md 8)
from support.cli import Parser, add_model_options, add_options, comma_list, from_args, option, resolve_dtype, run
from data import BenchmarkUnavailable, extracted, load_benchmark
from support.files import (CACHE_DIR, RUNS_DIR, UserError, claim_output, json_line, load_tensors, locked, read_json,
                           repo_relative, write_json, write_jsonl)
from lora import load_adapter
from model import Transformer, sequence_nll
from support.tokenizer import Tokenizer
from support.generate import generate
from support.batching import length_batches, map_batches, right_pad
from prepare import ensure_data, ensure_model
from support.sandbox import SANDBOX_WORKERS, check_program, run_program  # noqa: F401 (METHOD 8)
from support.stats import mean_interval, wilson_interval
from support.tasks import (BENCHMARKS, CHAT_MODES, CODE_FORMATS, FAMILIES, LETTERS, MC_FORMATS, STAND_INS, TASKS,
                   USER_DATA_BENCHMARKS, answer_complete, code_chat_prompt, code_program, encode_prompt, extract_code,
                   format_prompt, gold_text, mc_request, plus_failure, uses_chat)

METRICS = ("acc", "bpb", "mc")  # mc: multiple-choice log-loss and cloze accuracy (6.2)
PLUS_TIMEOUT_FACTOR = 6  # a HumanEval+ task's whole program (EvalPlus caps a task at 60 s; inputs have own limits)
BPB_BATCH_TOKENS = 8192  # long golds (MATH solutions) go in smaller batches: less padding, a bar that keeps moving


@dataclass(frozen=True)
class EvalOptions:
    benchmarks: tuple[str, ...] = option(BENCHMARKS, "benchmarks to run", type=comma_list(BENCHMARKS))
    limit: int | None = option(None, "items per benchmark: a fixed subset drawn with --seed (default: all)", type=int)
    shots: int = option(0, "MC examples from MMLU dev (0-5)")
    mc_format: str = option("letter", "multiple choice read from answer letters or answer texts", MC_FORMATS)
    chat: str = option("auto", "chat template where a family uses it (math, gsm) and the checkpoint has one",
                       CHAT_MODES)
    code_format: str = option("auto", "HumanEval as a raw completion, or a chat request for the whole function "
                              "(auto: chat when the checkpoint has a chat template)", CODE_FORMATS)
    metrics: tuple[str, ...] = option(("acc", "bpb"), "accuracy, gold bits per byte, and/or (mc) multiple-choice "
                                      "log-loss and cloze accuracy", type=comma_list(METRICS))
    max_new_tokens: int | None = option(None, "new tokens per answer (default: per family: math 512, gsm 320, "
                                              "code 384)", type=int)
    stop_at_answer: bool = option(False, "end a math / gsm answer once it has stated its answer in full (a closed "
                                  "\\boxed{}, 'The answer is N.'): faster; graded differently only where a model "
                                  "states a second answer")
    timeout: float = option(10.0, f"seconds per HumanEval program in the sandbox (HumanEval+: {PLUS_TIMEOUT_FACTOR}x, "
                                  "for all of a task's inputs)")
    gpqa_csv: str | None = option(None, "the official GPQA csv (not obtainable offline)", type=str)
    mgsm_dir: str | None = option(None, "the official MGSM tsv files, one per language", type=str)
    humaneval_plus: str | None = option(None, "EvalPlus's HumanEvalPlus.jsonl(.gz): base and plus tests",
                                        type=str)
    seed: int = 0  # the caller's --seed: which items a --limit draws

    def __post_init__(self):
        checks = [(self.limit is None or self.limit > 0,
                   f"--limit {self.limit}: give a positive number of items (leave it out for every item)"),
                  (0 <= self.shots <= 5, f"--shots {self.shots}: MMLU dev has 5 examples per subject, give 0-5"),
                  (self.max_new_tokens is None or self.max_new_tokens > 0,
                   f"--max-new-tokens {self.max_new_tokens}: give a positive number"),
                  (self.timeout > 0, f"--timeout {self.timeout}: give a positive number of seconds")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def user_files(self) -> dict:
        return dict(gpqa_csv=self.gpqa_csv, mgsm_dir=self.mgsm_dir, humaneval_plus=self.humaneval_plus)

    def check_user_data(self) -> None:
        """Read the user's GPQA / MGSM / HumanEval+ files now (encoding, columns, golds), so a bad file stops the
        run before any model is loaded."""
        for name in (n for n in self.benchmarks if n in USER_DATA_BENCHMARKS):
            try:
                load_benchmark(name, **self.user_files())
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
    device = model.embed_tokens.weight.device

    def run(batch, bar):
        logits = model(right_pad([rows[k][2] for k in batch]).to(device))  # (B, T, vocab)
        values = []
        for i, k in enumerate(batch):
            r, j, t = rows[k]
            ctx, conts = requests[r]
            if j is None:
                logp = logits[i, len(ctx) - 1].float().log_softmax(-1)  # (vocab,)
                values.append([logp[c[0]].item() for c in conts])
            else:
                logp = logits[i, len(ctx) - 1:len(t) - 1].float().log_softmax(-1)  # (len(cont), vocab)
                values.append(logp.gather(-1, torch.tensor(conts[j], device=device)[:, None]).sum().item())
        return values

    scores = map_batches(length_batches([len(t) for _, _, t in rows], batch_size), run, len(rows), desc)
    out = [[0.0] * len(conts) for _, conts in requests]
    for (r, j, _), v in zip(rows, scores):
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


def score_choices(model, tok: Tokenizer, items: list[dict], opts: EvalOptions, batch_size: int,
                  desc: str = "") -> list[dict]:
    """Per item, every answer text's log-prob after the cloze prompt: cloze_correct (the highest log-prob per
    character, OLMES acc_per_char) and mc_logloss (-log of the gold's probability renormalised over the choices),
    which carry information where letter accuracy is at chance."""
    requests, chars = [], []
    for x in items:
        context, conts = mc_request(x, "cloze", mc_shots(x, opts.shots))
        requests.append((tok.encode(context), [tok.encode(c, bos=False) for c in conts]))
        chars.append([len(c) for c in conts])
    records = []
    for x, logp, n in zip(items, loglikelihoods(model, requests, batch_size, f"{desc} (choices)"), chars):
        top, per_char = max(logp), [v / c for v, c in zip(logp, n)]
        log_total = top + math.log(sum(math.exp(v - top) for v in logp))  # log sum_j p(choice j)
        records.append(dict(choice_logprobs=logp, choice_chars=n, gold_choice=x["answer"],
                            mc_logloss=log_total - logp[x["answer"]],
                            cloze_correct=max(range(len(n)), key=per_char.__getitem__) == x["answer"]))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Generation: one cached greedy loop per batch, finished rows leave it

def generate_until(model, tok: Tokenizer, prompts: list[list[int]], finished, max_new_tokens: int,
                   batch_size: int = 8, desc: str = "") -> list[str]:
    """Greedy continuations, each ending at EOS or once `finished(text so far)` holds (the caller cuts it)."""
    def run(batch, bar):
        new = generate(model, [prompts[i] for i in batch], max_new_tokens, tok.eos_ids,
                       stop=lambda i, ids: finished(tok.decode(ids)),
                       on_step=lambda active: bar.set_postfix(generating=active, refresh=True))
        return [tok.decode(ids) for ids in new]

    batches = length_batches([len(p) for p in prompts], batch_size, longest_first=False)
    return map_batches(batches, run, len(prompts), desc)


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
        programs = [code_program(x, extract_code(out, x) if code_chat else f"{x['prompt']}{out}")
                    for x, out in zip(items, outputs)]
        plus = [("plus_input" in x) for x in items]  # a HumanEval+ program runs every input of the task, twice
        with ThreadPoolExecutor(SANDBOX_WORKERS) as pool:
            verdicts = list(pool.map(lambda p, k: run_program(p, opts.timeout * (PLUS_TIMEOUT_FACTOR if k else 1)),
                                     programs, plus))
        return [dict(id=x["id"], prediction=why, gold="passed", correct=ok, output=out) |
                (dict(base_passed=ok or plus_failure(why) == "plus") if k else {})
                for x, out, (ok, why), k in zip(items, outputs, verdicts, plus)]
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
    device = model.embed_tokens.weight.device

    def run(batch, bar):
        tokens = right_pad([requests[i][2] + requests[i][3] for i in batch], tok.pad_id)
        mask = right_pad([[False] * len(requests[i][2]) + [True] * len(requests[i][3]) for i in batch], False,
                         torch.bool)
        total, _ = sequence_nll(model, tokens.to(device), mask.to(device))
        return total.tolist()

    # longest first, at most batch_size rows and BPB_BATCH_TOKENS padded tokens
    batches = length_batches([len(r[2]) + len(r[3]) for r in requests], batch_size, max_tokens=BPB_BATCH_TOKENS)
    nll = map_batches(batches, run, len(items), f"{desc} (bpb)")
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
    if "mc" in metrics and family == "mc":
        k = sum(r["cloze_correct"] for r in records)
        result["mc_logloss"] = mean_interval([r["mc_logloss"] for r in records])
        result["cloze_accuracy"] = dict(accuracy=k / n if n else 0.0, ci95=list(wilson_interval(k, n)))
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
                (lambda text: any(s in text for s in stops) or (opts.stop_at_answer and answer_complete(family, text)))
            prompts = [generation_prompt(tok, family, x, opts) for x in items]
            outputs = generate_until(model, tok, prompts, finished,
                                     opts.max_new_tokens or FAMILIES[family].max_new_tokens, batch_size, desc=name)
            outputs = outputs if code_chat else [cut_at_stop(o, stops) for o in outputs]
            acc = dist.gather(grade(family, dist.shard(items), dist.shard(outputs), opts, code_chat))  # sandbox too
        records = [r | a for r, a in zip(records, acc)]
    if "bpb" in opts.metrics:
        records = [r | b for r, b in zip(records, score_bpb(model, tok, name, items, opts, batch_size, desc=name))]
    if "mc" in opts.metrics and family == "mc":
        records = [r | c for r, c in zip(records, score_choices(model, tok, items, opts, batch_size, desc=name))]
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
            items = fixed_subset(load_benchmark(name, **opts.user_files()), opts.limit, opts.seed)
        except BenchmarkUnavailable as e:
            results[name] = {"status": "not run", "why": repo_relative(str(e))}  # reports must not name this machine
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
    for path in sorted(args.adapter.glob("*.safetensors")) if args.adapter else ():
        load_tensors(path, note=False)  # damaged or non-finite adapter tensors: one line now, not after the model loads
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
