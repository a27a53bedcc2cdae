"""What an FX graph computes, for the passes, the debugger and the backend alike.

The backend takes a finished graph and never imports the passes; helpers that both sides read a
GraphModule with live here instead.

Example::

    values = node_values(gm, (torch.randn(2, 8),))
    values["view"].shape   # the tensor the FX node ``view`` computed
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx

aten = torch.ops.aten
# A tensor read as a Python number: the value the graph depends on (passes fold, rewrite or refuse it).
SCALAR_READS = frozenset({aten._local_scalar_dense.default, aten.item.default})
# Reshapes of a tensor to a size list: the op sets every pass that rewrites a view reads.
RESHAPES = frozenset({aten.view.default, aten.reshape.default, aten._unsafe_view.default})


def node_values(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor a GraphModule computes on ``inputs``, by node name (for divergence searches)."""
    values: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.detach()
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return values
