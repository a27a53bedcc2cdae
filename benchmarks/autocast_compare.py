"""fxtrt's fp16 converter against NVIDIA ModelOpt AutoCast (issue 20, part 5).

TensorRT 11 has no fp16 builder flag: the ONNX file itself must be mixed precision, and
NVIDIA's documented route is ModelOpt AutoCast (``modelopt.onnx.autocast``). This compares
AutoCast with fxtrt's own converter (``precision="fp16"``: plan, materialise, verification-
driven repair) on corpus models, from the same verified fp32 ``model.onnx``:

* **error** against fp32 PyTorch at fxtrt's verification points (the same feeds for both):
  max |a - b| and max |a - b| / max|ref| per output;
* **verification**: whether the model passes fxtrt's fp16 check (``fxtrt.backend.verify.verify``
  with ``Fp16Model.tolerance_for(settings)``: ``|a-b| <= fp16_atol + fp16_rtol*|ref|``
  elementwise, 1e-2 each, at every point), called on the AutoCast file exactly as compile()
  calls it on fxtrt's;
* **nodes in fp32**: one census for both files (types from ONNX shape inference): nodes that
  read or write a float32 tensor, of the nodes that touch a float tensor, Cast excluded;
  plus the Cast count and each converter's own count;
* **latency**: ONNX Runtime CPU, one thread per session, the models alternated within every
  round (order reversed each round), median of the per-round ratios;
* **conversion time**: fxtrt's ``report.timings["fp16"]`` (repair plus its verification) and
  the wall time of AutoCast's ``convert_to_mixed_precision`` call (plus saving the file).

AutoCast runs twice: with its defaults plus ``keep_io_types=True`` (fxtrt's fp16 model keeps
float32 inputs and outputs too), calibrating on its own random inputs, and ("calib") with
the compile's example as ``calibration_data``.

Needs ``modelopt.onnx.autocast`` importable, so it runs from a venv of its own (see
benchmarks/README.md, "fp16: fxtrt's converter against ModelOpt AutoCast")::

    python -m benchmarks.autocast_compare --out benchmarks/results/2026-12-05-autocast
    python -m benchmarks.autocast_compare --models 'seed/speech_encoder,tv/resnet18' --out /tmp/ac

Each model runs in a child process (``--one``) with a timeout; ``compare.json`` is rewritten
after each model and ``compare.md`` at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # fxtrt and benchmarks from this checkout, whatever venv runs it
    sys.path.insert(0, str(REPO))

DEFAULT_MODELS = (
    "seed/speech_encoder",
    "seed/layernorm_block",
    "tv/resnet18",
    "tv/mobilenet_v3_small",
    "tv/efficientnet_b0",
    "timm/deit_tiny_patch16_224",
    "timm/convnext_atto",
    "timm/mobilevit_xxs",
    "timm/ghostnet_100",
    "hf/bert",
    "hf/gpt2",
    "hf/vit",
    "dyn/bert",
)
BATCH = (1, 2, 8)
VARIANTS = ("fxtrt", "autocast", "autocast_calib")
FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
NO_COMPUTE_OPS = {"Shape", "Size", "Cast", "CastLike", "Constant"}


def _modelopt_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:  # noqa: BLE001
        return None


def _commit() -> str | None:
    """The fxtrt commit run: ``FXTRT_COMMIT`` (a snapshot made with ``git archive``), else the checkout's HEAD."""
    if os.environ.get("FXTRT_COMMIT"):
        return os.environ["FXTRT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fxtrt"], cwd=REPO, capture_output=True,
                               text=True, timeout=10)
        return head.stdout.strip() + (" (fxtrt/ modified in the work tree)" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return None


def _versions() -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "nvidia-modelopt": _modelopt_version(),
            "interpreter": sys.executable}


# ---------------------------------------------------------------- census


