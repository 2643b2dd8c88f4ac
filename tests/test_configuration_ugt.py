"""UGTConfig：默认值、校验、保存/加载与 AutoConfig 注册。"""

import pytest
from transformers import AutoConfig

from ugt_hf.auto import register
from ugt_hf.configuration_ugt import UGTConfig


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
