"""SIGTERM as an exception, so that a stopped compile (a CI timeout, ``kill``, ``docker stop``)
unwinds like a failed one and its staging directory is removed on the way out.

Python's default action for SIGTERM ends the process at once: no ``finally`` or ``__exit__`` runs.

Example::

    with sigterm_raises():
        ...          # a SIGTERM here raises Terminated, a SystemExit with status 143
"""
from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

SIGTERM_STATUS = 128 + signal.SIGTERM  # 143: the shell's status for a process ended by SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived. A SystemExit, not an FxtrtError: no ``except Exception`` may swallow it,
    and a script that does not catch it exits with status 143 and no traceback."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_STATUS)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`Terminated` when it would otherwise end the process at once
    (its handler is the default) and this is the main thread (the only one Python signals). A
    handler the program set itself is left alone; on the way out the default is restored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
