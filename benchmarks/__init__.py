"""Benchmarks for fxtrt.

The fidelity benchmark (``python -m benchmarks.fidelity``) exports a corpus of
real models with fxtrt and with the seed's two ``torch.onnx`` recipes, then
checks each ONNX file against eager PyTorch at several batch sizes.
"""
