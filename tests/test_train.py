"""train.py: arm grammar, layer sets, the SFT loop, resume, and the run directory."""
import argparse
import json

import pytest
import torch

from conftest import LLAMA3_SCALING, WordTokenizer, tiny_model, tiny_model_dir
from data import encode_example, example_index
from support.files import UserError
from garfa import apply_garfa
from lora import apply_lora
from support.report import paired_tests
from train import PAPER_ARMS, Arm, TrainOptions, lr_factor, parse_arm, resolve_layers, train

SCORES = {"k": 2, "sens_layers": [2, 1], "rope_layers": [0, 1]}


def test_arm_grammar():
    assert parse_arm("sens-rope") == Arm("sens", "rope")
    assert parse_arm("base") == Arm("none", "none") and parse_arm("none-none").name == "base"
    assert [parse_arm(a).name for a in PAPER_ARMS] == list(PAPER_ARMS)
    for bad in ("sens", "sens-sens-sens", "top-rope", "sens_rope", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="use LORA-GARFA with each side one of sens, rope, all"):
            parse_arm(bad)


def test_layer_sets():
    assert resolve_layers("sens", SCORES, 3, seed=0) == [1, 2]
    assert resolve_layers("rope", SCORES, 3, seed=0) == [0, 1]
    assert resolve_layers("all", SCORES, 3, seed=0) == [0, 1, 2]
    assert resolve_layers("none", SCORES, 3, seed=0) == []
    draws = {tuple(resolve_layers("random", {**SCORES, "k": 4}, 30, seed=s)) for s in range(5)}
    assert len(draws) > 1 and all(len(d) == 4 and len(set(d)) == 4 for d in draws)
    assert resolve_layers("random", SCORES, 30, seed=3) == resolve_layers("random", SCORES, 30, seed=3)


def test_schedule_and_data_order():
    factors = [lr_factor(s, 20, 4) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] < 0.01
    epoch = [example_index(7, 10, i) for i in range(10)]
    assert sorted(epoch) == list(range(10))  # every example once per epoch
    assert [example_index(7, 10, i) for i in range(10, 20)] != epoch  # a fresh order next epoch


def toy_examples(n=12, seq_len=40):
    tok = WordTokenizer()
    return [encode_example(tok, f"question {i}: x{i} y", f"answer {i * 7 % 5}", seq_len, chat=False)
            for i in range(n)]


def test_encode_example_masks_only_the_completion():
    ids, target = encode_example(WordTokenizer(), "a b", "c d", 16, chat=False)
    assert len(ids) == 5 and target == [False, False, True, True, True]  # completion + EOS
    assert ids[-1] == 2
    assert encode_example(WordTokenizer(), " x" * 20, "y", 16, chat=False) is None  # prompt alone fills seq_len
    chat_ids, chat_target = encode_example(WordTokenizer("chat"), "a b", "c d", 32, chat=True)
    assert chat_ids[:sum(not t for t in chat_target)] == WordTokenizer("chat").encode(" <user> a b\n <assistant>")


CFG = TrainOptions(steps=6, batch_size=3, grad_accum=2, seq_len=40, warmup=2, lr_lora=1e-2, lr_garfa=5e-2,
                   checkpoint_every=2).sized("default")


def adapted_model(lora_layers=(1,), garfa_layers=(1,)):
    model = tiny_model(rope_scaling=LLAMA3_SCALING)
    torch.manual_seed(0)  # LoRA's A is drawn from the global generator, as in train.run_arm
    if lora_layers:
        apply_lora(model, list(lora_layers), r=4, alpha=8, dropout=0.1)
    if garfa_layers:
        apply_garfa(model, list(garfa_layers))
    return model


