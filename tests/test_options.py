"""The options every model command shares (--model, --device, --dtype, --compile), defined once in support/cli.py:
a device this torch build does not have is one line naming the fix, before any work, on every command."""
import pytest
import torch

import evaluate
import sensitivity
import train
from support import cli

COMMANDS = {"train.py": (train.main, ["--arm", "sens-sens"]), "evaluate.py": (evaluate.main, []),
            "sensitivity.py": (sensitivity.main, [])}


def one_line_error(capsys, main, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("name", COMMANDS)
def test_cuda_on_a_cpu_only_torch_is_one_line_naming_the_fix(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only build reports
    main, argv = COMMANDS[name]
    out = tmp_path / "out"
    line = one_line_error(capsys, main, argv + ["--device", "cuda", "--out", str(out)])
    assert "argument --device: 'cuda': this torch" in line and "sees no CUDA GPU; use --device cpu" in line, line
    assert not out.exists()


@pytest.mark.parametrize("device, expected", [("gpu", "'gpu' is not a torch device; use cpu, cuda or cuda:N"),
                                              ("meta", "'meta' is not supported; use cpu, cuda or cuda:N")])
def test_a_device_that_is_not_one_is_one_line(device, expected, capsys, tmp_path):
    for main, argv in COMMANDS.values():
        assert expected in one_line_error(capsys, main, argv + ["--device", device, "--out", str(tmp_path / "o")])


def test_the_four_model_options_are_defined_once_with_the_same_help():
    helps = {name: {a.dest: a.help for a in main.__globals__["build_parser"]()._actions
                    if a.dest in ("model", "device", "dtype", "compile")} for name, (main, _) in COMMANDS.items()}
    assert all(len(h) == 4 for h in helps.values()), helps
    assert helps["train.py"]["device"] == helps["evaluate.py"]["device"] == helps["sensitivity.py"]["device"]
    assert cli.resolve_dtype(None, "cuda:0") == torch.bfloat16 and cli.resolve_dtype(None, "cpu") == torch.float32
    assert cli.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
