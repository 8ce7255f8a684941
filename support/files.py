"""Where things live and how they are written: paths, atomic files, JSON and JSONL, and directory locks.

Every file the project writes appears whole or not at all (a temporary file beside it, then a rename), and every
file it reads names itself in the error when it is missing or malformed. A user mistake raises `UserError`, which
the commands print as one line (cli.py); a program bug raises anything else and keeps its traceback.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from support import dist

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / "checkpoints" / "SmolLM2-135M-Instruct"
DATA_DIR = ROOT / "data"
WHEEL_DIR = DATA_DIR / "wheels"  # every pinned wheel, kept so a rebuild needs no network
RUNS_DIR = ROOT / "runs"  # every command's default output
CACHE_DIR = RUNS_DIR / ".cache"  # layer scores and base evaluations, keyed by model and settings
LOCK_FILE = ".lock"


class UserError(ValueError):
    """A mistake the user can fix (a path, a file, an option): shown as one line, exit code 2, no traceback.

    A ValueError, so library callers that catch bad input as ValueError keep working.
    """


def provenance() -> dict:
    """What a run's config.json records about where it came from: versions, git commit, command line."""
    import safetensors
    import tokenizers
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__},
            "git_commit": commit, "command": " ".join(sys.argv)}


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a temporary file beside it, then an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    except PermissionError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose a writable --out") from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    os.replace(tmp, path)


def json_line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=isinstance(obj, list)) + "\n"


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path, fix: str = "fix or delete it", what: str | None = None):
    """A JSON file; with `what`, it must hold a JSON object (a config). Errors name the file and `fix`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {fix}") from None
    if what is not None and not isinstance(data, dict):
        raise UserError(f"{path} is not {what} (a JSON object); {fix}")
    return data


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines() also splits on the U+2028 / U+0085 that questions and outputs contain
    path = Path(path)
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is damaged ({e}); delete it and run the command again") from None


def repo_relative(text: str) -> str:
    """`text` with the repository's absolute path cut from every path in it: what a generated document may show
    (it must not name the machine that ran it)."""
    return text.replace(str(ROOT) + os.sep, "")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """What a marker remembers of a prepared file: its size and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


TENSORS_SHA256 = "tensors_sha256"  # the metadata key of an adapter file's checksum of its own tensors


