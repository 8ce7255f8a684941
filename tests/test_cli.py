"""The command-line edge: a user mistake is one line and exit code 2, checked before any work; no run
overwrites what it did not make; a damaged download, extraction or checkpoint is named, never used.

Most checks call `cli.run(module.main, argv)` in-process; a subprocess is used where only a real process shows the
property (the exit code without a traceback, a second process holding the lock, a real Ctrl-C).
"""
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import cli
import evaluate
import train
from conftest import LLAMA3_SCALING, tiny_model, tiny_model_dir
from support.files import LOCK_FILE, UserError
from garfa import apply_garfa
from lora import apply_lora, save_adapter

ROOT = Path(__file__).resolve().parents[1]
GPQA_HEADER = "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """One tiny model directory (random weights, a real tokenizer) shared by every test that only reads it."""
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def no_work(tmp_path, monkeypatch):
    """Fail the test if a command loads a model (train.py, evaluate.py) or writes a layer-score or baseline cache:
    a rejected option must stop before any of that."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the command loaded the model before rejecting the input")

    cache = tmp_path / "cache"
    for module in (train, evaluate, __import__("sensitivity")):
        monkeypatch.setattr(module, "CACHE_DIR", cache)
    monkeypatch.setattr(train, "load_model", forbidden)
    monkeypatch.setattr(evaluate.Transformer, "from_pretrained", forbidden)
    yield
    assert not cache.exists()


def one_line_error(capsys, main, argv, code: int = 2) -> str:
    """Run a command in-process the way `python X.py` does; its stderr must be one `error: ...` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == code and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def command(*argv, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
                          **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Options: rejected at once, before --out is claimed and before any model is loaded

def gpqa_file(tmp_path, header: str, row: str) -> str:
    path = tmp_path / "gpqa.csv"
    path.write_text(header + row)
    return str(path)


TRAIN_MISTAKES = {
    "r 0": (["--r", "0"], ["--r 0", "at least 1"]),
    "targets foo": (["--targets", "foo"], ["--targets", "foo", "valid choices: q_proj"]),
    "limit -1": (["--limit", "-1"], ["--limit -1"]),
    "checkpoint-every 0": (["--checkpoint-every", "0"], ["--checkpoint-every 0", "at least 1"]),
    "batch-size 0": (["--batch-size", "0"], ["--batch-size 0", "at least 1"]),
    "eval-batch-size 0": (["--eval-batch-size", "0"], ["--eval-batch-size 0"]),
    "k 0": (["--k", "0"], ["--k >= 1"]),
    "shots 9": (["--shots", "9"], ["--shots 9", "0-5"]),
    "steps 0": (["--steps", "0"], ["--steps 0", "--arm base"]),
    "gpqa-csv missing": (["--gpqa-csv", "/nonexistent/gpqa.csv"], ["/nonexistent/gpqa.csv", "no such file"]),
    "gpqa-csv columns": (lambda tmp: ["--gpqa-csv", gpqa_file(tmp, "question,answer\n", "q,a\n")],
                         ["not a GPQA csv", "missing columns", "Correct Answer"]),
    "gpqa-csv short row": (lambda tmp: ["--gpqa-csv", gpqa_file(tmp, GPQA_HEADER, "q,a\n")],
                           ["record 1", "fewer fields"]),
    "restart alone": (["--restart"], ["--restart", "--resume"]),
    "seeds twice": (["--seeds", "0,0"], ["--seeds 0,0", "each seed once"]),
}


@pytest.mark.parametrize("case", TRAIN_MISTAKES)
def test_train_options_are_one_line_errors_before_any_work(case, tiny, tmp_path, capsys, no_work):
    extra, expected = TRAIN_MISTAKES[case]
    extra = extra(tmp_path) if callable(extra) else extra
    out = tmp_path / "out"
    t0 = time.time()
    line = one_line_error(capsys, train.main, ["--arm", "sens-sens", "--model", str(tiny), "--out", str(out)] + extra)
    assert all(word in line for word in expected), line
    assert not out.exists() and time.time() - t0 < 20  # nothing claimed; the old checks came after 35 minutes


EVAL_MISTAKES = {
    "batch-size 0": (["--batch-size", "0"], ["--batch-size 0"]),
    "limit -1": (["--limit", "-1"], ["--limit -1"]),
    "shots 9": (["--shots", "9"], ["--shots 9"]),
    "benchmarks": (["--benchmarks", "mmlu,squad"], ["squad", "valid choices: mmlu"]),
    "gpqa-csv missing": (["--gpqa-csv", "/nonexistent/gpqa.csv"], ["no such file"]),
    "adapter missing": (["--adapter", "/nonexistent/adapter"], ["--adapter /nonexistent/adapter", "train.py"]),
}


@pytest.mark.parametrize("case", EVAL_MISTAKES)
def test_evaluate_options_are_one_line_errors_before_any_work(case, tiny, tmp_path, capsys, no_work):
    extra, expected = EVAL_MISTAKES[case]
    out = tmp_path / "out"
    line = one_line_error(capsys, evaluate.main, ["--model", str(tiny), "--out", str(out)] + extra)
    assert all(word in line for word in expected), line
    assert not out.exists()


@pytest.mark.parametrize("name", ["train", "evaluate", "sensitivity"])
def test_compile_without_a_cpp_compiler_is_one_line_before_any_work(name, tiny, tmp_path, capsys, no_work,
                                                                     monkeypatch):
    """The check comes before the model is loaded (no_work: Transformer.from_pretrained fails the test)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-compiler++"))
    out = tmp_path / "out"
    argv = {"train": ["--arm", "sens-sens"], "evaluate": [], "sensitivity": []}[name]
    line = one_line_error(capsys, __import__(name).main, argv + ["--compile", "--model", str(tiny), "--out", str(out)])
    assert "--compile on the CPU needs a C++ compiler" in line and "run without --compile" in line, line
    assert not out.exists()


