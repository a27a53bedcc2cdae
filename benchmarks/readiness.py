"""TensorRT ONNX-parser readiness of real models (issue 20's "done when" list), without TensorRT.

Each model is compiled as a user would (``target="tensorrt"``, verified), and the readiness the
engine stage recorded (``report.stages["engines"]["readiness"]``) is tabulated per TensorRT release:
nodes, supported, coverage, each gap with the upstream restriction it breaks, and the table
sentences that could not be checked statically. Too slow for ``make test``; run it by hand::

    python -m benchmarks.readiness                       # every model
    python -m benchmarks.readiness --cases bert          # substring filter

Writes ``readiness.md`` / ``readiness.json`` to ``--out`` (default
benchmarks/results/2026-12-05-readiness/).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.packaged import _bert, _hw, _images, _seeded, _tokens, _torchvision, _ultralytics

OUT = Path(__file__).parent / "results" / "2026-12-05-readiness"


def _seed_speech() -> torch.nn.Module:
    from tests.seed_models import SpeechEncoder

    return SpeechEncoder()


def _seed_gru() -> torch.nn.Module:
    from tests.frontend.test_recurrent import GruSpeechEncoder

    return GruSpeechEncoder()


def _speech_inputs() -> tuple[torch.Tensor, ...]:
    x, mask = torch.randn(1, 100, 80), torch.ones(1, 1, 100)
    mask[..., 90:] = 0
    return x, mask


_T = ("T", 20, 100, 400)
# name -> (model, example, compile options)
CASES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], tuple], dict[str, Any]]] = {
    "resnet50_batch": (_torchvision("resnet50"), _images(224), {"batch": (1, 8, 32)}),
    "yolov8n_hw_step32": (_ultralytics("yolov8n.yaml"), _images(320),
                          {"batch": (1, 8, 16), "dynamic": _hw(320, 320, 640, 32)}),
    "bert_seq": (_seeded(_bert), _tokens(16), {"dynamic": {0: {1: (4, 16, 64)}, 1: {1: (4, 16, 64)}}}),
    "seed_speech_encoder": (_seeded(_seed_speech), _speech_inputs,
                            {"batch": (1, 2, 4), "dynamic": {0: {1: _T}, 1: {2: _T}}}),
    "seed_gru_speech_encoder": (_seeded(_seed_gru), _speech_inputs,
                                {"batch": (1, 2, 4), "dynamic": {0: {1: _T}, 1: {2: _T}}}),
}


def run_case(name: str) -> dict[str, Any]:
    """Compile one case for TensorRT and return its readiness record (or the error)."""
    import fxtrt

    build, example, options = CASES[name]
    torch.manual_seed(0)
    model = build()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fxtrt-readiness-") as out:
        try:
            compiled = fxtrt.compile(model, example(), target="tensorrt", out_dir=Path(out) / "out", **options)
        except Exception as exc:  # the table says what failed; one case does not stop the others
            return {"model": name, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}
        stage = compiled.report.stages["engines"]
        ops = compiled.report.ops_after
    return {"model": name, "verified": compiled.report.verified, "seconds": round(time.perf_counter() - start, 1),
            "onnx_ops": ops, "readiness": stage["readiness"]["tensorrt"]}


def _markdown(rows: list[dict[str, Any]]) -> str:
    out = ["# TensorRT ONNX-parser readiness (issue 20)", "",
           "Measured with `python -m benchmarks.readiness`: each model compiled with `target=\"tensorrt\"` "
           "(verified on ONNX Runtime), its nodes checked against the shipped operator tables "
           "(`fxtrt/backend/tensorrt/trt_operators.json`). No TensorRT was used.", "",
           "| model | verified | TRT 10 nodes | TRT 10 supported | TRT 10 coverage | TRT 11 | gaps (10) | "
           "restrictions not checkable statically | s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | error: {r['error'][:120]} | | | | | | | {r['seconds']:.0f} |")
            continue
        ten, eleven = r["readiness"]["10"], r["readiness"]["11"]
        gaps = "; ".join(f"{g['op']} `{g['node']}`: {g['reason']} (breaks: {g['restriction']})"
                         for g in ten["unsupported"]) or "none"
        unchecked = "; ".join(f"{op}: {' '.join(s)}" for op, s in ten["unchecked_restrictions"].items()) or "none"
        eleven_text = f"{eleven['coverage']}%" if eleven.get("checked") else "not checked (no 11.x table)"
        out.append(f"| {r['model']} | {r['verified']} | {ten['nodes']} | {ten['supported']} | {ten['coverage']}% | "
                   f"{eleven_text} | {gaps} | {unchecked} | {r['seconds']:.0f} |")
    table = next((r["readiness"]["10"]["table"] for r in rows if "readiness" in r), None)
    if table:
        out += ["", f"TensorRT 10 table: {table['repo']} `{table['ref']}` @ `{table['commit']}` "
                    f"(opset {table['opset'][0]}..{table['opset'][1]})."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="substring filter on case names")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    rows = []
    for name in CASES:
        if args.cases in name:
            row = run_case(name)
            rows.append(row)
            ten = row.get("readiness", {}).get("10", {})
            result = row.get("error") or f"TRT 10 {ten.get('supported')}/{ten.get('nodes')} ({ten.get('coverage')}%)"
            print(f"{name}: {result} in {row['seconds']}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "readiness.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "readiness.md").write_text(_markdown(rows))
    print(f"wrote {args.out / 'readiness.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