def adapter_tensors(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_training_lowers_loss_and_touches_only_chosen_layers(tmp_path):
    model = adapted_model(lora_layers=(1,), garfa_layers=(2,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = train(model, toy_examples(), CFG, 0, pad_id=0, run_dir=tmp_path, resume=False)
    assert log[-1]["loss"] < log[0]["loss"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("layers.1.", "layers.2.self_attn.rope_freqs")) for n in changed)
    assert any("lora_B" in n for n in changed) and "layers.2.self_attn.rope_freqs.log_scale" in changed
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 7))


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = adapted_model()
    (tmp_path / "full").mkdir()
    (tmp_path / "half").mkdir()
    train(full, toy_examples(), CFG, 0, pad_id=0, run_dir=tmp_path / "full", resume=False)

    # Interrupt the same 6-step run right after its step-4 checkpoint (as Ctrl-C would), then resume it.
    import train as train_module

    original, fired = train_module.save_checkpoint, []

    def save_then_stop(run_dir, model, optimizer, step):
        original(run_dir, model, optimizer, step)
        if step == 4 and not fired:
            fired.append(step)
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(adapted_model(), toy_examples(), CFG, 0, pad_id=0, run_dir=tmp_path / "half", resume=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "half" / "checkpoint.pt")["step"] == 4
    assert torch.load(tmp_path / "half" / "checkpoint.prev.pt")["step"] == 2  # the last two are kept
    resumed = adapted_model()  # a fresh process: base weights plus fresh adapters, state from the checkpoint
    log = train(resumed, toy_examples(), CFG, 0, pad_id=0, run_dir=tmp_path / "half", resume=True)
    expected, got = adapter_tensors(full), adapter_tensors(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    full_log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in full_log]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import train as train_module

    real, calls = train_module.sequence_nll, []

    def nan_on_step_3(model, tokens, mask):  # grad_accum 2: calls 5 and 6 are step 3
        calls.append(1)
        nll, count = real(model, tokens, mask)
        return (nll * float("nan"), count) if len(calls) >= 5 else (nll, count)

    monkeypatch.setattr(train_module, "sequence_nll", nan_on_step_3)
    with pytest.raises(UserError, match="loss is nan at step 2.*last good checkpoint"):
        train(adapted_model(), toy_examples(), CFG, 0, pad_id=0, run_dir=tmp_path, resume=False)
    assert torch.load(tmp_path / "checkpoint.pt")["step"] == 2
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------------------------------------------
# The whole command on a tiny model directory (random weights, a real BPE tokenizer) and the real benchmark data.

def isolate_cache(tmp_path, monkeypatch):
    import sensitivity
    import train as train_module

    import evaluate

    for module in (train_module, sensitivity, evaluate):
        monkeypatch.setattr(module, "CACHE_DIR", tmp_path / "cache")


RUN_FILES = ("config.json", "scores.json", "layer_scores.png", "train_log.jsonl", "results.json", "report.md",
             "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/garfa.safetensors")
BENCHES = ("mmlu", "arc_challenge", "math500", "humaneval")


