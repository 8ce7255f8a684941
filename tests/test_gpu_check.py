"""tools/gpu_check.py: the GPU check's code runs end to end on the CPU on its tiny shape (parity against transformers,
the training step against transformers + peft, inference, the projection), writes JSON and Markdown, and never
overwrites a file it did not write."""
import json

import pytest

from conftest import reference
from support.files import UserError
from tools import gpu_check


def test_projection_of_the_paper_ablation_from_known_rates():
    """4 arms x 1000 steps x 4 micro-steps of 1 s; 5 evaluations: 15,412 MC items x 6 forwards and 3,828 generated
    items x (1 forward + 512 tokens), at 100 forwards/s and 1,000 tokens/s."""
    p = gpu_check.projection(dict(micro_step_s=1.0, mc_items_per_s=100.0, decode_tokens_per_s=1000.0),
                             gpu_check.SHAPES["llama-3.1-8b"], n_arms=4, price=2.0)
    assert p["train_s_per_arm"] == 4000
    assert p["eval_s_per_model"] == pytest.approx((15412 * 6 + 3828) / 100 + 3828 * 512 / 1000)
    assert p["total_hours"] == pytest.approx((4 * 4000 + 5 * p["eval_s_per_model"]) / 3600)
    assert p["cost_usd"] == pytest.approx(2.0 * p["total_hours"]) and p["paper_usd"] == 100


def test_datasheet_peaks_and_adapted_layers():
    assert gpu_check.bf16_peak("NVIDIA H100 PCIe") == 756e12 and gpu_check.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12 and gpu_check.bf16_peak("CPU") is None
    assert gpu_check.adapted_layers(32, 8) == [0, 4, 8, 12, 16, 20, 24, 28] and gpu_check.adapted_layers(4, 2) == [0, 2]


def test_gpu_check_runs_on_the_cpu_and_writes_json_and_markdown(tmp_path, monkeypatch):
    """One variant of the training step is made to fail: it is reported as failed and the check goes on."""
    reference("transformers"), reference("peft")
    calls, time_steps = [], gpu_check.time_steps

    def second_fails(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (made up)\nmore lines")
        return time_steps(*args)

    monkeypatch.setattr(gpu_check, "time_steps", second_fails)
    out = tmp_path / "docs" / "gpu_check"
    result = gpu_check.main(["--device", "cpu", "--shape", "tiny", "--no-compile", "--out", str(out)])
    assert all(p["fp32_ok"] and p["fp32_max_abs_diff"] <= 1e-4 for p in result["parity"])
    sides = [(t["side"], t["checkpointing"]) for t in result["training"]]
    assert sides == [("ours", False), ("ours", True), ("transformers + peft (LoRA only)", False)]
    assert result["training"][1]["error"] == "RuntimeError: out of memory (made up)"
    assert all(t["step_s"] > 0 and t["tokens_per_s"] > 0 for i, t in enumerate(result["training"]) if i != 1)
    assert set(result["inference"]) == {"decode b1", "decode b4", "prefill b1", "multiple choice"}
    assert result["inference_sides"] == ["hf", "ours"] and result["projection"]["total_hours"] > 0
    assert json.loads(out.with_suffix(".json").read_text())["generated_by"] == "tools.gpu_check"
    md = out.with_suffix(".md").read_text()
    assert "| ours | no | on | failed: RuntimeError: out of memory (made up) |" in md
    assert "Projected `python train.py --arm ablation --preset paper`" in md
    gpu_check.claim(out.with_suffix(".md"))  # its own file: may be rewritten


def test_gpu_check_refuses_to_overwrite_a_file_it_did_not_write(tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    with pytest.raises(UserError, match="notes.md exists and was not written by tools.gpu_check"):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "notes")])
    assert mine.read_text() == "my notes\n"
    with pytest.raises(UserError, match="--price 0.0: give a positive price"):
        gpu_check.main(["--device", "cpu", "--price", "0", "--out", str(tmp_path / "x")])
