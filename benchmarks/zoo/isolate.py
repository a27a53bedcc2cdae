"""One child process per job, with a deadline and a memory cap, so a hang or a blow-up costs one cell.

Children are forked from a fork server that imported torch, the model libraries and the
exporters once (:mod:`benchmarks.zoo.preload`), as the fidelity runner's are; each Ray worker
(or the driver, without Ray) starts its own server on first use.

The memory cap is a watchdog, not ``RLIMIT_AS``: the parent polls the child's resident memory
(with its own children) every ``POLL_S`` and kills it above the cap, recording OOM. An
address-space limit does not measure what runs out: torch maps gigabytes of address space it
never touches (CUDA libraries, allocator arenas, thread stacks), so a limit tight enough to matter
kills healthy exports. A spike shorter than ``POLL_S`` can pass the watchdog; then the kernel's
OOM killer ends the child with SIGKILL, which nothing else here sends, so it is recorded as OOM too.

A child dies with its parent (``PR_SET_PDEATHSIG``): killing a run leaves no export running.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, Callable

import psutil

POLL_S = 0.2
PRELOAD = "benchmarks.zoo.preload"
ZOOS_ENV = "FXTRT_ZOO_PRELOAD"  # the zoos whose libraries the fork server preloads (comma-separated)


@dataclass(frozen=True)
class Limits:
    """Per child: seconds before it is killed, resident MB before it is killed, and its threads."""

    timeout_s: float = 600.0
    mem_cap_mb: float = 8192.0
    threads: int = 1


@dataclass(frozen=True)
class ChildExit:
    exitcode: int | None
    timed_out: bool
    oom: bool
    max_rss_mb: float
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.exitcode == 0 and not self.timed_out and not self.oom

    def death(self, limits: Limits) -> str:
        """Why the child is gone, as a sentence fragment for a row's detail."""
        if self.timed_out:
            return f"timed out after {limits.timeout_s:.0f} s"
        if self.oom and self.max_rss_mb > limits.mem_cap_mb:
            return f"killed above the memory cap ({self.max_rss_mb:.0f} MB > {limits.mem_cap_mb:.0f} MB)"
        if self.oom:
            return "killed by SIGKILL (the kernel's OOM killer: memory ran out between two watchdog polls)"
        code = self.exitcode
        return f"process died with signal {-code}" if code is not None and code < 0 else f"process exited with code {code}"


def _ready() -> None:
    """A child that returns at once: its start waits until the server has imported everything."""


def context() -> BaseContext:
    """The fork server's context, its preload done (so no job's deadline pays for it).

    The server starts with one OpenMP thread (see benchmarks.fuzz._context: a thread team started
    in the server is inherited broken by forked children, which then hang)."""
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    probe = ctx.Process(target=_ready, daemon=True)
    probe.start()
    probe.join()
    return ctx


def _rss_mb(process: psutil.Process) -> float:
    try:
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20
    except psutil.Error:
        return 0.0


def run_child(ctx: BaseContext, target: Callable[..., None], args: tuple[Any, ...], limits: Limits) -> ChildExit:
    """Run ``target(*args)`` in a child; kill it at the deadline or above the memory cap."""
    start = time.perf_counter()
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    watched = psutil.Process(proc.pid)
    peak, timed_out, oom = 0.0, False, False
    try:
        while proc.is_alive():
            proc.join(POLL_S)
            rss = _rss_mb(watched)
            peak = max(peak, rss)
            if rss > limits.mem_cap_mb:
                oom = True
            elif time.perf_counter() - start > limits.timeout_s:
                timed_out = True
            if (oom or timed_out) and proc.is_alive():
                proc.kill()
                proc.join()
    except BaseException:
        proc.kill()
        proc.join()
        raise
    exitcode = proc.exitcode
    oom = oom or (exitcode == -signal.SIGKILL and not timed_out)
    return ChildExit(exitcode, timed_out, oom, peak, time.perf_counter() - start)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (the fork server) exits (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    parent = os.getppid()
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call took effect
        os._exit(1)
