"""A run's output directory: claimed before anything is written, so that nothing finished is
overwritten by accident and two runs never write into one directory.

``claim(directory, resume, overwrite)`` refuses a directory that already holds a run (its
``run.json``, model, checkpoint, ``best/`` or ``metrics.csv``) unless the run is continued
(``resume``) or replaced (``overwrite``, which deletes the run's own files and nothing else), and
takes the directory's lock, ``DIR/run.lock``, for as long as the run writes there.

The lock file names its holder (host, process id and that process's start time). It is created
atomically (a hard link of a complete file, which fails if the lock exists), so of two runs
started together exactly one gets it; the other is refused, naming the holder. A lock whose
holder is gone (killed with SIGKILL, or the machine rebooted) is stale: the next run on the same
host finds the process missing, or a different process under its id, and reclaims it. A lock held
from another host cannot be checked and is refused; the message says which file to remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.distributed import Processes

LOCK_NAME = "run.lock"
# what a run writes (tasks.engine's layout): the files that make a directory "hold a run", and the
# ones --overwrite deletes
RUN_FILES = ("run.json", "config.json", "model.safetensors", "metrics.csv", "curves.png")
RUN_FOLDERS = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "best", "tensorboard", "samples")


def run_files(directory: Path) -> list[str]:
    """The names of a run's files and folders present in ``directory``."""
    return [name for name in RUN_FILES + RUN_FOLDERS if (directory / name).exists()]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), which
    tells a live holder from a later process that reuses its id; ``None`` where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    started = holder.get("started_ticks")
    return started is None or _start_time(pid) in (None, started)


def _describe(holder: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder.get('pid')} on {holder.get('host')!r} since {when}"


class RunLock:
    """``DIR/run.lock`` held by this process (see the module docstring)."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                       "started_ticks": _start_time(os.getpid()), "token": uuid.uuid4().hex,
                       "command": sys.argv}

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # half-written by a process killed mid-write: nobody holds it
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.holder['token']}")
        tmp.write_text(json.dumps(self.holder) + "\n")
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)
                    return
                except FileExistsError:
                    pass
                holder = self._read()
                if holder is None:  # released meanwhile
                    continue
                same_host = holder.get("host") == self.holder["host"]
                if holder and (not same_host or _alive(holder)):
                    where = "" if same_host else " (another host: remove the file if that run is over)"
                    raise ValueError(f"--output-dir: {str(self.path.parent)!r} is in use by "
                                     f"{_describe(holder)}{where}; lock file {str(self.path)!r}")
                stale = self.path.with_name(f".{LOCK_NAME}.stale.{self.holder['token']}")
                with contextlib.suppress(FileNotFoundError):  # another process may reclaim it first
                    os.rename(self.path, stale)
                    stale.unlink()
                    print(f"perceiver: reclaimed the stale lock of {_describe(holder)} (no longer running) "
                          f"in {str(self.path)!r}", file=sys.stderr)
            raise ValueError(f"--output-dir: could not lock {str(self.path)!r}: other runs keep taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        holder = self._read()
        if holder and holder.get("token") == self.holder["token"]:
            self.path.unlink(missing_ok=True)


def check_target(directory: Path, resume: bool, overwrite: bool) -> list[str]:
    """Refuse ``directory`` if it holds a run that is neither resumed nor to be overwritten; return
    the run files that ``overwrite`` will delete."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--output-dir: expected a directory, got the file {str(directory)!r}")
    if resume and overwrite:
        raise ValueError("--resume, --overwrite: expected at most one (continue the run, or replace it)")
    found = run_files(directory) if directory.is_dir() else []
    if found and not (resume or overwrite):
        checkpoint = any(name.startswith("checkpoint") for name in found)
        how = "continue it with --resume, replace it" if checkpoint else "it has no checkpoint: replace it"
        raise ValueError(f"--output-dir: {str(directory)!r} holds a run ({', '.join(found)}); {how} with "
                         "--overwrite, or choose another directory")
    return found if overwrite else []


@contextlib.contextmanager
def claim(directory, resume: bool = False, overwrite: bool = False):
    """Lock ``directory``, check it (:func:`check_target`) and with ``overwrite`` delete the
    previous run's files; the lock is released on exit, however the run ends. Checked under the
    lock, so a run that finished meanwhile is seen; refused, it leaves no trace (a directory made
    for the lock is removed again)."""
    directory = Path(directory)
    check_target(directory, resume, overwrite)  # before making anything
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = RunLock(directory)
    try:
        lock.acquire()
    except BaseException:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        for name in check_target(directory, resume, overwrite):
            path = directory / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        yield directory
    finally:
        lock.release()


@contextlib.contextmanager
def claim_for_every_process(directory: Path, resume: bool, overwrite: bool, procs: Processes):
    """:func:`claim` by rank 0, its verdict shared, so that a refusal stops every process of a
    torchrun job instead of leaving the others waiting in their first collective."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if procs.is_main:
            try:
                stack.enter_context(claim(directory, resume, overwrite))
            except ValueError as error:
                refusal = str(error)
        refusal = procs.broadcast(refusal)
        if refusal is not None:
            raise ValueError(refusal)
        yield
