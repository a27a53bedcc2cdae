"""Issue 16, defects 1-3 and the 0-d output: the promise at the edges, as held-out models found it.

Each test failed at 371e385: ``forward(*args)`` models were refused at capture, a model compiled
straight from its constructor was left broken, H and W declared with one range were one symbol
(so ``compiled(x)`` at H != W was silently wrong), nothing stopped a call outside the claims, and
a 0-d output came back with shape ``(1,)``.
"""
from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch
import torch.nn.functional as F

import fxtrt


def _close(got, want):
    torch.testing.assert_close(torch.as_tensor(got).double(), torch.as_tensor(want).double(), atol=1e-4, rtol=1e-3)


def _eager(model, *inputs, **kwargs):
    with torch.no_grad():
        return model(*inputs, **kwargs)


# -- defect 1: forward(*args) -------------------------------------------------------------------

class Star(torch.nn.Module):
    def forward(self, *a):
        return a[0] * 2 + a[1].float().sum(-1, keepdim=True)


class StarOne(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 4)

    def forward(self, *inputs):
        return self.lin(inputs[0]).relu()


class StarKw(torch.nn.Module):
    def forward(self, x, *rest, scale=2.0, **kwargs):
        return x * scale + rest[0]


class KwOnly(torch.nn.Module):
    def forward(self, x, y, *, alpha: float = 0.5, beta: float = 1.0):
        return x * alpha + y * beta


class PosOnly(torch.nn.Module):
    def forward(self, x, y, /):
        return x @ y.transpose(-1, -2)


def test_forward_star_args_with_several_inputs_and_independent_dims(tmp_path):
    model = Star().eval()
    c = fxtrt.compile(model, (torch.randn(1, 16), torch.ones(1, 16, dtype=torch.int64)), batch=(1, 4, 8),
                      dynamic={0: {1: (4, 16, 64)}, 1: {1: (4, 16, 64)}}, out_dir=tmp_path / "o")
    x, m = torch.randn(3, 37), torch.ones(3, 37, dtype=torch.int64)
    _close(c(x, m), _eager(model, x, m))
    with pytest.raises(fxtrt.ConfigError, match="outside the claimed range"):
        c(torch.randn(9, 16), torch.ones(9, 16, dtype=torch.int64))


@pytest.mark.parametrize("model, example, call", [
    (StarOne(), (torch.randn(1, 16),), (torch.randn(5, 16),)),
    (StarKw(), (torch.randn(1, 8), torch.randn(1, 8)), (torch.randn(6, 8), torch.randn(6, 8))),
    (KwOnly(), (torch.randn(1, 8), torch.randn(1, 8)), (torch.randn(7, 8), torch.randn(7, 8))),
    (PosOnly(), (torch.randn(1, 4, 8), torch.randn(1, 4, 8)), (torch.randn(3, 4, 8), torch.randn(3, 4, 8))),
], ids=["one_star_input", "star_plus_kwargs", "keyword_only_defaults", "positional_only"])
def test_signatures_compile_from_batch_1_and_match_at_other_sizes(model, example, call):
    model = model.eval()
    c = fxtrt.compile(model, example, batch=(1, 4, 8))
    _close(c(*call), _eager(model, *call))


# -- defect 2: compile leaves a never-called model as it found it -------------------------------

