"""``chunk`` and ``split`` along a dynamic dim, written so that torch.export keeps the dim symbolic.

``x.chunk(3, dim=1)`` over a length ``n`` makes pieces of ``ceil(n / 3)`` and a remainder, and
how many pieces there are depends on ``n`` too (``ceil(n / ceil(n / 3))``). torch.export cannot
prove that number constant over a range, so it specialises the dim to the traced size, and the
literal piece sizes that follow it (3, 4, 5 at 9, 12, 15) fit no ``a*n + c``.

While capture traces the model, :class:`SymbolicChunks` (a ``TorchFunctionMode``) counts the
pieces at every size the dim can take. Where the count is the same everywhere it writes the call
as that many ``narrow``s whose starts and lengths are expressions of ``n``: one symbolic graph,
one ONNX ``Slice`` per piece. Where the count changes inside the range, the model returns a
different number of tensors at different sizes, which one graph cannot do: a StructureError at
the user's line. A static dim, or a ``split`` by a list of sizes, is left to torch.

Example::

    a, b, c = x.chunk(3, dim=1)     # x: [B, n, 4], n in 9..30: three pieces at every n
    # traced as narrow(x, 1, 0, (n+2)//3), narrow(x, 1, (n+2)//3, (n+2)//3),
    #           narrow(x, 1, 2*((n+2)//3), n - 2*((n+2)//3))
"""
from __future__ import annotations

import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from fxtrt.errors import StructureError
from fxtrt.frontend.source import location_of_frames

_CHUNKS = (torch.chunk, torch.Tensor.chunk)
_SPLITS = (torch.split, torch.Tensor.split)
MAX_SIZES = 1 << 16  # sizes counted one by one; a wider range is left to torch


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _size_range(n: torch.SymInt) -> tuple[int, int] | None:
    try:
        r = n.node.shape_env.bound_sympy(n.node.expr)
        lo, hi = int(r.lower), int(r.upper)
    except Exception:  # unbounded or not an integer range
        return None
    return (lo, hi) if 0 <= lo <= hi and hi - lo <= MAX_SIZES else None


class SymbolicChunks(TorchFunctionMode):
    """Rewrites chunk/split of a symbolic dim into a constant number of symbolic narrows."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CHUNKS or func in _SPLITS:
            pieces = self._pieces(func, args, kwargs)
            if pieces is not None:
                return pieces
        return func(*args, **kwargs)

    def _pieces(self, func: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...] | None:
        x = _arg(args, kwargs, 0, "input", None)
        if not isinstance(x, torch.Tensor):
            return None
        if func in _CHUNKS:
            k = _arg(args, kwargs, 1, "chunks", None)
            dim = _arg(args, kwargs, 2, "dim", 0)
        else:
            k = _arg(args, kwargs, 1, "split_size_or_sections", _arg(args, kwargs, 1, "split_size", None))
            dim = _arg(args, kwargs, 2, "dim", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or not isinstance(dim, int):
            return None
        dim = dim % x.dim()
        n = x.shape[dim]
        if not isinstance(n, torch.SymInt):
            return None
        span = _size_range(n)
        if span is None:
            return None

        def count(v: int) -> int:  # pieces at length v, as torch makes them
            size = -(-v // k) if func in _CHUNKS else k
            return max(1, -(-v // size)) if v else 1

        counts = {count(v) for v in range(max(span[0], 1), span[1] + 1)}
        if len(counts) != 1:
            where = location_of_frames([(f.filename, f.lineno) for f in traceback.extract_stack()])
            what = f"chunk({k})" if func in _CHUNKS else f"split({k})"
            raise StructureError(
                f"{what} along a dynamic dim gives {min(counts)} to {max(counts)} tensors over its sizes "
                f"{span[0]}..{span[1]}: the number of outputs would change with the size, which one graph cannot do",
                source=str(where) if where else None,
                hint="narrow the dim's range to sizes with one number of pieces, or split into a fixed number of "
                     "pieces with explicit sizes")
        pieces = counts.pop()
        size = (n + k - 1) // k if func in _CHUNKS else k
        out = [x.narrow(dim, i * size, size) for i in range(pieces - 1)]
        out.append(x.narrow(dim, (pieces - 1) * size, n - (pieces - 1) * size))
        return tuple(out)
