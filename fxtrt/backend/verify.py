"""One verification stage for every artifact: its runners against the original model with
Polygraphy's ``Comparator``, at every size it claims.

:class:`ReferenceRunner` (:mod:`fxtrt.backend.reference`) is the one reference of a compile: it makes the feeds at any sizes and
runs the model once per feed (eagerly on the CPU, a :class:`~fxtrt.backend.torch.TorchRunner`),
so the fp32 model, the fp16 model and the engines are all compared with the same reference
outputs. :func:`verify` drives anything with the :class:`Verifiable` interface (an ONNX model, a
bucket set, an fp16 model, TensorRT engines) the same way. Each output is judged by the one rule
of :mod:`fxtrt.compare`, and any failure is an error, never a warning.

Example::

    reference = ReferenceRunner(model, example, settings.dims, input_names, output_names)
    rows = verify(artifact, reference, artifact.points, Tolerance(1e-4, 1e-3))
    raise_on_failure(rows, 1e-4, 1e-3)
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner
from polygraphy.logger import G_LOGGER

from fxtrt.backend.reference import ReferenceRunner
from fxtrt.compare import Tolerance, compare_arrays, roundoff_verdict
from fxtrt.errors import FxtrtError, VerificationError
from fxtrt.frontend.source import onnx_node_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyRow:
    """One output at one set of sizes."""

    sizes: dict[str, int]
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": dict(self.sizes), "output": self.output, "shape": list(self.shape),
                "max_abs": self.max_abs, "max_rel": self.max_rel, "passed": self.passed, "note": self.note}


@dataclass
class VerifyTime:
    """Verification's time and its floor, measured in the same run.

    The floor is what verification cannot avoid: each eager run of the original (the reference
    runs once per size, whichever artifacts compare with it), each artifact run and each session
    opened. ``seconds`` is all of :func:`verify`, comparisons and feeds included.
    """

    seconds: float = 0.0
    eager_seconds: float = 0.0
    runtime_seconds: float = 0.0
    session_seconds: float = 0.0
    eager_runs: int = 0
    runtime_runs: int = 0

    @property
    def floor_seconds(self) -> float:
        return self.eager_seconds + self.runtime_seconds + self.session_seconds

    def to_dict(self) -> dict[str, Any]:
        # microseconds: a small model's ONNX Runtime runs take well under a millisecond in all
        return {"seconds": round(self.seconds, 6), "floor_seconds": round(self.floor_seconds, 6),
                "eager_seconds": round(self.eager_seconds, 6), "runtime_seconds": round(self.runtime_seconds, 6),
                "session_seconds": round(self.session_seconds, 6), "eager_runs": self.eager_runs,
                "runtime_runs": self.runtime_runs}


class Verifiable(Protocol):
    """What :func:`verify` needs of an artifact; :class:`fxtrt.artifacts.Artifact` declares it.
    Written here so that verification does not reach up into the artifacts that build on it."""

    @property
    def files(self) -> tuple[Path, ...]:
        """The files run, for the line of an ONNX node that fails."""

    def parts(self) -> Sequence["Verifiable"]:
        """What is checked with one Comparator each (an engine set: every engine)."""

    def serves(self, sizes: Mapping[str, int]) -> bool:
        """Whether the part runs at ``sizes``."""

    def describe(self, sizes: Mapping[str, int]) -> str:
        """How ``sizes`` are served, for the row's note."""

    def verify_runners(self) -> list[BaseRunner]:
        """The runners compared with the reference."""


