"""Model presets (fiacli.models.presets): the minimal test model is one of them."""

from __future__ import annotations

import pytest

from fiacli.models import PRESETS, create_model, minimal_config, preset_config


def test_minimal_is_a_preset():
    assert {"fianet-swinb", "fianet-tiny", "fianet-minimal"} <= set(PRESETS)
    assert minimal_config() == preset_config("fianet-minimal")
    assert minimal_config(num_tmem=2, spatial_branch=False).num_tmem == 2
    assert minimal_config().embed_dim == 16 and minimal_config().text_encoder == "random"


@pytest.mark.parametrize("pretrained", [None, True, False])
def test_minimal_builds_offline_with_random_weights(pretrained):
    model = create_model("fianet-minimal", pretrained=pretrained)
    assert model.config == minimal_config()
    assert model.config.text_dim == 32


def test_preset_text_config_follows_another_text_encoder(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "bert", "hidden_size": 48, "num_hidden_layers": 1, '
        '"num_attention_heads": 2, "intermediate_size": 96, "vocab_size": 30522, '
        '"max_position_embeddings": 64}'
    )
    config = preset_config("fianet-minimal", text_encoder=str(tmp_path))
    assert config.text_dim == 48