def tensors_sha256(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the checksum an adapter file carries
    in its safetensors metadata (PEFT reads the file and ignores the key)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(tensors: dict, path: Path) -> None:
    """A safetensors file that carries the checksum of its tensors."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt", TENSORS_SHA256: tensors_sha256(tensors)})


def load_tensors(path: Path, fix: str = "copy it again or train again", note: bool = True) -> dict:
    """The tensors of a safetensors file, checked: readable, equal to the checksum in its metadata, finite. A file
    without a checksum (made by PEFT or another tool) loads with a note, since nothing can verify its bytes."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            expected = (f.metadata() or {}).get(TENSORS_SHA256)
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if expected is None and note:
        print(f"note: {path} carries no checksum of its tensors (made by PEFT, another tool or an older "
              "version of this project): loaded unverified",
              file=sys.stderr)
    elif tensors_sha256(tensors) != expected:
        raise UserError(f"{path}: its tensors do not match the checksum in its header (damaged); {fix}")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{path}: tensor '{name}' holds NaN or infinite values; {fix}")
    return tensors


HASH_CACHE = CACHE_DIR / "sha256.json"  # resolved path -> [size, mtime_ns, ctime_ns, inode, sha256]
RACY_NS = 2 * 10**9  # a file written this recently may change again within its timestamps' granularity: not cached


def sha256_cached(path: Path) -> str:
    """The sha256 of a file, read again only when its size, mtime, ctime or inode changed (as git trusts its index).
    Any write, copy or rename gives a file a new ctime, which unlike the mtime no tool can set back, so a damaged
    file is always hashed again; the record lives in runs/.cache, so a 16 GB checkpoint is hashed once, not per
    command."""
    path = Path(path).resolve()
    stat = path.stat()
    key = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    try:
        cache = json.loads(HASH_CACHE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    if isinstance(known := cache.get(str(path)), list) and known[:4] == key:
        return known[4]
    digest = sha256_of(path)
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_NS:
        cache = {p: v for p, v in cache.items() if Path(p).exists()} | {str(path): key + [digest]}
        try:
            HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(HASH_CACHE, json.dumps(cache))
        except (OSError, UserError):  # a record that cannot be written costs a hash next time, nothing else
            pass
    return digest


def damaged_files(root: Path, records: dict[str, dict], full: bool = False) -> list[str]:
    """Names in `records` whose file is missing or differs: by size always, by sha256 when `full` (sha256_cached:
    a stat for a file unchanged since it was last hashed)."""
    bad = []
    for name, rec in records.items():
        path = root / name
        if not path.is_file() or path.stat().st_size != rec["bytes"]:
            bad.append(name)
        elif full and sha256_cached(path) != rec["sha256"]:
            bad.append(name)
    return bad


@contextmanager
def locked(directory: Path, what: str = "run"):
    """Hold an exclusive lock on `directory` (created if absent); a second holder fails at once, naming the first.

    In a multi-process run only rank 0 locks (and writes): the other ranks of the same run pass through.
    """
    directory = Path(directory)
    if not dist.is_main():
        yield directory
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # permission, a read-only file system, a file in the path
        raise UserError(f"cannot write in {directory}: {e.strerror}; choose a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"another {what} (pid {holder}) is using {directory}; wait for it or choose another "
                            f"directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield directory
    finally:
        os.close(fd)  # closing releases the lock; the file stays, so a lock never races its own deletion


CONFIG_FILE = "config.json"


def check_claim(out: Path, config: dict, resume: bool, resume_keys: tuple[str, ...], kind: str) -> None:
    """Raise unless `out` may take this run (see claim_output); a config.json without the keys this command writes
    (a model's config.json, say) is not one of ours."""
    names = {p.name for p in out.iterdir()} - {LOCK_FILE}
    try:
        previous = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")) if CONFIG_FILE in names else None
    except (OSError, ValueError):
        previous = None
    ours = isinstance(previous, dict) and set(resume_keys or config) <= previous.keys()
    if names and not ours:
        raise UserError(f"--out {out} is not empty and holds no {kind} of this project "
                        f"({', '.join(sorted(names)[:3])}, ...); give a new or empty directory")
    if len(names) > 1:  # a started run: its config.json and what it made after it
        if not resume:
            hint = "Continue it with --resume, or" if resume_keys else "Delete it, or"
            article = "an" if kind[0] in "aeiou" else "a"
            raise UserError(f"{out} already holds {article} {kind}. {hint} pass another --out.")
        now = json.loads(json.dumps(config))  # tuples -> lists
        changed = [difference(k, previous.get(k), now.get(k)) for k in resume_keys if previous.get(k) != now.get(k)]
        if changed:
            raise UserError(f"{out} holds a {previous.get('kind', kind)} made with different settings: "
                            + ", ".join(changed) + ". Use the same settings, or pass another --out.")


def difference(key: str, before, now) -> str:
    """One setting that differs, down to the entries that do: "train={lr_lora=0.0002 (now 0.001)}"."""
    if isinstance(before, dict) and isinstance(now, dict):
        return f"{key}={{" + ", ".join(difference(k, before.get(k), now.get(k)) for k in sorted(
            before.keys() | now.keys()) if before.get(k) != now.get(k)) + "}"
    return f"{key}={before!r} (now {now!r})"


@contextmanager
def claim_output(out: Path, config: dict, resume: bool, resume_keys: tuple[str, ...] = (), kind: str = "run"):
    """Claim `out` for one run, locked for its duration; nothing there that this run did not make is overwritten.

    Accepted: an absent or empty directory, a directory whose only file is a config.json left by a start that
    failed before doing anything, or (with `resume`) a started run whose `resume_keys` settings equal `config`'s.
    In a multi-process run rank 0 claims and writes; the other ranks wait until it has, and write nothing.
    """
    out = Path(out)
    if not dist.is_main():
        dist.barrier()
        yield out
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a new or empty directory")
    # --resume into a missing or empty directory (a typo in --out) must not start a fresh run without a word
    if resume and not (out.is_dir() and {p.name for p in out.iterdir()} - {LOCK_FILE}):
        raise UserError(f"--resume: {out} holds no run to continue; check --out, or drop --resume to start one")
    if out.is_dir() and not (out / LOCK_FILE).exists():  # never locked by a run: refused before a lock file is added
        check_claim(out, config, resume, resume_keys, kind)
    with locked(out, kind):
        check_claim(out, config, resume, resume_keys, kind)  # again, now that no other run can change it
        write_json(out / CONFIG_FILE, config)
        dist.barrier()
        yield out


def model_fingerprint(model_dir: str | Path) -> str:
    """A short key for a checkpoint's weights: sha256 over config.json, the shard index, and per *.safetensors file
    its name and full sha256 (sha256_cached: hashed once per change of the file, so a cached evaluation is never
    reused against weights edited in place, even with their size kept)."""
    model_dir, h = Path(model_dir), hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        if (model_dir / name).is_file():
            h.update(name.encode() + (model_dir / name).read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{path.name}:{sha256_cached(path)}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Training checkpoints: the adapter tensors, the optimizer and the step, with the previous one kept

CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"


def save_checkpoint(run_dir: Path, model, optimizer, step: int) -> None:
    """checkpoint.pt, the previous one kept as checkpoint.prev.pt, so a damaged file always has a fallback.
    Rank 0 writes it: every rank holds the same adapter and optimizer state."""
    import torch

    if not dist.is_main():
        return
    state = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    path, tmp = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.tmp"
    torch.save({"step": step, "adapter": state, "optimizer": optimizer.state_dict()}, tmp)
    if path.is_file():
        os.replace(path, run_dir / PREVIOUS_CHECKPOINT)
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path, device, previous: bool) -> dict | None:
    import torch

    path = run_dir / (PREVIOUS_CHECKPOINT if previous else CHECKPOINT)
    if not path.is_file():
        if previous:
            raise UserError(f"--previous-checkpoint: {path} does not exist; use --restart to train from step 0")
        return None
    try:
        return torch.load(path, map_location=device)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # truncated, cut or overwritten
        fallback = run_dir / PREVIOUS_CHECKPOINT
        hint = (f"add --previous-checkpoint to continue from {fallback.name}, or " if fallback.is_file() and
                not previous else "")
        why = (str(e).splitlines() or [type(e).__name__])[0][:80]  # an empty file raises a bare EOFError
        raise UserError(f"{path} is damaged ({why}); {hint}add --restart to train this arm from step 0") from None
