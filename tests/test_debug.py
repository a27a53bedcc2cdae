import json

import pytest
import torch

import fxtrt
from fxtrt.passes.infra import change
from tests import seed_models as sm


def test_dumps_show_each_pass_and_the_rewrite(tmp_path):
    debug = tmp_path / "debug"
    fxtrt.compile(sm.IntSizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 4, 8), debug_dir=debug)
    steps = sorted(p.name for p in debug.iterdir())
    step = {name: f"{i:02d}_{name}" for i, name in enumerate(fxtrt.passes.REGISTRY, start=1)}
    assert steps == ["00_captured", *step.values()], "one dump per registered pass, in the registry's order"
    for dump in steps:
        assert {p.name for p in (debug / dump).iterdir()} == {"graph.py", "nodes.txt", "diff.patch", "changes.json"}
    diff = (debug / step["generalize_batch"] / "diff.patch").read_text()
    assert "-    view = torch.ops.aten.view.default(relu, [2, -1])" in diff
    assert "+    view = torch.ops.aten.view.default(relu, [sym_size_int, -1])" in diff
    assert "view.default(relu, [-1, 392])" in (debug / step["canonicalize_flatten"] / "graph.py").read_text()
    changes = json.loads((debug / step["generalize_batch"] / "changes.json").read_text())
    assert changes[0]["source"].endswith(f"seed_models.py:{sm.line_of(sm.IntSizeView, 'int-view')}")
    nodes = (debug / step["generalize_batch"] / "nodes.txt").read_text()
    assert "sym_size_int" in nodes and f"seed_models.py:{sm.line_of(sm.IntSizeView, 'int-view')}" in nodes


def swap_relu_for_sigmoid(gm, ctx):
    """A deliberately wrong user pass."""
    changes = []
    for node in gm.graph.nodes:
        if node.target == torch.ops.aten.relu.default:
            node.target = torch.ops.aten.sigmoid.default
            changes.append(change(node, "relu", "sigmoid"))
    gm.recompile()
    return fxtrt.PassResult(gm, changes)


def test_broken_user_pass_is_caught_and_named(tmp_path):
    with pytest.raises(fxtrt.PassError) as info:
        fxtrt.compile(sm.IntSizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 4, 8),
                      debug_dir=tmp_path / "debug", passes=["canonicalize_flatten", swap_relu_for_sigmoid],
                      out_dir=tmp_path / "out")
    err = info.value
    assert "pass swap_relu_for_sigmoid broke the model" in str(err)
    assert err.node == "relu" and err.source.endswith(f"seed_models.py:{sm.line_of(sm.IntSizeView, 'int-view') - 1}")
    assert "canonicalize_flatten" in err.hint
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "debug" / "06_swap_relu_for_sigmoid" / "diff.patch").read_text().count("sigmoid") >= 1


def test_without_debug_dir_the_broken_pass_fails_verification():
    with pytest.raises(fxtrt.VerificationError, match="the graph torch.export captured matches the model, and after the passes it does not"):
        fxtrt.compile(sm.IntSizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 4, 8),
                      passes=[swap_relu_for_sigmoid])


def test_user_pass_that_returns_the_wrong_type_is_named():
    def bad(gm, ctx):
        return gm

    with pytest.raises(fxtrt.PassError, match="pass bad returned GraphModule"):
        fxtrt.compile(sm.SizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 4, 8), passes=[bad])


def test_cli_lists_passes_in_order():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fxtrt", "passes"], capture_output=True, text=True, timeout=120)
    names = [line.split(". ", 1)[1].split(" ")[0].rstrip(":") for line in out.stdout.splitlines()]
    assert names == list(fxtrt.passes.REGISTRY)
