"""readme.py: the generated sections come from run directories, and a missing marker is one clear error."""
import json

import pytest

from tools import readme
from support.files import UserError

TABLE = """| benchmark | base accuracy | arm accuracy | McNemar p | base bpb | arm bpb | bpb difference |
|---|---|---|---|---|---|---|
| mmlu | — | — |  | 1.5 [1.4, 1.6] | 1.5 [1.4, 1.6] | {mmlu}, Wilcoxon p 0.5 |
| gpqa | not run | not run |  | — | — |  |
| mgsm_en (offline stand-in for MGSM: GSM8K test 0-249, English) | — | — |  | 0.7 [0.7, 0.8] | 0.6 [0.6, 0.7] | {mgsm}, Wilcoxon p 1e-05 |
"""


def fake_curve_run(root, steps, mmlu, mgsm, losses):
    d = root / f"steps-{steps}"
    d.mkdir(parents=True)
    (d / "report.md").write_text("# sens-sens\n\n" + TABLE.format(mmlu=mmlu, mgsm=mgsm) + "\nWhat the accuracy ...\n")
    (d / "train_log.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": x}) + "\n"
                                               for i, x in enumerate(losses)))


def test_curve_rows_in_step_order_with_each_benchmarks_paired_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    fake_curve_run(tmp_path / "curve", 150, "-0.03 [-0.08, +0.02]", "-0.10 [-0.12, -0.09]", [2.0] * 10 + [1.0] * 10)
    fake_curve_run(tmp_path / "curve", 50, "-0.01 [-0.06, +0.02]", "-0.03 [-0.04, -0.02]", [3.0] * 5 + [1.0] * 15)
    lines = readme.curve(tmp_path / "curve").splitlines()
    assert lines[2] == "| steps | training loss (mean of the first -> last 10 steps) | mmlu | mgsm_en |"
    assert lines[4] == "| 50 | 2.000 -> 1.000 | -0.01 [-0.06, +0.02]; p 0.5 | -0.03 [-0.04, -0.02]; p 1e-05 |"
    assert lines[5].startswith("| 150 | 2.000 -> 1.000 | -0.03 [-0.08, +0.02]; p 0.5 |")  # not run (gpqa): no column


def test_a_missing_marker_or_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no <!-- generated:curve --> section"):
        readme.replace_section("no markers here", "curve", "body")
    with pytest.raises(UserError, match="holds no steps-<S>/report.md"):
        readme.curve(tmp_path)
    text = "a\n<!-- generated:curve -->\nold\n<!-- /generated:curve -->\nb"
    assert readme.replace_section(text, "curve", "new") == "a\n<!-- generated:curve -->\nnew\n<!-- /generated:curve -->\nb"


def test_a_directory_of_another_kind_is_one_line_naming_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "README", tmp_path / "README.md")
    (tmp_path / "README.md").write_text("<!-- generated:main -->\n<!-- /generated:main -->\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.md").write_text("# an older report without a benchmark table\n")
    with pytest.raises(UserError, match=r"--main .*run: not a finished main run of this version \(ValueError"):
        readme.main(["--main", str(tmp_path / "run")])
    with pytest.raises(UserError, match=r"--ablation .*nowhere: not found; give the directory"):
        readme.main(["--main", str(tmp_path / "run"), "--ablation", str(tmp_path / "nowhere")])
    assert (tmp_path / "README.md").read_text() == "<!-- generated:main -->\n<!-- /generated:main -->\n"
