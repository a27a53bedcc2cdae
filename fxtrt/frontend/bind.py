"""Models as their users hold them: keyword and dict inputs, dims by input name, named outputs.

The pipeline works on positional tensors. ``bind`` turns what the user passed (a tensor, a tuple,
a dict such as a tokenizer's output, and/or ``kwargs``) into that form:

- every tensor becomes an ONNX input named after its parameter (``input_ids``, ``pixel_values``);
- every non-tensor keyword value (``return_dict=False``, ``use_cache=False``, ``None``) is a
  constant of the compiled model, recorded in the report;
- ``batch_dims`` and ``dynamic`` may name inputs, and a dim may name a symbol whose range comes
  from ``dims`` (``dynamic={"input_ids": {1: "seq"}}, dims={"seq": (1, 128, 512)}``).

When keywords are involved the model is wrapped in a module whose forward takes exactly those
tensors, positionally, with the input names as its signature (torch.export names its inputs from
the signature). The wrapper holds the user's model; nothing is set on the model itself.

``output_names`` names the outputs from the model's output structure: dict keys and
ModelOutput/dataclass fields (``last_hidden_state``, ``out``), positions within them
(``output_0.1``), a transformers cache's layers as ``past_key_values.0.key``/``.0.value`` (whatever
the field holding it is called: transformers 5 calls it ``cache``),
``output`` for a lone tensor and ``output_N`` for a plain tuple.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from fxtrt.errors import ConfigError
from fxtrt.settings import BATCH_NAME, input_names_of


@dataclass(frozen=True)
class Binding:
    """How call arguments map to the compiled model's positional inputs."""

    names: tuple[str, ...]
    positional: int  # the first ``positional`` inputs were passed by position
    constants: dict[str, Any] = field(default_factory=dict)

    @property
    def keywords(self) -> bool:
        return len(self.names) > self.positional or bool(self.constants)

    def tensors(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
        """The inputs in order, from a call in the form compile was given; ConfigError naming any
        tensor that is missing or was never an input, or a constant given a different value."""
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping) and self.keywords:
            args, kwargs = (), args[0]
        if len(args) > len(self.names) or (kwargs and len(args) > self.positional):
            raise ConfigError(f"expected {len(self.names)} input(s) ({', '.join(self.names)}), got {len(args)} "
                              "by position" + (" and keywords" if kwargs else ""))
        by_name = dict(zip(self.names, args))
        for key, value in kwargs.items():
            if key in self.constants:
                if not _same(value, self.constants[key]):
                    raise ConfigError(f"{key}={value!r} differs from the value the model was compiled with "
                                      f"({self.constants[key]!r})", hint="recompile with that value")
                continue
            if key not in self.names:
                raise ConfigError(f"{key!r} is not an input of the compiled model; its inputs are "
                                  f"{', '.join(self.names)}")
            if key in by_name:
                raise ConfigError(f"input {key!r} was given twice")
            by_name[key] = value
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise ConfigError(f"input(s) {', '.join(map(repr, missing))} missing; the compiled model takes "
                              f"{', '.join(self.names)}")
        return tuple(by_name[n] for n in self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.names), "constants": {k: repr(v) for k, v in self.constants.items()}}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, torch.Tensor) else False
    except Exception:  # values without a truthful ==: only identity counts
        return a is b


class _Bound(torch.nn.Module):
    """``model`` called with keyword tensors and constants, as a forward of positional tensors."""

    def __init__(self, model: torch.nn.Module, binding: Binding) -> None:
        super().__init__()
        self.model = model
        self._binding = binding

    def forward(self, *tensors: torch.Tensor) -> Any:
        b = self._binding
        keywords = dict(zip(b.names[b.positional:], tensors[b.positional:]))
        return self.model(*tensors[:b.positional], **keywords, **b.constants)


def _wrap(model: torch.nn.Module, binding: Binding) -> torch.nn.Module:
    # A class per binding: its forward's signature carries the input names for torch.export.
    def forward(self: _Bound, *tensors: torch.Tensor) -> Any:
        return _Bound.forward(self, *tensors)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind) for n in binding.names])
    cls = type(type(model).__name__, (_Bound,), {"forward": forward})
    wrapped = cls(model, binding)
    wrapped.train(model.training)
    return wrapped


