"""A variant: the choices that make one zoo model exportable and judgeable, written into a job key.

A model is first tried with a dynamic image size, sequence or audio length where its family
allows one, then batch-only: the prepare step tries the variants in order, and the first whose
eager reference runs is the one exported. The key ``<model id>#<variant>`` carries every
choice, so each child process rebuilds exactly the same spec from it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from benchmarks.model_spec import DynamicDim

CAP = 256  # images are capped at 256 where the model allows a smaller size
SPAN = 64  # a dynamic size is exported at its opt and judged at opt - SPAN and opt + SPAN
SEQ = DynamicDim("seq", 8, 16, 32)
SAMPLES = DynamicDim("samples", 800, 1600, 3200)


@dataclass(frozen=True)
class Variant:
    """``dim``: the dynamic dim besides the batch ("" for batch-only); ``size``: the image side;
    ``img``: timm's ``img_size=``; ``level``: the transformers shrink level; ``layout``: how
    ``input_features`` are laid out ("mel" = (mels, frames), "time" = (frames, features));
    ``step``: the sizes the dynamic dim takes are its multiples (a detector's stride)."""

    dim: str = ""
    size: int | None = None
    img: int | None = None
    level: str | None = None
    layout: str | None = None
    step: int | None = None

    def text(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) not in (None, "")]
        return ";".join(parts) or "batch"

    @classmethod
    def parse(cls, text: str) -> "Variant":
        if text == "batch":
            return cls()
        values: dict[str, object] = {}
        for part in text.split(";"):
            name, _, value = part.partition("=")
            values[name] = int(value) if name in ("size", "img", "step") else value
        return cls(**values)  # type: ignore[arg-type]

    @property
    def dims(self) -> str:
        """What the cell's ``dims`` column says: ``batch`` or ``batch,size``."""
        return f"batch,{self.dim}" if self.dim else "batch"


def job_key(model_id: str, variant: Variant) -> str:
    return f"{model_id}#{variant.text()}"


def split_key(key: str) -> tuple[str, Variant]:
    model_id, _, text = key.partition("#")
    return model_id, Variant.parse(text or "batch")


def size_dim(opt: int, low: int = 32, step: int | None = None) -> DynamicDim:
    """The ``size`` dim (H and W together) around ``opt``, never below ``low``."""
    lo = max(low, opt - SPAN)
    if step:
        lo = -(-lo // step) * step
    return DynamicDim("size", lo, opt, opt + SPAN, step)
