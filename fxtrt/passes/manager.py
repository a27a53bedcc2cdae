"""Run a pipeline of passes under their declared contracts (onnx_ir's requires → call → ensures).

Before each pass the manager checks that the passes it requires ran before it and that an
earlier pass provides the ``node.meta`` keys it reads, then runs its precondition. After it: the
result is a ``PassResult``, an in-place pass returned its own graph, the graph lints, and it is
recompiled; the pass runs in the subgraphs of higher-order ops too. Observers (the debug dumps,
``explain``'s findings) then see the step, and the optional numeric check runs last.

The same manager serves compile, ``debug_dir`` and ``explain``: there is one pipeline. ``explain``
asks it to keep going past a ``GeneralizationError`` (the model's hazard, to be listed), skipping
only the passes that require the one that failed.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch.fx

from fxtrt.errors import ConfigError, FxtrtError, PassError
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.passes.infra import PassContext, PassContract, PassFn, PassRecord, PassResult, contract_of
from fxtrt.passes.subgraphs import run_in_subgraphs

log = logging.getLogger(__name__)

Pipeline = Sequence[tuple[str, PassFn]]


@dataclass(frozen=True)
class PassEvent:
    """One step as observers see it: the pass, its contract and outcome. ``before`` is the graph's
    code before the pass; ``error`` is set (and ``result`` None) when the pass failed and the
    manager keeps going; ``refusals`` are what its precondition refused, when kept going."""

    index: int
    name: str
    contract: PassContract
    gm: torch.fx.GraphModule
    before: str
    ran: tuple[str, ...]
    result: PassResult | None = None
    error: FxtrtError | None = None
    refusals: tuple[FxtrtError, ...] = ()


PassObserver = Callable[[PassEvent], None]


@dataclass
class PipelineRun:
    """What a run leaves: the final graph, one record per pass that ran, the captured graph as
    the passes left it (threaded from each ``PassResult.captured``), and the passes skipped."""

    gm: torch.fx.GraphModule
    records: list[PassRecord]
    captured: CapturedGraph
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def order_problem(pipeline: Pipeline) -> tuple[str, str] | None:
    """The first broken contract of ``pipeline`` as (the pass, what it misses), naming both passes."""
    names = [n for n, _ in pipeline]
    for i, (name, fn) in enumerate(pipeline):
        problem = _missing(name, contract_of(fn), pipeline[:i], names[i + 1:])
        if problem:
            return name, problem
    return None


def _missing(name: str, contract: PassContract, earlier: Pipeline, later: Sequence[str]) -> str | None:
    ran = [n for n, _ in earlier]
    for req in contract.requires:
        if req not in ran:
            where = "runs after it" if req in later else "is not in the pipeline"
            return f"pass {name} requires pass {req} to run before it, and {req} {where}"
    provided = {k for _, fn in earlier for k in contract_of(fn).provides_meta}
    for key in contract.reads_meta:
        if key not in provided:
            return f"pass {name} reads node.meta[{key!r}], and no pass before it provides it"
    return None


def check_order(pipeline: Pipeline) -> None:
    """A ConfigError, before any work, when a pass's declared requirement is missing."""
    problem = order_problem(pipeline)
    if problem is not None:
        raise ConfigError(f"passes: {problem[1]}",
                          hint="order passes= so that each pass comes after what it requires "
                               "(fxtrt passes lists the registry's order)")