def _signature_order(model: torch.nn.Module, keys: Sequence[str]) -> list[str]:
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    # sorted() is stable: keys forward does not name keep the order they were given in
    return sorted(keys, key=lambda k: params.index(k) if k in params else len(params))


def _check_keywords(model: torch.nn.Module, kwargs: Mapping[str, Any]) -> None:
    """Fail now on a keyword forward does not take, not deep inside capture."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in takes:
            raise ConfigError(f"{key!r} is not a parameter of {type(model).__name__}.forward "
                              f"({', '.join(takes)})")


def bind(model: torch.nn.Module, example_inputs: Any, kwargs: Mapping[str, Any] | None
         ) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], Binding]:
    """The module to compile, its positional example tensors and how calls map onto them."""
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}",
                          hint="wrap a function in an nn.Module whose forward calls it")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError(f"kwargs must be a dict of keyword arguments, got {type(kwargs).__name__}")
    kwargs = dict(kwargs or {})
    if isinstance(example_inputs, Mapping):
        clash = set(example_inputs) & set(kwargs)
        if clash:
            raise ConfigError(f"{', '.join(sorted(clash))} given both in example_inputs and in kwargs")
        kwargs = {**example_inputs, **kwargs}
        example_inputs = None
    if example_inputs is None:
        positional: tuple[Any, ...] = ()
    elif isinstance(example_inputs, torch.Tensor):
        positional = (example_inputs,)
    elif isinstance(example_inputs, (tuple, list)):
        positional = tuple(example_inputs)
    else:
        raise ConfigError(f"example_inputs must be a tensor, a tuple of tensors or a dict, got "
                          f"{type(example_inputs).__name__}", hint="pass e.g. torch.randn(1, 3, 224, 224), "
                          "(ids, mask) or a tokenizer's output dict")
    bad = [type(t).__name__ for t in positional if not isinstance(t, torch.Tensor)]
    if bad:
        raise ConfigError(f"example_inputs given by position must be tensors, got {', '.join(bad)}",
                          hint="pass non-tensor arguments by keyword (kwargs=...): they become constants")
    for key, value in kwargs.items():
        if not isinstance(value, torch.Tensor) and any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(value)):
            raise ConfigError(f"keyword input {key!r} holds tensors inside a {type(value).__name__}",
                              hint="pass each tensor as its own keyword argument")
    _check_keywords(model, kwargs)
    tensor_keys = _signature_order(model, [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)])
    if not positional and not tensor_keys:
        raise ConfigError("the example has no tensor inputs", hint="pass at least one tensor")
    constants = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    names = input_names_of(model, len(positional)) + tuple(tensor_keys)
    binding = Binding(names, len(positional), constants)
    tensors = positional + tuple(kwargs[k] for k in tensor_keys)
    if not binding.keywords:
        return model, tensors, binding
    if len(set(names)) != len(names):
        raise ConfigError(f"input names {names} repeat: a keyword input is also given by position")
    return _wrap(model, binding), tensors, binding


def resolve_dims(binding: Binding, inputs: Sequence[torch.Tensor], batch: Any, batch_dims: Any, dynamic: Any,
                 dims: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """``batch_dims`` and ``dynamic`` with input names turned into positions and named symbols
    into ``(name, min, opt, max[, step])``; positional forms pass through unchanged."""
    dims = dict(dims or {})
    index = {n: i for i, n in enumerate(binding.names)}

    def position(key: Any, arg: str) -> int:
        if isinstance(key, str):
            if key not in index:
                raise ConfigError(f"{arg}: {key!r} is not an input; the inputs are {', '.join(binding.names)}")
            return index[key]
        return key

    if isinstance(batch_dims, Mapping):
        given = {position(k, "batch_dims"): v for k, v in batch_dims.items()}
        batch_dims = tuple(given.get(i) for i in range(len(inputs)))
    batch_sites: dict[int, int] = {}
    out: dict[int, dict[int, Any]] | None = None
    if isinstance(dynamic, Mapping):
        out = {}
        for key, per_dim in dynamic.items():
            i = position(key, "dynamic")
            if not isinstance(per_dim, Mapping):
                out[i] = per_dim  # make_settings names the mistake
                continue
            for d, spec in per_dim.items():
                if isinstance(spec, str):
                    if spec == BATCH_NAME:
                        batch_sites[i] = d
                        continue
                    if spec not in dims:
                        raise ConfigError(f"dynamic[{key!r}][{d}] names dim {spec!r}, which dims= does not define",
                                          hint=f"add dims={{{spec!r}: (min, opt, max)}}")
                    spec = (spec, *dims[spec])
                out.setdefault(i, {})[d] = spec
        unused = set(dims) - {s[0] for per in out.values() if isinstance(per, Mapping)
                              for s in per.values() if isinstance(s, tuple) and s and isinstance(s[0], str)}
        if unused:
            raise ConfigError(f"dims= defines {', '.join(sorted(unused))}, which no dynamic dim uses")
    elif dims:
        raise ConfigError("dims= names ranges, but dynamic= gives no dim that uses them")
    if batch_sites:
        if batch_dims is not None and not isinstance(batch_dims, (tuple, list)):
            batch_dims = (batch_dims,) * len(inputs)
        base = list(batch_dims) if batch_dims is not None else [None] * len(inputs)
        for i, d in batch_sites.items():
            base[i] = d
        batch_dims = tuple(base)
    return batch_dims, (out if isinstance(dynamic, Mapping) else dynamic)


_KEY = re.compile(r"[^A-Za-z0-9_.]")
# transformers flattens a DynamicCache (with the pytree registration it provides for torch.export)
# as {"key_cache": [per layer], "value_cache": [per layer]}; fxtrt names those leaves
# ``<field>.<layer>.key`` and ``<field>.<layer>.value``.
_CACHE_KV = {"key_cache": "key", "value_cache": "value"}
CACHE_NAME = "past_key_values"


def _is_cache(node_type: type | None) -> bool:
    """A transformers ``Cache`` subclass, recognised without importing transformers."""
    return any(c.__name__ == "Cache" and c.__module__ == "transformers.cache_utils"
               for c in getattr(node_type, "__mro__", ()))


def _node_types(spec: pytree.TreeSpec) -> list[list[type | None]]:
    """For each leaf in flatten order, the types of the nodes on its path (outermost first)."""
    if spec.is_leaf():
        return [[]]
    return [[spec.type, *below] for child in spec.children() for below in _node_types(child)]


def output_names(out_spec: pytree.TreeSpec | None) -> tuple[str, ...]:
    """Valid, unique, stable names for the flat outputs of ``out_spec``."""
    n = out_spec.num_leaves if out_spec is not None else 1
    if out_spec is None or out_spec.is_leaf():
        return ("output",)
    # Placeholder leaves are small tensors, not ints: some nodes (a transformers cache) rebuild
    # themselves from tensors when unflattened.
    placeholders = [torch.zeros(1, 1, 1, 1) for _ in range(n)]
    paths = [p for p, _ in pytree.tree_flatten_with_path(pytree.tree_unflatten(placeholders, out_spec))[0]]
    if not any(isinstance(k, (pytree.MappingKey, pytree.GetAttrKey)) for p in paths for k in p):
        return ("output",) if n == 1 else tuple(f"output_{i}" for i in range(n))
    names: list[str] = []
    for path, nodes in zip(paths, _node_types(out_spec)):
        parts = []
        kv = None  # "key"/"value" of a cache layer, written after the layer's index
        for depth, k in enumerate(path):
            if isinstance(k, pytree.MappingKey) and k.key in _CACHE_KV and _is_cache(nodes[depth]):
                kv = _CACHE_KV[k.key]
                continue
            if (isinstance(k, (pytree.MappingKey, pytree.GetAttrKey)) and depth + 1 < len(nodes)
                    and _is_cache(nodes[depth + 1])):
                parts.append(CACHE_NAME)  # the name every exporter and runtime knows a KV cache by
            elif isinstance(k, pytree.MappingKey):
                parts.append(str(k.key))
            elif isinstance(k, pytree.GetAttrKey):
                parts.append(k.name)
            else:
                idx = getattr(k, "idx", k)
                parts.append(f"output_{idx}" if depth == 0 else str(idx))
            if kv is not None:
                parts.append(kv)
                kv = None
        name = _KEY.sub("_", ".".join(parts)) or "output"
        base, i = name, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return tuple(names)
