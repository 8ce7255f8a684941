"""train.py: arm grammar, layer sets, the SFT loop, resume, and the run directory."""
import argparse
import csv
import io
import json

import pytest
import torch

from conftest import LLAMA3_SCALING, WordTokenizer, tiny_model, tiny_model_dir
from data import encode_example, example_index
from support.files import UserError
from garfa import apply_garfa
from lora import apply_lora
from support.stats import mean_interval
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
    with pytest.raises(UserError, match="loss is nan at step 2.*last good checkpoint.*--resume keeps this run's "
                                        "settings: start a new run .*with a lower --lr-lora"):
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
BENCHES = ("mmlu", "math500")


def ablation_argv(model_dir, out, *extra):
    return ["--arm", "ablation", "--model", str(model_dir), "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--seq-len", "96", "--warmup", "1", "--limit", "3", "--heldout", "2", "--heldout-every", "1",
            "--eval-batch-size", "4", "--bootstrap", "20", "--calib", "auto", "--n-pairs", "3",
            "--benchmarks", ",".join(BENCHES),
            "--metrics", "bpb,mc", "--seeds", "0,1", *extra]


def test_ablation_with_controls_writes_every_output_recomputable_from_the_run_directory(tmp_path, monkeypatch,
                                                                                        capsys):
    import numpy as np

    import train as train_module
    from support.ablation_report import csv_text, summarize

    isolate_cache(tmp_path, monkeypatch)
    out = tmp_path / "ablation"
    argv = ablation_argv(tiny_model_dir(tmp_path / "tiny"), out, "--controls", "--sens-dist", "l2")
    train_module.main(argv)

    summary = json.loads((out / "ablation.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    assert summary["sens_layers"] == [2] and summary["same_as"] == {"late-late": "sens-sens"}  # l2: the last layer
    assert "late-late adapts the layers of sens-sens: reported as equal, not trained; 14 training run(s)" in \
        capsys.readouterr().out  # 7 of the 8 arms x 2 seeds
    assert "late-late" in summary["same_as"] and not (out / "late-late").exists()  # reported, not trained twice
    stable = summary["stable"]
    assert len(stable["draws"]) == 5 and sum(stable["sensitivity"]["frequency"]) == pytest.approx(scores["k"])
    assert summary["rope_layers"] == [int(np.argmax(stable["influence"]["frequency"]))]
    for arm in PAPER_ARMS + ("sens-none", "none-sens", "random-random"):
        for seed in (0, 1):
            run = out / arm / f"seed-{seed}"
            missing = [f for f in RUN_FILES[3:] + tuple(f"predictions/{b}.jsonl" for b in BENCHES)
                       if not (run.parent / f if f == "report.md" else run / f).is_file()
                       and not (f.startswith("adapter/") and "none" in arm)]
            assert not missing, (arm, seed, missing)
            results = json.loads((run / "results.json").read_text())
            curve = results["training"]["heldout_curve"]
            assert [step for step, _ in curve] == [0, 1, 2] and all(loss > 0 for _, loss in curve)
            if arm == "random-random":  # one random set for both sides
                assert results["lora_layers"] == results["garfa_layers"]
            assert bool(results["lora_update_norms"]) == (arm.split("-")[0] != "none")
            assert bool(results["garfa_multipliers"]) == (arm.split("-")[1] != "none")
    randoms = [json.loads((out / "random-random" / f"seed-{s}" / "results.json").read_text())["lora_layers"]
               for s in (0, 1)]
    assert randoms == [train_module.resolve_layers("random", scores, 3, s) for s in (0, 1)]

    # MC log-loss and cloze accuracy, recomputed from the prediction files
    rows = [json.loads(x) for x in (out / "sens-sens" / "seed-0" / "predictions" / "mmlu.jsonl").read_text()
            .splitlines()]
    for r in rows:
        logp = np.array(r["choice_logprobs"])
        assert r["mc_logloss"] == pytest.approx(-(logp[r["gold_choice"]] - np.logaddexp.reduce(logp)))
        assert r["cloze_correct"] == (int(np.argmax(logp / np.array(r["choice_chars"]))) == r["gold_choice"])
    mmlu = json.loads((out / "sens-sens" / "seed-0" / "results.json").read_text())["benchmarks"]["mmlu"]
    assert mmlu["mc_logloss"]["mean"] == pytest.approx(np.mean([r["mc_logloss"] for r in rows]))
    assert mmlu["cloze_accuracy"]["accuracy"] == pytest.approx(np.mean([r["cloze_correct"] for r in rows]))

    # The CSV, recomputed from the run directory: by hand for one cell, and whole by the report's own reader
    table = list(csv.DictReader(io.StringIO((out / "ablation.csv").read_text())))
    cell = next(r for r in table if (r["arm"], r["benchmark"], r["seed"]) == ("rope-sens", "mmlu", "1"))
    arm_rows = [json.loads(x) for x in (out / "rope-sens" / "seed-1" / "predictions" / "mmlu.jsonl").read_text()
                .splitlines()]
    base_rows = {r["id"]: r for r in map(json.loads, (out / "base" / "predictions" / "mmlu.jsonl").read_text()
                                         .splitlines())}
    assert float(cell["mean_bpb"]) == pytest.approx(np.mean([r["bpb"] for r in arm_rows]), abs=1e-6)
    assert float(cell["micro_bpb"]) == pytest.approx(sum(r["nll"] for r in arm_rows) / (
        np.log(2) * sum(r["n_bytes"] for r in arm_rows)), abs=1e-6)
    assert float(cell["diff_vs_base"]) == pytest.approx(np.mean([r["bpb"] - base_rows[r["id"]]["bpb"]
                                                                 for r in arm_rows]), abs=1e-6)
    assert float(cell["cloze_accuracy"]) == pytest.approx(np.mean([r["cloze_correct"] for r in arm_rows]), abs=1e-6)
    results = {arm: json.loads((out / arm / "results.json").read_text()) for arm in summary["arms"]}
    assert (out / "ablation.csv").read_text() == csv_text(summarize(out, results, summary["same_as"], scores | {
        "stable": stable}, [0, 1])["rows"])
    assert len(table) == len(BENCHES) * (2 * 7 + 1)  # 7 trained arms x 2 seeds, and base once

    # The primary endpoint, Holm over the three paper contrasts, the conclusion and the figure
    paper = [summary["vs_sens_sens"][a]["primary"] for a in PAPER_ARMS[1:]]
    from support.stats import holm

    assert [p["p_holm"] for p in paper] == pytest.approx(holm([p["p"] for p in paper]))
    assert len(paper[0]["per_seed"]) == 2 and "p_holm" not in summary["vs_sens_sens"]["random-random"]["primary"]
    md = (out / "ablation.md").read_text()
    assert "late-late (the last k layers by index (depth alone)) adapts exactly the sens-sens layers" in md
    assert "Holm p" in md and "2 sd" not in md and (out / "ablation.png").stat().st_size > 10_000
    sens = json.loads((out / "sens-sens" / "results.json").read_text())["benchmarks"]["mmlu"]["bpb"]
    mean_rows = [json.loads(x)["bpb"] for x in (out / "sens-sens" / "predictions" / "mmlu.jsonl").read_text()
                 .splitlines()]
    assert sens["ci95"] == mean_interval(mean_rows)["ci95"]  # a bootstrap of the seed-averaged items

    with pytest.raises(UserError, match="already holds a run"):  # a finished run is never overwritten
        train_module.main(argv)
    report = (out / "sens-sens" / "report.md").read_text()
    train_module.main(argv + ["--resume"])  # every arm is complete: nothing is redone, no report rewritten
    assert (out / "sens-sens" / "report.md").read_text() == report  # wall time included


def test_an_interrupted_ablation_resumes_arm_by_arm_and_seed_by_seed_to_the_same_bytes(tmp_path, monkeypatch):
    import safetensors.torch as safetensors_torch

    import train as train_module

    isolate_cache(tmp_path, monkeypatch)
    model_dir = tiny_model_dir(tmp_path / "tiny")
    argv = lambda out: ablation_argv(model_dir, out, "--layer-sets", "single", "--steps", "3",
                                     "--checkpoint-every", "1", "--benchmarks", "mmlu")
    train_module.main(argv(tmp_path / "whole"))

    original, calls = train_module.save_checkpoint, []

    def stop_in_rope_sens_seed_1(run_dir, model, optimizer, step):
        original(run_dir, model, optimizer, step)
        calls.append(run_dir)
        if run_dir.parts[-2:] == ("rope-sens", "seed-1") and step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", stop_in_rope_sens_seed_1)
    with pytest.raises(KeyboardInterrupt):
        train_module.main(argv(tmp_path / "cut"))
    monkeypatch.setattr(train_module, "save_checkpoint", original)
    assert not (tmp_path / "cut" / "rope-rope").exists()
    train_module.main(argv(tmp_path / "cut") + ["--resume"])
    for arm in PAPER_ARMS:
        for seed in (0, 1):
            a, b = (tmp_path / run / arm / f"seed-{seed}" for run in ("whole", "cut"))
            assert (a / "predictions/mmlu.jsonl").read_bytes() == (b / "predictions/mmlu.jsonl").read_bytes()
            for name in ("adapter/adapter_model.safetensors", "adapter/garfa.safetensors"):  # the header's key order
                tensors = [safetensors_torch.load_file(str(x / name)) for x in (a, b)]  # may differ: compare values
                assert tensors[0].keys() == tensors[1].keys(), (arm, seed, name)
                assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0]), (arm, seed, name)
            strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"}
                               for x in p.read_text().splitlines()]
            assert strip(a / "train_log.jsonl") == strip(b / "train_log.jsonl"), (arm, seed)
    assert (tmp_path / "whole" / "ablation.csv").read_bytes() == (tmp_path / "cut" / "ablation.csv").read_bytes()


