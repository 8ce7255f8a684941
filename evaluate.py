"""Evaluation (SPEC 4.9): one prompt format per task family, one multiple-choice scorer, one generation path,
pure answer checkers, and a sandbox that runs generated code in a separate, limited process.

    python evaluate.py [--model DIR] [--adapter DIR] [--benchmarks a,b] [--limit N] [--shots K]
                       [--mc-format letter|cloze] [--chat auto|off] [--out DIR]

Multiple choice ("Question: ...\\nA. ..\\nB. ..\\nAnswer:") is read from the next-token log-probs of " A", " B", ...
(`--mc-format letter`), or as the log-likelihood of each answer text after "Question: ...\\nAnswer:" divided by its
length in characters (`--mc-format cloze`, OLMES' acc_per_char). MC prompts are raw text for every model (the
readout after "Answer:" is defined on raw text, as in lm-eval/OLMES); math and grade-school math use the
checkpoint's chat template when it has one (`--chat auto`, the default; `--chat off` uses raw text everywhere);
HumanEval is always a raw code completion. Every score carries n and a 95% Wilson interval.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from data import BENCHMARKS, BenchmarkUnavailable, extracted, load_benchmark, write_jsonl
from lora import load_adapter
from model import Tokenizer, Transformer, generate, right_pad
from prepare import RUNS_DIR, ensure_model, write_atomic

LETTERS = "ABCDEFGHIJ"
MC_FORMATS = ("letter", "cloze")
CHAT_MODES = ("auto", "off")
MATH_INSTRUCTION = "Think step by step and put the final answer in \\boxed{}."
GSM_INSTRUCTION = 'Think step by step and end with "The answer is N."'
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\n```")
GEN_CHUNK = 64  # new tokens per generate() call; between calls finished sequences (stop string seen) leave


@dataclass(frozen=True)
class Family:
    metric: str
    chat: bool  # wrap the prompt in the checkpoint's chat template when it has one (and --chat auto)
    stops: tuple[str, ...] = ()  # the decoded text is cut at the first of these
    max_new_tokens: int = 0


FAMILIES = {
    "mc": Family("argmax log-prob over the choices", chat=False),
    "math": Family("normalised exact match of the last \\boxed{}", True, ("\nProblem:",), 512),
    "gsm": Family("stated (else last) number equals the gold number", True, ("\nQuestion:",), 320),
    "code": Family("pass@1: unit tests run to completion in the sandbox", False, CODE_STOPS, 384),
}
TASKS = {"mmlu": "mc", "arc_challenge": "mc", "gpqa": "mc", "math500": "math", "mgsm_en": "gsm", "mgsm": "gsm",
         "humaneval": "code"}
assert tuple(TASKS) == BENCHMARKS, "data.BENCHMARKS and evaluate.TASKS must name the same benchmarks"
DEFAULT_BENCHMARKS = BENCHMARKS  # gpqa / mgsm show as "not run (why)" without the user's files
STAND_INS = {"mgsm_en": "offline stand-in for MGSM: GSM8K test 0-249, English",
             "humaneval": "offline stand-in for HumanEval+: base tests"}

SANDBOX_MEMORY_BYTES = 2 << 30  # address space
SANDBOX_FILE_BYTES = 16 << 20  # largest file the program may write (stderr included)
SANDBOX_PROCESSES = 64  # RLIMIT_NPROC (not enforced for root; the refused fork/spawn functions still are)
SANDBOX_WORKERS = max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------------------------------
# Prompt formats: one per family, used by evaluation and by the training mixture (data.py)

def mc_prompt(question: str, choices: list[str]) -> str:
    return "\n".join([f"Question: {question}", *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)), "Answer:"])


def format_prompt(family: str, item: dict) -> str:
    if family == "mc":
        return mc_prompt(item["question"], item["choices"])
    if family == "math":
        return f"Problem:\n{item['question']}\n{MATH_INSTRUCTION}\n\nSolution:"
    if family == "gsm":
        return f"Question: {item['question']}\n{GSM_INSTRUCTION}\nAnswer:"
    if family == "code":
        return item["prompt"]
    raise ValueError(f"unknown task family {family!r}; valid: {', '.join(FAMILIES)}")


def mc_request(item: dict, mc_format: str, shots: list[dict]) -> tuple[str, list[str]]:
    """(context, continuations): the letters after the lettered prompt, or the answer texts after a cloze prompt."""
    if mc_format == "letter":
        shown = lambda x: mc_prompt(x["question"], x["choices"])
        answers = lambda x: [f" {LETTERS[i]}" for i in range(len(x["choices"]))]
    else:
        shown = lambda x: f"Question: {x['question']}\nAnswer:"
        answers = lambda x: [f" {c}" for c in x["choices"]]
    prefix = "".join(f"{shown(s)}{answers(s)[s['answer']]}\n\n" for s in shots)
    return prefix + shown(item), answers(item)


# ----------------------------------------------------------------------------------------------------------------
# Answer checkers and statistics (pure functions)

def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included; None if absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5):]
    if not rest.lstrip().startswith("{"):  # "\boxed 5"
        match = re.match(r"\s+([^\s$]+)", rest)
        return match.group(1) if match else None
    rest, depth = rest.lstrip(), 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def normalize_math(s: str) -> str:
    """A canonical string for a final answer: LaTeX spacing, units, degrees, dollars and "x =" removed."""
    s = s.strip().strip("$").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[!,;: ]|~", "", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree|\s*degrees?$", "", s)
    s = re.sub(r",?\s*\\text\s*\{\s*and\s*\}\s*", ",", s)  # "1, 2, \text{ and } 3"
    s = re.sub(r"(.)\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}(\^\{?\d\}?)?$", r"\1", s)  # trailing unit: 5\text{ cm}^2
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "").replace("{,}", ",")  # 8{,}880
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=.)", "", s)  # "x = 5" -> "5"
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # thousands separators, not a tuple
        s = s.replace(",", "")
    return s


def to_number(s: str) -> float | None:
    """The value of a normalised answer that is a plain number or a simple fraction, else None."""
    if re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", s):
        return float(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?)(-?\d+)/(-?\d+)", s)
    if m and int(m.group(3)) != 0:
        return (-1 if m.group(1) else 1) * int(m.group(2)) / int(m.group(3))
    return None


def math_equal(pred: str, gold: str) -> bool:
    a, b = normalize_math(pred), normalize_math(gold)
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+"


def extract_number(text: str) -> str | None:
    """The number after the last "The answer is", else the last number in the text; commas dropped."""
    stated = list(re.finditer(r"answer is", text, flags=re.IGNORECASE))
    found = re.findall(NUMBER, text[stated[-1].end():].split("\n")[0]) if stated else []
    found = found[:1] or re.findall(NUMBER, text)[-1:]
    return found[0].replace(",", "") if found else None


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p, zz = k / n, z * z
    center = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    return (max(0.0, center - half), min(1.0, center + half))


def mcnemar_exact(a: dict[str, bool], b: dict[str, bool]) -> tuple[int, int, float]:
    """Exact McNemar test on the items both runs scored -> (only a correct, only b correct, two-sided p)."""
    from scipy.stats import binomtest

    both = a.keys() & b.keys()
    only_a = sum(1 for i in both if a[i] and not b[i])
    only_b = sum(1 for i in both if b[i] and not a[i])
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def fixed_subset(items: list[dict], limit: int | None, seed: int) -> list[dict]:
    """`limit` items drawn with `seed`, in their original order: the same items in every run with that seed."""
    if not limit or limit >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cuts = [text.index(s) for s in stops if s in text]
    return text[:min(cuts)] if cuts else text


# ----------------------------------------------------------------------------------------------------------------
# The sandbox: untrusted code in `python -I`, in a fresh directory, with rlimits and destructive functions refused.
# The harness prints a random nonce only after the whole program (tests included) has run, so a program that exits
# early (exit(0), sys.exit, os._exit) fails. This guards against accidents, not against an adversary.

SANDBOX_HARNESS = r'''
import builtins, io, os, resource, shutil, subprocess, sys, _posixsubprocess

def refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return refused

def disable_destructive_functions(sandbox):
    inside = lambda p: isinstance(p, int) or os.fsdecode(os.path.realpath(p)).startswith(sandbox + os.sep)
    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def guarded_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+") and not inside(file):
            raise PermissionError(f"writing {file!r} outside the sandbox directory is disabled")
        return real_open(file, mode, *args, **kwargs)
    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writes and not inside(path):
            raise PermissionError(f"writing {path!r} outside the sandbox directory is disabled")
        return real_os_open(path, flags, *args, **kwargs)
    def guarded_mkdir(path, *args, **kwargs):
        if not inside(path):
            raise PermissionError(f"creating {path!r} outside the sandbox directory is disabled")
        return real_mkdir(path, *args, **kwargs)
    builtins.open = io.open = guarded_open
    os.open, os.mkdir = guarded_os_open, guarded_mkdir
    for name in ("kill", "killpg", "system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
                 "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "link",
                 "symlink", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir",
                 "setuid", "seteuid", "setgid", "setsid", "mkfifo", "mknod"):
        if hasattr(os, name):
            setattr(os, name, refuse(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refuse(f"shutil.{name}"))
    subprocess.Popen = refuse("subprocess.Popen")
    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
    for name in ("ctypes", "resource"):
        sys.modules[name] = None

def main(nonce, program, memory, cpu_seconds, file_bytes, processes):
    for what, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu_seconds),
                        (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NPROC, processes)):
        resource.setrlimit(what, (int(value), int(value)))
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec")
    report = os.dup(1)  # only the harness writes here; the program's stdout goes to /dev/null
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.argv = [program]
    disable_destructive_functions(os.path.realpath(os.getcwd()))
    exec(code, {"__name__": "__sandbox__"})
    os.write(report, nonce.encode())

main(*sys.argv[1:])
'''


def run_program(program: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Run untrusted code in the sandbox -> (passed, what happened). Passed = exit code 0 and the nonce printed."""
    nonce = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-")).resolve()
    env = {"PATH": os.defpath, "HOME": str(workdir), "TMPDIR": str(workdir), "LC_ALL": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-I", "-c", SANDBOX_HARNESS, nonce, "program.py", str(SANDBOX_MEMORY_BYTES),
           str(math.ceil(timeout) + 1), str(SANDBOX_FILE_BYTES), str(SANDBOX_PROCESSES)]
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        with open(workdir / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            try:  # the whole process group: the program and anything it managed to start
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group has already exited
            if timed_out:
                proc.communicate()
                return False, f"timed out after {timeout:g}s"
        if proc.returncode == 0 and nonce.encode() in out:
            return True, "passed"
        lines = (workdir / "stderr.txt").read_text(errors="replace").strip().splitlines()
        reason = lines[-1][:300] if lines else ""
        if proc.returncode == 0:
            return False, f"exited before the tests finished {reason}".strip()
        return False, f"failed (exit code {proc.returncode}) {reason}".strip()
    finally:
        shutil.rmtree(workdir)


def check_program(program: str, timeout: float = 10.0) -> bool:
    return run_program(program, timeout)[0]


# ----------------------------------------------------------------------------------------------------------------
# Model-facing: one log-likelihood scorer for multiple choice, one generation path for everything else

def uses_chat(tok: Tokenizer, family: str, chat: str = "auto") -> bool:
    """Whether a family's prompts go through the chat template: its format says so and the checkpoint has one."""
    return chat == "auto" and FAMILIES[family].chat and tok.chat_template is not None


def encode_prompt(tok: Tokenizer, text: str, chat: bool) -> list[int]:
    return tok.encode_chat([{"role": "user", "content": text}]) if chat else tok.encode(text)


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
    device = model.embed_tokens.weight.device
    out = [[0.0] * len(conts) for _, conts in requests]
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False, dynamic_ncols=True):
        batch = rows[start:start + batch_size]
        logits = model(right_pad([t for _, _, t in batch]).to(device))  # (B, T, vocab)
        for i, (r, j, t) in enumerate(batch):
            ctx, conts = requests[r]
            if j is None:
                logp = logits[i, len(ctx) - 1].float().log_softmax(-1)  # (vocab,)
                out[r] = [logp[c[0]].item() for c in conts]
            else:
                logp = logits[i, len(ctx) - 1:len(t) - 1].float().log_softmax(-1)  # (len(cont), vocab)
                out[r][j] = logp.gather(-1, torch.tensor(conts[j], device=device)[:, None]).sum().item()
    return out


