"""dist.py: two gloo processes on CPU, started by torchrun as a user would start them, give the one-process result:
the same evaluation bytes, the same adapter after training, and a failing or stuck rank stops the whole run.

This file is also the workers' script: `python -m torch.distributed.run ... tests/test_dist.py WORKER ARGS`.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support import dist  # noqa: E402
from conftest import tiny_model_dir  # noqa: E402
from test_train import CFG, adapted_model, adapter_tensors, toy_examples  # noqa: E402

# 6 rows a step (3 x 2), LoRA dropout 0.1 (adapted_model). AdamW's first steps move every element by about lr
# whatever its gradient, so float noise in a near-zero gradient shows at ~lr x 1e-3: lr 1e-3 (5x the default).
STEPS = replace(CFG, steps=3, checkpoint_every=2, lr_lora=1e-3, lr_garfa=1e-2)


@pytest.fixture
def one_thread():
    """This process on one thread, like each worker (OMP_NUM_THREADS=1): two threads on a busy 2-core machine
    run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(*args, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Two processes on CPU (gloo) on a free port; returns the finished launch and its wall time."""
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return done, time.time() - t0


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_evaluate_to_the_same_bytes_as_one(tmp_path, one_thread):
    """Multiple choice, generation with the sandbox (humaneval) and gold bpb, with several batches per benchmark
    (5 items, batches of 2: rank 0 runs batches 0 and 2, rank 1 batch 1)."""
    import evaluate

    argv = ["--model", tiny_model_dir(tmp_path / "tiny"), "--benchmarks", "mmlu,mgsm_en,humaneval", "--limit", "5",
            "--batch-size", "2", "--max-new-tokens", "8", "--metrics", "acc,bpb", "--device", "cpu"]
    two, _ = torchrun("evaluate.py", *argv, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    evaluate.main([str(a) for a in argv] + ["--out", str(tmp_path / "one")])
    one_files, two_files = files_of(tmp_path / "one"), files_of(tmp_path / "two")
    assert one_files.keys() == two_files.keys()  # rank 1 wrote nothing of its own
    for name in ("mmlu", "mgsm_en", "humaneval"):
        rows = one_files[f"predictions/{name}.jsonl"]
        assert rows == two_files[f"predictions/{name}.jsonl"], name
        assert len(rows.splitlines()) == 5 and b'"bpb"' in rows and b'"correct"' in rows
    assert one_files["results.json"] == two_files["results.json"]
    assert one_files["config.json"] == two_files["config.json"]
    assert two.stdout.count("predictions:") == 1  # rank 0 alone prints the summary


def test_a_rows_dropout_mask_does_not_depend_on_its_batch():
    """The same row alone or in a padded batch with other rows: the same mask on its real positions."""
    from lora import keep_mask

    alone = keep_mask((1, 25, 24), 0.3, [(12, 25)])
    together = keep_mask((3, 40, 24), 0.3, [(11, 40), (12, 25), (13, 30)])  # (B, T, in)
    assert torch.equal(together[1, :25], alone[0]) and together[1, 25:].all()  # padding: never read
    assert not torch.equal(together[0, :25], together[1, :25])  # rows differ
    assert 0.65 < together[0].float().mean() < 0.75  # kept with probability 1 - p


def train_worker(run_dir: str) -> None:
    dist.init("cpu")
    model = adapted_model()
    from train import train

    train(model, toy_examples(), STEPS, 0, pad_id=0, run_dir=Path(run_dir), resume=False)
    if dist.is_main():
        torch.save(adapter_tensors(model), Path(run_dir) / "adapter.pt")
    dist.finish()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_two_processes_train_the_same_adapter_as_one_and_resume_with_any_number(tmp_path, one_thread):
    """The same global batch (3 rows x 2 micro-batches, dealt 3 and 3), LoRA dropout on: masks belong to rows."""
    from train import train

    two_dir, one_dir, resumed_dir = tmp_path / "two", tmp_path / "one", tmp_path / "resumed"
    for d in (two_dir, one_dir):
        d.mkdir()
    two, _ = torchrun(Path(__file__), "train", two_dir)
    assert two.returncode == 0, two.stderr[-3000:]
    one = adapted_model()
    log = train(one, toy_examples(), STEPS, 0, pad_id=0, run_dir=one_dir, resume=False)
    expected, got = adapter_tensors(one), torch.load(two_dir / "adapter.pt")
    assert max_diff(expected, got) <= 1e-5
    assert max_diff(expected, adapter_tensors(adapted_model())) > 1e-3  # training moved the adapter
    without_dropout = adapted_model()
    for m in without_dropout.modules():
        if hasattr(m, "dropout_rows"):
            m.dropout = 0.0
    (tmp_path / "plain").mkdir()
    train(without_dropout, toy_examples(), STEPS, 0, pad_id=0, run_dir=tmp_path / "plain", resume=False)
    assert max_diff(expected, adapter_tensors(without_dropout)) > 1e-4  # dropout matters: its masks are tested
    two_log = [json.loads(x) for x in (two_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_log] == [1, 2, 3]  # rank 0 alone writes the log
    assert [r["loss"] for r in two_log] == [r["loss"] for r in log]
    assert [r["tokens"] for r in two_log] == [r["tokens"] for r in log]

    # --resume with another number of processes: one process continues the two-process run from step 2.
    shutil.copytree(two_dir, resumed_dir)
    resumed = adapted_model()
    train(resumed, toy_examples(), STEPS, 0, pad_id=0, run_dir=resumed_dir, resume=True, previous=True)
    assert max_diff(expected, adapter_tensors(resumed)) <= 1e-5


def fail_worker() -> None:
    from support.cli import run
    from support.files import UserError

    def main(argv):
        dist.init("cpu")
        if dist.rank() == 1:
            raise UserError("rank one cannot go on")
        dist.barrier()  # rank 0 would wait here for ever (the collective timeout is 30 minutes)

    run(main, [])


def stuck_worker() -> None:
    from support.cli import run

    def main(argv):
        dist.init("cpu")
        if dist.rank() == 1:
            time.sleep(120)  # alive, but never reaches the barrier
        dist.barrier()

    run(main, [])


def test_a_failing_rank_stops_every_rank_with_its_message(tmp_path):
    done, seconds = torchrun(Path(__file__), "fail")
    assert done.returncode != 0 and seconds < 40, (done.returncode, seconds)
    assert "error (rank 1 of 2): rank one cannot go on" in done.stderr


def test_a_collective_that_times_out_names_the_waiting_rank(tmp_path):
    done, seconds = torchrun(Path(__file__), "stuck", env={dist.TIMEOUT_ENV: "3"})
    assert done.returncode != 0 and seconds < 60, (done.returncode, seconds)
    assert "error (rank 0 of 2)" in done.stderr


WORKERS = {"train": train_worker, "fail": fail_worker, "stuck": stuck_worker}

if __name__ == "__main__":
    WORKERS[sys.argv[1]](*sys.argv[2:])
