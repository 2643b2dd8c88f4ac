"""ugt_hf.data.collator：手工构造的 2 样本批次，逐个张量精确比对（同 TRL 的 collator 测试）。"""

import pytest
import torch

from ugt_hf.data.collator import DataCollator, PreferenceCollator
from ugt_hf.data.validation import DataValidationError
from ugt_hf.interfaces import MODEL_INPUT_KEYS

L = torch.long


def sample_a():
    # encoder 3 个 token（第一个是特殊位），decoder = [BOS, 物品]
    return {
        "encoder_semantic_ids": [torch.tensor([0, 1, 2]), torch.tensor([0, 10, 20]), torch.tensor([0, 100, 200])],
        "encoder_positions": torch.tensor([0, 1, 2]),
        "encoder_token_types": torch.tensor([0, 1, 1]),
        "encoder_mask": torch.tensor([1, 1, 1]),
        "decoder_semantic_ids": [torch.tensor([0, 3]), torch.tensor([0, 30]), torch.tensor([0, 300])],
        "decoder_positions": torch.tensor([0, 1]),
        "decoder_token_types": torch.tensor([0, 1]),
        "decoder_mask": torch.tensor([1, 1]),
        "labels": [torch.tensor([3, 4]), torch.tensor([30, 40]), torch.tensor([300, -100])],
        "user_id": "a",
    }


def sample_b():
    # 更短的 encoder，更长的 decoder；语义 ID 用 [T, 3] 张量给出，且没有 decoder_mask（规格原始结构）
    return {
        "encoder_semantic_ids": torch.tensor([[5, 50, 500]]),
        "encoder_positions": torch.tensor([0]),
        "encoder_token_types": torch.tensor([1]),
        "encoder_mask": torch.tensor([1]),
        "decoder_semantic_ids": torch.tensor([[0, 0, 0], [6, 60, 600], [7, 70, 700]]),
        "decoder_positions": torch.tensor([0, 1, 2]),
        "decoder_token_types": torch.tensor([0, 1, 1]),
        "labels": torch.tensor([[6, 60, 600], [7, 70, 700], [8, 80, 800]]),
    }


def raw_record_b():
    """sample_b 的原始 schema 记录形式。"""
    return {
        "user_id": 2,
        "encoder_l1_ids": [5], "encoder_l2_ids": [50], "encoder_l3_ids": [500],
        "encoder_positions": [0], "encoder_token_types": [1], "encoder_mask": [1],
        "decoder_l1_ids": [0, 6, 7], "decoder_l2_ids": [0, 60, 70], "decoder_l3_ids": [0, 600, 700],
        "decoder_positions": [0, 1, 2], "decoder_token_types": [0, 1, 1], "decoder_mask": [1, 1, 1],
        "labels_l1": [6, 7, 8], "labels_l2": [60, 70, 80], "labels_l3": [600, 700, 800],
    }


EXPECTED = {
    "encoder_semantic_ids": torch.tensor(
        [[[0, 0, 0], [1, 10, 100], [2, 20, 200]],
         [[5, 50, 500], [9, 9, 9], [9, 9, 9]]], dtype=L),
    "encoder_positions": torch.tensor([[0, 1, 2], [0, 0, 0]], dtype=L),
    "encoder_token_types": torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=L),
    "encoder_attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=L),
    "decoder_semantic_ids": torch.tensor(
        [[[0, 0, 0], [3, 30, 300], [9, 9, 9]],
         [[0, 0, 0], [6, 60, 600], [7, 70, 700]]], dtype=L),
    "decoder_positions": torch.tensor([[0, 1, 0], [0, 1, 2]], dtype=L),
    "decoder_token_types": torch.tensor([[0, 1, 0], [0, 1, 1]], dtype=L),
    "decoder_attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=L),
    "labels": torch.tensor(
        [[[3, 30, 300], [4, 40, -100], [-100, -100, -100]],
         [[6, 60, 600], [7, 70, 700], [8, 80, 800]]], dtype=L),
}


def assert_batch_equal(batch, expected):
    assert set(batch) == set(expected)
    for k, v in expected.items():
        assert batch[k].dtype == v.dtype, k
        assert torch.equal(batch[k], v), f"{k}:\n{batch[k]}\n!=\n{v}"


@pytest.mark.parametrize("second", [sample_b, raw_record_b])
def test_exact_tensors_two_samples(second):
    batch = DataCollator(pad_token_id=9)([sample_a(), second()])
    assert_batch_equal(batch, EXPECTED)
    assert set(batch) == set(MODEL_INPUT_KEYS)  # 正是模型 forward 的关键字参数


def test_semantic_pad_id_is_the_new_name_of_pad_token_id():
    batch = DataCollator(semantic_pad_id=9)([sample_a(), sample_b()])
    assert_batch_equal(batch, EXPECTED)
    c = PreferenceCollator(semantic_pad_id=3)
    assert c.semantic_pad_id == 3 and c.pad_token_id == 3
    assert DataCollator().semantic_pad_id == 0 and DataCollator(pad_token_id=9, semantic_pad_id=9).semantic_pad_id == 9
    with pytest.raises(ValueError, match="differ"):
        DataCollator(pad_token_id=1, semantic_pad_id=2)
    with pytest.raises(ValueError, match="semantic_pad_id must be a non-negative integer"):
        DataCollator(semantic_pad_id=-1)