def run_comparison(
    runners: Sequence[BaseRunner],
    feeds: Sequence[tuple[dict[str, int], dict[str, np.ndarray]]],
    atol: float,
    rtol: float,
    files: Sequence[Path] = (),
    roundoff: "ReferenceRunner | None" = None,
    timing: VerifyTime | None = None,
) -> list[VerifyRow]:
    """Run every runner on every feed with Polygraphy's Comparator; compare each to the first.
    A runner that raises is a VerificationError (see :func:`runtime_failures`; ``files``: the
    ONNX files run, for the failing node's line). ``roundoff``: the reference whose float64 and
    other-order float32 outputs (:func:`second_opinion`) judge outputs that fail the per-element rule.
    ``timing`` gets each run's and each activation's time (the first runner's: eager)."""
    from polygraphy.comparator import Comparator

    rows: list[VerifyRow] = []
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        stream = iter(Comparator.run(list(runners), data_loader=[f for _, f in feeds], streaming=True))
        for sizes, feed in feeds:
            with runtime_failures(sizes, files):
                results = next(stream)
            if timing is not None:
                _add_runs(timing, results)
            ref_name, ref_iters = results[0]
            ref = ref_iters[0]
            for other_name, other_iters in list(results)[1:]:
                other = other_iters[0]
                for name in ref.keys():
                    r = np.asarray(ref[name])
                    if name not in other:
                        rows.append(VerifyRow(sizes, name, tuple(r.shape), float("inf"), float("inf"), False,
                                              f"{other_name} has no output {name!r}"))
                        continue
                    c = compare_arrays(r, np.asarray(other[name]), atol, rtol)
                    ok, note = c.passed, c.note
                    if not ok and not note and roundoff is not None:
                        ok, note = second_opinion(roundoff, feed, name, r, np.asarray(other[name]), atol, rtol)
                    label = "" if len(runners) == 2 else f"{other_name} vs {ref_name}"
                    rows.append(VerifyRow(sizes, name, tuple(r.shape), c.max_abs, c.max_rel, ok,
                                          "; ".join(x for x in (label, note) if x)))
    if timing is not None:
        timing.session_seconds += sum(getattr(r, "activation_seconds", 0.0) for r in runners[1:])
    return rows


def second_opinion(reference: "ReferenceRunner", feed: Mapping[str, np.ndarray], name: str, ref: np.ndarray,
                   out: np.ndarray, atol: float, rtol: float) -> tuple[bool, str]:
    """:func:`roundoff_verdict` on output ``name``: first against eager as it ran, then, if that
    fails, with eager also run in another accumulation order (one more eager run, on failure only)."""
    ref64 = reference.float64_outputs(feed)
    if ref64 is None or name not in ref64:
        return False, ""
    ok, note = roundoff_verdict(ref, out, np.asarray(ref64[name]), atol)
    if not ok:
        again = reference.float32_other_order(feed)
        if again is not None and name in again:
            ok, note = roundoff_verdict(ref, out, np.asarray(ref64[name]), atol, [np.asarray(again[name])])
            itself = compare_arrays(ref, np.asarray(again[name]), atol, rtol)
            if not ok and not itself.passed:
                note += (f"; eager float32 itself moves by {itself.max_abs:.3g} on another thread count here, so "
                         "this output is not reproducible in float32 (ties in a sort or top-k, say)")
    return ok, note


def _add_runs(timing: VerifyTime, results: Any) -> None:
    """One feed's run times: the reference's (0 when it reused a run) and the artifact runners'."""
    for i, (_, iterations) in enumerate(results):
        runtime = iterations[0].runtime or 0.0
        if i == 0:
            timing.eager_seconds += runtime
            timing.eager_runs += runtime > 0
        else:
            timing.runtime_seconds += runtime
            timing.runtime_runs += 1


_STAGING_DIR = re.compile(r"[^\s'\"]*\.fxtrt-staging-[^/\\\s]*[/\\]")
_ORT_NODE = re.compile(r"Name:\s*'([^']+)'|[Nn]ode \(([^)]+)\)")  # run: Name:'n'; load: Node (n), in node (n)


def without_staging(text: str) -> str:
    """``text`` with compile's temporary directory cut from the paths in it (``model.onnx``)."""
    return _STAGING_DIR.sub("", text)


def runtime_error(exc: BaseException, what: str, files: Sequence[Path] = (),
                  error: type[FxtrtError] = VerificationError, hint: str | None = None) -> FxtrtError:
    """``exc`` from ONNX Runtime (or another runner) as an fxtrt error: its message without the
    staging path, the ONNX node it names, and that node's line in the user's model."""
    detail = without_staging(" ".join(str(exc).split()))[:1500] or type(exc).__name__
    found = _ORT_NODE.search(detail)
    node = (found.group(1) or found.group(2)) if found else None
    source = None
    for path in files if node else ():
        if path.suffix == ".onnx" and path.exists():
            graph = onnx.load(str(path), load_external_data=False).graph
            match = next((n for n in graph.node if n.name == node), None)
            if match is not None:
                source = onnx_node_source(match)
                break
    return error(f"{what}: {type(exc).__name__}: {detail}", node=node, source=source,
                 hint=hint or "the ONNX model fails in ONNX Runtime where the original runs; run with debug_dir=... "
                              "to see the graph after each pass, and please report it with the model")


