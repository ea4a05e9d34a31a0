"""Stopping a run cleanly: SIGTERM (schedulers, ``kill``) and SIGINT (Ctrl-C) are collected
instead of killing the process, so the engine finishes its step, saves a checkpoint and raises
``Stopped``; a second signal interrupts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Training stopped by a signal after saving a checkpoint: continue with ``resume=True``."""

    def __init__(self, signum: int, step: int, directory: Path):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved "
                         f"in {str(directory)!r}; continue with --resume")


@contextlib.contextmanager
def stop_requests():
    """Yields a list that collects SIGTERM / SIGINT numbers instead of dying on them; a second
    signal raises ``KeyboardInterrupt``. Only the main thread can take signals; elsewhere the list
    stays empty. The previous handlers are restored on exit."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        received.append(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """For batch-building workers: leave SIGTERM / SIGINT to the training process, which stops
    them itself once it has saved its checkpoint."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
