"""Adaptive average pooling over a dynamic size, as the pooling matrix of each size.

``nn.AdaptiveAvgPool2d((6, 6))`` (torchvision's AlexNet and VGG, PSP-style pyramids) averages
output cell ``i`` over input rows ``floor(i*n/m)`` to ``ceil((i+1)*n/m)``. ONNX has no adaptive
pool: torch's decomposition turns it into ``AveragePool`` with the kernel and stride of the traced
size (``n/m`` when it divides), so at another size the file pools with the wrong window, and is
LOUD (AlexNet's classifier gets 4096 features, not 9216) or silently wrong (a pool before a
global one). Each pooled axis becomes a product with the ``m x n`` averaging matrix, built from
the size at run time; the sums are plain dot products, like PyTorch's own.

Before:  pool = adaptive_avg_pool2d(x, [6, 6])              # x: [s0, 256, s1, s1]
After:   i = arange(6); j = arange(s1)
         start = (i * s1) // 6;  end = (i * s1 + s1 + 5) // 6
         P = ((j >= start[:, None]) & (j < end[:, None])) / (end - start)[:, None]    # [6, s1]
         pool = matmul(P, matmul(x, P.T))                    # [s0, 256, 6, 6]

Left alone: pooling whose spatial sizes are all static (torch's kernel is right at the one size
there is), and pooling to 1 (a mean, which torch emits as one).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx

from fxtrt.passes.infra import NodeBuilder, PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten
POOLS = {aten.adaptive_avg_pool2d.default: 2, aten._adaptive_avg_pool2d.default: 2,
         aten.adaptive_avg_pool1d.default: 1}


class _Builder(NodeBuilder):
    """:class:`NodeBuilder` with the averaging matrix of one axis."""

    def averaging(self, x: torch.fx.Node, axis: int, size: Any, out: int, dtype: torch.dtype) -> torch.fx.Node:
        """The ``out x size`` matrix whose row ``i`` averages PyTorch's window ``i`` of the axis."""
        n = self(aten.sym_size.int, x, axis) if isinstance(size, torch.SymInt) else int(size)
        n_t = self(aten.scalar_tensor.default, n, dtype=torch.int64)
        rows = self(aten.arange.start_step, 0, out, 1, dtype=torch.int64)
        cols = self(aten.unsqueeze.default, self(aten.arange.start_step, 0, n, 1, dtype=torch.int64), 0)
        scaled = self(aten.mul.Tensor, rows, n_t)
        start = self(aten.div.Tensor_mode, scaled, out, rounding_mode="floor")
        end = self(aten.div.Tensor_mode, self(aten.add.Tensor, scaled, self(aten.add.Tensor, n_t, out - 1)), out,
                   rounding_mode="floor")
        inside = self(aten.logical_and.default, self(aten.ge.Tensor, cols, self(aten.unsqueeze.default, start, 1)),
                      self(aten.lt.Tensor, cols, self(aten.unsqueeze.default, end, 1)))
        count = self(aten.unsqueeze.default, self(aten._to_copy.default, self(aten.sub.Tensor, end, start),
                                                  dtype=dtype), 1)
        return self(aten.div.Tensor, self(aten._to_copy.default, inside, dtype=dtype), count)


@graph_pass(requires=("generalize_batch",))
def dynamic_adaptive_pool(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target in POOLS]:
        x, sizes = node.args[0], list(node.args[1])
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        k = POOLS[node.target]
        if val is None or not hasattr(val, "fake_mode") or len(sizes) != k or not val.is_floating_point():
            continue
        spatial = list(val.shape[-k:])
        if not any(isinstance(s, torch.SymInt) for s in spatial) or all(m == 1 for m in sizes):
            continue
        before = call_text(node)
        add = _Builder(graph, node, val.fake_mode)
        with graph.inserting_before(node):
            w = add.averaging(x, val.dim() - 1, spatial[-1], int(sizes[-1]), val.dtype)
            out = add(aten.matmul.default, x, add(aten.t.default, w))
            if k == 2:
                out = add(aten.matmul.default, add.averaging(x, val.dim() - 2, spatial[0], int(sizes[0]), val.dtype),
                          out)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changes.append(change(out, before, f"a product with the averaging matrix of each of {k} axis(es)",
                              "torch's decomposition bakes the traced size's pooling window into AveragePool"))
    return PassResult(gm, changes)
