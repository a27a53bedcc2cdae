"""The static restrictions of TensorRT's ONNX parser, checked on one ONNX node without TensorRT.

Each restriction is a sentence of the operator table's "Restrictions" column (generated from
onnx-tensorrt, :mod:`.operator_tables`). A check here is code that recognises one *kind* of
sentence and checks a node against what that sentence says, reading the values (allowed modes,
limits, input names) from the sentence itself; nothing of the table is copied here. A sentence no
check recognises is reported as not checked, never as passed.

Input, output and attribute names in a sentence are mapped to positions with ONNX's own schema
of the op at the model's opset, and attribute defaults come from there too.

Example::

    findings, unchecked = check_restrictions(view, "`sorted` must be 1. `K` input must be less than 3840.")
    # [Finding("`sorted` is 0", "`sorted` must be 1.", rewrite="...")], []
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import onnx.defs
from onnx import numpy_helper

_SPLIT = re.compile(r"<br\s*/?>|(?<=\.)\s+(?=[A-Z`])")
_NAMES = re.compile(r"`\s*(\w+)\s*`")


@dataclass(frozen=True)
class Finding:
    """A node breaks an upstream restriction: why, the sentence it breaks, and a rewrite if one exists."""

    reason: str
    restriction: str
    rewrite: str | None = None


@dataclass
class NodeView:
    """What a check reads of a node: the node, its op's schema, and facts of the graph around it."""

    node: onnx.NodeProto
    opset: int
    constants: Mapping[str, onnx.TensorProto]
    types: Mapping[str, int]
    ranks: Mapping[str, int | None]
    io: frozenset[str] = frozenset()
    schema: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.schema is None:
            try:
                self.schema = onnx.defs.get_schema(self.node.op_type, self.opset, self.node.domain)
            except Exception:  # an op ONNX doesn't know (a custom domain): no names to map
                self.schema = None

    def attr(self, name: str) -> Any:
        """The attribute's value, else the schema's default, else None."""
        for a in self.node.attribute:
            if a.name == name:
                return _plain(onnx.helper.get_attribute_value(a))
        return self.default(name)

    def default(self, name: str) -> Any:
        """ONNX's default of the attribute at this opset, None when it has none."""
        if self.schema is not None and name in self.schema.attributes:
            default = self.schema.attributes[name].default_value
            return _plain(onnx.helper.get_attribute_value(default)) if default.type else None
        return None

    def has_attr(self, name: str) -> bool:
        return any(a.name == name for a in self.node.attribute)

    def input_index(self, name: str) -> int | None:
        names = [i.name for i in self.schema.inputs] if self.schema is not None else []
        return names.index(name) if name in names else None

    def output_index(self, name: str) -> int | None:
        names = [o.name for o in self.schema.outputs] if self.schema is not None else []
        return names.index(name) if name in names else None

    def input(self, i: int) -> str:
        """The i-th input's value name, "" when absent."""
        return self.node.input[i] if i < len(self.node.input) else ""

    def constant(self, i: int) -> np.ndarray | None:
        """The i-th input as an array when it is an initializer or a Constant's output."""
        t = self.constants.get(self.input(i))
        return numpy_helper.to_array(t) if t is not None else None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


Check = Callable[[NodeView, re.Match], "Finding | None"]
_CHECKS: list[tuple[re.Pattern, Check]] = []


def restriction(pattern: str) -> Callable[[Check], Check]:
    """Register a check for the sentences ``pattern`` matches (case-insensitive, searched)."""
    def register(fn: Check) -> Check:
        _CHECKS.append((re.compile(pattern, re.I), fn))
        return fn
    return register


def sentences(text: str) -> list[str]:
    """A Restrictions cell as sentences."""
    return [s.strip() for s in _SPLIT.split(text or "") if s.strip()]


def check_restrictions(view: NodeView, text: str) -> tuple[list[Finding], list[str]]:
    """The findings of every sentence of ``text`` on ``view``, and the sentences no check knows."""
    findings, unchecked = [], []
    for sentence in sentences(text):
        known = False
        for pattern, check in _CHECKS:
            m = pattern.search(sentence)
            if m is None:
                continue
            known = True
            found = check(view, m)
            if found is not None:
                findings.append(Finding(found.reason, sentence, found.rewrite))
        if not known:
            unchecked.append(sentence)
    return findings, unchecked


# -- inputs that must be constants -------------------------------------------------------------

@restriction(r"^(?P<names>.*?)(?:must be|are)\s+(?:an?\s+)?(?:initializers?|build-time constant|"
             r"constant tensor|resolvable to a constant)")