def precision_census(path: Path) -> dict[str, Any]:
    """Nodes by the precision they compute in, from ONNX type inference, the same way for any file.

    A node computes in fp32 when it reads or writes a float32 tensor, in fp16 when every float
    tensor it touches is float16; Shape/Size/Cast/Constant and nodes without float tensors are
    not counted. ``fp32_ops`` counts the fp32 nodes by op type.
    """
    import onnx

    model = onnx.load(str(path))
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[node.output[0]] = 1
    fp32 = fp16 = 0
    fp32_ops: Counter[str] = Counter()
    untyped = 0
    for node in g.node:
        if node.op_type in NO_COMPUTE_OPS:
            continue
        tensors = [t for t in (*node.input, *node.output) if t]
        known = [types[t] for t in tensors if t in types]
        untyped += len(tensors) - len(known)
        floats = [t for t in known if t in FLOAT_TYPES]
        if not floats:
            continue
        if any(t == 1 for t in floats):
            fp32 += 1
            fp32_ops[node.op_type] += 1
        else:
            fp16 += 1
    return {"nodes": len(g.node), "casts": sum(n.op_type == "Cast" for n in g.node), "float_nodes": fp32 + fp16,
            "fp32_nodes": fp32, "fp16_nodes": fp16, "fp32_ops": dict(fp32_ops.most_common()),
            "untyped_tensors": untyped, "bytes": path.stat().st_size + _data_size(path)}


def _data_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return data.stat().st_size if data.exists() else 0


# ---------------------------------------------------------------- fp16 storage emulation


def emulate_fp16_storage(src: Path, dest: Path) -> dict[str, Any]:
    """Any mixed-precision file as float32 arithmetic with every float16 value rounded through an
    explicit ``Cast(fp16) -> Cast(fp32)`` pair (which ONNX Runtime keeps): the semantics of fxtrt's
    own repair emulation (fp16 storage, fp32 arithmetic inside each node), applied alike to both
    converters' files. ORT's CPU provider runs most fp16 nodes through fp32 kernels and drops the
    casts between them, so an fp16 overflow of an intermediate value never shows on the real file.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.input, *inferred.graph.output,
                                                                 *inferred.graph.value_info]
             if vi.type.HasField("tensor_type")}
    g = model.graph
    H, F = TensorProto.FLOAT16, TensorProto.FLOAT

    def up(t: onnx.TensorProto) -> onnx.TensorProto:
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type == H:
            g.initializer[i].CopyFrom(up(t))
    rounded = 0
    nodes = []
    for node in g.node:
        half_outs = [v for v in node.output if v and types.get(v) == H]
        if node.op_type == "Cast" and any(a.name == "to" and a.i == H for a in node.attribute):
            half_outs = [node.output[0]]  # even where type inference left it untyped
        for a in node.attribute:
            if a.name == "to" and a.i == H:
                a.i = F
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == H:
                a.t.CopyFrom(up(a.t))
            if a.name == "dtype" and a.i == H:
                a.i = F
        renamed = {v: f"{v}__emu32" for v in half_outs}
        for j, v in enumerate(node.output):
            if v in renamed:
                node.output[j] = renamed[v]
        nodes.append(node)
        for v, raw in renamed.items():
            nodes.append(helper.make_node("Cast", [raw], [f"{v}__emu16"], to=H, name=f"{v}__emu_h"))
            nodes.append(helper.make_node("Cast", [f"{v}__emu16"], [v], to=F, name=f"{v}__emu_f"))
            rounded += 1
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == H:
            vi.type.tensor_type.elem_type = F
    onnx.save(model, str(dest))
    return {"rounded_values": rounded}


def _fp16_rule(ref: Any, out: Any, atol: float, rtol: float) -> bool:
    import numpy as np

    if ref.shape != out.shape:
        return False
    a, b = ref.astype(np.float64), out.astype(np.float64)
    diff = np.where((np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b)), 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return bool((diff <= atol + rtol * np.where(np.isfinite(a), np.abs(a), 0.0)).all())


def emulated_figures(paths: Mapping[str, Path], feeds: Sequence[tuple[dict, dict]],
                     refs: Sequence[Mapping[str, Any]], atol: float, rtol: float) -> dict[str, dict[str, Any]]:
    """Each fp16 file under :func:`emulate_fp16_storage`: its errors and fxtrt's fp16 rule at every point."""

    out: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        dest = path.with_name(path.stem + "_emulated.onnx")
        try:
            info = emulate_fp16_storage(path, dest)
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            continue
        figs = error_figures({name: dest}, feeds, refs)[name]
        if "error" not in figs:
            import numpy as np
            import onnxruntime as ort

            sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            checks = failed = 0
            for (_, feed), ref in zip(feeds, refs):
                got = dict(zip(names, sess.run(None, feed)))
                for o, r in ref.items():
                    checks += 1
                    failed += not _fp16_rule(np.asarray(r), np.asarray(got[o]), atol, rtol)
            figs.update({"checks": checks, "failed": failed, "passed": failed == 0})
        out[name] = {**figs, **info}
    return out


