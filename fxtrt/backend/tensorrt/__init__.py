"""Plan TensorRT engines for a dynamic ONNX model, build them with Polygraphy, and write a
portable ``build_engines.sh`` for machines where fxtrt cannot build them itself.

Precision: every network is parsed *strongly typed*, so the engine computes in exactly the
types the ONNX graph declares (``backend/fp16`` puts fp16 into the graph). TensorRT 11 has no
precision flags at all, and on TensorRT 10 strong typing gives the same engine, so no fp16
flag is ever set, in Python or on the command line. ``STRONGLY_TYPED`` / ``--stronglyTyped``
are required for this on 10.x and accepted (ignored, always on) by 11.x.

Shapes: one dynamic dim gives one engine with one optimization profile. With more than one,
TensorRT optimises for the whole box of shapes and gets slower (the seed measured 9 ms with
batch and length both dynamic against 4.6 ms with batch fixed), so one dim stays dynamic
(``keep_dynamic``, the batch by default) and every other one is discretised: one engine per
value, each with that dim fixed. :func:`default_split_values` says which values.

Nothing here imports ``tensorrt`` until an engine is actually built: Polygraphy's loaders are
lazy callables, and :func:`tensorrt_status` is the only place that tries the import on purpose.

The package follows the seams, laid out as Polygraphy's backends are: :mod:`.specs` (what a plan
is made of), :mod:`.plan` (which engines, for which shapes) and the checks it runs (:mod:`.checks`),
:mod:`.script` (``build_engines.sh``, written and read back), :mod:`.loader` (building engines
with Polygraphy's lazy loaders) and :mod:`.runner` (running them), the last two only where
TensorRT and a GPU are usable.

Example::

    plan = plan_engines(Path("out/model.onnx"),
                        [TensorSpec("x", ("batch", "T", 80), "float32")],
                        {"batch": (1, 8, 32), "T": (20, 1000, 2000)})
    write_build_script(plan, Path("out"))          # always possible
    ok, why = tensorrt_status()
    if ok:
        build_engines(plan, Path("out"))           # needs TensorRT and a GPU
"""
from fxtrt.backend.tensorrt.loader import EngineLoaders, build_engines, engine_loaders, polygraphy_loaders, polygraphy_profile, tensorrt_status
from fxtrt.backend.tensorrt.plan import default_split_values, plan_buckets, plan_engines
from fxtrt.backend.tensorrt.runner import engine_loader, trt_runner
from fxtrt.backend.tensorrt.script import (
    BuildCommand,
    parse_build_script,
    polygraphy_argv,
    trtexec_argv,
    write_build_script,
)
from fxtrt.backend.tensorrt.specs import (
    BUILD_SCRIPT_NAME,
    ENGINE_SUFFIX,
    PARTIAL_SUFFIX,
    TIMING_CACHE_NAME,
    EnginePlan,
    EngineSpec,
    InputProfile,
    TensorSpec,
)

__all__ = [
    "BUILD_SCRIPT_NAME", "ENGINE_SUFFIX", "PARTIAL_SUFFIX", "TIMING_CACHE_NAME", "BuildCommand", "EngineLoaders",
    "EnginePlan", "EngineSpec", "engine_loader", "engine_loaders", "InputProfile", "TensorSpec", "build_engines", "default_split_values", "parse_build_script",
    "plan_buckets", "plan_engines", "polygraphy_argv", "polygraphy_loaders", "polygraphy_profile",
    "tensorrt_status", "trt_runner", "trtexec_argv", "write_build_script",
]