def test_resume_needs_a_started_run_and_names_the_setting_that_differs(tmp_path, monkeypatch):
    import train as train_module

    isolate_cache(tmp_path, monkeypatch)
    model_dir = tiny_model_dir(tmp_path / "tiny")
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(UserError, match=f"--resume: {out} holds no run to continue; check --out, or drop"):
            train_module.main(["--arm", "sens-sens", "--model", str(model_dir), "--out", str(out), "--resume"])


def test_depth_sides_and_arms_that_repeat_another(tmp_path):
    from train import duplicate_arms

    scores = {"k": 2, "sens_layers": [3, 2], "rope_layers": [0, 2]}
    assert resolve_layers("late", scores, 4, seed=0) == [2, 3] and resolve_layers("early", scores, 4, seed=9) == [0, 1]
    arms = [parse_arm(a) for a in PAPER_ARMS + ("late-late", "early-early", "random-random", "rope-none", "base")]
    assert duplicate_arms(arms, scores, 4) == {"late-late": "sens-sens"}
    assert duplicate_arms(arms, {**scores, "rope_layers": [0, 1]}, 4) == {"late-late": "sens-sens",
                                                                           "early-early": "rope-rope"}


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

    for argv, message in ((["--arm", "sens-top"], "each side one of sens, rope, all, random, late, early, none"),
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
    with pytest.raises(UserError, match=r"different settings: train=\{lr_lora=0.0002 \(now 0.001\)\}\. Use the"):
        train_module.main(common + ["--out", str(tmp_path / "off"), "--chat", "off", "--resume", "--lr-lora", "1e-3"])


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