# ---------------------------------------------------------------- AutoCast


class _Converted(logging.Handler):
    """Catches AutoCast's own "Converted N/M nodes (x%) to fp16" line."""

    def __init__(self) -> None:
        super().__init__()
        self.line = ""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Converted "):
            self.line = msg


def run_autocast(src: Path, dest: Path, calibration: Path | None = None) -> dict[str, Any]:
    """AutoCast on ``src`` (defaults plus keep_io_types=True), written to ``dest``; its call time."""
    import onnx
    from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision

    configure_logging("WARNING")
    catcher = _Converted()
    ac_log = logging.getLogger("modelopt.onnx.autocast")
    prev = ac_log.level
    ac_log.setLevel(logging.INFO)  # for its summary line only; handlers above print warnings only
    for h in ac_log.handlers + logging.getLogger("modelopt.onnx").handlers:
        h.setLevel(logging.WARNING)
    ac_log.addHandler(catcher)
    start = time.perf_counter()
    try:
        model = convert_to_mixed_precision(str(src), low_precision_type="fp16", keep_io_types=True,
                                           calibration_data=str(calibration) if calibration else None)
        onnx.save(model, str(dest))
    finally:
        ac_log.removeHandler(catcher)
        ac_log.setLevel(prev)
    return {"seconds": time.perf_counter() - start, "own_count": catcher.line}


# ---------------------------------------------------------------- errors and verification


