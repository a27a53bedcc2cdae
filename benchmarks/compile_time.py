"""Compile time, memory and verification cost of fxtrt against both torch.onnx exporters.

    python -m benchmarks.compile_time                       # the four models, 3 interleaved rounds
    python -m benchmarks.compile_time --models resnet50 --rounds 5 --out benchmarks/results/DATE-compile

Per model, in one process: one warm-up of every job (the first call in a process pays imports and
registry set-up), then ``--rounds`` rounds that run ``torch.onnx.export(dynamo=True)``,
``torch.onnx.export(dynamo=False)``, ``fxtrt.compile(verify=False)`` and ``fxtrt.compile()``
one after another, so machine load hits them alike; a ratio is the median over the rounds of that
round's ratio. fxtrt's per-stage times are medians from its report (``timings_s``), and
verification's time and its measured floor come from ``report.stages["verify"]``. Peak memory
is measured in a child process per (model, exporter): build the model, export once, read
``ru_maxrss``. Every exporter gets the same dynamic dims and the same example (batch 2: torch.export
specialises a dim whose example size is 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fxtrt.frontend.state import ModuleState

log = logging.getLogger("benchmarks.compile_time")
BATCH = (1, 8, 32)


@dataclass(frozen=True)
class Case:
    """A model and how every exporter is told its dims: fxtrt's ``dynamic=``, torch.export's
    ``dynamic_shapes`` and the legacy exporter's ``dynamic_axes``."""

    name: str
    build: Callable[[], torch.nn.Module]
    example: Callable[[], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    fxtrt_dynamic: dict[int, dict[int, tuple]]
    export_dims: Callable[[], dict[str, dict[int, Any]]]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {n: {0: "batch"} for n in self.input_names}
        for i, dims in self.fxtrt_dynamic.items():
            axes[self.input_names[i]].update({d: spec[0] for d, spec in dims.items()})
        return axes


class _First(torch.nn.Module):
    """The first output of a model (YOLO's detections, BERT's last hidden state), as users export them."""

    def __init__(self, model: torch.nn.Module, key: str | int = 0) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(*args)
        return out[self.key] if not isinstance(self.key, str) else getattr(out, self.key)


def _seeded(fn: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return fn().eval()
    return build


def _resnet50() -> torch.nn.Module:
    import torchvision
    return torchvision.models.resnet50(weights=None)


def _yolov8n() -> torch.nn.Module:
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.gettempdir())
    from ultralytics.nn.tasks import DetectionModel
    return _First(DetectionModel("yolov8n.yaml", verbose=False))


def _bert_base() -> torch.nn.Module:
    from transformers import BertConfig, BertModel  # BertConfig's defaults: 12 layers, hidden 768, 12 heads
    return _First(BertModel(BertConfig()), "last_hidden_state")


def _vit_base() -> torch.nn.Module:
    import timm
    return timm.create_model("vit_base_patch16_224", pretrained=False)


def _dims(batch: bool = True, **named: tuple[int, int, int]) -> Callable[[], dict[str, dict[int, Any]]]:
    """torch.export dims: the batch on dim 0 and ``named`` (``h=(2, 10, 20)``: 32 * 10..20)."""
    def make() -> dict[int, Any]:
        d = torch.export.Dim
        out: dict[int, Any] = {0: d("batch", min=BATCH[0], max=BATCH[2])} if batch else {}
        return out | {axis: (step * d(f"_{name}", min=lo, max=hi) if step > 1 else d(name, min=lo, max=hi))
                      for name, (axis, lo, hi, step) in named.items()}
    return make


CASES = {
    "resnet50": Case("resnet50", _seeded(_resnet50), lambda: (torch.randn(2, 3, 224, 224),), ("x",), {},
                     lambda: {"x": _dims()()}),
    "yolov8n": Case("yolov8n", _seeded(_yolov8n), lambda: (torch.randn(2, 3, 640, 640),), ("x",),
                    {0: {2: ("h", 320, 640, 640, 32), 3: ("w", 320, 640, 640, 32)}},
                    lambda: {"x": _dims(h=(2, 10, 20, 32), w=(3, 10, 20, 32))()}),
    "bert_base": Case("bert_base", _seeded(_bert_base),
                      lambda: (torch.randint(0, 30522, (2, 128)), torch.ones(2, 128, dtype=torch.int64)),
                      ("input_ids", "attention_mask"),
                      {0: {1: ("seq", 8, 128, 256)}, 1: {1: ("seq", 8, 128, 256)}},
                      lambda: (lambda s: {"input_ids": {**_dims()(), 1: s}, "attention_mask": {**_dims()(), 1: s}})(
                          torch.export.Dim("seq", min=8, max=256))),
    "vit_base": Case("vit_base", _seeded(_vit_base), lambda: (torch.randn(2, 3, 224, 224),), ("x",), {},
                     lambda: {"x": _dims()()}),
}


def _quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings(), open(os.devnull, "w") as null:
        warnings.simplefilter("ignore")
        stdout, sys.stdout = sys.stdout, null
        try:
            return fn()
        finally:
            sys.stdout = stdout


def jobs(case: Case, model: torch.nn.Module, example: tuple, tmp: Path) -> dict[str, Callable[[str], Any]]:
    """The four timed calls, each writing into its own file or directory."""
    import fxtrt

    def dynamo(tag: str) -> None:
        dims = case.export_dims()
        by_position = tuple(dims[n] for n in case.input_names)
        # a wrapper's forward(*args) takes its dims as {"args": (...)}, a plain forward by position
        shapes = {"args": by_position} if isinstance(model, _First) else by_position
        torch.onnx.export(model, example, str(tmp / f"dynamo{tag}.onnx"), dynamo=True, opset_version=17,
                          input_names=list(case.input_names), dynamic_shapes=shapes)

    def legacy(tag: str) -> None:
        torch.onnx.export(model, example, str(tmp / f"legacy{tag}.onnx"), dynamo=False, opset_version=17,
                          input_names=list(case.input_names), dynamic_axes=case.dynamic_axes())

    def compile_(verify: bool) -> Callable[[str], Any]:
        return lambda tag: fxtrt.compile(model, example, batch=BATCH, dynamic=case.fxtrt_dynamic or None,
                                         verify=verify, out_dir=tmp / f"fxtrt{int(verify)}{tag}")

    return {"dynamo": dynamo, "legacy": legacy, "fxtrt": compile_(False), "fxtrt_verify": compile_(True)}


def time_case(case: Case, rounds: int, verify_rounds: int) -> dict[str, Any]:
    """Interleaved wall times (s) per job and round, and fxtrt's reports; ``fxtrt.compile()``
    with verification runs in the first ``verify_rounds`` rounds only (its floor is measured in
    each of them)."""
    model, example = case.build(), case.example()
    times: dict[str, list[float]] = {}
    reports: dict[str, list[dict]] = {"fxtrt": [], "fxtrt_verify": []}
    with tempfile.TemporaryDirectory() as tmp:
        calls = jobs(case, model, example, Path(tmp))
        for r in range(rounds + 1):  # round 0 warms up
            for name, call in calls.items():
                if name == "fxtrt_verify" and r > verify_rounds:
                    continue
                start = time.perf_counter()
                with ModuleState(model):  # a baseline leaves traced state on the model (ultralytics' cached shape)
                    result = _quiet(lambda: call(str(r)))
                elapsed = time.perf_counter() - start
                log.info("%s %s round %d: %.2fs", case.name, name, r, elapsed)
                if r:
                    times.setdefault(name, []).append(elapsed)
                    if name in reports:
                        reports[name].append(result.report.to_dict())
    return {"times": times, "reports": reports}


def peak_rss_mb(case: str, job: str) -> float:
    """Peak RSS of a child process that builds ``case`` and runs ``job`` once."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_time", "--child", case, job],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {case}/{job} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _child(case_name: str, job: str) -> None:
    case = CASES[case_name]
    model, example = case.build(), case.example()
    with tempfile.TemporaryDirectory() as tmp:
        _quiet(lambda: jobs(case, model, example, Path(tmp))[job]("m"))
    print(json.dumps({"peak_rss_mb": _high_water_mb()}))


def _high_water_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over from the forked
    parent across exec, so every child would report at least the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: no parent to inherit from


def summarize(case: str, timed: dict[str, Any], memory: dict[str, float]) -> dict[str, Any]:
    t = timed["times"]
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(t[a], t[b]))  # noqa: E731 - pairs of one round
    stages = {k: statistics.median(r["timings_s"].get(k, 0.0) for r in timed["reports"]["fxtrt"])
              for k in ("capture", "passes", "emit", "cleanup")}
    # a checkout from before the floor was measured has only the stage's time
    verify = [r["stages"].get("verify") or {"seconds": r["timings_s"]["verify"], "floor_seconds": float("nan")}
              for r in timed["reports"]["fxtrt_verify"]]
    return {
        "model": case, "seconds": {k: statistics.median(v) for k, v in t.items()}, "runs": t,
        "fxtrt_vs_dynamo": ratio("fxtrt", "dynamo"), "fxtrt_vs_legacy": ratio("fxtrt", "legacy"),
        "fxtrt_verify_vs_dynamo": ratio("fxtrt_verify", "dynamo"), "stages": stages,
        "verify_seconds": statistics.median(v["seconds"] for v in verify),
        "verify_floor_seconds": statistics.median(v["floor_seconds"] for v in verify),
        "verify_vs_floor": statistics.median(v["seconds"] / v["floor_seconds"] for v in verify),
        "peak_rss_mb": memory,
        "rss_vs_dynamo": memory["fxtrt"] / memory["dynamo"] if memory else None,
    }


def markdown(rows: list[dict[str, Any]], rounds: int) -> str:
    lines = [f"Medians of {rounds} interleaved rounds after a warm-up, one process per model; memory: one child "
             "process per exporter.", "",
             "| model | dynamo s | legacy s | fxtrt s | fxtrt / dynamo | fxtrt / legacy | capture | passes | emit | "
             "cleanup | verify s | floor s | verify / floor | RSS fxtrt / dynamo (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, st, m = r["seconds"], r["stages"], r["peak_rss_mb"]
        mem = f"{m['fxtrt']:.0f} / {m['dynamo']:.0f} = {r['rss_vs_dynamo']:.2f}x" if m else "-"
        lines.append(f"| {r['model']} | {s['dynamo']:.2f} | {s['legacy']:.2f} | {s['fxtrt']:.2f} | "
                     f"{r['fxtrt_vs_dynamo']:.2f}x | {r['fxtrt_vs_legacy']:.2f}x | {st['capture']:.2f} | "
                     f"{st['passes']:.2f} | {st['emit']:.2f} | {st['cleanup']:.2f} | {r['verify_seconds']:.2f} | "
                     f"{r['verify_floor_seconds']:.2f} | {r['verify_vs_floor']:.2f}x | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (median of these)")
    parser.add_argument("--verify-rounds", type=int, default=3,
                        help="rounds that also run compile() with verification (it is the slow one)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes that measure peak RSS")
    parser.add_argument("--out", type=Path, help="write compile_time.md and compile_time.json here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("fxtrt", "torch", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        timed = time_case(CASES[name], args.rounds, args.verify_rounds)
        memory = {} if args.no_memory else {job: peak_rss_mb(name, job) for job in ("dynamo", "fxtrt")}
        rows.append(summarize(name, timed, memory))
        log.info("%s", markdown(rows[-1:], args.rounds))
    text = markdown(rows, args.rounds)
    sys.stdout.write(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile_time.md").write_text(text)
        (args.out / "compile_time.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