class Logits(torch.nn.Module):
    """The usual wrapper: ``forward(*args)`` that picks one output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args).logits


def _segformer():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=32, num_labels=4)
    torch.manual_seed(0)
    return transformers.SegformerForSemanticSegmentation(cfg).eval()


def test_segformer_straight_from_its_constructor_is_compiled_and_left_intact(tmp_path):
    model = _segformer()  # never called before compile
    twin = copy.deepcopy(model)
    hooks_before = {n: dict(m._forward_hooks) for n, m in model.named_modules()}
    c = fxtrt.compile(Logits(model), torch.randn(1, 3, 64, 64), batch=(1, 2, 4),
                      dynamic={0: {2: (32, 64, 96), 3: (32, 64, 96)}}, out_dir=tmp_path / "o")
    assert {n: dict(m._forward_hooks) for n, m in model.named_modules()} == hooks_before
    assert not hasattr(model, "_output_capturing_hooks_installed") or hasattr(twin, "_output_capturing_hooks_installed")
    for shape in [(1, 3, 32, 96), (3, 3, 64, 64), (2, 3, 96, 48)]:  # H != W and sizes compile did not pick
        x = torch.randn(*shape)
        want = _eager(twin, x).logits
        _close(_eager(model, x).logits, want)  # the user's model still works, as before
        _close(c(x), want)


def test_restore_keeps_hook_tables_and_handles_the_user_holds():
    model = _segformer()
    calls = []
    handle = model.segformer.register_forward_hook(lambda *a: calls.append(1))
    from fxtrt.frontend.state import ModuleState

    table = model.segformer._forward_hooks
    with ModuleState(model):
        _eager(model, torch.randn(1, 3, 32, 32))
    assert model.segformer._forward_hooks is table, "the module keeps its own hook table"
    handle.remove()  # a handle taken before compile still removes its hook
    _eager(model, torch.randn(1, 3, 32, 32))
    assert calls == [1]


# -- defect 3: independent dims, and serving only what was claimed ------------------------------

class Swap(torch.nn.Module):
    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        return F.interpolate(x, size=(w, h), mode="nearest") * 2


def test_dims_declared_with_equal_ranges_are_independent(tmp_path):
    model = Swap().eval()
    c = fxtrt.compile(model, torch.randn(1, 3, 32, 32), batch=(1, 4, 8),
                      dynamic={0: {2: (16, 32, 64), 3: (16, 32, 64)}}, out_dir=tmp_path / "o")
    x = torch.randn(2, 3, 16, 48)
    assert tuple(c(x).shape) == (2, 3, 48, 16)
    _close(c(x), _eager(model, x))
    names = [d["name"] for d in c.report.settings["dims"]]
    assert names == ["batch", "x_dim2", "x_dim3"], "default names say the input and the axis"
    graph_input = onnx.load(str(c.onnx_path)).graph.input[0]
    assert [d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch", "", "x_dim2", "x_dim3"]
    verified = {(r.sizes["x_dim2"], r.sizes["x_dim3"]) for r in c.report.verification}
    assert any(h != w for h, w in verified), "verification checks H != W"


def test_one_name_is_one_size_and_the_model_proves_equalities_itself(tmp_path):
    class Speech(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(80, 8)

        def forward(self, x, mask):
            return self.proj(x) * mask.transpose(1, 2)

    model = Speech().eval()
    c = fxtrt.compile(model, (torch.randn(1, 50, 80), torch.ones(1, 1, 50)), batch=(1, 2, 4),
                      dynamic={0: {1: (20, 50, 100)}, 1: {2: (20, 50, 100)}}, out_dir=tmp_path / "o")
    (t,) = [d for d in c.report.settings["dims"] if d["name"] != "batch"]
    assert t["name"] == "x_dim1" and sorted(map(tuple, t["sites"])) == [(0, 1), (1, 2)]
    assert any("proves" in n for n in c.report.notes)
    x, mask = torch.randn(3, 77, 80), torch.ones(3, 1, 77)
    _close(c(x, mask), _eager(model, x, mask))
    with pytest.raises(fxtrt.ConfigError, match="dim 'x_dim1'"):
        c(torch.randn(3, 40, 80), torch.ones(3, 1, 41))


def test_calls_outside_the_claims_are_config_errors_naming_input_axis_size_and_claim(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    c = fxtrt.compile(model, torch.randn(1, 3, 32, 32), batch=(1, 4, 8),
                      dynamic={0: {2: ("side", 16, 32, 64, 16), 3: ("side", 16, 32, 64, 16)}}, out_dir=tmp_path / "o")
    x = torch.randn(5, 3, 48, 48)
    _close(c(x), _eager(model, x))
    cases = {
        (9, 3, 32, 32): r"input 'input' axis 0 \(dim 'batch'\) is 9, outside the claimed range 1\.\.8",
        (2, 3, 24, 24): r"axis 2 \(dim 'side'\) is 24, not a multiple of the claimed step 16",
        (2, 3, 80, 80): r"is 80, outside the claimed range 16\.\.64",
        (2, 3, 16, 48): r"axis 2 is 16 but input 'input' axis 3 is 48: both are dim 'side'",
        (2, 4, 32, 32): r"axis 1 is 4; the compiled model is static there \(3\)",
    }
    for shape, message in cases.items():
        with pytest.raises(fxtrt.ConfigError, match=message):
            c(torch.randn(*shape))
        with pytest.raises(fxtrt.ConfigError):
            c.run(torch.randn(*shape).numpy())


def test_the_onnx_file_records_its_claims(tmp_path):
    model = torch.nn.Linear(8, 2).eval()
    c = fxtrt.compile(model, torch.randn(1, 5, 8), batch=(1, 4, 8), dynamic={0: {1: (2, 5, 9, 1)}},
                      out_dir=tmp_path / "o")
    props = {p.key: p.value for p in onnx.load(str(c.onnx_path)).metadata_props}
    dims = json.loads(props["fxtrt.dims"])
    assert dims == [{"name": "batch", "min": 1, "opt": 4, "max": 8, "step": None, "sites": [["input", 0]]},
                    {"name": "input_dim1", "min": 2, "opt": 5, "max": 9, "step": None, "sites": [["input", 1]]}]


def test_a_0d_output_keeps_its_shape():
    class Total(torch.nn.Module):
        def forward(self, x):
            return x.sum()

    c = fxtrt.compile(Total().eval(), torch.randn(1, 3), batch=(1, 4, 8))
    assert c(torch.randn(2, 3)).shape == torch.Size([])


@pytest.mark.slow
def test_a_packaged_model_as_held_out_checks_try_it(tmp_path):
    """torchvision, from its constructor, behind forward(*args) picking one output, H and W declared
    independently, checked at sizes compile did not pick, unchanged after compile, and refused at
    sizes it did not claim."""
    torchvision = pytest.importorskip("torchvision")

    class Pick(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(*args)["out"]

    torch.manual_seed(0)
    seg = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=3).eval()
    twin = copy.deepcopy(seg)
    c = fxtrt.compile(Pick(seg), torch.randn(1, 3, 64, 64), batch=(1, 2, 3),
                      dynamic={0: {2: (64, 64, 96, 32), 3: (64, 64, 96, 32)}}, out_dir=tmp_path / "o")
    for shape in [(3, 3, 64, 96), (2, 3, 96, 64)]:
        x = torch.randn(*shape)
        want = _eager(twin, x)["out"]
        _close(_eager(seg, x)["out"], want)
        _close(c(x), want)
    for shape in [(4, 3, 64, 64), (1, 3, 64, 80), (1, 3, 128, 64)]:
        with pytest.raises(fxtrt.ConfigError):
            c(torch.randn(*shape))


# -- defect 8: save and load ---------------------------------------------------------------------

def test_save_and_load_serve_without_the_torch_model_and_keep_the_claims(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    c = fxtrt.compile(model, torch.randn(1, 3, 32, 32), batch=(1, 4, 8),
                      dynamic={0: {2: (16, 32, 64), 3: (16, 32, 64)}}, out_dir=tmp_path / "out")
    saved = c.save(tmp_path / "deploy")
    assert sorted(p.name for p in saved.iterdir()) == ["model.onnx", "report.json"]
    served = fxtrt.load(saved)
    x = torch.randn(3, 3, 20, 40)
    _close(served(x), _eager(model, x))
    assert served.input_names == c.input_names and served.output_names == c.output_names
    with pytest.raises(fxtrt.ConfigError, match="outside the claimed range 1..8"):
        served(torch.randn(9, 3, 32, 32))


def test_load_serves_a_bucket_set_with_its_chunked_claim(tmp_path):
    model = torch.nn.Linear(4, 2).eval()
    fxtrt.compile(model, torch.randn(1, 4), buckets=(1, 4), out_dir=tmp_path / "out")
    served = fxtrt.load(tmp_path / "out")
    (batch,) = served.claims.dims
    assert batch.max is None and "chunks" in batch.note
    x = torch.randn(6, 4)
    _close(served(x), _eager(model, x))


def test_load_opens_only_plain_files_inside_the_directory(tmp_path):
    model = torch.nn.Linear(4, 2).eval()
    out = tmp_path / "out"
    fxtrt.compile(model, torch.randn(1, 4), batch=(1, 2, 4), out_dir=out)
    report = json.loads((out / "report.json").read_text())
    report["stages"]["serving"]["model"] = "../elsewhere.onnx"
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(fxtrt.ConfigError, match="plain file names"):
        fxtrt.load(out)


def test_load_refuses_external_data_outside_the_directory(tmp_path):
    model = torch.nn.Linear(64, 64).eval()
    out = tmp_path / "out"
    fxtrt.compile(model, torch.randn(1, 64), batch=(1, 2, 4), out_dir=out)
    from onnx.external_data_helper import set_external_data

    proto = onnx.load(str(out / "model.onnx"))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "outside.data").write_bytes(tensor.raw_data)
    set_external_data(tensor, location="../outside.data", length=len(tensor.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    (out / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(fxtrt.ConfigError, match="outside"):
        fxtrt.load(out)


def test_a_dim_the_model_cannot_vary_is_a_config_error_with_the_range_that_works(capfd):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    with pytest.raises(fxtrt.ConfigError, match=r"dynamic dim 'input_dim1' works only for 8\.\.8 .* at input_dim1=(4|12)") as info:
        fxtrt.compile(model, torch.randn(1, 8), batch=(1, 4, 8), dynamic={0: {1: (4, 8, 16)}})
    assert "leave it out of the dynamic dims" in info.value.hint
    assert "VR[" not in capfd.readouterr().err, "no torch logging on the terminal"
