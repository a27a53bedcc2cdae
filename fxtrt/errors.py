"""One error hierarchy, so callers can catch everything fxtrt raises on purpose with one clause.

Every error says what happened, where (the graph node and the user's ``file:line`` when known)
and what the user can do about it.
"""
from __future__ import annotations


class FxtrtError(Exception):
    """Base of every error fxtrt raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.node = node
        self.source = source
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        if self.node:
            parts.append(f"  node: {self.node}")
        if self.source:
            parts.append(f"  at: {self.source}")
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(FxtrtError):
    """A compile() argument is invalid; raised before any work is done."""


class CaptureError(FxtrtError):
    """torch.export could not capture the model."""


class GeneralizationError(FxtrtError):
    """A captured graph cannot be made dynamic in the requested dims."""


class StructureError(GeneralizationError):
    """The graph's structure (not just its sizes) changes with a dynamic dim, e.g. a Python
    loop over the samples. With a dynamic batch, compile() falls back to a static-batch bucket set,
    unless ``dims`` (the dims whose size was seen to change the structure, when known) leaves the
    batch out: then static batches would not help."""

    def __init__(self, message: str, *, dims: tuple[str, ...] = (), **kwargs) -> None:
        self.dims = tuple(dims)
        super().__init__(message, **kwargs)


class PassError(FxtrtError):
    """A graph pass failed or broke the graph's numerics."""


class EmitError(FxtrtError):
    """ONNX emission or cleanup failed, or lost a dynamic dim."""


class VerificationError(FxtrtError):
    """The artifact does not match the original model within tolerance."""

    def __init__(self, message: str, *, rows: list | None = None, **kwargs) -> None:
        self.rows = rows or []
        super().__init__(message, **kwargs)


class PrecisionError(VerificationError):
    """Reduced precision cannot be made to match, even after repair."""


class RunError(FxtrtError):
    """A compiled artifact failed to run on the inputs it was given (ONNX Runtime raised)."""


class EngineError(FxtrtError):
    """A TensorRT engine could not be planned or built."""
