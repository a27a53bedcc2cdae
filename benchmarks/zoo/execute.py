"""Run the jobs: on Ray (local and embedded by default, or a cluster by address), or in this process.

On Ray each model's job is a remote generator task needing one CPU; the driver waits on all of them
with ``ray.wait`` and commits each cell the moment its task yields it. Ray places the tasks; there
is no scheduler here. A local Ray starts with ``num_cpus=--jobs``, no dashboard, worker output kept
out of the driver's (each step logs to its own file in the work directory instead), and its session
files in a temporary directory that is removed at the end.

On a cluster (``--address auto`` or ``ray://host:10001``) every node needs this repository at the
same path, in the same environment (the tasks import ``benchmarks`` from it, via ``PYTHONPATH``).

Without Ray, jobs run one after another in this process, each step still in a child of its own.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from benchmarks.zoo.job import ModelJob, RunConfig, run_model

REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE_MB = 256  # events are small; the default (30% of RAM) reserves shared memory for nothing
OnEvent = Callable[[ModelJob, dict[str, Any]], None]
OnLost = Callable[[ModelJob, str], None]
log = logging.getLogger(__name__)


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_in_process(jobs: Sequence[ModelJob], config: RunConfig, on_event: OnEvent, on_lost: OnLost) -> int:
    """Every job in turn, in this process, each step on every CPU; returns the CPUs used."""
    threads = os.cpu_count() or 1
    for job in jobs:
        try:
            for event in run_model(job, config, threads):
                on_event(job, event)
        except Exception as exc:  # noqa: BLE001 - a harness bug costs this model's cells, not the run
            log.exception("the job of %s failed", job.model_id)
            on_lost(job, f"{type(exc).__name__}: {exc}")
    return threads


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int, temp_dir: Path) -> Iterator[Any]:
    """``ray.init`` (local, or connected to ``address``), and ``ray.shutdown`` with the local ``temp_dir``
    removed (it holds Ray's sockets and logs; a rerun clears one a killed run left)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster of one, on this machine: no token in ~/.ray
        shutil.rmtree(temp_dir, ignore_errors=True)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp_dir),
                 object_store_memory=OBJECT_STORE_MB * 2**20, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()
        if address is None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_job(job: ModelJob, config: RunConfig) -> Iterator[dict[str, Any]]:
    """The remote generator: one model's job, with as many threads per step as CPUs Ray gave it."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    yield from run_model(job, config, max(1, int(cpus)))


def _ray_job_whole(job: ModelJob, config: RunConfig) -> list[dict[str, Any]]:
    """The job's events all at once, for Ray Client (``ray://``), which has no streaming generators."""
    return list(_ray_job(job, config))


def _take(ray: Any, ref: Any, streaming: bool) -> tuple[list[dict[str, Any]], bool]:
    """The events ready on ``ref`` and whether its job is done; raises what the task raised."""
    if not streaming:
        return ray.get(ref), True
    try:
        return [ray.get(next(ref))], False
    except StopIteration:
        return [], True


def run_on_ray(jobs: Sequence[ModelJob], config: RunConfig, on_event: OnEvent, on_lost: OnLost, *,
               address: str | None, num_cpus: int, cpus_per_job: int = 1) -> int:
    """Submit every job as a task and handle each event as it arrives; returns the cluster's CPUs.

    Each cell is committed as its job yields it (a streaming generator task), except through Ray
    Client, where a model's cells arrive together when its job ends."""
    streaming = not (address or "").startswith("ray://")
    with ray_session(address, num_cpus, Path(config.work_root + "-ray")) as ray:
        cores = int(ray.cluster_resources().get("CPU", num_cpus))
        remote = ray.remote(num_cpus=cpus_per_job, max_retries=0)(_ray_job if streaming else _ray_job_whole)
        pending = {remote.remote(job, config): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending[ref]
                try:
                    events, done = _take(ray, ref, streaming)
                except ray.exceptions.RayError as exc:  # the worker died, or the job raised
                    events, done = [], True
                    on_lost(job, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
                for event in events:
                    on_event(job, event)
                if done:
                    del pending[ref]
        return cores
