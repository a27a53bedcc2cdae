"""Eager PyTorch as a backend: the original model behind Polygraphy's runner interface (:mod:`.runner`)."""
from fxtrt.backend.torch.runner import TorchRunner

__all__ = ["TorchRunner"]
