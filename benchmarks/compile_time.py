"""Compile time of fxtrt against torch.onnx.export(dynamo=True) on one model, in one process.

    python -m benchmarks.compile_time [--model resnet50] [--repeats 2]

Both are timed in the same run, alternating, after one warm-up of each (the first torch.onnx
call in a process pays for imports and registry set-up). The dynamo exporter gets the seed's
recipe (opset 17, dynamic batch); fxtrt is timed with and without its verification, since the
dynamo exporter verifies nothing.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import fxtrt


def dynamo_export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=17, input_names=["input"],
                      output_names=["output_0"], dynamic_axes={"input": {0: "batch_size"}, "output_0": {0: "batch_size"}},
                      verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    runs: dict[str, list[float]] = {"torch.onnx.export(dynamo=True)": [], "fxtrt.compile(verify=False)": [],
                                    "fxtrt.compile(verify=True)": []}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {
            "torch.onnx.export(dynamo=True)": lambda i: dynamo_export(model, x, Path(tmp) / f"d{i}.onnx"),
            "fxtrt.compile(verify=False)": lambda i: fxtrt.compile(model, x, batch=(1, 8, 32), verify=False,
                                                                   out_dir=Path(tmp) / f"f{i}"),
            "fxtrt.compile(verify=True)": lambda i: fxtrt.compile(model, x, batch=(1, 8, 32),
                                                                  out_dir=Path(tmp) / f"v{i}"),
        }
        for name, job in jobs.items():  # warm-up, not timed
            job("warm")
        for i in range(args.repeats):
            for name, job in jobs.items():
                start = time.perf_counter()
                job(i)
                runs[name].append(time.perf_counter() - start)
    base = statistics.median(runs["torch.onnx.export(dynamo=True)"])
    print(f"{args.model}, example batch 1, {args.repeats} timed runs each after one warm-up, same process")
    print(f"{'exporter':34} {'median s':>9} {'runs':>20} {'vs dynamo':>10}")
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"{name:34} {med:9.1f} {', '.join(f'{t:.1f}' for t in times):>20} {med / base:9.2f}x")


if __name__ == "__main__":
    main()
