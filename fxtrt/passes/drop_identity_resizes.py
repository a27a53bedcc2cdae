"""Drop resizes to the size their input already has: they return the input, value for value.

timm resamples a position embedding to the feature grid with ``F.interpolate(..., mode="bicubic",
antialias=True)``, and skips it in eager when the sizes already agree, but not while exporting
(``timm.layers.resample_abs_pos_embed_nhwc``: ``if not is_exporting() and ...``). The graph then
holds a resize from 64x64 to 64x64, which ONNX needs opset 18 to express with antialias (timm's
SAM ViT failed to emit at opset 17) and which ONNX Runtime still computes. At scale 1 every
nearest, bilinear and bicubic kernel, antialiased or not, weighs the source pixel by exactly 1
and its neighbours by exactly 0, so the resize is the identity and is removed.

Before:  up = _upsample_bicubic2d_aa.default(pos, [64, 64], False)   # pos: [1, 768, 64, 64]
After:   (removed; its users read pos)

Left alone: a resize whose output size differs, may differ (a symbolic size other than the
input's), or that is given a scale factor other than 1 (the scale, not the size, then places
the samples).
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass, same_size, tensor_value

aten = torch.ops.aten
RESIZES = frozenset(
    getattr(getattr(aten, op), overload)
    for op in ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
               "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
               "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")
    for overload in ("default", "vec") if hasattr(getattr(aten, op), overload)
)


def _unit_scales(args: tuple) -> bool:
    """Every scale given (a float, or a list of them) is 1; align_corners (a bool) does not matter."""
    for a in args:
        if isinstance(a, bool) or a is None:
            continue
        scales = a if isinstance(a, (list, tuple)) else [a]
        if not all(isinstance(s, (int, float)) and float(s) == 1.0 for s in scales):
            return False
    return True


@graph_pass(requires=("generalize_batch",))
def drop_identity_resizes(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in RESIZES:
            continue
        src, out = tensor_value(node.args[0]), tensor_value(node)
        if src is None or out is None or src.dim() != out.dim() or src.dtype != out.dtype:
            continue
        if not all(same_size(a, b) for a, b in zip(src.shape, out.shape)) or not _unit_scales(node.args[2:]):
            continue
        changes.append(change(node, call_text(node), node.args[0].name,
                              "a resize to the size its input has is the identity"))
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
    return PassResult(gm, changes)
