"""Compile time of fxtrt against the dynamo exporter over the fidelity benchmark's models.

    python -m benchmarks.compile_time_corpus --out benchmarks/results/DATE-compile   # every model
    python -m benchmarks.compile_time_corpus --quick --rounds 3                      # the quick set

Issue 19 asks for ``compile(verify=False)`` at most the dynamo exporter's time on four models
(``benchmarks.compile_time``) *and as a median over the fidelity benchmark*. Per model, in this
one process: a warm-up of both, then ``--rounds`` interleaved rounds of
``torch.onnx.export(dynamo=True)`` (as the seed recipe calls it: the model, its example,
``dynamic_axes`` for the batch and named dims, opset 17) and ``fxtrt.compile(verify=False)``
(as the fidelity benchmark calls it, the same dims); the model's ratio is the median of its
rounds' ratios, and the corpus figure is the median over the models both exporters handle.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.compile_time import _quiet
from benchmarks.corpus import select_specs
from benchmarks.exporters import EXPORTERS, ExportSpec
from benchmarks.model_prep import flatten_outputs, make_inputs, prepare_model
from benchmarks.worker import _seed_input_names
from fxtrt.frontend.state import ModuleState

log = logging.getLogger("benchmarks.compile_time_corpus")


def _export_spec(spec: Any, model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> ExportSpec:
    with torch.no_grad():
        n_outputs = len(flatten_outputs(model(*example)))
    return ExportSpec(input_names=_seed_input_names(spec.input_names), batch_dims=spec.batch_dims,
                      output_batch_dims=(None,) * n_outputs, batch_profile=spec.batch_range or (1, 8, 32),
                      dynamic=spec.dynamic)


def time_model(spec: Any, rounds: int) -> dict[str, Any]:
    """Interleaved wall times of both exporters on one corpus model (None on a failure)."""
    model = prepare_model(spec, 0).module
    example = make_inputs(spec, spec.example_case, 0)
    export = _export_spec(spec, model, example)

    def dynamo(path: Path) -> None:
        torch.onnx.export(model, example, str(path), dynamo=True, opset_version=export.opset,
                          input_names=list(export.input_names), output_names=list(export.output_names),
                          dynamic_axes=export.dynamic_axes())

    def fxtrt(path: Path) -> None:
        EXPORTERS["fxtrt"].export(model, example, export, path)

    times: dict[str, list[float]] = {"dynamo": [], "fxtrt": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds + 1):  # round 0 warms up
            for name, call in (("dynamo", dynamo), ("fxtrt", fxtrt)):
                path = Path(tmp) / f"{name}{r}" / "model.onnx"
                path.parent.mkdir()
                start = time.perf_counter()
                try:
                    with ModuleState(model):
                        _quiet(lambda: call(path))
                except Exception as exc:  # noqa: BLE001 - a model one exporter fails on has no ratio
                    return {"model": spec.name, "failed": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                if r:
                    times[name].append(time.perf_counter() - start)
    ratio = statistics.median(f / d for f, d in zip(times["fxtrt"], times["dynamo"]))
    return {"model": spec.name, "dynamo_s": statistics.median(times["dynamo"]),
            "fxtrt_s": statistics.median(times["fxtrt"]), "fxtrt_vs_dynamo": ratio, "runs": times}


def markdown(rows: list[dict[str, Any]], rounds: int) -> str:
    timed = [r for r in rows if "fxtrt_vs_dynamo" in r]
    ratios = sorted(r["fxtrt_vs_dynamo"] for r in timed)
    lines = [f"Median of {rounds} interleaved rounds per model after a warm-up, all in one process.", ""]
    if ratios:
        lines += [f"**Median fxtrt / dynamo over {len(ratios)} models: {statistics.median(ratios):.2f}x** "
                  f"(quartiles {ratios[len(ratios) // 4]:.2f}x / {ratios[(3 * len(ratios)) // 4]:.2f}x; "
                  f"at or below 1.0x: {sum(x <= 1.0 for x in ratios)}). Sum of medians: fxtrt "
                  f"{sum(r['fxtrt_s'] for r in timed):.1f} s, dynamo {sum(r['dynamo_s'] for r in timed):.1f} s.", ""]
    lines += ["| model | dynamo s | fxtrt s | fxtrt / dynamo |", "|---|---|---|---|"]
    for r in rows:
        if "fxtrt_vs_dynamo" in r:
            lines.append(f"| {r['model']} | {r['dynamo_s']:.2f} | {r['fxtrt_s']:.2f} | {r['fxtrt_vs_dynamo']:.2f}x |")
        else:
            lines.append(f"| {r['model']} | {r['failed']} failed: {r['error'][:80]} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the fidelity benchmark's quick set only")
    parser.add_argument("--models", help="comma-separated corpus names (default: the whole corpus)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model after the warm-up")
    parser.add_argument("--out", type=Path, help="write compile_time_corpus.md and .json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("fxtrt", "torch", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    specs = select_specs(quick=args.quick)
    if args.models:
        wanted = set(args.models.split(","))
        specs = [s for s in specs if s.name in wanted]
    rows = []
    for k, spec in enumerate(specs, 1):
        rows.append(time_model(spec, args.rounds))
        r = rows[-1]
        log.info("[%d/%d] %s %s", k, len(specs), spec.name,
                 f"{r['fxtrt_vs_dynamo']:.2f}x" if "fxtrt_vs_dynamo" in r else f"{r['failed']} failed")
    text = markdown(rows, args.rounds)
    sys.stdout.write(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile_time_corpus.md").write_text(text)
        (args.out / "compile_time_corpus.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
