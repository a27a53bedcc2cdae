"""The rewritten graph back as an ExportedProgram, for emission.

A graph from a symbolic capture is turned back into an ExportedProgram as it is (weights lifted to
inputs, the capture's symbols and ranges kept), with no second torch.export. A graph whose baked
dims were generalised computes those sizes from ``sym_size`` of its inputs, so torch.export over
the traced ranges captures it symbolically, and its deferred asserts are checked over them: a dim
that still got specialised means a size was baked in, and is an error here rather than a silently
static model. This is frontend work (torch.export and its asserts); emission only translates.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Mapping, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.compare import onnx_input, onnx_inputs
from fxtrt.errors import EmitError, GeneralizationError
from fxtrt.frontend.captured import CapturedGraph, Program
from fxtrt.frontend.export import dynamic_shapes, torch_dims
from fxtrt.frontend.guards import AssertCheck, Hole, check_deferred_asserts
from fxtrt.frontend.source import location_of_traceback
from fxtrt.settings import DynamicDim

log = logging.getLogger(__name__)


def exported(gm: torch.fx.GraphModule, captured: CapturedGraph,
             dims: Sequence[DynamicDim]) -> tuple[torch.export.ExportedProgram, tuple[Hole, ...]]:
    """``gm`` as an ExportedProgram symbolic in ``dims``, and the facts a re-export assumed that
    fail inside the ranges (to verify where they fail)."""
    if captured.program is not None:
        return exported_program(gm, captured.program), ()
    ep, checked = _reexport(gm, onnx_inputs(captured.base.inputs), dims, captured)
    return ep, checked.holes


def exported_program(gm: torch.fx.GraphModule, program: Program) -> torch.export.ExportedProgram:
    """``gm`` (flat inputs, weights as attributes) as an ExportedProgram over ``program``'s
    symbols, with every weight lifted to an input as torch.export would have made it. The
    subgraphs of higher-order ops (``cond``'s branches, a ``scan``'s body) stay attributes of the
    root, as torch.export leaves them, and torch.onnx translates those ops to If / Scan / Loop.

    Placeholders get fake values from the weights as they are now (a pass may have changed a
    buffer's dtype), and float64 inputs become float32, as the ONNX inputs will be.
    """
    from torch.export.exported_program import ModuleCallEntry
    from torch.export.graph_signature import ExportGraphSignature

    user = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fake_mode = next(n.meta["val"].fake_mode for n in user if isinstance(n.meta.get("val"), torch.Tensor))
    graph = torch.fx.Graph()
    lifted = _LiftedWeights(gm, graph, fake_mode)
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    specs = lifted.specs + [_user_input(graph, node, fake_mode, env) for node in user]
    outputs = _copy_body(gm, graph, env, lifted.nodes)
    return torch.export.ExportedProgram(
        root=gm, graph=graph, graph_signature=ExportGraphSignature(specs, outputs), state_dict=lifted.state_dict,
        range_constraints=dict(program.range_constraints),
        module_call_graph=[ModuleCallEntry("", _root_call(user, env, len(outputs)))],
        constants=lifted.constants, verifiers=list(program.verifiers),
    )


class _LiftedWeights:
    """Every tensor attribute ``gm`` reads, as a placeholder of ``graph`` (``p_``, ``b_``, ``c_``
    as torch.export names them) with its input spec and its value in the state dict or constants."""

    def __init__(self, gm: torch.fx.GraphModule, graph: torch.fx.Graph, fake_mode: object) -> None:
        from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

        params = {k for k, _ in gm.named_parameters(remove_duplicate=False)}
        buffers = {k for k, _ in gm.named_buffers(remove_duplicate=False)}
        prefix = {InputKind.PARAMETER: "p_", InputKind.BUFFER: "b_", InputKind.CONSTANT_TENSOR: "c_"}
        self.nodes: dict[str, torch.fx.Node] = {}
        self.specs: list[InputSpec] = []
        self.state_dict: dict[str, torch.Tensor] = {}
        self.constants: dict[str, torch.Tensor] = {}
        for node in gm.graph.find_nodes(op="get_attr"):
            if node.target in self.nodes:
                continue
            value = _attr(gm, node.target)
            if isinstance(value, torch.fx.GraphModule):  # a branch or loop body: stays an attribute
                continue
            if not isinstance(value, torch.Tensor):
                raise EmitError(f"attribute {node.target} of the graph is a {type(value).__name__}, not a tensor",
                                node=node.name, hint="please report this with the model")
            kind = (InputKind.PARAMETER if node.target in params else
                    InputKind.BUFFER if node.target in buffers else InputKind.CONSTANT_TENSOR)
            # FX writes a placeholder's target as a Python argument name: "block1-0" must not reach it.
            ph = graph.placeholder(prefix[kind] + re.sub(r"\W", "_", node.target))
            ph.target = ph.name
            ph.meta["val"] = fake_mode.from_tensor(value, static_shapes=True)  # type: ignore[attr-defined]
            self.nodes[node.target] = ph
            self.specs.append(InputSpec(kind, TensorArgument(ph.name), node.target,
                                        persistent=True if kind == InputKind.BUFFER else None))
            (self.constants if kind == InputKind.CONSTANT_TENSOR else self.state_dict)[node.target] = value


def _user_input(graph: torch.fx.Graph, node: torch.fx.Node, fake_mode: object,
                env: dict[torch.fx.Node, torch.fx.Node]) -> object:
    """The user input ``node`` copied into ``graph`` (float64 as the float32 the ONNX input is), and its spec."""
    from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

    env[node] = ph = graph.node_copy(node)
    ph.target = ph.name  # ExportedProgram looks placeholders up by name ("input" was renamed "input_1")
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        with fake_mode:  # type: ignore[attr-defined]
            ph.meta["val"] = onnx_input(val)
    return InputSpec(InputKind.USER_INPUT, TensorArgument(ph.name), None)


def _copy_body(gm: torch.fx.GraphModule, graph: torch.fx.Graph, env: dict[torch.fx.Node, torch.fx.Node],
               lifted: dict[str, torch.fx.Node]) -> list:
    """Every other node of ``gm`` into ``graph``, weights read from their placeholders; the output specs."""
    from torch.export.graph_signature import OutputKind, OutputSpec, TensorArgument

    outputs: list[OutputSpec] = []
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in lifted:
            env[node] = lifted[node.target]
        elif node.op == "output":
            outs = tuple(env[a] for a in node.args[0])
            graph.output(outs)
            outputs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(o.name), None) for o in outs]
        elif node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    return outputs


def _root_call(user: Sequence[torch.fx.Node], env: Mapping[torch.fx.Node, torch.fx.Node], n_outputs: int) -> object:
    """The root entry of the module call graph, as torch.export writes it: no arguments
    (decompositions rename nodes, and would leave names here dangling), the call structure and
    the argument names."""
    from torch.export.exported_program import ModuleCallSignature

    return ModuleCallSignature(
        inputs=[], outputs=[],
        in_spec=pytree.tree_structure(((0,) * len(user), {})), out_spec=pytree.tree_structure((0,) * n_outputs),
        forward_arg_names=[env[u].name for u in user],
    )


def _attr(gm: torch.nn.Module, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _reexport(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor], dims: Sequence[DynamicDim],
              captured: CapturedGraph) -> tuple[torch.export.ExportedProgram, AssertCheck]:
    """torch.export of the generalised graph over the traced ranges (the declared ones for baked
    dims), and its deferred asserts checked over them.

    Traced at the base size, torch may decide facts that hold there only (at an even length a
    crop ``[:s]`` of ``2*ceil(s/2)`` is a no-op) and specialise; the graph is the same function at
    every traced size, so each other trace's inputs get their turn before that is an error.
    """
    named = torch_dims(dims, {name: (c.low, c.high) for name, c in captured.dims.items()})
    spec = dynamic_shapes(len(inputs), dims, named) if dims else None
    tries = [tuple(inputs)] + [onnx_inputs(c.inputs) for c in captured.captures[1:] + captured.checks]
    first_exc: Exception | None = None
    for args in tries:
        try:
            ep = torch.export.export(gm, args, dynamic_shapes=spec, strict=False,
                                     prefer_deferred_runtime_asserts_over_guards=spec is not None)
            return ep, check_deferred_asserts(ep, dims)
        except Exception as exc:
            first_exc = first_exc or exc
            log.debug("re-export at %s failed: %s", [tuple(a.shape) for a in args], str(exc)[:700])
            if spec is None or "Constraints violated" not in str(exc):
                break
    assert first_exc is not None
    exc = first_exc
    loc = location_of_traceback(exc.__traceback__)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    guard = next((ln.strip(" -") for ln in str(exc).splitlines() if "guard" in ln and ln.strip() != first), "")
    solver = _solver_step(first, dims)
    error = GeneralizationError(
        f"the generalised graph does not trace with symbolic sizes: {type(exc).__name__}: {first}"
        + (f" ({guard})" if guard else ""),
        source=str(loc) if loc else None,
        hint=(step_hint(*solver) if solver else None)
        or "a size may still be baked in; run fxtrt explain on the model to see where",
    )
    error.solver_step = solver  # type: ignore[attr-defined]  # (dim, step) for the caller to confirm eagerly
    raise error from exc


def _solver_step(message: str, dims: Sequence[DynamicDim]) -> tuple[DynamicDim, int] | None:
    """torch's solver gave up on a relation between sizes (``Eq(x/32 - ((x/2)//16), 0)``: timm's
    anti-aliased ResNets), which holds where the size is a multiple of its divisors' lcm: a dim
    given that step traces as ``32*s`` and the relation simplifies away. The model may run at
    other sizes, but torch.export proves no one graph for them. The dim and that step, if any."""
    if "cannot be solved" not in message or not re.search(r"/\d+", message):
        return None
    step = math.lcm(*(int(n) for n in re.findall(r"/(\d+)", message)))
    free = [d for d in dims if not d.is_batch and not d.step]
    if step < 2 or len(free) != 1 or -(-free[0].min // step) * step > free[0].max:
        return None
    return free[0], step


def step_hint(d: DynamicDim, step: int) -> str:
    """The hint for a dim that needs ``step``: the range on its multiples."""
    lo, hi = -(-d.min // step) * step, d.max // step * step
    opt = min(max(lo, d.opt // step * step), hi)
    return (f"torch's solver cannot decide a relation between sizes that holds on multiples of {step}; "
            f"declare the step: ({lo}, {opt}, {hi}, {step}) for '{d.name}'; the model may run at other sizes, "
            "but no one graph is proven for them")
