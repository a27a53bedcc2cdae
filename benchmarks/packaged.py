"""Packaged models with dims other than the batch dynamic, compiled from a batch-1 example.

Each case is a model as its library hands it out (random weights, small configs), the compile
options that make its image size, sequence or audio length dynamic, and the sizes at which an
independent check runs ``compiled(...)`` against eager PyTorch: batch 1, 3 and 8 at the smallest,
an in-between and the largest size of the extra dim. ``full`` is the configuration of issue 8's
"done when" list; ``quick`` is the one ``tests/test_packaged.py`` runs inside ``make test``.

    python -m benchmarks.packaged                 # every case, full configuration
    python -m benchmarks.packaged --quick         # what make test runs
    python -m benchmarks.packaged --cases yolo    # substring filter

Prints one line per case (verified or the error, the capture path of each dim, wall time) and
writes ``packaged.md`` / ``packaged.json`` to ``--out`` (default benchmarks/results/<date>/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

BATCHES = (1, 3, 8)


@dataclass(frozen=True)
class Config:
    """One way to compile a case: its example, compile() options and the extra dim's check sizes."""

    example: Callable[[], tuple[torch.Tensor, ...]]
    options: dict[str, Any]
    sizes: tuple[int, ...] = ()  # sizes of the extra dim to check (all its sites get the same size)
    batches: tuple[int, ...] = BATCHES


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    full: Config
    quick: Config | None = None
    sites: tuple[tuple[int, int], ...] = ()  # (input, dim) pairs that carry the extra dim
    expect_error: str | None = None  # a case that must be refused, with this text
    expect_source: str | None = None  # ... at a line of this file


def _seeded(fn: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return fn().eval()
    return build


def _torchvision(name: str, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)
    return _seeded(build)


def _ultralytics(yaml: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.gettempdir())
        from ultralytics.nn.tasks import guess_model_task, yaml_model_load
        from ultralytics.nn import tasks

        kind = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel,
                "pose": tasks.PoseModel}[guess_model_task(yaml_model_load(yaml))]
        return kind(yaml, verbose=False)
    return _seeded(build)


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, vocab_size=512)

    class Bert(torch.nn.Module):  # positional inputs, tuple out: what compile() takes today
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config)

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    return Bert()


def _wav2vec2() -> torch.nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)

    class Wav2Vec2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Wav2Vec2Model(config)

        def forward(self, audio):
            return self.model(audio).last_hidden_state

    return Wav2Vec2()


