"""Files a run depends on or writes: a damaged training checkpoint is named with the two ways on, prepared model and
data files are verified and rebuilt, a claimed directory keeps its first settings, and a recorded reason names no
path of the machine. Split from test_cli.py, whose helpers it shares."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import evaluate
import prepare
import train
from conftest import LLAMA3_SCALING, WordTokenizer, tiny_model
from data import encode_example, load_benchmark
from lora import apply_lora
from support.files import LOCK_FILE, UserError, claim_output, file_record, read_jsonl
from test_cli import one_line_error


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: a damaged checkpoint.pt is named, with the two ways on

CFG = train.TrainOptions(steps=4, batch_size=2, grad_accum=1, seq_len=40, warmup=1, checkpoint_every=2).sized("default")


def toy_run(run_dir: Path, resume: bool, previous: bool = False) -> list[dict]:
    tok = WordTokenizer()
    examples = [encode_example(tok, f"question {i}: x{i}", f"answer {i % 3}", 40, chat=False) for i in range(8)]
    model = tiny_model(rope_scaling=LLAMA3_SCALING)
    torch.manual_seed(0)
    apply_lora(model, [1], r=4, alpha=8, dropout=0.0)
    return train.train(model, examples, CFG, 0, pad_id=0, run_dir=run_dir, resume=resume, previous=previous)


DAMAGES = {
    "truncated": lambda data: data[:len(data) // 2],
    "empty": lambda data: b"",
    "overwritten": lambda data: b"not a checkpoint\n" * 64,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step run: checkpoint.pt at step 4, checkpoint.prev.pt at step 2."""
    run_dir = tmp_path_factory.mktemp("run")
    toy_run(run_dir, resume=False)
    return run_dir


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_names_the_file_and_both_ways_on(damage, trained, tmp_path, capsys):
    tmp_path = shutil.copytree(trained, tmp_path / "run")
    checkpoint = tmp_path / train.CHECKPOINT
    checkpoint.write_bytes(DAMAGES[damage](checkpoint.read_bytes()))
    line = one_line_error(capsys, lambda argv: toy_run(tmp_path, resume=True), [])
    assert line.startswith(f"error: {checkpoint} is damaged") and "add --previous-checkpoint to continue from " \
        "checkpoint.prev.pt, or add --restart to train this arm from step 0" in line, line
    log = toy_run(tmp_path, resume=True, previous=True)  # --previous-checkpoint: on from step 2
    assert [r["step"] for r in log] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------------
# Prepared files: verified against the marker, rebuilt instead of used when damaged

@pytest.fixture
def bench_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of data/benchmarks that data.py and prepare.py use instead of the shared one."""
    copy = shutil.copytree(prepare.BENCH_DIR, tmp_path / "benchmarks", ignore=shutil.ignore_patterns(LOCK_FILE))
    monkeypatch.setattr(prepare, "BENCH_DIR", copy)
    return copy


def cut_at_a_line(path: Path):
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:len(lines) // 2]) + b"\n")  # still valid JSONL, half the items


def edit_a_gold_answer(path: Path):
    """The first item's gold index changed to another one-digit index: the size stays the same."""
    first, rest = path.read_bytes().split(b"\n", 1)
    item = json.loads(first)
    edited = json.dumps({**item, "answer": (item["answer"] + 1) % len(item["choices"])}, ensure_ascii=False)
    assert len(edited.encode()) == len(first)
    path.write_bytes(edited.encode() + b"\n" + rest)


@pytest.mark.parametrize("damage", [cut_at_a_line, edit_a_gold_answer])
def test_a_cut_or_edited_extraction_is_extracted_again_not_scored(damage, bench_copy, capsys):
    path = bench_copy / "arc_challenge.jsonl"
    original = path.read_bytes()
    damage(path)
    items = load_benchmark("arc_challenge")
    assert "arc_challenge.jsonl differ from what was extracted" in capsys.readouterr().out
    assert path.read_bytes() == original and items == read_jsonl(path)


def test_prepare_data_only_repairs_a_damaged_extraction(bench_copy, capsys):
    path = bench_copy / "math500.jsonl"
    original = path.read_bytes()
    path.write_bytes(original[:-1000])  # cut inside a line
    prepare.main(["--data-only"])
    out = capsys.readouterr().out
    assert "math500.jsonl differ" in out and "data ready and verified" in out
    assert path.read_bytes() == original


def test_a_truncated_or_changed_model_file_is_not_prepared(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "checkpoints" / "SmolLM2-135M-Instruct"
    model_dir.mkdir(parents=True)
    for name, size in (("config.json", 100), ("tokenizer.json", 300), ("model.safetensors", 4096)):
        (model_dir / name).write_bytes(os.urandom(size))
    files = {p.name: file_record(p) for p in model_dir.iterdir()}
    (model_dir / prepare.MARKER).write_text(json.dumps({**prepare.MARKER_CONTENT, "files": files}))
    assert prepare.is_prepared(model_dir, full=True)

    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1])  # truncated: caught on every use, by its size
    assert not prepare.is_prepared(model_dir)
    weights.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes: caught by the hash
    assert prepare.is_prepared(model_dir) and not prepare.is_prepared(model_dir, full=True)

    rebuilt = []
    monkeypatch.setattr(prepare, "DEFAULT_MODEL_DIR", model_dir)
    monkeypatch.setattr(prepare, "prepare_model", lambda out: rebuilt.append(out) or out)
    prepare.main(["--model-only"])  # `python prepare.py` checks the hashes: rebuilds, never "already prepared"
    assert rebuilt == [model_dir] and "already prepared" not in capsys.readouterr().out
    weights.write_bytes(data[:-1])
    assert prepare.ensure_model() == model_dir and rebuilt == [model_dir, model_dir]  # every use: the size


def test_claim_output_takes_a_config_only_directory_and_refuses_a_changed_resume(tmp_path):
    out = tmp_path / "run"
    with claim_output(out, {"arm": "a", "steps": 1}, resume=False, resume_keys=("arm", "steps")):
        pass  # a start that failed before making anything
    with claim_output(out, {"arm": "b", "steps": 2}, resume=True, resume_keys=("arm", "steps")):
        (out / "scores.json").write_text("{}")  # this one started
    with pytest.raises(UserError, match=r"different settings: steps=2 \(now 3\)"):
        with claim_output(out, {"arm": "b", "steps": 3}, resume=True, resume_keys=("arm", "steps")):
            pass
    assert json.loads((out / "config.json").read_text()) == {"arm": "b", "steps": 2}
    assert (out / "scores.json").read_text() == "{}"


def test_a_benchmark_not_run_is_recorded_without_the_machines_paths(tmp_path):
    from support.files import ROOT

    results = evaluate.evaluate_model(tiny_model(), None, evaluate.EvalOptions(benchmarks=("gpqa",)), tmp_path)
    assert results["gpqa"]["status"] == "not run" and "data/gpqa/gpqa_diamond.csv" in results["gpqa"]["why"]
    assert str(ROOT) not in results["gpqa"]["why"]