def constant_inputs(view: NodeView, m: re.Match) -> Finding | None:
    """``axes`` / ``K`` / ``depth`` / ``scale`` ... must be initializers: present inputs of those names
    must be an initializer or a Constant's output (names that are attributes here have nothing to check)."""
    for name in _NAMES.findall(m.group("names")):
        i = view.input_index(name)
        if i is None or not view.input(i) or view.input(i) in view.constants:
            continue
        return Finding(f"input `{name}` ({view.input(i)}) is computed in the graph, not a constant",
                       "", rewrite=f"make `{name}` a constant: give it as literal values in the model "
                                   "(fxtrt's explicit_reduce_dims does this for reductions over all dims)")
    return None


# -- pooling and convolution rank, dilations ---------------------------------------------------

@restriction(r"(?P<a>\d)D or (?P<b>\d)D (?P<what>pooling|convolutions|deconvolutions) only")
def spatial_rank(view: NodeView, m: re.Match) -> Finding | None:
    """2D or 3D only: the first input's rank minus N and C."""
    rank = view.ranks.get(view.input(0))
    if rank is None:
        return None
    spatial = rank - 2
    if spatial in (int(m.group("a")), int(m.group("b"))):
        return None
    hint = ("max_pool_1d_as_2d (fxtrt's pass) runs it as a 2D pool over (1, k)" if view.node.op_type == "MaxPool"
            else "run it in 2D: Unsqueeze a unit dim, pool/convolve over (1, k), Squeeze" if spatial == 1 else None)
    return Finding(f"{spatial}D {m.group('what').lower()}", "", rewrite=hint)


@restriction(r"`dilations` must be empty or all ones")
def unit_dilations(view: NodeView, m: re.Match) -> Finding | None:
    dilations = view.attr("dilations") or []
    if all(d == 1 for d in dilations):
        return None
    return Finding(f"dilations={list(dilations)}", "")


# -- attribute values ----------------------------------------------------------------------------

@restriction(r"^`(?P<name>\w+)`(?: attribute)? must be (?P<value>-?\d+|zero)\b")
def attribute_or_input_equals(view: NodeView, m: re.Match) -> Finding | None:
    """``sorted`` must be 1, ``layout`` attribute must be 0, ``x_zero_point`` must be zero: an
    attribute (or its default) with that value, or an input that is a constant of that value."""
    name, want = m.group("name"), 0 if m.group("value") == "zero" else int(m.group("value"))
    i = view.input_index(name)
    if i is not None:
        if not view.input(i):
            return None
        value = view.constant(i)
        if value is None:
            return Finding(f"input `{name}` is not a constant, so it can't be shown to be {want}", "")
        return None if np.all(value == want) else Finding(f"input `{name}` is not {want}", "")
    got = view.attr(name)
    if got is None or got == want:
        return None
    hint = "torch.topk(..., sorted=True): only the order of the k values changes" if name == "sorted" else None
    return Finding(f"`{name}` is {got}", "", rewrite=hint)


@restriction(r"^`(?P<name>\w+)` (?:other than `(?P<value>\w+)` )?is not supported")
def attribute_only(view: NodeView, m: re.Match) -> Finding | None:
    """``reduction`` other than ``none`` is not supported (or ``reduction`` is not supported: then only
    ONNX's default): an attribute set to another value."""
    name = m.group("name")
    if not view.has_attr(name):
        return None
    got, want = view.attr(name), m.group("value") or view.default(name)
    return None if got == want else Finding(f"`{name}` is {got!r}", "")


@restriction(r"value is ignored by TensorRT")
def ignored_value(view: NodeView, m: re.Match) -> Finding | None:
    """Not a condition on the model: the parser takes the node and ignores the value."""
    return None


@restriction(r"^Input must be (?P<rank>\d)D")
def input_rank(view: NodeView, m: re.Match) -> Finding | None:
    rank = view.ranks.get(view.input(0))
    return None if rank is None or rank == int(m.group("rank")) else Finding(f"input is {rank}D", "")


@restriction(r"`(?P<name>\w+)` input must be less than (?P<limit>\d+)")
def input_below(view: NodeView, m: re.Match) -> Finding | None:
    """``K`` input must be less than 3840: checked where K is a constant (a dynamic K can't be)."""
    i = view.input_index(m.group("name"))
    value = view.constant(i) if i is not None else None
    if value is None or np.all(value < int(m.group("limit"))):
        return None
    return Finding(f"`{m.group('name')}` is {value.tolist()}", "",
                   rewrite="take the top k in chunks below the limit and merge, or sort and slice")


