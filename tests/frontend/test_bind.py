"""Keyword and dict inputs, dims by name, output names from the output structure."""
from __future__ import annotations

import inspect
from collections import OrderedDict

import pytest
import torch
import torch.utils._pytree as pytree

from fxtrt.errors import ConfigError
from fxtrt.frontend.bind import bind, output_names, resolve_dims


class Encoder(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, return_dict=True):
        out = input_ids.float() * attention_mask
        return {"last_hidden_state": out, "pooler_output": out.sum(1)} if return_dict else (out,)


def _ids():
    return torch.randint(0, 9, (1, 6)), torch.ones(1, 6)


def test_a_dict_becomes_named_inputs_in_signature_order_and_constants():
    ids, mask = _ids()
    module, tensors, b = bind(Encoder(), {"attention_mask": mask, "input_ids": ids, "return_dict": False}, None)
    assert b.names == ("input_ids", "attention_mask") and b.constants == {"return_dict": False}
    assert tensors[0] is ids and tensors[1] is mask
    assert list(inspect.signature(module.forward).parameters) == ["input_ids", "attention_mask"]
    assert isinstance(module(*tensors), tuple), "the constant reaches the model"
    assert not hasattr(module.model, "_binding"), "nothing is set on the user's model"


def test_positional_inputs_leave_the_model_unwrapped():
    model = Encoder()
    module, tensors, b = bind(model, _ids(), None)
    assert module is model and b.names == ("input_ids", "attention_mask") and not b.keywords


def test_calls_map_by_keyword_by_dict_and_fail_by_name():
    ids, mask = _ids()
    _, _, b = bind(Encoder(), None, {"input_ids": ids, "attention_mask": mask, "return_dict": False})
    assert b.tensors((), {"attention_mask": mask, "input_ids": ids}) == (ids, mask)
    assert b.tensors(({"input_ids": ids, "attention_mask": mask},), {}) == (ids, mask)
    assert b.tensors((), {"input_ids": ids, "attention_mask": mask, "return_dict": False}) == (ids, mask)
    with pytest.raises(ConfigError, match="'attention_mask' missing"):
        b.tensors((), {"input_ids": ids})
    with pytest.raises(ConfigError, match="'token_type_ids' is not an input"):
        b.tensors((), {"input_ids": ids, "attention_mask": mask, "token_type_ids": ids})
    with pytest.raises(ConfigError, match="return_dict=True differs"):
        b.tensors((), {"input_ids": ids, "attention_mask": mask, "return_dict": True})


def test_unknown_keywords_and_nested_tensors_are_refused():
    ids, mask = _ids()
    with pytest.raises(ConfigError, match="'pixel_values' is not a parameter"):
        bind(Encoder(), {"input_ids": ids, "pixel_values": mask}, None)
    with pytest.raises(ConfigError, match="holds tensors inside a tuple"):
        bind(Encoder(), {"input_ids": ids, "attention_mask": (mask,)}, None)


def test_dims_by_input_name_and_symbol():
    ids, mask = _ids()
    _, tensors, b = bind(Encoder(), {"input_ids": ids, "attention_mask": mask}, None)
    batch_dims, dynamic = resolve_dims(
        b, tensors, (1, 4, 8), {"input_ids": 0, "attention_mask": 0},
        {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}, {"seq": (2, 6, 32)})
    assert batch_dims == (0, 0)
    assert dynamic == {0: {1: ("seq", 2, 6, 32)}, 1: {1: ("seq", 2, 6, 32)}}
    with pytest.raises(ConfigError, match="'mask' is not an input"):
        resolve_dims(b, tensors, None, None, {"mask": {1: (2, 6, 32)}}, None)
    with pytest.raises(ConfigError, match="names dim 'len'"):
        resolve_dims(b, tensors, None, None, {"input_ids": {1: "len"}}, None)


def _spec(value):
    return pytree.tree_flatten(value)[1]


def test_output_names_follow_the_structure():
    t = torch.zeros(1)
    assert output_names(_spec(t)) == ("output",)
    assert output_names(_spec((t, t))) == ("output_0", "output_1")
    assert output_names(_spec(OrderedDict(out=t))) == ("out",)
    assert output_names(_spec({"logits": t, "past_key_values": ((t, t),)})) == (
        "logits", "past_key_values.0.0", "past_key_values.0.1")
    assert output_names(_spec(({"a b": t}, t))) == ("output_0.a_b", "output_1")


def test_model_output_fields_name_the_outputs():
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.BaseModelOutputWithPooling(
        last_hidden_state=torch.zeros(1, 2), pooler_output=torch.zeros(1))
    assert output_names(_spec(out)) == ("last_hidden_state", "pooler_output")
