"""Issue 16, defect 7: transformers decoders as their users hold them, and outputs torch.export
cannot flatten.

A decoder built straight from its config keeps ``use_cache=True`` and returns a ``DynamicCache``.
Before the fix (commit 371e385) compile failed with a pytree error about it and the false hint
"check that the model runs eagerly". Now the cache is compiled as named outputs
(``past_key_values.<layer>.key``/``.value``; transformers 5 names the field ``cache``) and ``compiled(**tokens)``
hands back a ``DynamicCache``. Any other output type torch cannot flatten is named in the error, and
a failed export says whether the model itself fails eagerly at those shapes. Every test here
failed at 371e385.
"""
from __future__ import annotations

import onnx
import pytest
import torch

import fxtrt

transformers = pytest.importorskip("transformers")

SEQ = {1: "seq"}
TEXT_DIMS = dict(dynamic={"input_ids": SEQ, "attention_mask": SEQ}, dims={"seq": (4, 16, 32)})
CACHE_NAMES = ("last_hidden_state", "past_key_values.0.key", "past_key_values.1.key", "past_key_values.0.value",
               "past_key_values.1.value")


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=99, n_positions=64)
    return transformers.GPT2Model(config)


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaModel(config)


def _tokens(batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Right-padded text: row r has its last r tokens masked out."""
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, seq - row:] = 0
    return {"input_ids": torch.randint(1, 99, (batch, seq)), "attention_mask": mask}


def _value(output, name: str) -> torch.Tensor:
    """The tensor ``name`` (``last_hidden_state``, ``past_key_values.1.value``) picks out of a model output
    (transformers 5 holds the cache in the field ``cache``)."""
    field, *rest = name.split(".")
    value = output["cache" if field == "past_key_values" else field]
    if rest:
        layer = value.layers[int(rest[0])]
        value = layer.keys if rest[1] == "key" else layer.values
    return value


def _outputs_match(got, want) -> None:
    for name in CACHE_NAMES:
        torch.testing.assert_close(_value(got, name), _value(want, name), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_decoder_with_its_default_cache_compiles_with_the_cache_as_named_outputs(build, tmp_path):
    torch.manual_seed(0)
    model = build()  # as constructed: train mode, use_cache=True, never called before compile
    torch.manual_seed(0)
    twin = build()
    assert model.config.use_cache and model.training
    compiled = fxtrt.compile(model, _tokens(1, 8), batch=(1, 4, 8), out_dir=tmp_path / "out", **TEXT_DIMS)

    assert compiled.report.verified
    assert compiled.output_names == CACHE_NAMES
    graph = onnx.load(str(compiled.onnx_path)).graph
    assert [o.name for o in graph.output] == list(CACHE_NAMES)
    assert [d.dim_param for d in graph.output[1].type.tensor_type.shape.dim][::2] == ["batch", "seq"]

    # compile left the model as it was: same flags, and the same outputs as its twin
    assert model.training and model.config.use_cache
    model.eval(), twin.eval()
    check = _tokens(2, 9)
    with torch.no_grad():
        _outputs_match(model(**check), twin(**check))

    for batch, seq in [(3, 7), (5, 23)]:
        tokens = _tokens(batch, seq)
        with torch.no_grad():
            want = model(**tokens)
        got = compiled(**tokens)
        assert type(got) is type(want)
        assert type(got.cache) is transformers.DynamicCache
        assert got.cache.get_seq_length() == seq
        _outputs_match(got, want)


def test_a_cache_type_torch_cannot_flatten_asks_for_use_cache_false(tmp_path):
    """T5's default cache is an EncoderDecoderCache, which has no pytree registration."""
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    model = transformers.T5Model(config)
    example = {**_tokens(1, 8), "decoder_input_ids": torch.randint(1, 99, (1, 5))}
    with pytest.raises(fxtrt.ConfigError) as info:
        fxtrt.compile(model, example, batch=(1, 4, 8), out_dir=tmp_path / "out", **TEXT_DIMS)
    error = info.value
    assert "EncoderDecoderCache" in error.message
    assert "use_cache=False" in error.hint
    assert """'transformers:T5Model:{"use_cache": false}'""" in error.hint
    assert error.source and "modeling_t5.py" in error.source
    assert "runs eagerly" not in str(error)


class Box:
    """An output type with no pytree registration."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class ReturnsBox(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Box:
        return Box(x * 2)


def test_an_output_type_torch_cannot_flatten_is_named(tmp_path):
    with pytest.raises(fxtrt.CaptureError) as info:
        fxtrt.compile(ReturnsBox(), torch.randn(1, 4), batch=(1, 4, 8), out_dir=tmp_path / "out")
    error = info.value
    assert f"{__name__}.Box" in error.message and "cannot flatten" in error.message
    assert "register_pytree_node" in error.hint and "Box" in error.hint
    assert error.source and error.source.startswith(__file__)
    assert "check that the model runs eagerly" not in str(error)


class ThroughNumpy(torch.nn.Module):
    """Runs eagerly at every size; torch.export cannot trace ``.numpy()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2)


class OnlyBatchOne(torch.nn.Module):
    """Runs on its batch-1 example, and fails eagerly at the other batch sizes compile traces."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(1, 4))


def test_a_failed_export_says_whether_the_model_runs_eagerly(tmp_path):
    with pytest.raises(fxtrt.CaptureError, match="though the model runs eagerly there") as info:
        fxtrt.compile(ThroughNumpy(), torch.randn(1, 4), batch=(1, 4, 8), out_dir=tmp_path / "a")
    assert info.value.source and info.value.source.startswith(__file__)
    with pytest.raises(fxtrt.CaptureError, match=r"the model itself fails at input shapes .*\(run eagerly") as info:
        fxtrt.compile(OnlyBatchOne(), torch.randn(1, 4), batch=(1, 4, 8), out_dir=tmp_path / "b")
    assert "invalid for input of size" in info.value.message
    assert info.value.source and info.value.source.startswith(__file__)