@restriction(r"(?P<names>(?:`\w+\s*`[,\s]*(?:and\s+)?)+)(?P<kind>inputs?|outputs?|attributes?)(?: tensors?)? "
             r"(?:are |is )?unsupported")
def unsupported_parts(view: NodeView, m: re.Match) -> Finding | None:
    """Named inputs, outputs or attributes the parser does not take: present on the node."""
    kind = m.group("kind").rstrip("s")
    for name in _NAMES.findall(m.group("names")):
        if kind == "attribute" and view.has_attr(name):
            return Finding(f"has attribute `{name}`", "")
        index = view.input_index(name) if kind == "input" else view.output_index(name)
        names = view.node.input if kind == "input" else view.node.output
        if index is not None and index < len(names) and names[index]:
            return Finding(f"uses {kind} `{name}`", "")
    return None


@restriction(r"Only the first output `\w+` is supported")
def first_output_only(view: NodeView, m: re.Match) -> Finding | None:
    extra = [o for o in view.node.output[1:] if o]
    return Finding(f"uses outputs {extra}", "") if extra else None


# -- Resize ----------------------------------------------------------------------------------------

# The sentence's subject -> (ONNX attribute, only when mode is): the values allowed are the sentence's.
_RESIZE_ATTRS = {"resize transformation modes": ("coordinate_transformation_mode", None),
                 "resize modes": ("mode", None), "nearest modes": ("nearest_mode", "nearest"),
                 "aspect ratio policy": ("keep_aspect_ratio_policy", None)}


@restriction(r"Supported (?P<what>resize transformation modes|resize modes|nearest modes|aspect ratio policy):"
             r"(?P<values>.*)")
def resize_modes(view: NodeView, m: re.Match) -> Finding | None:
    """Resize's modes: the node's value (or ONNX's default) is one the sentence lists."""
    attr, when = _RESIZE_ATTRS[m.group("what").lower()]
    if when is not None and view.attr("mode") != when:
        return None
    got, allowed = view.attr(attr), _NAMES.findall(m.group("values"))
    if got is None or got in allowed:
        return None
    hint = ("mode 'linear' with the same coordinate transform matches only for scale factors where both agree"
            if attr == "mode" else None)
    return Finding(f"{attr}={got!r}", "", rewrite=hint)


@restriction(r"Antialiasing is not supported")
def no_antialias(view: NodeView, m: re.Match) -> Finding | None:
    return Finding("antialias=1", "", rewrite="interpolate with antialias=False") if view.attr("antialias") else None


@restriction(r"When `scales` is a tensor input, `axes` must be an iota vector")
def resize_axes_iota(view: NodeView, m: re.Match) -> Finding | None:
    axes = view.attr("axes")
    rank = view.ranks.get(view.input(0))
    if not axes or rank is None:
        return None
    i = view.input_index("scales")
    if i is None or not view.input(i) or view.input(i) in view.constants:
        return None
    normal = [a % rank for a in axes]
    return None if normal == list(range(rank)) else Finding(f"axes={list(axes)} with scales computed in the graph", "")


# -- recurrent layers and control flow -------------------------------------------------------------

@restriction(r"For bidirectional \w+, activation functions must be the same for both the forward and reverse pass")
def same_activations(view: NodeView, m: re.Match) -> Finding | None:
    if view.attr("direction") != "bidirectional":
        return None
    acts = view.attr("activations") or []
    half = len(acts) // 2
    if [a.lower() for a in acts[:half]] == [a.lower() for a in acts[half:]]:
        return None
    return Finding(f"forward activations {acts[:half]} differ from reverse {acts[half:]}", "")


@restriction(r"Output tensors of the two conditional branches must have the same rank and must have different names")
def if_branches(view: NodeView, m: re.Match) -> Finding | None:
    """Both branches' outputs: equal ranks where known, and no name shared between them."""
    branches = {a.name: a.g for a in view.node.attribute if a.name in ("then_branch", "else_branch")}
    if len(branches) != 2:
        return None
    then, other = branches["then_branch"], branches["else_branch"]
    shared = {o.name for o in then.output} & {o.name for o in other.output}
    if shared:
        return Finding(f"both branches output {sorted(shared)}", "")
    for a, b in zip(then.output, other.output):
        ra, rb = (len(v.type.tensor_type.shape.dim) if v.type.tensor_type.HasField("shape") else None for v in (a, b))
        if ra is not None and rb is not None and ra != rb:
            return Finding(f"branch outputs {a.name} (rank {ra}) and {b.name} (rank {rb}) differ in rank", "")
    return None
