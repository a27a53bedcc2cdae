"""The bytes fxtrt emits, per corpus model: a refactor that changes no behaviour changes none.

    python -m benchmarks.onnx_digest --out before.json [--models 'seed/*,peer/*']
    python -m benchmarks.onnx_digest --compare before.json     # exit 1 if any digest differs

Each model is built as the fidelity benchmark builds it (seeded, eval mode), compiled with the
benchmark's own options (``verify=False``), and its ONNX file (and external data, if any) hashed.
A refused model records its error type instead, so a change of outcome shows up too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import sysconfig
import tempfile
from pathlib import Path

from benchmarks.corpus import select_specs
from benchmarks.exporters import ExportSpec, export_fxtrt
from benchmarks.model_prep import make_inputs, prepare_model

DEFAULT_MODELS = "seed/*,peer/*,dyn/*,tv/resnet18,tv/mobilenet_v3_small"
SEED = 0
log = logging.getLogger("benchmarks.onnx_digest")


def digest(spec) -> str:
    import fxtrt

    prepared = prepare_model(spec, SEED)
    example = make_inputs(spec, spec.example_case, SEED)
    export_spec = ExportSpec(input_names=tuple(spec.input_names), batch_dims=spec.batch_dims, output_batch_dims=(),
                             opset=17, batch_profile=spec.batch_range or (1, 8, 32), dynamic=spec.dynamic)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = export_fxtrt(prepared.module, example, export_spec, Path(tmp) / "out" / "model.onnx")
        except fxtrt.FxtrtError as exc:
            return f"refused: {type(exc).__name__}"
        h = hashlib.sha256()
        for path in sorted(result.onnx_path.parent.glob("model.onnx*")):
            h.update(path.name.encode())
            h.update(_portable(path) if path.suffix == ".onnx" else path.read_bytes())
        return h.hexdigest()


def _portable(path: Path) -> bytes:
    """The model's bytes with the checkout's own path cut from its provenance strings (the
    user's ``file:line`` of each node), so two checkouts of one commit digest alike; torch's
    per-process ``<eval_with_key>.N`` counter is cut too (fxtrt itself has written it without
    the number since 2026-12-05; older commits did not)."""
    import onnx

    import fxtrt

    site = sysconfig.get_paths()["purelib"]
    root = str(Path(fxtrt.__file__).resolve().parents[1])
    model = onnx.load(str(path), load_external_data=False)

    def clean(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for prop in node.metadata_props:
                prop.value = re.sub(r"<eval_with_key>\.\d+", "<eval_with_key>",
                                    prop.value.replace(site, "<site>").replace(root, "<repo>"))
            node.doc_string = node.doc_string.replace(site, "<site>").replace(root, "<repo>")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)

    clean(model.graph)
    for prop in model.metadata_props:
        prop.value = prop.value.replace(site, "<site>").replace(root, "<repo>")
    return model.SerializeToString(deterministic=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    before = json.loads(args.compare.read_text()) if args.compare else None
    specs = [s for s in select_specs(args.models) if before is None or s.name in before]
    found: dict[str, str] = {}
    for i, spec in enumerate(specs, 1):
        found[spec.name] = digest(spec)
        same = "" if before is None else (" same" if before[spec.name] == found[spec.name] else " DIFFERS")
        print(f"[{i}/{len(specs)}] {spec.name} {found[spec.name][:16]}{same}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    if before is not None:
        differ = sorted(n for n in found if found[n] != before[n])
        print(f"{len(found) - len(differ)} of {len(found)} identical" + (f"; differ: {differ}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
