"""Model specs as the CLI takes them: each form builds a real, randomly initialised model offline."""
from __future__ import annotations

import sys

import pytest
import torch

from fxtrt.errors import ConfigError
from fxtrt.zoo import load_model

BERT = 'transformers:BertModel:{"num_hidden_layers":1,"hidden_size":32,"num_attention_heads":2,"intermediate_size":64}'


def test_torchvision_spec_still_works():
    model = load_model("torchvision:resnet18")
    assert not model.training
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_file_and_module_factories_still_work():
    from tests import seed_models as sm

    assert type(load_model(f"{sm.__file__}:SizeView")).__name__ == "SizeView"
    assert type(load_model("tests.seed_models:SizeView")).__name__ == "SizeView"


def test_timm_spec_builds_the_named_model():
    model = load_model("timm:resnet18")
    assert type(model).__name__ == "ResNet" and not model.training
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_timm_spec_passes_json_keyword_arguments():
    model = load_model('timm:resnet18:{"num_classes": 7}')
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_transformers_spec_uses_the_class_config_with_overrides():
    model = load_model(BERT)
    assert type(model).__name__ == "BertModel" and not model.training
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (1, 32, 2, 64)
    assert cfg.vocab_size == type(cfg)().vocab_size, "everything else keeps the config class's defaults"
    out = model(input_ids=torch.randint(0, 100, (2, 8)))
    assert out.last_hidden_state.shape == (2, 8, 32)


def test_ultralytics_spec_picks_the_task_model_class():
    detect = load_model("ultralytics:yolov8n.yaml")
    assert type(detect).__name__ == "DetectionModel" and not detect.training
    assert isinstance(detect(torch.randn(1, 3, 64, 64))[0], torch.Tensor)
    assert type(load_model("ultralytics:yolov8n-cls.yaml")).__name__ == "ClassificationModel"


@pytest.mark.parametrize("spec, message", [
    ('transformers:BertModel:{"num_hidden_layers":1', "not valid JSON"),
    ("transformers:BertModel:[1, 2]", "must be a JSON object"),
    ("transformers:NoSuchModel", "transformers has no class 'NoSuchModel'"),
    ("transformers:pipeline", "is not a model class"),
    ('transformers:BertModel:{"num_hidden_layer":1}', "BertConfig has no attribute 'num_hidden_layer'"),
    ("timm:no_such_net", "timm has no model 'no_such_net'"),
    ('timm:resnet18:{"no_such_kwarg": 1}', "timm could not build resnet18"),
    ("torchvision:no_such_net", "torchvision has no model 'no_such_net'"),
    ("ultralytics:yolov8n.pt", "built from a yaml"),
    ("ultralytics:no_such_model.yaml", "ultralytics has no model yaml"),
    ("timm:", "names no model"),
    ("resnet18", "must look like one of"),
])
def test_bad_specs_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_model(spec)
    assert "\n" not in info.value.message


def test_a_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` sees when timm is not installed
    with pytest.raises(ConfigError) as info:
        load_model("timm:resnet18")
    assert str(info.value) == "timm is not installed: pip install 'fxtrt[bench]'"