def score_mc(model, tok: Tokenizer, items: list[dict], mc_format: str = "letter", shots: int = 0,
             batch_size: int = 8, desc: str = "") -> list[dict]:
    """Per-item records of multiple-choice scoring (--mc-format letter: log-prob; cloze: log-prob per character)."""
    dev = extracted("mmlu_dev")  # 5 per subject; non-MMLU items take a fixed draw from all subjects
    fallback = random.Random(0).sample(dev, shots)
    requests, texts = [], []
    for x in items:
        same_subject = [d for d in dev if d["subject"] == x.get("subject")][:shots]
        context, conts = mc_request(x, mc_format, same_subject if len(same_subject) == shots else fallback)
        requests.append((tok.encode(context), [tok.encode(c, bos=False) for c in conts]))
        texts.append(conts)
    scores = loglikelihoods(model, requests, batch_size, desc)
    records = []
    for x, s, conts in zip(items, scores, texts):
        if mc_format == "cloze":
            s = [v / len(c) for v, c in zip(s, conts)]
        pred = max(range(len(s)), key=s.__getitem__)
        records.append(dict(id=x["id"], prediction=LETTERS[pred], gold=LETTERS[x["answer"]],
                            correct=pred == x["answer"], scores=[round(v, 4) for v in s]))
    return records


