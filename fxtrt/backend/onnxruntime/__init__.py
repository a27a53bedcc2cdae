"""ONNX Runtime as a backend, laid out as Polygraphy lays out its own: a lazy loader that opens
the one kind of session fxtrt uses (:mod:`.loader`), and the runners over it (:mod:`.runner`)."""
from fxtrt.backend.onnxruntime.loader import SessionLoader, open_session
from fxtrt.backend.onnxruntime.runner import onnxrt_runner, run_session

__all__ = ["SessionLoader", "onnxrt_runner", "open_session", "run_session"]
