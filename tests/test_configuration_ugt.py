"""UGTConfig：默认值、校验、保存/加载与 AutoConfig 注册。"""

import pytest
from transformers import AutoConfig

from ugt_hf.auto import register
from ugt_hf.configuration_ugt import UGTConfig, unknown_config_keys


def test_defaults_follow_spec():
    c = UGTConfig()
    assert c.model_type == "ugt"
    assert c.vocab_sizes == [1024, 4096, 16384]
    assert c.pad_token_id == 0
    assert c.hidden_size == c.d_model  # attribute_map
    assert c.is_moe and c.num_experts_per_tok <= c.num_experts


def test_top_k_alias_and_dense():
    c = UGTConfig(num_experts=1, top_k=1)
    assert c.num_experts_per_tok == 1 and not c.is_moe


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vocab_sizes": [4, 4]}, "vocab_sizes"),
        ({"d_model": 30, "num_heads": 4}, "d_model"),
        ({"num_experts": 2, "num_experts_per_tok": 3}, "num_experts_per_tok"),
        ({"user_pooling": "max"}, "user_pooling"),
        ({"num_experts": 0}, "num_experts"),
        ({"dropout": 2.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"d_model": "big"}, "d_model"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"router_aux_loss_coef": -1}, "router_aux_loss_coef"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        UGTConfig(**kwargs)


def test_save_load_and_autoconfig(tmp_path):
    register()
    c = UGTConfig(vocab_sizes=[8, 16, 32], d_model=32, num_heads=2, num_experts=3, num_experts_per_tok=2,
                  router_z_loss_coef=0.01)
    c.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, UGTConfig)
    for key in ("vocab_sizes", "d_model", "num_heads", "num_experts", "num_experts_per_tok", "router_z_loss_coef"):
        assert getattr(loaded, key) == getattr(c, key)


def test_unknown_keys_get_a_suggestion_and_saved_configs_have_none(tmp_path):
    """PretrainedConfig 收下任何键：用户写的 model_config 要先查（training.stages 用它报错）。"""
    assert unknown_config_keys(["d_modle", "dropout", "top_k", "hidden_size", "zzz"]) == [("d_modle", "d_model"),
                                                                                          ("zzz", None)]
    UGTConfig(d_model=16, num_heads=2).save_pretrained(tmp_path)
    import json

    assert unknown_config_keys(json.loads((tmp_path / "config.json").read_text())) == []
