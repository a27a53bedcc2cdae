"""The original model behind Polygraphy's runner interface, on the CPU.

Polygraphy's ``PytRunner`` hard-codes CUDA, so :class:`TorchRunner` runs an ``nn.Module``
eagerly on the CPU with the interface every other runner has; a ``Comparator`` then drives the
model and the artifacts on the same feeds.

Example::

    runner = TorchRunner(model, ["x"], [torch.float32], ["y"], meta)
    with runner:
        runner.infer({"x": x})   # OrderedDict(y=...)
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from fxtrt.errors import FxtrtError, VerificationError
from fxtrt.frontend.export import describe_failure


class TorchRunner(BaseRunner):
    """Runs an ``nn.Module`` eagerly on the CPU; outputs are flattened in pytree order."""

    def __init__(
        self,
        model: torch.nn.Module,
        input_names: Sequence[str],
        input_dtypes: Sequence[torch.dtype],
        output_names: Sequence[str],
        feed_meta: TensorMetadata,
        name: str = "torch",
    ) -> None:
        super().__init__(name=name, prefix="torch-runner")
        self.model = model
        self.input_names = list(input_names)
        self.input_dtypes = list(input_dtypes)
        self.output_names = list(output_names)
        self._meta = feed_meta
        self._was_training = False

    def activate_impl(self) -> None:
        self._was_training = self.model.training
        self.model.eval()

    def deactivate_impl(self) -> None:
        self.model.train(self._was_training)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._meta

    def arguments(self, feed_dict) -> list[torch.Tensor]:
        """The feed as the model's arguments, in the dtypes the example had."""
        return [torch.from_numpy(np.ascontiguousarray(feed_dict[n])).to(dt)
                for n, dt in zip(self.input_names, self.input_dtypes)]

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        args = self.arguments(feed_dict)
        try:
            with torch.no_grad():
                out = self.model(*args)
        except FxtrtError:
            raise
        except Exception as exc:  # the user's model, at a size of the declared ranges
            raise self._failure(exc, args) from exc
        leaves = pytree.tree_leaves(out)
        if len(leaves) != len(self.output_names):
            raise VerificationError(
                f"the model returned {len(leaves)} tensors but the artifact has {len(self.output_names)} outputs"
            )
        outputs = OrderedDict(
            (n, t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t))
            for n, t in zip(self.output_names, leaves)
        )
        self.inference_time = time.perf_counter() - start
        return outputs

    def _failure(self, exc: Exception, args: Sequence[torch.Tensor]) -> VerificationError:
        message, source = describe_failure(exc)
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(self.input_names, args))
        return VerificationError(
            f"the original model fails eagerly at input shapes {shapes}, so it cannot be checked there: "
            f"{type(exc).__name__}: {message}", source=source,
            hint="the model must run at every size of the declared ranges: narrow them (min/max), or give the "
                 "dim a step that skips the sizes where it fails")