def test_ablation_end_to_end_writes_every_run_file(tmp_path, monkeypatch):
    import train as train_module

    isolate_cache(tmp_path, monkeypatch)
    out = tmp_path / "ablation"
    argv = ["--arm", "ablation", "--model", str(tiny_model_dir(tmp_path / "tiny")), "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--seq-len", "96", "--warmup", "1", "--limit", "3",
            "--max-new-tokens", "4", "--eval-batch-size", "4", "--bootstrap", "20",
            "--benchmarks", ",".join(BENCHES + ("gpqa",))]
    train_module.main(argv)

    scores = json.loads((out / "scores.json").read_text())
    for arm in PAPER_ARMS:
        run = out / arm
        missing = [f for f in RUN_FILES + tuple(f"predictions/{b}.jsonl" for b in BENCHES) if not (run / f).is_file()]
        assert not missing, (arm, missing)
        results = json.loads((run / "results.json").read_text())
        lora_side, garfa_side = arm.split("-")
        assert results["lora_layers"] == sorted(scores[f"{lora_side}_layers"])
        assert results["garfa_layers"] == sorted(scores[f"{garfa_side}_layers"])
        assert {"arm", "model", "lora_layers", "garfa_layers", "spearman", "benchmarks"} <= results.keys()
        for b in BENCHES:
            r = results["benchmarks"][b]
            assert r["n"] == 3 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert results["benchmarks"]["gpqa"]["status"] == "not run"
        assert len((run / "train_log.jsonl").read_text().splitlines()) == 2
        report = (run / "report.md").read_text()
        assert "| mmlu |" in report and "GARFA frequency multipliers" in report and "not run" in report

    base = json.loads((out / "base" / "results.json").read_text())
    assert base["lora_layers"] == base["garfa_layers"] == [] and not (out / "base" / "adapter").exists()
    some_arm = json.loads((out / "sens-sens" / "results.json").read_text())
    assert base["benchmarks"]["mmlu"]["n"] == some_arm["benchmarks"]["mmlu"]["n"]  # the same items
    comparison = (out / "comparison.md").read_text()
    assert all(f"| {arm} |" in comparison for arm in PAPER_ARMS + ("base",)) and (out / "comparison.png").is_file()
    against_base = comparison.split("Each arm against the base model")[1].split("sens-sens against each arm")[0]
    rows = [line for line in against_base.splitlines() if line.startswith("| ") and "| arm |" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(PAPER_ARMS)
    for row, arm in zip(rows, PAPER_ARMS):  # the mmlu cell: arm - base, recomputed from the two prediction files
        diff = paired_tests(out / "base", out / arm, ["mmlu"])["mmlu"]["bpb_diff"]["mean"]
        assert row.split(" | ")[1].startswith(f"{diff:+.4f} [")
    diffs = [paired_tests(out / "sens-sens", out / arm, BENCHES)[b]["bpb_diff"] for arm in PAPER_ARMS[1:]
             for b in BENCHES]  # one seed: no seed sd, so a CI that excludes zero separates
    apart = sum(d["ci95"][0] > 0 or d["ci95"][1] < 0 for d in diffs)
    assert f"Of the {len(diffs)} bpb comparisons of sens-sens with the other paper arms, {apart} have" in comparison

    with pytest.raises(UserError, match="already holds a run"):  # a finished run is never overwritten
        train_module.main(argv)
    mtime = (out / "sens-sens" / "results.json").stat().st_mtime
    time_line = lambda: next(x for x in (out / "sens-sens" / "report.md").read_text().splitlines() if x[:7] == "- Time:")
    before = time_line()
    train_module.main(argv + ["--resume"])  # every arm is complete: nothing is redone, the reports are rewritten
    assert (out / "sens-sens" / "results.json").stat().st_mtime == mtime
    assert time_line().split(";")[0] == before.split(";")[0]  # the time the arm took, not the resume's


def test_base_arm_is_the_baseline_unchanged(tmp_path, monkeypatch):
    """none-none trains nothing: its predictions are the shared base evaluation's, byte for byte."""
    import train as train_module

    isolate_cache(tmp_path, monkeypatch)
    out = tmp_path / "base"
    train_module.main(["--arm", "none-none", "--model", str(tiny_model_dir(tmp_path / "tiny")), "--out", str(out),
                       "--limit", "4", "--benchmarks", "arc_challenge", "--bootstrap", "10"])
    (cached,) = (tmp_path / "cache").glob("base-*")
    assert (out / "predictions" / "arc_challenge.jsonl").read_bytes() == \
        (cached / "predictions" / "arc_challenge.jsonl").read_bytes()
    assert not (out / "train_log.jsonl").exists() and not (out / "adapter").exists()


def test_bad_arms_models_and_benchmarks_are_clear_errors(tmp_path, capsys):
    import train as train_module

    for argv, message in ((["--arm", "sens-top"], "each side one of sens, rope, all, random, none"),
                          (["--arm", "sens-sens", "--benchmarks", "mmlu,squad"], "valid choices: mmlu"),
                          (["--arm", "sens-sens", "--preset", "huge"], "invalid choice: 'huge'")):
        with pytest.raises(SystemExit):
            train_module.build_parser().parse_args(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(UserError, match="nowhere: no such directory.*prepare.py"):
        train_module.main(["--arm", "sens-sens", "--model", str(tmp_path / "nowhere")])


def test_chat_off_reaches_scoring_training_evaluation_and_every_cache_key(tmp_path, monkeypatch):
    """--chat off used to train and score on raw prompts while evaluation kept the chat template for math and gsm,
    and the setting was missing from the resume keys and the shared-baseline key."""
    import train as train_module

    isolate_cache(tmp_path, monkeypatch)
    model_dir = tiny_model_dir(tmp_path / "tiny")
    common = ["--arm", "none-none", "--model", str(model_dir), "--limit", "2", "--benchmarks", "mgsm_en",
              "--max-new-tokens", "2", "--bootstrap", "5", "--metrics", "bpb"]
    for chat in ("auto", "off"):
        train_module.main(common + ["--out", str(tmp_path / chat), "--chat", chat])
    contexts = {chat: [r["context"] for r in map(json.loads, (tmp_path / chat / "predictions" / "mgsm_en.jsonl")
                                                 .read_text().splitlines())] for chat in ("auto", "off")}
    assert all(c.startswith("<|im_start|>user") for c in contexts["auto"])
    assert all(c.startswith("Question:") for c in contexts["off"])  # evaluation follows the setting
    assert len(list((tmp_path / "cache").glob("base-*"))) == 2  # two baselines, not one shared by mistake
    config = json.loads((tmp_path / "off" / "config.json").read_text())
    assert config["chat"] == config["eval"]["chat"] == config["scores"]["chat"] == "off"
    with pytest.raises(UserError, match="different settings: chat="):
        train_module.main(common + ["--out", str(tmp_path / "off"), "--chat", "auto", "--resume"])


def test_seeds_write_one_directory_each_and_an_aggregate_with_numpy_mean_and_sd(tmp_path, monkeypatch):
    import numpy as np

    import train as train_module

    isolate_cache(tmp_path, monkeypatch)
    out = tmp_path / "seeds"
    train_module.main(["--arm", "sens-sens", "--model", str(tiny_model_dir(tmp_path / "tiny")), "--out", str(out),
                       "--seeds", "0,1,2", "--steps", "2", "--batch-size", "2", "--seq-len", "96", "--limit", "4",
                       "--benchmarks", "mmlu", "--metrics", "acc,bpb", "--bootstrap", "5"])
    per_seed = [json.loads((out / f"seed-{s}" / "results.json").read_text())["benchmarks"]["mmlu"] for s in (0, 1, 2)]
    agg = json.loads((out / "results.json").read_text())["benchmarks"]["mmlu"]
    bpb = np.array([r["bpb"]["mean"] for r in per_seed])
    assert agg["bpb"]["mean"] == pytest.approx(bpb.mean()) and agg["bpb"]["sd"] == pytest.approx(bpb.std(ddof=1))
    acc = np.array([r["accuracy"] for r in per_seed])
    assert agg["accuracy"] == pytest.approx(acc.mean()) and agg["accuracy_sd"] == pytest.approx(acc.std(ddof=1))
    assert len(set(bpb.tolist())) == 3  # the seeds really train differently
    mean_rows = [json.loads(x) for x in (out / "predictions" / "mmlu.jsonl").read_text().splitlines()]
    seed_rows = [[json.loads(x) for x in (out / f"seed-{s}" / "predictions" / "mmlu.jsonl").read_text().splitlines()]
                 for s in (0, 1, 2)]
    assert mean_rows[0]["bpb"] == pytest.approx(np.mean([rows[0]["bpb"] for rows in seed_rows]))
    assert "seed sd" in (out / "report.md").read_text()
    losses = [json.loads(x)["loss"] for x in (out / "seed-1" / "train_log.jsonl").read_text().splitlines()]
    training = json.loads((out / "seed-1" / "results.json").read_text())["training"]
    assert training["loss_first_10"] == training["loss_last_10"] == pytest.approx(np.mean(losses), abs=1e-5)
