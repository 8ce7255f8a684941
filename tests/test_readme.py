"""tools/readme.py: generated sections come from the runs' JSON files, and a missing marker or run is one clear error."""
import json

import pytest

from support.files import UserError
from tools import readme

BENCHMARKS = {
    "mmlu": {"accuracy": 0.25, "n": 40, "ci95": [0.14, 0.40], "bpb": {"mean": 1.5, "ci95": [1.4, 1.6], "n": 40}},
    "gpqa": {"status": "not run", "why": "GPQA is not obtainable offline; pass --gpqa-csv"},
}
TESTS = {"mmlu": {"mcnemar": {"p": 1.0, "only_a": 0, "only_b": 0},
                  "bpb_diff": {"mean": -0.08, "ci95": [-0.15, -0.02], "wilcoxon_p": 0.031}}}


def fake_main_run(run_dir):
    run_dir.mkdir(parents=True)
    base = {"mmlu": {**BENCHMARKS["mmlu"], "bpb": {"mean": 1.58, "ci95": [1.5, 1.7], "n": 40}},
            "gpqa": BENCHMARKS["gpqa"]}
    (run_dir / "report.json").write_text(json.dumps({
        "results": {"arm": "sens-sens", "model": "m", "benchmarks": BENCHMARKS}, "base": base, "tests": TESTS,
        "scores": {}, "seconds": 288.0, "command_seconds": 498.0}))


def test_main_section_is_built_from_report_json(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    fake_main_run(tmp_path / "runs" / "main")
    text = readme.main_job(tmp_path / "runs" / "main")
    assert text.startswith("From `runs/main/report.json` (`python train.py --arm sens-sens`): 8.3 min wall")
    assert "| mmlu | 25.0 [14.0, 40.0] (n=40) | 25.0 [14.0, 40.0] (n=40) | 1 (0/0) | 1.5800 [1.5000, 1.7000] |" in text
    assert "-0.0800 [-0.1500, -0.0200], Wilcoxon p 0.031" in text
    assert "- gpqa not run: GPQA is not obtainable offline; pass --gpqa-csv" in text
    assert str(tmp_path) not in text  # generated documents name paths relative to the repository


def test_a_missing_marker_or_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="README.md has no <!-- generated:main --> section"):
        readme.replace_section("no markers here", "main", "body")
    text = "a\n<!-- generated:main -->\nold\n<!-- /generated:main -->\nb"
    assert readme.replace_section(text, "main", "new") == "a\n<!-- generated:main -->\nnew\n<!-- /generated:main -->\nb"


def test_a_directory_of_another_kind_is_one_line_and_no_document_changes(tmp_path, monkeypatch):
    document = tmp_path / "README.md"
    monkeypatch.setattr(readme, "README", document)
    monkeypatch.setattr(readme, "SECTIONS", [("main", document, readme.main_job), ("plan", document, readme.plan),
                                             ("bench", document, readme.bench)])
    empty = "<!-- generated:claims -->\n<!-- /generated:claims -->\n<!-- generated:main -->\n<!-- /generated:main -->\n"
    document.write_text(empty)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text('{"an older report": true}')
    with pytest.raises(UserError, match=r"--main .*run: not a finished main run of this version \(KeyError"):
        readme.main(["--main", str(tmp_path / "run")])
    with pytest.raises(UserError, match=r"--bench .*nowhere.json: not found"):
        readme.main(["--main", str(tmp_path / "run"), "--bench", str(tmp_path / "nowhere.json")])
    assert document.read_text() == empty
    fake_main_run(tmp_path / "good")
    readme.main(["--main", str(tmp_path / "good")])
    text = document.read_text()
    assert "| mmlu |" in text and "| HumanEval+ of the winning arm |" in text and "not yet run on this version" in text


def test_curve_names_the_first_step_where_held_out_loss_fell_clearly_beyond_its_noise(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    run = tmp_path / "runs" / "curve"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"command": "train.py --heldout-every 5"}))
    wiggle = [0.0, 0.002, -0.002, 0.002, -0.002, 0.002, -0.002, 0.002, -0.002]  # noise ~0.008/sqrt(6) = 0.0033
    held = {5 * (i + 1): 2.0 - 0.004 * (i + 1) + w for i, w in enumerate(wiggle)}
    log = [{"step": s, "loss": 1.5, **({"heldout_loss_start": 2.0} if s == 1 else {}),
            **({"heldout_loss": held[s]} if s in held else {})} for s in range(1, 46)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    text = readme.curve(run)
    # drops: 0.004, 0.006, 0.014, 0.014, 0.022, ...: the first beyond 3 x 0.0033 = 0.0098 is step 15
    assert "noise (0.0033" in text and "at step 15." in text, text
    assert "| 0 | 2.0000 | +0.0000 |" in text and "| 45 | 1.9620 | +0.0380 | 1.5000 |" in text
