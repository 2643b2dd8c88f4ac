"""interfaces.py：TrainerInterface 是抽象的，输出契约检查能发现错误形状。"""

import pytest
import torch

from ugt_hf.interfaces import GenerativeRecOutput, TrainerInterface, check_model_output, get_output


def test_trainer_interface_is_abstract():
    with pytest.raises(TypeError):
        TrainerInterface()

    class Partial(TrainerInterface):
        def train_epoch(self):
            return {}

    with pytest.raises(TypeError):
        Partial()


def test_output_contract_accepts_valid_and_dict():
    out = GenerativeRecOutput(
        l1_logits=torch.zeros(2, 3, 4), l2_logits=torch.zeros(2, 3, 5), l3_logits=torch.zeros(2, 3, 6),
        user_repr=torch.zeros(2, 8), item_repr=torch.zeros(2, 8), aux_loss=torch.tensor(0.1),
    )
    check_model_output(out, 2, 3)
    check_model_output(dict(out), 2, 3)
    assert get_output(dict(out), "aux_loss").item() == pytest.approx(0.1)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("l3_logits", None, "missing required field 'l3_logits'"),
        ("l2_logits", torch.zeros(2, 4, 5), "l2_logits"),
        ("user_repr", torch.zeros(3, 8), "user_repr"),
        ("aux_loss", torch.zeros(2), "aux_loss"),
    ],
)
def test_output_contract_rejects(field, value, msg):
    out = dict(l1_logits=torch.zeros(2, 3, 4), l2_logits=torch.zeros(2, 3, 5), l3_logits=torch.zeros(2, 3, 6))
    out[field] = value
    with pytest.raises(ValueError, match=msg):
        check_model_output(out, 2, 3)