class PassManager:
    """Runs ``pipeline`` on a graph; see the module docstring for what it checks."""

    def __init__(self, pipeline: Pipeline, *, observers: Sequence[PassObserver] = (),
                 check: PassObserver | None = None,
                 keep_going: tuple[type[FxtrtError], ...] = ()) -> None:
        self.pipeline = list(pipeline)
        self.observers = list(observers)
        self.check = check
        self.keep_going = keep_going

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PipelineRun:
        run = PipelineRun(gm, [], ctx.captured)
        failed: set[str] = set()
        for index, (name, fn) in enumerate(self.pipeline):
            contract = contract_of(fn)
            if failed.intersection(contract.requires):
                run.skipped.append(name)
                failed.add(name)  # and what requires it
                continue
            problem = _missing(name, contract, self.pipeline[:index], [n for n, _ in self.pipeline[index + 1:]])
            if problem is not None:
                raise PassError(problem, hint=_ran_before(run.ran))
            ctx = dataclasses.replace(ctx, captured=run.captured)
            event = self._step(index, name, fn, contract, run, ctx)
            run.ran.append(name)
            if event.error is not None:
                failed.add(name)
            for observe in self.observers:
                observe(event)
            if self.check is not None and event.result is not None:
                self.check(event)
        return run

    def _step(self, index: int, name: str, fn: PassFn, contract: PassContract, run: PipelineRun,
              ctx: PassContext) -> PassEvent:
        """Precondition → pass (and its subgraphs) → ensures; the event for the observers."""
        gm, ran = run.gm, tuple(run.ran)
        before = gm.code if self.observers else ""
        refusals: list[FxtrtError] = []
        start = time.perf_counter()
        try:
            result, inside = self._call(name, fn, contract, gm, ctx, ran, refusals)
        except self.keep_going as exc:
            log.debug("pass %s failed, the run goes on without what requires it: %s", name, exc)
            return PassEvent(index, name, contract, gm, before, ran, error=exc, refusals=tuple(refusals))
        run.gm = result.gm
        if result.captured is not None:
            run.captured = result.captured
        changes, notes = inside
        run.records.append(PassRecord(name, list(result.changes) + changes, time.perf_counter() - start, notes,
                                      generalizes=contract.generalizes))
        return PassEvent(index, name, contract, result.gm, before, ran, result=result, refusals=tuple(refusals))

    def _call(self, name: str, fn: PassFn, contract: PassContract, gm: torch.fx.GraphModule, ctx: PassContext,
              ran: Sequence[str], refusals: list[FxtrtError]) -> tuple[PassResult, tuple[list, list[str]]]:
        def call(g: torch.fx.GraphModule, c: PassContext) -> PassResult:
            found = list(contract.precondition(g, c)) if contract.precondition else []
            if found and not self.keep_going:
                raise found[0]
            refusals.extend(found)
            return fn(g, c)

        code = gm.code if contract.in_place is False else None
        try:
            result = call(gm, ctx)
            _ensure(name, contract, gm, code, result)
            inside = run_in_subgraphs(name, call, result.gm, ctx)
            if result.changes or inside[0] or result.gm is not gm:  # codegen is ~15 ms on resnet50: not for no-ops
                result.gm.graph.lint()
                result.gm.recompile()
        except FxtrtError:
            raise
        except Exception as exc:
            raise PassError(f"pass {name} failed: {type(exc).__name__}: {exc}",
                            hint=_ran_before(ran)) from exc
        return result, inside


def _ensure(name: str, contract: PassContract, gm: torch.fx.GraphModule, code: str | None,
            result: object) -> None:
    """The pass kept its declared promises: a PassResult, and the graph handed back as declared."""
    if not isinstance(result, PassResult):
        raise PassError(f"pass {name} returned {type(result).__name__}, not a PassResult",
                        hint="a pass is fn(gm, ctx) -> PassResult(gm, changes)")
    if contract.in_place and result.gm is not gm:
        raise PassError(f"pass {name} is declared in place but returned another GraphModule",
                        hint="rewrite the graph it is given, or declare @graph_pass(in_place=False)")
    if contract.in_place is False and code is not None and gm.code != code:
        raise PassError(f"pass {name} is declared not in place but changed the graph it was given",
                        hint="rewrite a copy, or declare @graph_pass(in_place=True)")


def _ran_before(ran: Sequence[str]) -> str:
    return "passes that ran before it: " + (", ".join(ran) or "none")


def run_passes(gm: torch.fx.GraphModule, ctx: PassContext, pipeline: Pipeline,
               observer: PassObserver | None = None) -> tuple[torch.fx.GraphModule, list[PassRecord]]:
    """Run ``pipeline`` in order (the manager without a numeric check): the graph and the records."""
    run = PassManager(pipeline, observers=[observer] if observer else []).run(gm, ctx)
    return run.gm, run.records
