"""chunk / split along a dynamic dim (issue 17, class 4): one symbolic graph where the number of
pieces is the same at every size, a StructureError at the line where it is not."""
from __future__ import annotations

import onnx
import pytest
import torch

import fxtrt


class ChunkThree(torch.nn.Module):
    def forward(self, x):
        a, b, c = x.chunk(3, dim=1)
        return a.sum(1) + b.sum(1) * 2 + c.mean(1) * 3


class SplitFour(torch.nn.Module):
    def forward(self, x):
        head, tail = torch.split(x, 4, dim=-1)  # x: [B, C, n], n in 5..8: always two pieces
        return head.sum(-1) - tail.sum(-1)


class SplitMany(torch.nn.Module):
    def forward(self, x):
        parts = x.split(4, dim=1)  # SPLIT
        return torch.stack([p.sum(1) for p in parts], 0).sum(0)


@pytest.mark.parametrize("model, example, dynamic, sizes", [
    (ChunkThree(), torch.randn(1, 12, 4), {0: {1: (9, 12, 30)}}, (9, 10, 11, 19, 30)),
    (SplitFour(), torch.randn(1, 3, 6), {0: {2: (5, 6, 8)}}, (5, 7, 8)),
], ids=["chunk3", "split4"])
def test_a_constant_number_of_pieces_stays_symbolic(model, example, dynamic, sizes, tmp_path):
    model = model.eval()
    c = fxtrt.compile(model, example, batch=(1, 4, 8), dynamic=dynamic, out_dir=tmp_path / "o")
    (i, axes), = dynamic.items()
    (axis, _), = axes.items()
    assert all(d["how"] == "symbolic from capture" for d in c.report.stages["capture"]["dims"].values())
    assert "Slice" in {n.op_type for n in onnx.load(str(c.onnx_path)).graph.node}
    for batch in (1, 3, 8):
        for n in sizes:
            shape = list(example.shape)
            shape[0], shape[axis] = batch, n
            x = torch.randn(*shape)
            torch.testing.assert_close(c(x), model(x), atol=1e-4, rtol=1e-3)


def test_a_number_of_pieces_that_changes_is_a_structure_error_at_its_line():
    with pytest.raises(fxtrt.StructureError, match=r"split\(4\) along a dynamic dim gives 2 to 8 tensors") as info:
        fxtrt.compile(SplitMany().eval(), torch.randn(1, 12, 4), batch=None, dynamic={0: {1: (5, 12, 30)}})
    import inspect

    lines, start = inspect.getsourcelines(SplitMany)
    line = start + next(i for i, t in enumerate(lines) if "# SPLIT" in t)
    assert info.value.source == f"{__file__}:{line}"


def test_a_chunk_of_a_static_dim_is_left_to_torch():
    class Glu(torch.nn.Module):
        def forward(self, x):
            a, b = x.chunk(2, dim=-1)
            return a * torch.sigmoid(b)

    model = Glu().eval()
    c = fxtrt.compile(model, torch.randn(1, 5, 8), batch=(1, 4, 8), dynamic={0: {1: (2, 5, 9)}})
    x = torch.randn(3, 7, 8)
    torch.testing.assert_close(c(x), model(x), atol=1e-5, rtol=1e-4)
