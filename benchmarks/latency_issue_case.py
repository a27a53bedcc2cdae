"""The measured case of issue 19, item 4, laid out as the fidelity harness lays out a corpus model.

A 4-layer BERT, ``BertModel(BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
intermediate_size=1024))``, taking ``(input_ids, attention_mask)`` at sequence 64 with the batch
dynamic. With transformers' own initialisation, its biases and LayerNorm shifts are zero, and
fxtrt's file then has the issue's node counts: 158 nodes, 32 MatMul. ``fill=True`` gives them
random values instead, as the corpus does (``benchmarks.model_prep``). Then onnxsim folds each
bias into a Gemm, and the counts differ.

``prepare`` writes ``reference/`` (eager's inputs and outputs) and one directory per exporter, as
``benchmarks.worker`` does, so that ``benchmarks.latency_timing.measure_model`` times the files.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks.corpus.transformers_models import MaskedTextModel
from benchmarks.exporters import EXPORTERS, ExportSpec
from benchmarks.inputs import token_ids
from benchmarks.model_prep import fill_zero_parameters
from benchmarks.worker import CELL_RESULT, REFERENCE_ARRAYS, REFERENCE_META, write_json_atomic

NAME = "issue19/bert_4layer_seq64"
SEQ = 64
VOCAB = 30522


def build(seed: int, fill: bool) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                                     intermediate_size=1024)
    model = MaskedTextModel(transformers.BertModel(config), "last_hidden_state").eval()
    if fill:
        fill_zero_parameters(model, seed)
    return model


def prepare(model_dir: Path, exporters: Sequence[str], batches: Sequence[int], seed: int, fill: bool) -> None:
    """Eager's reference at batch 1 and ``batches``, and each exporter's file (in this process)."""
    fd = os.open(model_dir / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    model = build(seed, fill)
    make = token_ids(VOCAB, SEQ)
    arrays: dict[str, np.ndarray] = {}
    keys = [str(b) for b in sorted({1, *batches})]
    with torch.inference_mode():
        for key in keys:
            inputs = make(int(key), torch.Generator().manual_seed(seed * 7919 + int(key)))
            arrays.update({f"in_{key}_{i}": t.numpy() for i, t in enumerate(inputs)})
            arrays[f"out_{key}_0"] = model(*inputs).numpy()
    (model_dir / "reference").mkdir(parents=True, exist_ok=True)
    np.savez(model_dir / "reference" / REFERENCE_ARRAYS, **arrays)
    write_json_atomic(model_dir / "reference" / REFERENCE_META, {"ok": True, "cases": keys, "n_outputs": 1})
    example = tuple(torch.from_numpy(arrays[f"in_1_{i}"]) for i in range(2))
    spec = ExportSpec(input_names=("input_ids", "attention_mask"), batch_dims=(0, 0), output_batch_dims=(0,))
    for name in exporters:
        cell = model_dir / name
        cell.mkdir(exist_ok=True)
        row: dict = {"model": NAME, "exporter": name}
        start = time.perf_counter()
        try:
            result = EXPORTERS[name].export(model, example, spec, cell / "model.onnx")
            row.update(outcome="exported", onnx_path=str(result.onnx_path),
                       onnx_input_names=list(result.input_names) if result.input_names else None)
        except Exception as exc:  # noqa: BLE001 - recorded; the exporter is then left out
            row.update(outcome="CRASH", detail=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        row["export_s"] = time.perf_counter() - start
        write_json_atomic(cell / CELL_RESULT, row)


def export_rows(model_dir: Path, exporters: Sequence[str]) -> dict[str, dict]:
    """What each exporter's cell recorded (outcome, detail, export time)."""
    out = {}
    for name in exporters:
        path = model_dir / name / CELL_RESULT
        row = json.loads(path.read_text()) if path.exists() else {"outcome": "CRASH", "detail": "no result"}
        out[name] = {k: row.get(k) for k in ("outcome", "detail", "export_s")}
    return out
