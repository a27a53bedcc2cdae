"""Make traces at different sizes comparable node by node before generalize_batch diffs them.

Traced at concrete sizes, torch drops slices that happen to be no-ops: ``y[:, :s]`` of a ``y``
that is ``s`` long becomes ``alias(y)`` at that size and stays ``slice(y, 1, 0, s)`` at the
others (``x[:, ::2].repeat_interleave(2, 1)[:, :x.size(1)]`` at even and odd lengths). The
graphs compute the same thing, but differ in structure. Where one trace has ``alias`` and
another a plain slice (start 0, step 1) at the same position, the alias is written as the
full slice it stands for, so the end literal (8 at 8, 9 at 9) is fitted like any other.

Before / after, at seq = 8 (the other trace has ``slice(t, 1, 0, 9)`` there)::

    y = aten.alias.default(t)              # t: [2, 8, 8]
    y = aten.slice.Tensor(t, 1, 0, 8)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx

aten = torch.ops.aten


def _is_plain_slice(node: torch.fx.Node) -> bool:
    args = list(node.args) + [None] * (5 - len(node.args))
    return node.target == aten.slice.Tensor and args[2] in (0, None) and args[4] in (1, None) and \
        isinstance(args[1] if args[1] is not None else 0, int)


def align_noop_slices(traces: Sequence[Sequence[torch.fx.Node]], dry_run: bool = False) -> int:
    """Rewrite, in place, each ``alias`` that sits where another trace has a plain slice as that
    full slice; the number rewritten (with ``dry_run``, the number it would rewrite, touching
    nothing: the caller copies the traces first). ``traces``: each trace's compute nodes, in order."""
    rewritten = 0
    for column in zip(*traces):
        targets = {n.target for n in column if n.op == "call_function"}
        if targets != {aten.alias.default, aten.slice.Tensor}:
            continue
        ref = next((n for n in column if n.target == aten.slice.Tensor), None)
        if ref is None or not _is_plain_slice(ref):
            continue
        dim = ref.args[1] if len(ref.args) > 1 and ref.args[1] is not None else 0
        for node in column:
            if node.target != aten.alias.default:
                continue
            source = node.args[0]
            val = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
            if not isinstance(val, torch.Tensor) or not isinstance(val.shape[dim], int):
                continue
            rewritten += 1
            if dry_run:
                continue
            graph = node.graph
            with graph.inserting_after(node):
                full = graph.call_function(aten.slice.Tensor, (source, dim, 0, int(val.shape[dim])))
            full.meta = dict(node.meta)
            node.replace_all_uses_with(full)
            graph.erase_node(node)
    return rewritten
