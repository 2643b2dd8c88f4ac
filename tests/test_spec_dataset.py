"""ugt_hf/spec/dataset.py：规格批次形式与契约形式互转；规格 DataCollator 与生产 collator 的数值相同。"""

import _resume_worker as w
import torch

from ugt_hf.data.collator import DataCollator as ContractCollator
from ugt_hf.spec.dataset import DataCollator, to_model_batch, to_spec_batch


def _samples():
    out = []
    for s in w.make_samples(4):
        s = dict(s)
        for key in ("encoder_semantic_ids", "decoder_semantic_ids", "labels"):
            s[key] = list(s[key].unbind(-1))  # 数据集输出：3 个 [T]
        out.append(s)
    return out


def test_spec_collator_matches_contract_collator():
    contract = ContractCollator()(_samples())
    spec = DataCollator(pad_token_id=0, dynamic_padding=True)(_samples())
    assert isinstance(spec["encoder_semantic_ids"], list) and len(spec["labels"]) == 3
    assert "encoder_mask" in spec and "encoder_attention_mask" not in spec
    back = to_model_batch(spec)
    assert set(back) == set(contract)
    for key, value in contract.items():
        assert torch.equal(back[key], value), key


def test_round_trip_and_idempotence():
    contract = ContractCollator()(_samples())
    spec = to_spec_batch(contract)
    assert spec["decoder_semantic_ids"][1].shape == contract["decoder_semantic_ids"].shape[:2]
    for key, value in to_model_batch(to_model_batch(spec)).items():
        assert torch.equal(value, contract[key]), key
    assert to_model_batch(contract).keys() == contract.keys()