def error_figures(paths: Mapping[str, Path], feeds: Sequence[tuple[dict, dict]],
                  refs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: max |a-b| and max |a-b|/max|ref| over every output at every feed."""
    import numpy as np
    import onnxruntime as ort

    out: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            worst_abs = worst_mag = 0.0
            nonfinite = 0
            where = None
            for (sizes, feed), ref in zip(feeds, refs):
                got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
                for o, r in ref.items():
                    r64 = np.asarray(r, dtype=np.float64)
                    g64 = np.asarray(got[o], dtype=np.float64)
                    nonfinite += int((~np.isfinite(g64) & np.isfinite(r64)).sum())
                    if r64.size == 0:
                        continue
                    diff = np.abs(r64 - g64)
                    diff = np.where(np.isnan(diff), np.inf, diff)
                    d = float(diff.max())
                    mag = float(np.abs(r64[np.isfinite(r64)]).max()) if np.isfinite(r64).any() else 0.0
                    rel = d / mag if mag > 0 else (0.0 if d == 0 else float("inf"))
                    if d > worst_abs:
                        worst_abs, where = d, f"{o} at {sizes}"
                    worst_mag = max(worst_mag, rel)
            out[name] = {"max_abs": worst_abs, "max_rel_to_magnitude": worst_mag, "nonfinite": nonfinite,
                         "worst_at": where}
        except Exception as exc:  # noqa: BLE001 - a model ORT cannot run is a result
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    return out


def _fp16_tolerance(settings: Any) -> Any:
    """fxtrt's fp16 tolerance for ``settings`` (where it lives depends on the fxtrt version)."""
    try:
        from fxtrt.stages.fp16 import tolerance_for
    except ImportError:
        from fxtrt.artifacts.fp16_model import Fp16Model

        tolerance_for = Fp16Model.tolerance_for
    return tolerance_for(settings)


def fxtrt_verify(artifact: Any, reference: Any, tolerance: Any) -> dict[str, Any]:
    """fxtrt's own fp16 verification (``fxtrt.backend.verify.verify``) on ``artifact``."""
    from fxtrt.backend.verify import verify
    from fxtrt.errors import FxtrtError

    try:
        rows = verify(artifact, reference, artifact.points, tolerance)
    except FxtrtError as exc:
        return {"passed": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}", "rows": []}
    bad = [r for r in rows if not r.passed]
    return {"passed": not bad and bool(rows), "checks": len(rows), "failed": len(bad),
            "max_abs": max(r.max_abs for r in rows), "max_rel_elementwise": max(r.max_rel for r in rows),
            "rows": [r.to_dict() for r in rows]}


# ---------------------------------------------------------------- latency


def interleaved_latency(paths: Mapping[str, Path], feed: Mapping[str, Any], rounds: int,
                        warmup: int = 2) -> dict[str, Any]:
    """Each model once per round, alternating (order reversed every other round); per-round ratios."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sessions = {n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for n, p in paths.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, dict(feed))
    times: dict[str, list[float]] = {n: [] for n in sessions}
    names = list(sessions)
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            sessions[n].run(None, dict(feed))
            times[n].append(time.perf_counter() - start)
    out: dict[str, Any] = {"rounds": rounds, "threads": 1,
                           "median_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()}}
    ratios = {}
    for a, b in (("autocast", "fxtrt"), ("autocast_calib", "fxtrt"), ("fxtrt", "fp32"), ("autocast", "fp32")):
        if a in times and b in times:
            ratios[f"{a}/{b}"] = statistics.median(x / y for x, y in zip(times[a], times[b]))
    out["median_ratio"] = ratios
    return out


# ---------------------------------------------------------------- one model


def compare_model(name: str, work: Path, *, seed: int = 0, batch: tuple[int, int, int] = BATCH,
                  rounds: int = 15) -> dict[str, Any]:
    """Compile ``name`` with fxtrt (fp16), run AutoCast on its fp32 model.onnx, and measure both."""
    import numpy as np
    import torch

    import fxtrt
    from benchmarks.corpus import get_spec
    from benchmarks.model_prep import make_inputs, prepare_model
    from fxtrt.backend.verify import ReferenceRunner

    spec = get_spec(name)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"model": name, "load_before": os.getloadavg()}
    prepared = prepare_model(spec, seed)
    example = make_inputs(spec, spec.example_case, seed)
    dynamic = {i: {d: (dim.name, *dim.range) for d, dim in per.items()} for i, per in spec.dynamic.items()} or None
    out_dir = work / "fxtrt"
    kw = dict(batch=spec.batch_range or batch, batch_dims=list(spec.batch_dims), dynamic=dynamic, out_dir=out_dir)
    start = time.perf_counter()
    try:
        compiled = fxtrt.compile(prepared.module, example, precision="fp16", **kw)
        result["fxtrt_compiled"] = True
    except fxtrt.FxtrtError as exc:  # fxtrt could not make an fp16 model: record it, compare AutoCast alone
        result["fxtrt_compiled"] = False
        result["fxtrt_error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
        compiled = fxtrt.compile(prepared.module, example, precision="fp32", **{**kw, "out_dir": work / "fp32"})
    result["compile_seconds"] = time.perf_counter() - start
    fp16_stage = compiled.report.stages.get("fp16", {})
    fp32_art = getattr(compiled.artifact, "fp32", None) or compiled.artifact  # an Fp16Model's fp32 twin
    fp32_path = Path(fp32_art.primary)
    tol = _fp16_tolerance(compiled.settings)
    result["tolerance"] = {"atol": tol.atol, "rtol": tol.rtol}
    result["points"] = [dict(p) for p in fp32_art.points]

    reference = ReferenceRunner(prepared.module, example, compiled.settings.dims, compiled.input_names,
                                compiled.output_names)
    feeds = reference.feeds(fp32_art.points)
    refs = reference.outputs(feeds)
    example_feed = reference.feeds([{}])[0][1]  # the compile's example (batch 1, dims at opt)

    paths: dict[str, Path] = {"fp32": fp32_path}
    conv: dict[str, Any] = {}
    if result["fxtrt_compiled"]:
        paths["fxtrt"] = Path(compiled.artifact.primary)
        conv["fxtrt"] = {"seconds": compiled.report.timings.get("fp16"),
                         "own_count": f"{len(fp16_stage.get('kept_fp32', []))} kept in fp32 "
                                      f"({sum(k['rule'] == 'diverged' for k in fp16_stage.get('kept_fp32', []))} by "
                                      f"repair) in {len(fp16_stage.get('rounds', []))} round(s)",
                         "kept_by_repair": [k["name"] for k in fp16_stage.get("kept_fp32", [])
                                            if k["rule"] == "diverged"]}
    calib = work / "calibration.npz"
    np.savez(calib, **example_feed)
    for variant, cal in (("autocast", None), ("autocast_calib", calib)):
        dest = work / f"{variant}.onnx"
        try:
            conv[variant] = run_autocast(fp32_path, dest, cal)
            paths[variant] = dest
        except Exception as exc:  # noqa: BLE001 - AutoCast failing is a result
            conv[variant] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}",
                             "traceback": traceback.format_exc()[-2000:]}
    result["conversion"] = conv
    result["census"] = {n: precision_census(p) for n, p in paths.items()}
    result["errors"] = error_figures(paths, feeds, refs)

    verification: dict[str, Any] = {}
    for n, p in paths.items():
        if n == "fp32":
            continue
        art = fp32_art.with_members({None: p}, name=n, tolerance=tol)
        verification[n] = fxtrt_verify(art, reference, tol)
    result["verification"] = verification
    result["emulated"] = emulated_figures({n: p for n, p in paths.items() if n != "fp32"}, feeds, refs,
                                          tol.atol, tol.rtol)

    runnable = {n: p for n, p in paths.items() if "error" not in result["errors"].get(n, {})}
    lat_sizes = {d.name: d.opt for d in compiled.settings.dims}  # batch at opt, other dims at opt
    lat_feed = reference.feeds([lat_sizes])[0][1]
    result["latency"] = {"sizes": lat_sizes, **interleaved_latency(runnable, lat_feed, rounds)}
    result["load_after"] = os.getloadavg()
    result["torch_threads"] = torch.get_num_threads()
    return result


# ---------------------------------------------------------------- report


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def verdict(r: Mapping[str, Any], variant: str) -> str:
    v = r.get("verification", {}).get(variant)
    if v is None:
        err = r.get("conversion", {}).get(variant, {}).get("error") or r.get("fxtrt_error")
        return "CRASH" if err else "–"
    if "error" in v:
        return "ERROR"
    return "PASS" if v["passed"] else f"FAIL {v['failed']}/{v['checks']}"


def model_row(r: Mapping[str, Any]) -> list[str]:
    if "failure" in r:
        return [r["model"], f"run failed: {r['failure'][:80]}"] + [""] * 10
    cells = [r["model"]]
    for v in ("fxtrt", "autocast"):
        e = r["errors"].get(v, {})
        c = r["census"].get(v, {})
        cells += [verdict(r, v),
                  f"{_fmt(e.get('max_abs'))} / {_fmt(e.get('max_rel_to_magnitude'))}" if "max_abs" in e else "–",
                  f"{c.get('fp32_nodes', '–')}/{c.get('float_nodes', '–')} ({c.get('casts', '–')})" if c else "–",
                  _fmt(r["conversion"].get(v, {}).get("seconds"), ".2f")]
    cells.insert(5, verdict(r, "autocast_calib"))
    ratios = r.get("latency", {}).get("median_ratio", {})
    cells += [_fmt(ratios.get("autocast/fxtrt"), ".2f"), _fmt(ratios.get("fxtrt/fp32"), ".2f"),
              _fmt(ratios.get("autocast/fp32"), ".2f")]
    return cells


HEADER = ["model", "fxtrt verify", "fxtrt max abs / rel", "fxtrt fp32 nodes (casts)", "fxtrt conv s",
          "AutoCast+calib verify", "AutoCast verify", "AutoCast max abs / rel", "AutoCast fp32 nodes (casts)",
          "AutoCast conv s", "latency AutoCast/fxtrt", "fxtrt/fp32", "AutoCast/fp32"]


def summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if "failure" not in r]
    s: dict[str, Any] = {"models": len(results), "measured": len(ok)}
    for v in VARIANTS:
        s[f"{v}_passes"] = sum(verdict(r, v) == "PASS" for r in ok)
        s[f"{v}_passes_emulated"] = sum(bool(r.get("emulated", {}).get(v, {}).get("passed")) for r in ok)
    both = [r for r in ok if "max_abs" in r["errors"].get("fxtrt", {}) and "max_abs" in r["errors"].get("autocast", {})]
    s["autocast_error_larger"] = sum(r["errors"]["autocast"]["max_abs"] > r["errors"]["fxtrt"]["max_abs"] for r in both)
    ratios = [r["latency"]["median_ratio"]["autocast/fxtrt"] for r in ok if "autocast/fxtrt" in r.get("latency", {}).get("median_ratio", {})]
    s["latency_autocast_over_fxtrt_median"] = statistics.median(ratios) if ratios else None
    s["fp32_nodes_total"] = {v: sum(r["census"].get(v, {}).get("fp32_nodes", 0) for r in ok) for v in VARIANTS}
    s["float_nodes_total"] = {v: sum(r["census"].get(v, {}).get("float_nodes", 0) for r in ok) for v in VARIANTS}
    s["conversion_seconds_total"] = {v: sum(r["conversion"].get(v, {}).get("seconds") or 0 for r in ok)
                                     for v in VARIANTS}
    return s


def write_markdown(out: Path, meta: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> None:
    s = summary(results)
    lines = [
        "# fp16: fxtrt's converter against ModelOpt AutoCast",
        "",
        f"Run {meta['started']} ({meta['wall_seconds']:.0f} s), `{meta['command']}`; load average "
        f"{meta['load_start']} at the start, {meta.get('load_end')} at the end (2 cores, shared).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items() if k != 'interpreter')}; "
        f"fxtrt {meta.get('fxtrt_commit')}.",
        "",
        "Verify: fxtrt's fp16 verification (`|a-b| <= 0.01 + 0.01*|ref|` elementwise, every output, every "
        "point), called on each file. Max abs / rel: max |a-b| and max |a-b| / max|ref| against fp32 PyTorch "
        "over the same points. fp32 nodes: nodes reading or writing a float32 tensor / nodes touching a "
        "float tensor (Cast excluded), from ONNX type inference, with the Cast count. Latency: ONNX Runtime "
        f"CPU, 1 thread, at batch opt, interleaved, median of {meta['rounds']} per-round ratios. Conversion: "
        "fxtrt's fp16 stage (repair + its verification) vs AutoCast's call (+ save). AutoCast: defaults + "
        "keep_io_types=True (random calibration); +calib: the compile's example as calibration_data.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(model_row(r)) + " |" for r in results]
    lines += ["", "Under fp16 storage emulation (every fp16 value rounded through an explicit Cast pair, "
              "float32 arithmetic inside each node: fxtrt's repair emulation, applied to each file alike; ORT's "
              "CPU provider otherwise folds the casts between fp16 nodes away), fxtrt's fp16 rule at the same "
              "points:", "",
              "| model | " + " | ".join(f"{v} verify | {v} max abs / rel" for v in VARIANTS) + " |",
              "|---|" + "---|---|" * len(VARIANTS)]
    for r in results:
        if "failure" in r:
            continue
        cells = [r["model"]]
        for v in VARIANTS:
            e = r.get("emulated", {}).get(v)
            if e is None or "error" in e:
                cells += [("ERROR" if e else "–"), (e or {}).get("error", "–")[:60]]
            else:
                cells += ["PASS" if e["passed"] else f"FAIL {e['failed']}/{e['checks']}",
                          f"{_fmt(e['max_abs'])} / {_fmt(e['max_rel_to_magnitude'])}"
                          + (f", {e['nonfinite']} non-finite" if e.get("nonfinite") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Summary: " + json.dumps(s), ""]
    lines += ["## Nodes computing in fp32, by op type (same census)", ""]
    for r in results:
        if "failure" in r:
            continue
        f_ops = r["census"].get("fxtrt", {}).get("fp32_ops", {})
        a_ops = r["census"].get("autocast", {}).get("fp32_ops", {})
        lines.append(f"- {r['model']}: fxtrt fp32 {f_ops}; AutoCast fp32 {a_ops}; "
                     f"fxtrt repair kept {len(r['conversion'].get('fxtrt', {}).get('kept_by_repair', []))}; "
                     f"AutoCast says \"{r['conversion'].get('autocast', {}).get('own_count', '')}\"")
    lines.append("")
    (out / "compare.md").write_text("\n".join(lines))


def _run_one(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        result = compare_model(args.one, Path(args.work), seed=args.seed, batch=tuple(args.batch), rounds=args.rounds)
    except Exception as exc:  # noqa: BLE001
        result = {"model": args.one, "failure": f"{type(exc).__name__}: {str(exc)[:800]}",
                  "traceback": traceback.format_exc()[-3000:]}
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks/results/2026-12-05-autocast"))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated corpus names")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, nargs=3, default=list(BATCH), metavar=("MIN", "OPT", "MAX"))
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--work", default="/tmp/fxtrt-autocast-work", help="where the ONNX files go")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return _run_one(args)
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError as exc:
        print(f"modelopt.onnx.autocast is not importable here ({exc}); run this with the venv that has it "
              "(benchmarks/README.md)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    meta: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["python -m benchmarks.autocast_compare", *(argv if argv is not None else sys.argv[1:])]),
                            "versions": _versions(), "rounds": args.rounds, "batch": args.batch,
                            "load_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                            "fxtrt_from": str(REPO), "fxtrt_commit": _commit()}
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        mwork = work / name.replace("/", "__")
        jpath = mwork / "result.json"
        mwork.mkdir(parents=True, exist_ok=True)
        jpath.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.autocast_compare", "--one", name, "--work", str(mwork),
               "--json", str(jpath), "--rounds", str(args.rounds), "--seed", str(args.seed),
               "--batch", *map(str, args.batch)]
        try:
            proc = subprocess.run(cmd, cwd=REPO, timeout=args.timeout, capture_output=True, text=True)
            (mwork / "log.txt").write_text(proc.stdout + proc.stderr)
            result = json.loads(jpath.read_text()) if jpath.exists() else {
                "model": name, "failure": f"child exited {proc.returncode}: {proc.stderr[-800:]}"}
        except subprocess.TimeoutExpired:
            result = {"model": name, "failure": f"timed out after {args.timeout:.0f} s"}
        result["wall_seconds"] = time.perf_counter() - t0
        results.append(result)
        row = model_row(result)
        print(f"[{name}] {result['wall_seconds']:.0f}s  " + "  ".join(f"{h}={c}" for h, c in zip(HEADER[1:], row[1:])),
              flush=True)
        meta["wall_seconds"] = time.perf_counter() - start
        (out / "compare.json").write_text(json.dumps({"meta": meta, "summary": summary(results), "models": results},
                                                     indent=1, default=str))
    meta["wall_seconds"] = time.perf_counter() - start
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "compare.json").write_text(json.dumps({"meta": meta, "summary": summary(results), "models": results},
                                                 indent=1, default=str))
    write_markdown(out, meta, results)
    print(f"wrote {out / 'compare.json'} and {out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
