import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    # torch.onnx's helpers log at INFO through the root logger; keep test output readable.
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
