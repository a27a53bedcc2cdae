"""fxtrt.passes.evaluate: a node's value from the constants its cone reads, on the real weights."""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.evaluate import cone, evaluate


def _graph():
    """``x * (scale.sum() + arange(3).sum())`` with ``scale`` a buffer of the module."""
    root = torch.nn.Module()
    root.register_buffer("scale", torch.tensor([2.0, 3.0]))
    g = torch.fx.Graph()
    x = g.placeholder("x")
    total = g.call_function(torch.add, (g.call_function(torch.sum, (g.get_attr("scale"),)),
                                        g.call_function(torch.sum, (g.call_function(torch.arange, (3,)),))))
    g.output(g.call_function(torch.mul, (x, total)))
    return torch.fx.GraphModule(root, g), total


def test_a_constant_cone_is_evaluated_on_the_modules_weights_and_inputs_are_not_in_it():
    gm, total = _graph()
    assert {n.op for n in cone(total)} == {"get_attr", "call_function"} and len(cone(total)) == 5
    assert float(evaluate(gm, total)) == 8.0
    gm.scale.fill_(1.0)  # the weights as they are now
    assert float(evaluate(gm, total)) == 5.0