def generate_until(model, tok: Tokenizer, prompts: list[list[int]], stops: tuple[str, ...], max_new_tokens: int,
                   batch_size: int = 8, desc: str = "") -> list[str]:
    """Greedy continuations, cut at the first stop string; EOS ends a sequence too (model.generate)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    new = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, leave=False, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        active = order[start:start + batch_size]
        while active:  # every active sequence has generated the same number of tokens so far
            step = min(GEN_CHUNK, max_new_tokens - len(new[active[0]]))
            outs = generate(model, [prompts[i] + new[i] for i in active], max_new_tokens=step, stop_ids=tok.eos_ids)
            still = []
            for i, o in zip(active, outs):
                new[i] += o
                text = tok.decode(new[i])
                if len(o) == step and len(new[i]) < max_new_tokens and not any(s in text for s in stops):
                    still.append(i)
            active = still
        bar.update(len(order[start:start + batch_size]))
    bar.close()
    return [cut_at_stop(tok.decode(ids), stops) for ids in new]


def grade(family: str, items: list[dict], outputs: list[str], timeout: float = 10.0) -> list[dict]:
    """Per-item records for generated outputs: the extracted answer (or the sandbox's verdict) and correctness."""
    if family == "code":
        programs = [f"{x['prompt']}{out}\n\n{x['test']}\ncheck({x['entry_point']})\n" for x, out in zip(items, outputs)]
        with ThreadPoolExecutor(SANDBOX_WORKERS) as pool:
            verdicts = list(pool.map(lambda p: run_program(p, timeout), programs))
        return [dict(id=x["id"], prediction=why, gold="passed", correct=ok, output=out)
                for x, out, (ok, why) in zip(items, outputs, verdicts)]
    records = []
    for x, out in zip(items, outputs):
        pred = extract_boxed(out) if family == "math" else extract_number(out)
        records.append(dict(id=x["id"], prediction=pred, gold=x["answer"],
                            correct=pred is not None and math_equal(pred, x["answer"]), output=out))
    return records


def summarize(name: str, items: list[dict], records: list[dict]) -> dict:
    k, n = sum(r["correct"] for r in records), len(records)
    family = TASKS[name]
    result = dict(accuracy=k / n if n else 0.0, n=n, ci95=list(wilson_interval(k, n)), metric=FAMILIES[family].metric)
    if family == "mc":  # uniform guessing; ARC has some 3- and 5-choice items
        result["chance"] = sum(1 / len(x["choices"]) for x in items) / max(1, n)
    if name in STAND_INS:
        result["note"] = STAND_INS[name]
    return result


def evaluate_model(model, tok: Tokenizer, benchmarks=DEFAULT_BENCHMARKS, limit: int | None = None, seed: int = 0,
                   out_dir: str | Path | None = None, shots: int = 0, mc_format: str = "letter",
                   max_new_tokens: int | None = None, batch_size: int | None = None, chat: str = "auto",
                   gpqa_csv=None, mgsm_dir=None, timeout: float = 10.0) -> dict[str, dict]:
    """Score `model` on each benchmark -> {name: {accuracy, n, ci95, ...} or {status: "not run", why}}.

    Writes <out_dir>/predictions/<name>.jsonl (id, prediction, gold, correct, and the output for generation).
    """
    if mc_format not in MC_FORMATS or chat not in CHAT_MODES or not 0 <= shots <= 5:
        raise ValueError(f"mc_format in {MC_FORMATS}, chat in {CHAT_MODES}, shots in 0..5 (MMLU dev has 5 per "
                         f"subject); got {mc_format!r}, {chat!r}, {shots}")
    batch_size = batch_size or 8
    model.eval()
    results = {}
    for name in benchmarks:
        try:
            items = fixed_subset(load_benchmark(name, gpqa_csv=gpqa_csv, mgsm_dir=mgsm_dir), limit, seed)
        except BenchmarkUnavailable as e:
            results[name] = {"status": "not run", "why": str(e)}
            print(f"{name}: not run ({e})")
            continue
        family, t0 = TASKS[name], time.time()
        if family == "mc":
            records = score_mc(model, tok, items, mc_format, shots, batch_size, desc=name)
        else:
            prompts = [encode_prompt(tok, format_prompt(family, x), uses_chat(tok, family, chat)) for x in items]
            outputs = generate_until(model, tok, prompts, FAMILIES[family].stops,
                                     max_new_tokens or FAMILIES[family].max_new_tokens, batch_size, desc=name)
            records = grade(family, items, outputs, timeout)
        if out_dir is not None:
            (Path(out_dir) / "predictions").mkdir(parents=True, exist_ok=True)
            write_jsonl(Path(out_dir) / "predictions" / f"{name}.jsonl", records)
        results[name] = r = summarize(name, items, records) | {"seconds": round(time.time() - t0, 1)}
        print(f"{name}: {100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] n={r['n']}"
              + (f" (chance {100 * r['chance']:.1f}%)" if "chance" in r else "") + f" in {r['seconds']:.0f} s")
    return results


def results_table(results: dict[str, dict]) -> str:
    lines = ["| benchmark | accuracy % | 95% CI | n | chance % | seconds | note |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "accuracy" not in r:
            lines.append(f"| {name} | not run | | | | | {r['why']} |")
            continue
        chance = f"{100 * r['chance']:.1f}" if "chance" in r else ""
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} | [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] "
                     f"| {r['n']} | {chance} | {r.get('seconds', '')} | {r.get('note', '')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line

def benchmark_list(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {unknown}; valid choices: {', '.join(BENCHMARKS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="HF model directory (default: the prepared default)")
    p.add_argument("--adapter", type=Path, default=None, help="adapter directory written by train.py")
    p.add_argument("--benchmarks", type=benchmark_list, default=list(DEFAULT_BENCHMARKS),
                   help=f"comma-separated, from {','.join(BENCHMARKS)}")
    p.add_argument("--limit", type=int, default=None, help="items per benchmark: a fixed subset drawn with --seed")
    p.add_argument("--shots", type=int, default=0, help="MC examples from MMLU dev (0-5)")
    p.add_argument("--mc-format", choices=MC_FORMATS, default="letter")
    p.add_argument("--chat", choices=CHAT_MODES, default="auto", help="chat template for math prompts")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: per family (math 512, gsm 320, "
                                                                     "code 384)")
    p.add_argument("--gpqa-csv", type=Path, default=None, help="official GPQA csv (not obtainable offline)")
    p.add_argument("--mgsm-dir", type=Path, default=None, help="official MGSM tsv files, one per language")
    p.add_argument("--out", type=Path, default=None, help="default: runs/eval-<model>[-<adapter>]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HumanEval program")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    model_dir = ensure_model(args.model)
    dtype = torch.bfloat16 if str(args.device).startswith("cuda") else torch.float32
    model = Transformer.from_pretrained(model_dir, dtype=dtype, device=args.device)
    tok = Tokenizer.from_pretrained(model_dir)
    if args.adapter:
        load_adapter(model, args.adapter)
    out = args.out or RUNS_DIR / ("eval-" + model_dir.name + (f"-{args.adapter.name}" if args.adapter else ""))
    results = evaluate_model(model, tok, args.benchmarks, args.limit, args.seed, out, args.shots, args.mc_format,
                             args.max_new_tokens, args.batch_size, args.chat, args.gpqa_csv, args.mgsm_dir,
                             args.timeout)
    summary = {"model": str(model_dir), "adapter": str(args.adapter) if args.adapter else None,
               "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "benchmarks": results}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(summary, indent=2))
    print(results_table(results))
    print(f"predictions: {out / 'predictions'}")


if __name__ == "__main__":
    main()
