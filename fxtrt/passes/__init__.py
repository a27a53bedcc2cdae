"""Graph passes, in the one order they run by default.

Each pass is one module here with one test file; see ``infra`` for the protocol. The registry
below is the only place the order is written down.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch.fx

from fxtrt.errors import ConfigError, FxtrtError, PassError
from fxtrt.passes.canonicalize_flatten import canonicalize_flatten
from fxtrt.passes.drop_noop_squeezes import drop_noop_squeezes
from fxtrt.passes.drop_shape_guards import drop_shape_guards
from fxtrt.passes.exact_nearest_resize import exact_nearest_resize
from fxtrt.passes.explicit_reduce_dims import explicit_reduce_dims
from fxtrt.passes.fix_dtypes import fix_dtypes
from fxtrt.passes.fold_attention_dims import fold_attention_dims
from fxtrt.passes.fold_constant_reads import fold_constant_reads
from fxtrt.passes.generalize_batch import generalize_batch
from fxtrt.passes.max_pool_1d_as_2d import max_pool_1d_as_2d
from fxtrt.passes.relax_views import relax_views
from fxtrt.passes.scalar_reads_as_tensors import scalar_reads_as_tensors
from fxtrt.passes.infra import Change, PassContext, PassFn, PassRecord, PassResult
from fxtrt.passes.subgraphs import run_in_subgraphs

REGISTRY: dict[str, PassFn] = {
    "drop_shape_guards": drop_shape_guards,
    "fold_constant_reads": fold_constant_reads,
    "scalar_reads_as_tensors": scalar_reads_as_tensors,
    "generalize_batch": generalize_batch,
    "max_pool_1d_as_2d": max_pool_1d_as_2d,
    "drop_noop_squeezes": drop_noop_squeezes,
    "exact_nearest_resize": exact_nearest_resize,
    "explicit_reduce_dims": explicit_reduce_dims,
    "fold_attention_dims": fold_attention_dims,
    "canonicalize_flatten": canonicalize_flatten,
    "relax_views": relax_views,
    "fix_dtypes": fix_dtypes,
}

# Without these the artifact would not serve the sizes it claims; they always run.
REQUIRED = ("drop_shape_guards", "fold_constant_reads", "scalar_reads_as_tensors", "generalize_batch")


def pass_name(p: str | Callable) -> str:
    return p if isinstance(p, str) else getattr(p, "__name__", type(p).__name__)


def resolve(passes: Sequence[str | Callable] | None) -> list[tuple[str, PassFn]]:
    """Names and callables in run order; required passes are added in front if missing."""
    if passes is None:
        return list(REGISTRY.items())
    chosen: list[tuple[str, PassFn]] = []
    for p in passes:
        if isinstance(p, str):
            if p not in REGISTRY:
                raise ConfigError(f"passes: unknown pass {p!r}", hint=f"registered passes: {', '.join(REGISTRY)}")
            chosen.append((p, REGISTRY[p]))
        else:
            chosen.append((pass_name(p), p))
    names = [n for n, _ in chosen]
    missing = [(n, REGISTRY[n]) for n in REQUIRED if n not in names]
    return missing + chosen


# Called after each pass with (index, name, code before the pass, result); may raise to stop the run.
PassObserver = Callable[[int, str, str, PassResult], None]


def run_passes(
    gm: torch.fx.GraphModule,
    ctx: PassContext,
    pipeline: Sequence[tuple[str, PassFn]],
    observer: PassObserver | None = None,
) -> tuple[torch.fx.GraphModule, list[PassRecord]]:
    """Run ``pipeline`` in order; a failure names the pass and the passes that ran before it."""
    records: list[PassRecord] = []
    for index, (name, fn) in enumerate(pipeline):
        before = gm.code if observer else ""
        start = time.perf_counter()
        try:
            result = fn(gm, ctx)
            inside = run_in_subgraphs(name, fn, result.gm, ctx) if isinstance(result, PassResult) else None
        except FxtrtError:
            raise
        except Exception as exc:
            raise PassError(
                f"pass {name} failed: {type(exc).__name__}: {exc}",
                hint="passes that ran before it: " + (", ".join(r.name for r in records) or "none"),
            ) from exc
        if not isinstance(result, PassResult):
            raise PassError(f"pass {name} returned {type(result).__name__}, not a PassResult",
                            hint="a pass is fn(gm, ctx) -> PassResult(gm, changes)")
        gm = result.gm
        changes, notes = inside if inside else ([], [])
        records.append(PassRecord(name, list(result.changes) + changes, time.perf_counter() - start, notes))
        if observer:
            observer(index, name, before, result)
    return gm, records


def describe() -> list[tuple[str, str]]:
    """(name, one-line doc) for each registered pass, in order."""
    out = []
    for name, fn in REGISTRY.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        mod_doc = (__import__(fn.__module__, fromlist=["_"]).__doc__ or "").strip().splitlines()
        out.append((name, (mod_doc or doc or [""])[0]))
    return out


__all__ = [
    "REGISTRY", "REQUIRED", "Change", "PassContext", "PassObserver", "PassRecord", "PassResult",
    "describe", "pass_name", "resolve", "run_passes",
]
