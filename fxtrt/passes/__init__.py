"""Graph passes, in the one order they run by default.

Each pass is one module here with one test file, and declares its contract with ``@graph_pass``
(``infra``); ``manager`` runs them under it. The registry below is the only place the order is
written down; ``insert_pass`` puts a pass of your own at a position in it (Torch-TensorRT's
``index=``), for ``compile(passes=...)`` and ``explain(passes=...)`` alike::

    passes = insert_pass(tanh_gelu, after="generalize_batch")
    fxtrt.compile(model, x, passes=passes)
"""
from __future__ import annotations

from typing import Callable, Sequence

from fxtrt.errors import ConfigError
from fxtrt.passes.canonicalize_flatten import canonicalize_flatten
from fxtrt.passes.drop_identity_resizes import drop_identity_resizes
from fxtrt.passes.drop_noop_squeezes import drop_noop_squeezes
from fxtrt.passes.drop_shape_guards import drop_shape_guards
from fxtrt.passes.dynamic_adaptive_pool import dynamic_adaptive_pool
from fxtrt.passes.drop_true_attention_masks import drop_true_attention_masks
from fxtrt.passes.exact_nearest_resize import exact_nearest_resize
from fxtrt.passes.explicit_reduce_dims import explicit_reduce_dims
from fxtrt.passes.fix_dtypes import fix_dtypes
from fxtrt.passes.fold_attention_dims import fold_attention_dims
from fxtrt.passes.fold_constant_reads import fold_constant_reads
from fxtrt.passes.generalize_batch import generalize_batch
from fxtrt.passes.max_pool_1d_as_2d import max_pool_1d_as_2d
from fxtrt.passes.relax_views import relax_views
from fxtrt.passes.scalar_reads_as_tensors import scalar_reads_as_tensors
from fxtrt.passes.infra import (Change, PassContext, PassContract, PassFn, PassRecord, PassResult, contract_of,
                                graph_pass)
from fxtrt.passes.manager import (PassEvent, PassManager, PassObserver, PipelineRun, check_order, order_problem,
                                  run_passes)

REGISTRY: dict[str, PassFn] = {fn.__name__: fn for fn in (
    drop_shape_guards,
    fold_constant_reads,
    scalar_reads_as_tensors,
    generalize_batch,
    max_pool_1d_as_2d,
    drop_noop_squeezes,
    drop_identity_resizes,
    exact_nearest_resize,
    dynamic_adaptive_pool,
    explicit_reduce_dims,
    drop_true_attention_masks,
    fold_attention_dims,
    canonicalize_flatten,
    relax_views,
    fix_dtypes,
)}

# Without these the artifact would not serve the sizes it claims; they always run.
REQUIRED = tuple(name for name, fn in REGISTRY.items() if contract_of(fn).always_runs)


def pass_name(p: str | Callable) -> str:
    return p if isinstance(p, str) else getattr(p, "__name__", type(p).__name__)


def resolve(passes: Sequence[str | Callable] | None) -> list[tuple[str, PassFn]]:
    """Names and callables in run order; required passes are added in front if missing. A pass
    whose declared requirement is missing or comes after it is a ConfigError naming both."""
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
    pipeline = [(n, REGISTRY[n]) for n in REQUIRED if n not in names] + chosen
    check_order(pipeline)
    return pipeline


def insert_pass(pass_fn: PassFn, *, index: int | None = None, before: str | None = None, after: str | None = None,
                passes: Sequence[str | Callable] | None = None) -> tuple[str | Callable, ...]:
    """``passes`` (default: the registry's order) with ``pass_fn`` inserted at ``index`` (as
    ``list.insert``), or just before / after the pass named ``before`` / ``after``; give one.
    Nothing global changes: hand the result to ``compile(passes=...)`` or ``explain(passes=...)``."""
    order: list[str | Callable] = list(REGISTRY) if passes is None else list(passes)
    if sum(x is not None for x in (index, before, after)) != 1:
        raise ConfigError("insert_pass: give exactly one of index=, before= or after=")
    if index is None:
        anchor = before if before is not None else after
        names = [pass_name(p) for p in order]
        if anchor not in names:
            raise ConfigError(f"insert_pass: no pass named {anchor!r} in the pipeline", hint=f"passes: {', '.join(names)}")
        index = names.index(anchor) + (after is not None)
    order.insert(index, pass_fn)
    return tuple(order)


def describe() -> list[tuple[str, str]]:
    """(name, one-line doc) for each registered pass, in order."""
    out = []
    for name, fn in REGISTRY.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        mod_doc = (__import__(fn.__module__, fromlist=["_"]).__doc__ or "").strip().splitlines()
        out.append((name, (mod_doc or doc or [""])[0]))
    return out


__all__ = [
    "REGISTRY", "REQUIRED", "Change", "PassContext", "PassContract", "PassEvent", "PassManager", "PassObserver",
    "PassRecord", "PassResult", "PipelineRun", "check_order", "contract_of", "describe", "graph_pass", "insert_pass",
    "order_problem", "pass_name", "resolve", "run_passes",
]