def test_static_padding_and_multiple_of():
    batch = DataCollator(pad_token_id=9, dynamic_padding=False, max_encoder_length=5, max_decoder_length=4)(
        [sample_a(), sample_b()])
    assert batch["encoder_semantic_ids"].shape == (2, 5, 3) and batch["labels"].shape == (2, 4, 3)
    assert torch.equal(batch["encoder_attention_mask"], torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]))
    assert torch.equal(batch["labels"][:, 3], torch.full((2, 3), -100))
    assert torch.equal(batch["encoder_semantic_ids"][:, :3], EXPECTED["encoder_semantic_ids"])
    b2 = DataCollator(pad_to_multiple_of=4)([sample_a(), sample_b()])
    assert b2["encoder_positions"].shape == (2, 4) and b2["decoder_positions"].shape == (2, 4)
    with pytest.raises(ValueError, match="max_encoder_length"):
        DataCollator(dynamic_padding=False)


def test_truncation_in_collator_matches_dataset_rule():
    batch = DataCollator(max_encoder_length=2, max_decoder_length=1)([sample_a(), sample_b()])
    # sample_a 开头是特殊位：保留它 + 最近的 1 个物品；decoder 只留第一个 token
    assert batch["encoder_semantic_ids"][0].tolist() == [[0, 0, 0], [2, 20, 200]]
    assert batch["encoder_positions"][0].tolist() == [0, 1]
    assert batch["labels"].shape == (2, 1, 3) and batch["labels"][1, 0].tolist() == [6, 60, 600]


def test_collator_errors_name_sample_and_field():
    bad = sample_b()
    bad["labels"] = torch.tensor([[6, 60, 600]])
    with pytest.raises(DataValidationError, match=r"field 'labels': batch sample 1"):
        DataCollator()([sample_a(), bad])
    raw = raw_record_b()
    raw["encoder_l2_ids"] = []
    with pytest.raises(DataValidationError, match=r"field 'encoder_l2_ids': batch sample 0"):
        DataCollator()([raw])
    raw = raw_record_b()
    raw["encoder_l1_ids"] = [2000]
    with pytest.raises(DataValidationError, match="out-of-vocabulary"):
        DataCollator(vocab_sizes=(1024, 4096, 16384))([raw])
    with pytest.raises(DataValidationError, match="neither"):
        DataCollator()([{"foo": 1}])
    with pytest.raises(ValueError, match="empty"):
        DataCollator()([])
    bad = sample_b()
    bad["decoder_positions"] = bad["decoder_positions"].reshape(-1, 1)  # [Td, 1]：长度对，但不是一维
    with pytest.raises(DataValidationError, match=r"field 'decoder_positions': batch sample 0: expected a 1-D"):
        DataCollator()([bad])


def pref(ids, chosen, rejected, score=None):
    s = {
        "encoder_semantic_ids": [torch.tensor([i[lvl] for i in ids]) for lvl in range(3)],
        "encoder_positions": torch.arange(len(ids)),
        "encoder_token_types": torch.ones(len(ids), dtype=L),
        "encoder_mask": torch.ones(len(ids), dtype=L),
        "chosen_ids": torch.tensor(chosen),
        "rejected_ids": torch.tensor(rejected),
    }
    if score is not None:
        s["preference_score"] = torch.tensor(score)
    return s


def test_preference_collator_exact():
    raw = {
        "user_id": "u",
        "user_sequence": {"encoder_l1_ids": [4], "encoder_l2_ids": [5], "encoder_l3_ids": [6],
                          "encoder_positions": [0],
                          "encoder_token_types": [1], "encoder_mask": [1]},
        "chosen_item": {"l1_id": 7, "l2_id": 8, "l3_id": 9},
        "rejected_item": {"l1_id": 7, "l2_id": 8, "l3_id": 10},
        "preference_score": 0.5,
    }
    batch = PreferenceCollator(pad_token_id=0)([pref([(1, 2, 3), (4, 5, 6)], [1, 1, 1], [2, 2, 2], 0.8), raw])
    assert torch.equal(batch["encoder_semantic_ids"], torch.tensor([[[1, 2, 3], [4, 5, 6]], [[4, 5, 6], [0, 0, 0]]]))
    assert torch.equal(batch["encoder_attention_mask"], torch.tensor([[1, 1], [1, 0]]))
    assert torch.equal(batch["encoder_positions"], torch.tensor([[0, 1], [0, 0]]))
    assert torch.equal(batch["chosen_ids"], torch.tensor([[1, 1, 1], [7, 8, 9]]))
    assert torch.equal(batch["rejected_ids"], torch.tensor([[2, 2, 2], [7, 8, 10]]))
    assert batch["preference_score"].dtype == torch.float32
    assert torch.allclose(batch["preference_score"], torch.tensor([0.8, 0.5]))
    # 缺省分数为 1.0
    b = PreferenceCollator()([pref([(1, 2, 3)], [1, 1, 1], [2, 2, 2])])
    assert b["preference_score"].tolist() == [1.0]
    with pytest.raises(DataValidationError, match="chosen_ids"):
        PreferenceCollator()([{**pref([(1, 2, 3)], [1, 1], [2, 2, 2])}])
    # 数据集输出路径上的分数与原始记录同一规则（有限且 >= 0），错误指明样本与字段
    for score, text in ((float("nan"), "finite"), (-1.0, "finite"), ("high", "expected a number")):
        s = pref([(1, 2, 3)], [1, 1, 1], [2, 2, 2])
        s["preference_score"] = score
        with pytest.raises(DataValidationError, match=rf"field 'preference_score': batch sample 0: .*{text}"):
            PreferenceCollator()([s])