def _tokens(seq: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    def example() -> tuple[torch.Tensor, ...]:
        mask = torch.ones(1, seq, dtype=torch.int64)
        mask[:, seq * 3 // 4:] = 0
        return torch.randint(0, 512, (1, seq)), mask
    return example


def _images(size: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.randn(1, 3, size, size),)


def _hw(lo: int, opt: int, hi: int, step: int | None = None, square: bool = True) -> dict[int, dict[int, tuple]]:
    """H and W dynamic: one ``side`` (square images, which is what these cases judge), or, with
    ``square=False``, independent dims verified at H != W too."""
    spec: tuple = (lo, opt, hi) if step is None else (lo, opt, hi, step)
    if square:
        spec = ("side", *spec)
    return {0: {2: spec, 3: spec}}


HW = ((0, 2), (0, 3))

CASES: tuple[Case, ...] = (
    Case("resnet50_hw", _torchvision("resnet50"),
         Config(_images(128), {"dynamic": _hw(64, 128, 192)}, (64, 100, 192)),
         quick=None, sites=HW),
    Case("resnet18_hw", _torchvision("resnet18"),
         Config(_images(96), {"dynamic": _hw(64, 96, 128, square=False)}, (64, 100, 128)), sites=HW),
    Case("deeplabv3_mobilenet_v3_large_hw", _torchvision("deeplabv3_mobilenet_v3_large", weights_backbone=None),
         Config(_images(96), {"dynamic": _hw(64, 96, 128)}, (64, 100, 128)),
         quick=Config(_images(64), {"dynamic": _hw(64, 64, 96)}, (64, 96), batches=(1, 3)), sites=HW),
    Case("yolov8n_batch", _ultralytics("yolov8n.yaml"),
         Config(_images(64), {"batch": (1, 8, 16)}, batches=(1, 3, 8, 16))),
    Case("yolov8n_hw_step32", _ultralytics("yolov8n.yaml"),
         Config(_images(320), {"batch": (1, 8, 16), "dynamic": _hw(320, 320, 640, 32)}, (320, 416, 640)),
         quick=Config(_images(64), {"batch": (1, 3, 8), "dynamic": _hw(64, 64, 160, 32)}, (64, 96, 160)),
         sites=HW),
    Case("yolov8n_seg_batch", _ultralytics("yolov8n-seg.yaml"), Config(_images(64), {"batch": (1, 8, 16)})),
    Case("yolov8n_pose_batch", _ultralytics("yolov8n-pose.yaml"), Config(_images(64), {"batch": (1, 8, 16)})),
    Case("yolo11n_batch", _ultralytics("yolo11n.yaml"), Config(_images(64), {"batch": (1, 8, 16)})),
    Case("bert_seq", _seeded(_bert),
         Config(_tokens(16), {"dynamic": {0: {1: (4, 16, 64)}, 1: {1: (4, 16, 64)}}}, (4, 37, 64)),
         sites=((0, 1), (1, 1))),
    Case("bert_seq_512", _seeded(_bert),
         Config(_tokens(16), {"dynamic": {0: {1: (4, 16, 512)}, 1: {1: (4, 16, 512)}}}),
         expect_error="works only for 4..128", expect_source="modeling_bert.py"),
    Case("wav2vec2_audio", _seeded(_wav2vec2),
         Config(lambda: (torch.randn(1, 800),), {"dynamic": {0: {1: (400, 800, 1600)}}}, (400, 1003, 1600)),
         sites=((0, 1),)),
    Case("raft_small_batch", _torchvision("raft_small"),
         Config(lambda: (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)), {"batch": (1, 4, 8)}),
         quick=None),
)


def quick_config(case: Case) -> Config | None:
    """The configuration make test runs: ``quick`` if given, else ``full`` unless it is heavy."""
    if case.name in HEAVY:
        return None
    return case.quick if case.quick is not None else case.full


# over ~20 s on 2 cores, or (deeplab, yolov8n H x W) also judged by the fidelity benchmark's dyn
# family: benchmarks only, to keep make test under its 10 minutes
HEAVY = frozenset({"resnet50_hw", "raft_small_batch", "deeplabv3_mobilenet_v3_large_hw", "yolov8n_hw_step32"})


def inputs_at(case: Case, config: Config, batch: int, size: int | None) -> tuple[torch.Tensor, ...]:
    """The example at ``batch`` and extra-dim ``size``: fresh values, masks right-padded per row."""
    shapes = [list(t.shape) for t in config.example()]
    for s in shapes:
        s[0] = batch
    for i, d in case.sites:
        if size is not None:
            shapes[i][d] = size
    out = []
    for t, shape in zip(config.example(), shapes):
        if t.dtype == torch.int64 and t.max() <= 1 and t.dim() == 2:  # an attention mask
            mask = torch.ones(shape, dtype=torch.int64)
            for row in range(shape[0]):
                mask[row, max(1, shape[1] - row - 1):] = 0
            out.append(mask)
        elif t.dtype == torch.int64:
            out.append(torch.randint(0, int(t.max()) + 1, shape))
        else:
            out.append(torch.randn(shape))
    return tuple(out)


def check(case: Case, config: Config, model: torch.nn.Module, compiled: Any) -> list[dict[str, Any]]:
    """compiled(...) against eager at every batch × size of ``config``; one row per point."""
    from fxtrt.frontend.capture import flatten_outputs

    rows = []
    for batch in config.batches:
        for size in config.sizes or (None,):
            inputs = inputs_at(case, config, batch, size)
            with torch.no_grad():
                want = [t for t in flatten_outputs(model(*inputs)) if isinstance(t, torch.Tensor)]
            got = [torch.as_tensor(t) for t in flatten_outputs(compiled(*inputs))]
            err = max(float((g.double() - w.double()).abs().max()) for g, w in zip(got, want))
            scale = max(float(w.abs().max()) for w in want)
            ok = len(got) == len(want) and all(g.shape == w.shape for g, w in zip(got, want)) and \
                err <= 1e-4 + 1e-3 * scale
            rows.append({"batch": batch, "size": size, "max_abs": err, "passed": ok})
    return rows


def run_case(case: Case, config: Config, out_dir: Path) -> dict[str, Any]:
    """Compile one case and check it; the row the table prints."""
    import fxtrt

    model = case.build()
    start = time.perf_counter()
    row: dict[str, Any] = {"case": case.name, "options": repr(config.options)}
    try:
        compiled = fxtrt.compile(model, config.example(), out_dir=out_dir, **config.options)
    except fxtrt.FxtrtError as exc:
        row.update(wall_s=round(time.perf_counter() - start, 1), error=f"{type(exc).__name__}: {exc.message}",
                   source=exc.source, passed=case.expect_error is not None and case.expect_error in str(exc)
                   and (case.expect_source is None or case.expect_source in (exc.source or "")))
        return row
    row["wall_s"] = round(time.perf_counter() - start, 1)
    capture = compiled.report.stages.get("capture", {})
    row["dims"] = {n: d["how"] for n, d in capture.get("dims", {}).items()}
    row["exports"] = capture.get("traces")
    row["one_capture"] = capture.get("one_capture")
    row["outputs"] = list(compiled.output_names)
    row["checks"] = check(case, config, model, compiled)
    row["passed"] = case.expect_error is None and all(c["passed"] for c in row["checks"])
    return row


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | result | dims | torch.export calls | emitted as captured | wall s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        result = ("refused as expected: " if r["passed"] else "REFUSED: ") + r["error"].splitlines()[0] \
            if "error" in r else ("verified" if r["passed"] else "MISMATCH")
        dims = ", ".join(f"{n}: {h}" for n, h in r.get("dims", {}).items())
        lines.append(f"| {r['case']} | {result} | {dims} | {r.get('exports', '')} | {r.get('one_capture', '')} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packaged", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the configurations make test runs")
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results") / datetime.date.today().isoformat())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    wanted = [w for w in args.cases.split(",") if w]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if wanted and not any(w in case.name for w in wanted):
                continue
            config = quick_config(case) if args.quick else case.full
            if config is None:
                continue
            row = run_case(case, config, Path(tmp) / case.name)
            rows.append(row)
            print(f"{case.name:34s} {'ok  ' if row['passed'] else 'FAIL'} {row['wall_s']:6.1f} s  "
                  f"{row.get('dims', row.get('error', ''))}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"packaged{suffix}.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    (args.out / f"packaged{suffix}.md").write_text(_markdown(rows))
    print(f"wrote {args.out}/packaged{suffix}.md")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
