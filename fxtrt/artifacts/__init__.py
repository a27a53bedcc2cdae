"""What compile produces: records behind one protocol, declared in ``base.py`` (:class:`Artifact`).

Every kind has its files, a Polygraphy runner that takes feeds at any size it supports, the
points it is verified at and its tolerance, the dims it claims, ``serves(sizes)`` and
``describe(sizes)``, its ``report.artifacts`` entries and ``report.stages`` record (with their
text); :func:`fxtrt.backend.verify.verify` checks any of them against the original model, and
:class:`fxtrt.CompiledModel` serves through the same runner. How each kind is *made* is its
stage (:mod:`fxtrt.stages`), which compile walks as a list.

- :class:`OnnxModel`: one ONNX model, dynamic or static, on ONNX Runtime (``onnx_model.py``);
- :class:`BucketSet`: one static-batch model per bucket, served as one model of any batch
  (``bucket_set.py``);
- :class:`Fp16Model`: the fp16 twin of either, with its repair record (``fp16_model.py``);
- :class:`EngineSet`: TensorRT engines, planned always, built where TensorRT can (``engine_set.py``).

Files are written to a staging directory and moved into ``out_dir`` only when everything passed
(:class:`ArtifactDir`, ``staging.py``).
"""
from fxtrt.artifacts.base import Artifact
from fxtrt.artifacts.bucket_set import BucketSet
from fxtrt.artifacts.engine_set import EngineSet
from fxtrt.artifacts.fp16_model import Fp16Model
from fxtrt.artifacts.onnx_model import OnnxModel
from fxtrt.artifacts.staging import REPORT_FILE, ArtifactDir

__all__ = ["Artifact", "ArtifactDir", "BucketSet", "EngineSet", "Fp16Model", "OnnxModel", "REPORT_FILE"]
