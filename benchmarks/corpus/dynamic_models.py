"""The ``dyn`` family: real models whose image size, sequence or audio length is dynamic too, not just the batch.

Each entry names its dynamic dims (``DynamicDim``) and the sizes it is
judged at: the min, the max and a size in between that is not the export
example's, chosen off fxtrt's own verification grid where the model allows
any size (100 for the conv nets, whose range 64..128 has grid 32).  Batches
are exported for 1..8 and judged at 1, 3 and 8, so every case stays cheap
on 2 cores.  Weights are random, configs small, nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.corpus.transformers_models import VOCAB, SingleInputModel, text_model, wav2vec2_model
from benchmarks.inputs import audio_with_mask, images, token_ids
from benchmarks.model_spec import DynamicDim, ModelSpec

BATCH_RANGE = (1, 4, 8)
JUDGE_BATCHES = (1, 3, 8)
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "max_position_embeddings": 128,
}

IMAGE = DynamicDim("size", 64, 96, 128)
SEQ = DynamicDim("seq", 4, 16, 64)
SAMPLES = DynamicDim("samples", 400, 800, 1600)
YOLO_SIZE = DynamicDim("size", 320, 480, 640, step=32)


class FirstOutput(nn.Module):
    """``model(x)[0]``: a YOLO detection model's decoded predictions, without its raw per-level maps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def _torchvision(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _segformer() -> nn.Module:
    from transformers import SegformerConfig, SegformerModel

    cfg = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32,
    )
    return SingleInputModel(SegformerModel(cfg), "pixel_values", "last_hidden_state")


def _yolo(config: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        # Ultralytics writes a settings file on import, and sets OMP_NUM_THREADS=1 unless it is set:
        # keep the first in /tmp and the job's thread count as it was.
        os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "fxtrt-bench-ultralytics"))
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        os.environ.setdefault("YOLO_VERBOSE", "False")
        from ultralytics.nn.tasks import DetectionModel

        return FirstOutput(DetectionModel(config, verbose=False))

    return build


def _image_spec(name: str, build: Callable[[], nn.Module], dim: DynamicDim, sizes: tuple[int, ...], note: str) -> ModelSpec:
    return ModelSpec(
        name=f"dyn/{name}", build=build, make_inputs=images(3, dim.name, dim.name),
        dynamic={0: {2: dim, 3: dim}}, judge_sizes={dim.name: sizes},
        batch_range=BATCH_RANGE, judge_batches=JUDGE_BATCHES, note=note,
    )


def _text_spec(name: str, build: Callable[[], nn.Module], note: str) -> ModelSpec:
    return ModelSpec(
        name=f"dyn/{name}", build=build, make_inputs=token_ids(VOCAB, SEQ.name),
        input_names=("input_ids", "attention_mask"), batch_dims=(0, 0),
        dynamic={0: {1: SEQ}, 1: {1: SEQ}}, judge_sizes={SEQ.name: (4, 23, 64)},
        batch_range=BATCH_RANGE, judge_batches=JUDGE_BATCHES, note=note,
    )


SPECS: tuple[ModelSpec, ...] = (
    _image_spec("resnet18", _torchvision("resnet18"), IMAGE, (64, 100, 128), "H=W dynamic; adaptive pooling"),
    _image_spec(
        "deeplabv3_mobilenet_v3_large",
        _torchvision("deeplabv3_mobilenet_v3_large", weights_backbone=None, num_classes=21),
        IMAGE, (64, 100, 128), "dict output 'out' upsampled back to the input's H x W",
    ),
    _image_spec(
        "segformer", _segformer, IMAGE, (64, 100, 128),
        "overlapping patch merging; efficient attention with spatial reduction",
    ),
    _text_spec(
        "bert", text_model("BertModel", "BertConfig", vocab_size=VOCAB, **TINY_TEXT),
        "seq dynamic; position ids sliced from a buffer",
    ),
    _text_spec(
        "distilbert",
        text_model("DistilBertModel", "DistilBertConfig", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2,
              hidden_dim=64, max_position_embeddings=128),
        "seq dynamic",
    ),
    _text_spec(
        "gpt2",
        text_model("GPT2LMHeadModel", "GPT2Config", key="logits", vocab_size=VOCAB, n_positions=128, n_embd=32,
              n_layer=2, n_head=2, use_cache=False, bos_token_id=0, eos_token_id=2),
        "seq dynamic; causal mask built from the sequence length",
    ),
    ModelSpec(
        name="dyn/wav2vec2", build=wav2vec2_model(hidden_size=32, num_attention_heads=2, intermediate_size=64),
        make_inputs=audio_with_mask(SAMPLES.name),
        input_names=("input_values", "attention_mask"), batch_dims=(0, 0),
        dynamic={0: {1: SAMPLES}, 1: {1: SAMPLES}}, judge_sizes={SAMPLES.name: (400, 1111, 1600)},
        batch_range=BATCH_RANGE, judge_batches=JUDGE_BATCHES,
        note="audio length dynamic; frames and mask from the conv feature extractor's output lengths",
    ),
    ModelSpec(
        name="dyn/yolov8n_batch", build=_yolo("yolov8n.yaml"), make_inputs=images(3, 640, 640),
        batch_range=BATCH_RANGE, judge_batches=JUDGE_BATCHES, note="ultralytics DetectionModel, batch only, 640x640",
    ),
    _image_spec(
        "yolov8n", _yolo("yolov8n.yaml"), YOLO_SIZE, (320, 416, 640),
        "anchors and strides made from the feature-map sizes",
    ),
    _image_spec("yolo11n", _yolo("yolo11n.yaml"), YOLO_SIZE, (320, 416, 640), "C2PSA attention over H*W positions"),
)
