"""transformers models compiled the way their users hold them: a tokenizer-style dict or keyword
arguments, batch and a named sequence dim dynamic, outputs named after the ModelOutput fields.

Each is compiled from batch 1; compile() verifies it, and the test checks it again through
``compiled(**inputs)`` against eager at two more batch sizes and two more sequence lengths.
"""
from __future__ import annotations

import onnx
import pytest
import torch

import fxtrt

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _text(batch: int, seq: int, vocab: int = 99) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for row in range(batch):
        mask[row, seq - row % max(1, seq // 2):] = 0 if row else 1
    return {"input_ids": torch.randint(1, vocab, (batch, seq)), "attention_mask": mask}


def _io(compiled):
    graph = onnx.load(str(compiled.onnx_path)).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def _check(compiled, model, inputs, constants=None):
    with torch.no_grad():
        want = model(**inputs, **(constants or {}))
    got = compiled(**inputs)
    assert type(got) is type(want)
    for key in compiled.output_names:
        w = want
        for part in key.split("."):
            w = w[int(part)] if part.isdigit() else w[part]
        g = got
        for part in key.split("."):
            g = g[int(part)] if part.isdigit() else g[part]
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-3)


def test_bert_from_a_tokenizer_dict_with_batch_and_seq_dynamic(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=99, max_position_embeddings=64, **SMALL)).eval()
    example = {**_text(1, 8), "token_type_ids": torch.zeros(1, 8, dtype=torch.int64)}
    seq = {1: "seq"}
    compiled = fxtrt.compile(model, example, batch=(1, 4, 8), out_dir=tmp_path / "out",
                             dynamic={"input_ids": seq, "attention_mask": seq, "token_type_ids": seq},
                             dims={"seq": (4, 8, 32)})
    assert compiled.report.verified
    assert _io(compiled) == (["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state", "pooler_output"])
    graph = onnx.load(str(compiled.onnx_path)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    for batch, length in [(3, 11), (5, 27)]:
        inputs = {**_text(batch, length), "token_type_ids": torch.zeros(batch, length, dtype=torch.int64)}
        _check(compiled, model, inputs)
    with pytest.raises(fxtrt.ConfigError, match="'token_type_ids' missing"):
        compiled(**_text(2, 8))


def test_t5_with_keywords_and_use_cache_false_as_a_constant(tmp_path):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    model = transformers.T5Model(config).eval()
    kwargs = {**_text(1, 8), "decoder_input_ids": torch.randint(1, 99, (1, 5)), "use_cache": False}
    compiled = fxtrt.compile(model, kwargs=kwargs, batch=(1, 4, 8), out_dir=tmp_path / "out",
                             dynamic={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"},
                                      "decoder_input_ids": {1: "dec"}},
                             dims={"seq": (4, 8, 32), "dec": (2, 5, 16)})
    assert compiled.report.verified
    assert compiled.report.stages["inputs"]["constants"] == {"use_cache": "False"}
    inputs, outputs = _io(compiled)
    assert inputs == ["input_ids", "attention_mask", "decoder_input_ids"]
    assert outputs == ["last_hidden_state", "encoder_last_hidden_state"]
    for batch, length, dec in [(3, 11, 3), (5, 27, 9)]:
        _check(compiled, model, {**_text(batch, length), "decoder_input_ids": torch.randint(1, 99, (batch, dec))},
               {"use_cache": False})


def test_clip_with_text_and_pixels_names_its_outputs(tmp_path):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=32, **SMALL),
        vision_config=dict(image_size=32, patch_size=8, **SMALL), projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    example = {**_text(1, 8), "pixel_values": torch.randn(1, 3, 32, 32)}
    compiled = fxtrt.compile(model, example, batch=(1, 4, 8), out_dir=tmp_path / "out",
                             dynamic={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
                             dims={"seq": (4, 8, 32)})
    assert compiled.report.verified
    inputs, outputs = _io(compiled)
    assert inputs == ["input_ids", "pixel_values", "attention_mask"]
    assert outputs[:2] == ["logits_per_image", "logits_per_text"]
    assert len(set(outputs)) == len(outputs)
    for batch, length in [(3, 11), (5, 27)]:
        _check(compiled, model, {**_text(batch, length), "pixel_values": torch.randn(batch, 3, 32, 32)})
