"""Many processes, one result: torch.distributed as torchrun starts it, for every command.

    torchrun --nproc-per-node 8 train.py --arm ablation         # 8 GPUs: rank r on cuda:r, NCCL
    torchrun --nproc-per-node 2 evaluate.py --device cpu         # 2 CPU processes, gloo
    python train.py --arm ablation                               # one process: everything here is a no-op

What is split, and why the answer does not depend on the number of processes N:
- Evaluation: a scorer forms its batches exactly as one process would (sorted by length, batch_size rows), rank r
  runs batches r, r + N, r + 2N, ... (`shard`), and `gather` puts every batch's results back in their place on
  every rank. Each batch is the same computation on the same rows as in one process, so every number is identical.
- Training: each step's global batch (--batch-size x --grad-accum rows, the same rows in the same order for any N)
  is dealt out the same way; each rank's loss is its rows' share of the one-process loss, `sum_gradients` adds the
  shares up, and every rank takes the same optimizer step. LoRA dropout masks belong to the row (lora.py).
Rank 0 writes every shared file and prints; the other ranks' stdout goes to /dev/null (their errors still show).
A rank that fails prints its error with its rank and leaves at once, and torchrun stops the others (cli.run).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as td
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

TIMEOUT_ENV = "REPRO_DIST_TIMEOUT"  # seconds a rank waits in a collective before it fails, naming itself
DEFAULT_TIMEOUT_S = 1800  # rank 0 alone scores layers and writes reports while the others wait at a barrier


def world_size() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def where() -> str:
    """" (rank r of N)" in a multi-process run, "" otherwise: for messages that must say which process speaks."""
    return f" (rank {rank()} of {world_size()})" if world_size() > 1 else ""


def init(device: str) -> str:
    """Join the process group torchrun describes in the environment, and return this rank's device.

    Without torchrun (or with one process) nothing happens and `device` comes back unchanged. Under torchrun a CUDA
    device becomes cuda:LOCAL_RANK (one GPU per rank) with the NCCL backend; anything else uses gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not td.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        td.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                              device_id=torch.device(device) if cuda else None)
        if not is_main():
            sys.stdout = open(os.devnull, "w")  # rank 0 prints the summary, once
    return device


def finish() -> None:
    """Wait for every rank to arrive, then leave the process group (a command's normal end)."""
    if td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def abort(code: int, error: BaseException | None = None):
    """Leave now with exit code `code`: torchrun sees it and stops the other ranks, which may be waiting in a
    collective for this one (a normal interpreter exit could wait for them first). `error` goes to torchrun's error
    file, so its summary of the failed ranks shows each one's message."""
    if error is not None:
        ErrorHandler().record_exception(error)  # writes only under torchrun (TORCHELASTIC_ERROR_FILE)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if world_size() > 1:
        td.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (preparing a model, filling a cache), then the other ranks run it and find the
    work done: they only read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def from_main(value):
    """Rank 0's `value`, on every rank: one decision for all (is a result cached, is a run complete)."""
    if world_size() == 1:
        return value
    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------------------------
# Dealing out work and putting the results back

def shard(items) -> list:
    """This rank's share of `items`: items r, r + N, r + 2N, ... (dealt like cards, so a list sorted by length
    gives every rank long and short ones)."""
    return list(items)[rank()::world_size()]


def gather(mine: list) -> list:
    """The inverse of `shard`: every rank's results, each back at the position of the item it came from, on every
    rank. Objects travel pickled, so floats arrive bit for bit."""
    n = world_size()
    if n == 1:
        return list(mine)
    parts = [None] * n
    td.all_gather_object(parts, list(mine))
    out = [None] * sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        out[r::n] = part
    return out


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Add up every rank's gradients of `params` in place, in one all-reduce (adapters are small). A parameter
    without a gradient (a rank with no rows this step) contributes zeros."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])  # (total adapter size,)
    td.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(p).to(p.dtype)
        offset += g.numel()


def sum_value(value: float, device) -> float:
    """`value` added up over the ranks (a loss sum for the log)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    td.all_reduce(t)
    return t.item()
