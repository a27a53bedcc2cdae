"""What an artifact claims to serve, checked before every call: it serves nothing else.

ONNX Runtime runs a dynamic model at any size, including sizes nobody verified (a batch of 40
from a 1..32 claim) and sizes that break an assumption (H != W where one symbol stood for both).
:class:`Claims` holds each input's static sizes and each dynamic dim's range, step and sites;
:meth:`Claims.check` turns a call outside them into a ``ConfigError`` that names the input, the
axis, the size and the claim. The dims also go into every ONNX file's ``metadata_props``
(:data:`DIMS_KEY`), so that other tools can enforce them; :func:`fxtrt.load` reads the
same claims from ``report.json``.

Example::

    claims = Claims.of(("x",), [(1, 3, 224, 224)], dims)
    claims.check([torch.randn(4, 3, 224, 224)])    # {"batch": 4}
    claims.check([torch.randn(40, 3, 224, 224)])   # ConfigError: input 'x' axis 0 (dim 'batch') is 40 ...
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from fxtrt.errors import ConfigError
from fxtrt.settings import DynamicDim

DIMS_KEY = "fxtrt.dims"


@dataclass(frozen=True)
class DimClaim:
    """One dynamic dim as served: ``max=None`` claims every size from ``min`` up (a bucket set
    whose chunked serving was verified); ``note`` says how sizes are served."""

    name: str
    min: int
    max: int | None
    step: int | None
    sites: tuple[tuple[int, int], ...]
    opt: int | None = None
    note: str = ""

    @classmethod
    def of(cls, d: DynamicDim) -> "DimClaim":
        return cls(d.name, d.min, d.max, d.step, tuple(d.sites), d.opt)

    def describe(self) -> str:
        rng = f"{self.min}.." + (str(self.max) if self.max is not None else "")
        return rng + (f" in steps of {self.step}" if self.step else "") + (f" ({self.note})" if self.note else "")

    def to_dict(self, input_names: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "min": self.min, "opt": self.opt, "max": self.max,
                               "step": self.step, "sites": [[input_names[i], a] for i, a in self.sites]}
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], input_names: Sequence[str]) -> "DimClaim":
        index = {n: i for i, n in enumerate(input_names)}
        try:
            sites = tuple((index[str(n)], int(a)) for n, a in data["sites"])
            return cls(str(data["name"]), int(data["min"]), None if data["max"] is None else int(data["max"]),
                       None if data.get("step") is None else int(data["step"]), sites,
                       None if data.get("opt") is None else int(data["opt"]), str(data.get("note", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"a dim claim is malformed: {data!r} ({exc})") from None


@dataclass(frozen=True)
class Claims:
    """Per input its name and rank and the sizes of its static axes; the dynamic dims' claims."""

    input_names: tuple[str, ...]
    shapes: tuple[tuple[int | None, ...], ...]  # None: an axis some dim claims
    dims: tuple[DimClaim, ...]

    @classmethod
    def of(cls, input_names: Sequence[str], shapes: Sequence[Sequence[int | None]], dims: Sequence[DimClaim | DynamicDim]
           ) -> "Claims":
        claims = tuple(d if isinstance(d, DimClaim) else DimClaim.of(d) for d in dims)
        sites = {s for d in claims for s in d.sites}
        static = tuple(tuple(None if (i, a) in sites else (None if n is None else int(n)) for a, n in enumerate(shape))
                       for i, shape in enumerate(shapes))
        return cls(tuple(input_names), static, claims)

    def check(self, inputs: Sequence[Any]) -> dict[str, int]:
        """The size of every dim in this call; ConfigError for anything outside the claims."""
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"expected {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                              f"got {len(inputs)}")
        shapes = [tuple(int(n) for n in getattr(x, "shape", ())) for x in inputs]
        for name, want, got in zip(self.input_names, self.shapes, shapes):
            if len(want) != len(got):
                raise ConfigError(f"input {name!r} has shape {list(got)} (rank {len(got)}); the compiled model "
                                  f"takes rank {len(want)}: {_show(want)}")
            for axis, (w, g) in enumerate(zip(want, got)):
                if w is not None and w != g:
                    raise ConfigError(f"input {name!r} axis {axis} is {g}; the compiled model is static there "
                                      f"({w}): {_show(want)}",
                                      hint="recompile with that axis in dynamic= to serve other sizes")
        sizes: dict[str, int] = {}
        for d in self.dims:
            seen = [(self.input_names[i], a, shapes[i][a]) for i, a in d.sites]
            first = seen[0]
            for other in seen[1:]:
                if other[2] != first[2]:
                    raise ConfigError(
                        f"input {first[0]!r} axis {first[1]} is {first[2]} but input {other[0]!r} axis {other[1]} is "
                        f"{other[2]}: both are dim '{d.name}', which the compiled model serves only as one size",
                        hint="give them equal sizes, or recompile with independent names for the two dims")
            n = first[2]
            where = f"input {first[0]!r} axis {first[1]} (dim '{d.name}') is {n}"
            if n < d.min or (d.max is not None and n > d.max):
                raise ConfigError(f"{where}, outside the claimed range {d.describe()}: the compiled model was not "
                                  "verified there and does not serve it",
                                  hint=f"recompile with a range for '{d.name}' that holds {n}")
            if d.step and n % d.step:
                raise ConfigError(f"{where}, not a multiple of the claimed step {d.step} ({d.describe()})",
                                  hint=f"pad or resize to a multiple of {d.step}")
            sizes[d.name] = n
        return sizes

    def dims_dict(self) -> list[dict[str, Any]]:
        return [d.to_dict(self.input_names) for d in self.dims]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [{"name": n, "shape": list(s)} for n, s in zip(self.input_names, self.shapes)],
                "dims": self.dims_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Claims":
        try:
            names = tuple(str(i["name"]) for i in data["inputs"])
            shapes = tuple(tuple(None if n is None else int(n) for n in i["shape"]) for i in data["inputs"])
            dims = tuple(DimClaim.from_dict(d, names) for d in data["dims"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the claims are malformed: {exc}") from None
        return cls(names, shapes, dims)


def dims_metadata(dims: Sequence[DynamicDim], input_names: Sequence[str]) -> str:
    """The ``metadata_props`` value of :data:`DIMS_KEY`: each dim's name, range, step and sites,
    as JSON with sorted keys (the same bytes for the same dims)."""
    return json.dumps([DimClaim.of(d).to_dict(input_names) for d in dims], sort_keys=True, separators=(",", ":"))


def stamp_dims(model: Any, dims: Sequence[DynamicDim], input_names: Sequence[str]) -> None:
    """Record ``dims`` in the ONNX model's ``metadata_props`` under :data:`DIMS_KEY` (replacing an
    earlier record)."""
    kept = [p for p in model.metadata_props if p.key != DIMS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = DIMS_KEY, dims_metadata(dims, input_names)


def _show(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("dynamic" if n is None else str(n) for n in shape) + "]"