@contextlib.contextmanager
def runtime_failures(sizes: Mapping[str, int], files: Sequence[Path] = ()) -> Iterator[None]:
    """A runner raising during verification at ``sizes``: a VerificationError."""
    try:
        yield
    except FxtrtError:
        raise
    except Exception as exc:  # onnxruntime, Polygraphy and TensorRT raise their own types
        where = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "the example's sizes"
        raise runtime_error(exc, f"the artifact fails to run at {where} during verification", files) from exc


def format_rows(rows: Iterable[VerifyRow]) -> str:
    lines = [f"{'sizes':24} {'output':14} {'shape':20} {'max_abs':>10} {'max_rel':>10}  ok"]
    for r in rows:
        sizes = ",".join(f"{k}={v}" for k, v in r.sizes.items()) or "example"
        lines.append(f"{sizes:24} {r.output:14} {str(list(r.shape)):20} {r.max_abs:10.3g} {r.max_rel:10.3g}  "
                     f"{'yes' if r.passed else 'NO'}{'  ' + r.note if r.note else ''}")
    return "\n".join(lines)


def raise_on_failure(rows: Sequence[VerifyRow], atol: float, rtol: float, divergence: Any = None) -> None:
    """VerificationError with the table, and where the ONNX model first left the FX graph."""
    bad = [r for r in rows if not r.passed]
    if not bad:
        return
    if divergence is not None:
        where = f"\n{divergence.describe()}"
        hint = getattr(divergence, "hint", "the ONNX model diverges from the FX graph it was emitted from at that node")
    else:
        # ONNX == FX graph and ONNX != model: the FX graph itself differs from the model there.
        where = ("\nno ONNX value differs from the FX graph it was emitted from, so that graph already differs "
                 "from the model at these sizes (the capture or a pass changed it)")
        hint = ("run with debug_dir=... to compare the graph with the model after capture and after each pass, "
                "or relax atol/rtol if the error is rounding")
    raise VerificationError(
        f"the ONNX model does not match the original at {len(bad)} of {len(rows)} (size, output) checks "
        f"(|a-b| <= {atol:g} + {rtol:g}*|ref|):\n{format_rows(rows)}{where}",
        rows=list(rows),
        node=getattr(divergence, "onnx_node", None),
        source=getattr(divergence, "source", None),
        hint=hint,
    )


def verify(
    artifact: Verifiable,
    reference: ReferenceRunner,
    points: Sequence[Mapping[str, int]],
    tolerance: Tolerance,
    timing: VerifyTime | None = None,
) -> list[VerifyRow]:
    """``artifact`` against the original at every point it serves: for each of its parts (an
    engine set's engines; any other artifact is one part) one ``Comparator`` over the reference
    and the part's runners, on the points the part serves.

    A row's note says the check (``tolerance.note``) and how the artifact served the sizes
    (``artifact.describe``: "served as 13->16" for a bucket set, the engine for an engine set).
    ``timing`` gets verification's time and its floor.
    """
    start = time.perf_counter()
    rows: list[VerifyRow] = []
    for part in artifact.parts():
        mine = [dict(p) for p in points if part.serves(p)]
        if not mine:
            log.warning("no verification point falls in %s", part)
            continue
        runners = [reference, *part.verify_runners()]
        # atol = rtol = 0 asks for exact agreement: no rule for round-off then
        roundoff = reference if tolerance.roundoff and (tolerance.atol or tolerance.rtol) else None
        for row in run_comparison(runners, reference.feeds(mine), tolerance.atol, tolerance.rtol, part.files, roundoff,
                                  timing):
            served = part.describe(row.sizes)
            if len(runners) > 2 and served:  # the row's note names the runner: "model.engine: tensorrt vs torch"
                where = f"{served}: {row.note}"
            else:
                where = "; ".join(x for x in (served, row.note) if x)
            rows.append(dataclasses.replace(row, note="; ".join(x for x in (tolerance.note, where) if x)))
    if timing is not None:
        timing.seconds += time.perf_counter() - start
    return rows