@pytest.mark.parametrize("main, argv, expected", [
    ("sensitivity", ["--multiverse", "--calib-seeds", "x"], "argument --calib-seeds: invalid comma_ints value: 'x'"),
    ("tools.readme", ["--main"], "argument --main: expected one argument"),
])
def test_the_other_commands_parse_mistakes_are_one_line_too(main, argv, expected, capsys):
    module = importlib.import_module(main)
    assert expected in one_line_error(capsys, module.main, argv)


def test_a_user_error_exits_2_without_a_traceback_and_debug_shows_it(tiny, tmp_path, monkeypatch):
    bad = shutil.copytree(tiny, tmp_path / "mistral")
    (bad / "config.json").write_text(json.dumps({**json.loads((bad / "config.json").read_text()),
                                                 "model_type": "mistral"}))
    argv = ["train.py", "--arm", "sens-sens", "--model", str(bad), "--out", str(tmp_path / "out")]
    result = command(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {bad / 'config.json'}: model_type 'mistral' is not supported (supported: llama)"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="mistral"):  # --debug: the traceback, for a bug report
        cli.run(train.main, argv[1:] + ["--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(UserError, match="mistral"):
        cli.run(train.main, argv[1:])


def test_train_help_shows_every_training_option_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    text = " ".join(train.build_parser().format_help().split())
    for expected in ("--r R LoRA rank (default: 16)", "--alpha ALPHA LoRA alpha (scaling alpha / r) (default: 32.0)",
                     "--dropout DROPOUT LoRA dropout (default: 0.05)", "--lr-lora LR_LORA LoRA learning rate "
                     "(default: 0.0002)", "--steps STEPS optimizer steps; default by --preset: default 40, "
                     "cpu-ablation 50, paper 1000", "(less memory, ~30% slower)",
                     "--metrics METRICS acc, bpb and/or mc; default by --preset: default acc,bpb, cpu-ablation bpb,mc"):
        assert expected in text, expected
    assert "(default: None)" not in text and "option_strings" not in text  # no raw argparse internals


# ----------------------------------------------------------------------------------------------------------------
# Model directories and adapters: what is wrong, in which file, and what to do

def damage_config(key, value=None):
    def damage(model_dir: Path):
        config = json.loads((model_dir / "config.json").read_text())
        config.pop(key) if value is None else config.update({key: value})
        (model_dir / "config.json").write_text(json.dumps(config))
    return damage


def split_into_shards(model_dir: Path):
    """An index naming two shards of which only the first is present."""
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        names = list(f.keys())
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00002.safetensors")
    weight_map = {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


MODEL_MISTAKES = {
    "model_type mistral": (damage_config("model_type", "mistral"), ["config.json", "model_type 'mistral'", "llama"]),
    "unknown rope type": (damage_config("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
                          ["config.json", "rope type 'yarn'", "default, llama3"]),
    "llama3 rope key missing": (damage_config("rope_scaling", {k: v for k, v in LLAMA3_SCALING.items()
                                                              if k != "low_freq_factor"}),
                                ["config.json", "low_freq_factor"]),
    "missing config key": (damage_config("hidden_size"), ["config.json", "required key 'hidden_size'"]),
    "malformed config.json": (lambda d: (d / "config.json").write_text('{"model_type": "llama",'),
                              ["config.json", "not valid JSON"]),
    "missing shard": (split_into_shards, ["model.safetensors.index.json", "model-00002-of-00002.safetensors",
                                          "download the model again"]),
    "missing tokenizer.json": (lambda d: (d / "tokenizer.json").unlink(), ["missing tokenizer.json"]),
    "tokenizer.json not a tokenizer": (lambda d: (d / "tokenizer.json").write_text('{"model": 1}'),
                                       ["tokenizer.json is not a tokenizer", "copy the model's tokenizer.json"]),
    "malformed tokenizer_config.json": (lambda d: (d / "tokenizer_config.json").write_text("{"),
                                        ["tokenizer_config.json is not valid JSON"]),
}


@pytest.mark.parametrize("case", MODEL_MISTAKES)
def test_model_directory_mistakes_are_one_line_errors_before_out_is_claimed(case, tiny, tmp_path, capsys, no_work):
    damage, expected = MODEL_MISTAKES[case]
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    damage(model_dir)
    for main, argv in ((train.main, ["--arm", "sens-sens"]), (evaluate.main, [])):
        out = tmp_path / "out"
        line = one_line_error(capsys, main, argv + ["--model", str(model_dir), "--out", str(out)])
        assert all(word in line for word in expected), line
        assert str(model_dir) in line and not out.exists()


def make_adapter(path: Path, **model_overrides) -> Path:
    model = tiny_model(**model_overrides)
    apply_lora(model, [1], r=4, alpha=8, dropout=0.0)
    apply_garfa(model, [2])
    return save_adapter(model, path)


def test_adapter_mistakes_are_one_line_errors_and_the_out_is_reusable(tiny, tmp_path, capsys):
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    broken = make_adapter(tmp_path / "broken", vocab_size=vocab)
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    other = make_adapter(tmp_path / "other", vocab_size=vocab, intermediate_size=48)  # another model's MLP width
    out = tmp_path / "eval"
    common = ["--model", str(tiny), "--out", str(out), "--benchmarks", "arc_challenge", "--limit", "2"]
    line = one_line_error(capsys, evaluate.main, common + ["--adapter", str(broken)])
    assert "adapter_config.json is not valid JSON" in line and "train the adapter again" in line
    line = one_line_error(capsys, evaluate.main, common + ["--adapter", str(other)])
    assert "adapter_model.safetensors" in line and "made for another model" in line
    # The failed starts left only their config.json: the corrected command may use the same --out.
    assert {p.name for p in out.iterdir()} == {"config.json", LOCK_FILE}
    good = make_adapter(tmp_path / "good", vocab_size=vocab)
    cli.run(evaluate.main, common + ["--adapter", str(good)])
    results = json.loads((out / "results.json").read_text())
    assert results["adapter"] == str(good) and results["benchmarks"]["arc_challenge"]["n"] == 2


# ----------------------------------------------------------------------------------------------------------------
# --out: claimed under a lock; nothing the run did not make is overwritten; a failed start is reusable

def test_train_never_writes_into_a_folder_of_the_users_files(tiny, tmp_path, capsys, no_work):
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("my notes")
    model_like = shutil.copytree(tiny, tmp_path / "model-as-out")  # a config.json that is not a run's
    lone_config = tmp_path / "lone"
    lone_config.mkdir()
    (lone_config / "config.json").write_text('{"model_type": "llama"}')
    for out in (notes, model_like, lone_config):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        for resume in ([], ["--resume"]):
            line = one_line_error(capsys, train.main, ["--arm", "sens-sens", "--model", str(tiny), "--out", str(out)]
                                  + resume)
            assert f"--out {out} is not empty and holds no run of this project" in line, line
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not even a lock file added


def test_evaluate_never_overwrites_an_earlier_evaluation(tiny, tmp_path, capsys, no_work):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": str(tiny), "adapter": None, "options": {}}))
    (out / "results.json").write_text('{"benchmarks": "earlier"}')
    line = one_line_error(capsys, evaluate.main, ["--model", str(tiny), "--out", str(out)])
    assert line == f"error: {out} already holds an evaluation. Delete it, or pass another --out."
    assert (out / "results.json").read_text() == '{"benchmarks": "earlier"}'


def test_default_evaluation_folders_of_two_adapters_named_adapter_differ(tiny, tmp_path):
    a, b = (evaluate.default_out(tiny, tmp_path / run / "adapter") for run in ("a", "b"))
    assert a != b and a.parent == b.parent == evaluate.RUNS_DIR


def test_a_start_that_failed_after_claiming_out_does_not_block_the_next(tiny, tmp_path, monkeypatch, capsys):
    """A start that failed (here: while loading) leaves config.json alone: the next start, with or without --resume
    and with other settings, takes the directory instead of saying it "already holds a run"."""
    out = tmp_path / "out"
    argv = ["--arm", "sens-sens", "--model", str(tiny), "--out", str(out), "--steps", "3"]

    def fails(job):
        raise UserError("the model could not be loaded")

    class Reached(Exception):
        pass

    def reached(job):
        raise Reached(job.train.steps)

    monkeypatch.setattr(train, "load_model", fails)
    one_line_error(capsys, train.main, argv)
    assert {p.name for p in out.iterdir()} == {"config.json", LOCK_FILE}
    monkeypatch.setattr(train, "load_model", reached)
    for again in (argv, argv + ["--resume"], argv[:-1] + ["4"]):
        with pytest.raises(Reached):  # past the claim, where the real run would load the model
            cli.run(train.main, again)
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 4


HOLDER = """import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from support.files import claim_output
with claim_output(Path(sys.argv[1]), {"arm": "sens-sens"}, False, ("arm",)):
    print("claimed", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_into_a_directory_in_use_fails_at_once_naming_the_first(tiny, tmp_path, capsys, no_work):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ROOT)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        for resume in ([], ["--resume"]):
            t0 = time.time()
            line = one_line_error(capsys, train.main, ["--arm", "sens-sens", "--model", str(tiny), "--out", str(out)]
                                  + resume)
            assert line.startswith(f"error: another run (pid {holder.pid}) is using {out}"), line
            assert time.time() - t0 < 10
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0


def test_an_unwritable_out_is_one_line(tiny, tmp_path, capsys, no_work):
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new directories even to root
        out = Path("/sys/repro-test-out")
    else:
        locked_dir = tmp_path / "read-only"
        locked_dir.mkdir(mode=0o555)
        out = locked_dir / "out"
    for main, argv in ((train.main, ["--arm", "sens-sens"]), (evaluate.main, [])):
        line = one_line_error(capsys, main, argv + ["--model", str(tiny), "--out", str(out)])
        assert f"cannot write in {out}" in line and "choose a writable directory" in line, line


def test_ctrl_c_during_evaluation_is_a_short_line_with_what_to_do(tiny, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, "evaluate.py", "--model", str(tiny), "--out", str(out), "--benchmarks",
                             "math500", "--batch-size", "1", "--max-new-tokens", "256"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV})
    seen = ""
    while "math500" not in seen:  # the progress bar: evaluation has started
        char = proc.stderr.read(1)
        assert char, f"evaluate.py ended before evaluating: {seen}"
        seen += char
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in rest, rest
    assert rest.strip().splitlines()[-1] == ("interrupted. Evaluation does not resume: delete --out (or pass "
                                             "another) and run the command again.")
