"""Run each pass inside the subgraphs of higher-order ops too (``torch.cond``'s branches, a scan's
body): they are GraphModules of their own, sized in the same symbols as the model's graph, and
hold the same patterns (a view after a transpose, a float64 constant, an export-time assert).

Each pass runs on a subgraph with a ``PassContext`` whose ``subgraph`` names it and whose traces
are the same subgraph in every trace (generalize_batch diffs a branch against that branch). A
pass that cannot handle a subgraph (any failure but an ``FxtrtError``, which is the model's and
stops the compile as it would in the model's graph) leaves it as captured, restored from a copy,
and the record's note says so, for the report; torch.onnx then emits the subgraph as it was.
Changes made inside a subgraph say which one.
"""
from __future__ import annotations

import copy
import dataclasses

import torch.fx

from fxtrt.errors import FxtrtError
from fxtrt.frontend.higher_order import subgraphs
from fxtrt.passes.infra import Change, PassContext, PassFn, PassResult


def _at(gm: torch.nn.Module, path: str) -> torch.fx.GraphModule:
    for part in path.split("."):
        gm = getattr(gm, part)
    return gm


def _put(gm: torch.nn.Module, path: str, value: torch.fx.GraphModule) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_at(gm, owner) if owner else gm, name, value)


def subgraph_context(ctx: PassContext, path: str) -> PassContext:
    """``ctx`` for the subgraph at ``path``: every trace's subgraph there in place of its graph."""
    captured = ctx.captured
    return dataclasses.replace(ctx, subgraph=path, captured=dataclasses.replace(
        captured,
        captures=[dataclasses.replace(c, gm=_at(c.gm, path)) for c in captured.captures],
        checks=[dataclasses.replace(c, gm=_at(c.gm, path)) for c in captured.checks],
    ))


def run_in_subgraphs(name: str, fn: PassFn, gm: torch.fx.GraphModule,
                     ctx: PassContext) -> tuple[list[Change], list[str]]:
    """Run pass ``fn`` on every subgraph of ``gm``: the changes it made there, and a note for each
    subgraph it left as captured."""
    changes: list[Change] = []
    notes: list[str] = []
    for path in [p for p, _ in subgraphs(gm)]:  # a parent before its children, fetched when reached
        sub = _at(gm, path)
        kept = copy.deepcopy(sub)
        try:
            result = fn(sub, subgraph_context(ctx, path))
            if not isinstance(result, PassResult):
                raise TypeError(f"returned {type(result).__name__}, not a PassResult")
        except FxtrtError:
            raise
        except Exception as exc:  # noqa: BLE001 - the subgraph stays as captured, and the report says why
            _put(gm, path, kept)
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            notes.append(f"pass {name} could not rewrite the subgraph {path} of a higher-order op "
                         f"({type(exc).__name__}: {why}); that subgraph is emitted as captured by it")
            continue
        if result.gm is not sub:
            _put(gm, path, result.gm)
        changes += [dataclasses.replace(c, note=f"{c.note} (in subgraph {path})".strip()) for c in result.changes]
    return changes, notes
