"""The command-line edge shared by every command: options from frozen dataclasses, and one-line user errors.

An options dataclass declares each option once, with `option(default, help, ...)`; `add_options` turns its fields
into argparse flags (so `--help` shows every default) and `from_args` builds the dataclass back. `run(main)` prints
a `UserError` as one line on stderr with exit code 2; `--debug` (or REPRO_DEBUG=1) shows the traceback instead.
`Parser` makes argparse's own mistakes (a bad value, an unknown option) one line and exit code 2 as well.
Under torchrun (dist.py) a failing rank says which rank it is and leaves at once, so torchrun stops the others.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import MISSING, field, fields

from support import dist
from support.files import UserError

DEBUG_ENV = "REPRO_DEBUG"
DTYPES = ("float32", "bfloat16")
COMPILE_HELP = ("torch.compile each block and the decoding step (tools/compiled.py). Off by default: on a 2-core CPU "
                "the compilation takes minutes and the steps gain little (docs/engineering.md)")


def option(default, help: str, choices=None, type=None, flag: str | None = None):
    """A dataclass field that is also a command-line option (`type` parses the text, e.g. a comma list)."""
    return field(default=default, metadata=dict(help=help, choices=choices, type=type, flag=flag))


def comma_list(valid=None):
    """A parser for "a,b,c" into a tuple, each name checked against `valid`."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in names if valid is not None and x not in valid]
        if bad or not names:  # ArgumentTypeError: argparse shows this message instead of a generic one
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)} is not a valid choice; valid choices: "
                                             f"{', '.join(valid)}" if valid else "give a comma-separated list")
        return names
    parse.__name__ = "comma-separated list"
    return parse


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None, device):
    """The one dtype rule of every command: bfloat16 weights on CUDA, float32 elsewhere, unless named."""
    import torch

    if name is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def device_option(text: str) -> str:
    """--device: a device this torch build has, checked before any model is loaded (argparse prints the message)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"'{text}': this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu, or install a CUDA "
                "build of torch on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"'{text}': only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"'{text}' is not supported; use cpu, cuda or cuda:N")
    return text


def add_model_options(parser, model_help: str) -> None:
    """--model, --device, --dtype and --compile: the same four options on every command that loads a model."""
    from pathlib import Path

    parser.add_argument("--model", type=Path, default=None, help=model_help)
    parser.add_argument("--device", type=device_option, default=default_device(),
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights' dtype (default: bfloat16 on CUDA, float32 elsewhere)")
    parser.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def comma_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def add_options(parser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the options dataclass `cls` (underscores become dashes; bools become switches)."""
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        meta, default = f.metadata, f.default if f.default is not MISSING else None
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = meta["help"].replace("%", "%%")  # argparse %-formats help texts
        help_text = text if default is None else f"{text} (default: {shown})"  # the text says what None means
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action="store_true" if not default else "store_false", help=text)
            continue
        kind = meta["type"] or (type(default) if default is not None else str)
        parser.add_argument(flag, dest=f.name, type=kind, choices=meta["choices"], default=default, help=help_text)


def from_args(cls, args, **overrides):
    """The options dataclass from parsed arguments (fields the parser lacks keep their defaults)."""
    return cls(**({f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)} | overrides))


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line and exit code 2, like a UserError, not the whole usage text."""

    def __init__(self, *args, **kwargs):
        script = os.path.abspath(sys.argv[0])
        if "prog" not in kwargs and os.path.basename(os.path.dirname(script)) == "tools":  # python -m tools.x
            kwargs["prog"] = f"python -m tools.{os.path.splitext(os.path.basename(script))[0]}"
        super().__init__(*args, **kwargs)

    def error(self, message):
        command = self.prog if self.prog.startswith("python") else f"python {self.prog}"
        self.exit(2, f"error: {message} ({command} --help lists every option)\n")


RESUME_HINT = "Finished work is saved; run the same command with --resume to continue."


def leave(code: int, error: BaseException):
    """Exit with `code`; in a multi-process run at once (dist.abort), so torchrun stops the other ranks."""
    if dist.world_size() > 1:
        dist.abort(code, error)
    raise SystemExit(code) from None


def run(main, argv=None, interrupted: str = RESUME_HINT) -> None:
    """Call main(argv); a UserError is one line on stderr and exit code 2, Ctrl-C a short line and exit 130.

    In a multi-process run every message names its rank, and any other error (a bug, a collective that timed out
    or lost a peer) prints its traceback and exits 1 at once instead of leaving the other ranks waiting.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV) == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        try:
            main(argv)
        except Exception as e:
            if getattr(e, "user_error", False) and not isinstance(e, UserError):
                raise UserError(str(e)) from e  # model.py's CheckpointError: a user mistake from a file that imports nothing of ours
            raise
        dist.finish()
    except UserError as e:
        if debug:
            raise
        print(f"error{dist.where()}: {e}", file=sys.stderr)
        leave(2, e)
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(f"\ninterrupted{dist.where()}. {interrupted}", file=sys.stderr)
        leave(130, e)
    except Exception as e:
        if dist.world_size() == 1:
            raise
        traceback.print_exc()
        first = (str(e).splitlines() or [""])[0]
        print(f"error{dist.where()}: {type(e).__name__}: {first}", file=sys.stderr)
        leave(1, e)
