"""bench.py's pure logic: the model-FLOPs formula behind the MFU column."""
from conftest import tiny_hf_config, tiny_model

from tools.bench import prefill_flops
from model import ModelConfig


def test_prefill_flops_matches_hand_count():
    cfg = ModelConfig.from_hf(tiny_hf_config())  # D 64, 8 heads over 2 KV heads of 16, FFN 96, 3 layers, vocab 96
    weights = 3 * (64 * 128 + 2 * 64 * 32 + 128 * 64 + 3 * 64 * 96)  # q, k + v, o, gate + up + down per layer
    attention = 4 * 3 * 8 * 16 * (10 * 11 // 2)  # q.k and p.v for the 1 + 2 + ... + 10 keys of a causal sequence
    lm_head = 2 * 64 * 96  # logits at the last position only
    assert prefill_flops(cfg, batch=2, seq_len=10) == 2 * (2 * weights * 10 + attention + lm_head)


def test_prefill_flops_counts_every_layer_weight():
    model = tiny_model()
    n = sum(p.numel() for name, p in model.layers.named_parameters() if "norm" not in name)
    no_attention_no_head = prefill_flops(model.config, 1, 1, logit_positions=0) - 4 * 3 * 8 * 16
    assert no_attention_no_head == 2 * n


def synthetic_results(compiled: bool = False) -> dict:
    """bench.py's JSON with hand-made times: ours twice as fast as HF everywhere, the compiled side 4x."""
    sides = ["ours", "hf"] + (["compiled"] if compiled else [])
    speed = {"ours": 2.0, "hf": 1.0, "compiled": 4.0}
    times = lambda base: {s: [base / speed[s] * f for f in (0.9, 1.0, 1.2)] for s in sides}
    decode = lambda batch: dict(batch=batch, new_tokens=9, units=batch * 9, times={
        **times(1.0), **{f"{s}@1": [0.2 / speed[s]] * 3 for s in sides}})
    lora = {s: dict(times=[3.0 / speed[s]] * 6, rss_peak=2 ** 30 * (4 if s == "hf" else 2), rss_loaded=0)
            for s in sides}
    return dict(matmul_peak_flops=1e11, sides=sides, weight_stream_s=[0.05, 0.04, 0.06],
                prefill={"1x512": dict(times=times(2.0), units=512, flops=5e10)}, decode_b1=decode(1),
                decode_b16=decode(16), mc=dict(times=times(4.0), units=16), lora=lora)


def test_summarize_turns_times_into_rates_ratios_and_ranges():
    from tools.bench import summarize

    rows = {r["metric"]: r for r in summarize(synthetic_results())}
    prefill = rows["prefill 1x512 tok/s"]
    assert prefill["values"]["ours"] == (512 / 1.0, 512 / 1.2, 512 / 0.9)  # median, slowest, fastest
    assert abs(prefill["ratio"] - 2.0) < 1e-12 and prefill["target"] is None
    assert abs(rows["prefill 1x512 MFU %"]["values"]["ours"][0] - 5e10 / 1.0 / 1e11 * 100) < 1e-9
    # The decoding step leaves the prefill out: 8 steps in (0.5 - 0.1) s for ours; the bound is 1 / 0.05 s.
    step = rows["decode b1 step tok/s (vs bound)"]
    assert abs(step["values"]["ours"][0] - 8 / 0.4) < 1e-9 and abs(step["ratio"] - 20 / 20) < 1e-9
    assert step["target"] == 0.9
    assert abs(rows["decode b16 tok/s (vs HF b1)"]["ratio"] - (16 * 9 / 0.5) / (9 / 1.0)) < 1e-9
    assert abs(rows["LoRA step (speed-up)"]["ratio"] - 2.0) < 1e-12
    assert rows["LoRA peak RSS (ratio, max)"]["ratio"] == 0.5


def test_compiled_rows_compare_ours_compiled_with_eager_transformers():
    from tools.bench import format_table, summarize

    rows = summarize(synthetic_results(compiled=True))
    by_name = {r["metric"]: r for r in rows}
    assert abs(by_name["prefill 1x512 tok/s compiled"]["ratio"] - 4.0) < 1e-12
    assert abs(by_name["LoRA step compiled (speed-up)"]["ratio"] - 4.0) < 1e-12
    table = format_table(rows).splitlines()
    assert table[0] == "| metric | ours | reference | ratio | target | met |"
    lora = next(line for line in table if line.startswith("| LoRA step compiled (speed-up)"))
    assert lora.endswith("| 4 | >= 1.25 | yes |")
    rss = next(line for line in table if line.startswith("| LoRA peak RSS (ratio, max) |"))
    assert rss.endswith("| 0.5 | <= 0.7 | yes |")


def test_bench_options_that_would_time_nothing_are_one_line_errors():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for argv, expected in ((["--repeats", "0"], "--repeats 0: give at least 1"),
                           (["--lora-rounds", "0"], "--lora-rounds 0: give at least 1"),
                           (["--new-tokens", "1"], "--new-tokens 1: give at least 2")):
        done = subprocess.run([sys.executable, "-m", "tools.bench", *argv], cwd=root, capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [
            f"error: {expected} (python -m tools.bench --help lists every option)"], done.stderr


def test_bench_mistakes_are_one_line_and_never_overwrite_a_users_file(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for argv, expected in ((["--threads", "0"], "error: --threads 0: give at least 1"),
                           (["--out", str(notes)], f"error: --out {notes} exists and is not a bench result"),
                           (["--model", str(tmp_path / "absent")], f"error: --model {tmp_path / 'absent'}: no such")):
        done = subprocess.run([sys.executable, "-m", "tools.bench", "--quick", *argv], cwd=root, capture_output=True,
                              text=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), done.stderr
    assert notes.read_text() == "my notes\n"


def test_out_may_replace_only_a_bench_result(tmp_path):
    import json

    import pytest
    from support.files import UserError
    from tools.bench import check_out, write_json

    out = tmp_path / "bench.json"
    check_out(out)  # a new path
    write_json(out, dict(settings={}, sides=["ours", "hf"]))
    write_json(out, dict(settings={"seed": "1"}, sides=["ours", "hf"]))  # its own earlier result
    assert json.loads(out.read_text())["settings"] == {"seed": "1"}
    for content in ("not json", json.dumps({"sides": []}), json.dumps([1, 2])):
        out.write_text(content)
        with pytest.raises(UserError, match="exists and is not a bench result"):
            write_json(out, dict(settings={}, sides=[]))
        assert out.read_text() == content
