"""规格第 5 节的数据集与批次整理器。

数据集就是生产的 `ugt_hf.data` 类（规格的记录格式、校验与截断），原样导出。批次整理器不同：规格的批次
（任务书 trainer.py 的循环按它取值）是

    encoder_semantic_ids / decoder_semantic_ids / labels   3 个 [B, T] 张量组成的列表（L1, L2, L3）
    encoder_mask / decoder_mask                            [B, T]

而生产契约（`ugt_hf.interfaces`）是 [B, T, 3] 张量与 *_attention_mask。这里的 `DataCollator` 做与生产
collator 相同的校验、截断与 padding，再转成规格的形式；`to_model_batch` 是反方向的转换（规格 Trainer 用它）。
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch

from ugt_hf.data.collator import DataCollator as _ContractCollator
from ugt_hf.data.datasets import PreferenceDataset, RecommendDataset, StreamingDataset
from ugt_hf.interfaces import NUM_LEVELS

__all__ = [
    "DataCollator",
    "PreferenceDataset",
    "RecommendDataset",
    "StreamingDataset",
    "to_model_batch",
    "to_spec_batch",
]

# 三层语义 ID 字段：规格是 3 个 [B, T] 的列表，契约是 [B, T, 3]
LEVEL_FIELDS = ("encoder_semantic_ids", "decoder_semantic_ids", "labels")
# 规格名 → 契约名
MASK_ALIASES = {"encoder_mask": "encoder_attention_mask", "decoder_mask": "decoder_attention_mask"}


def split_levels(x: Any) -> Any:
    """[B, T, 3] → 3 个 [B, T]（视图，不复制）；已是列表或不是这种形状时原样返回。"""
    if torch.is_tensor(x) and x.dim() == 3 and x.shape[-1] == NUM_LEVELS:
        return list(x.unbind(-1))
    return x


def stack_levels(x: Any) -> Any:
    """3 个 [B, T] → [B, T, 3]；已是张量时原样返回。"""
    if isinstance(x, (list, tuple)) and len(x) == NUM_LEVELS and all(torch.is_tensor(v) for v in x):
        return torch.stack(list(x), dim=-1)
    return x


def to_spec_batch(batch: Mapping[str, Any]) -> Dict[str, Any]:
    """契约批次 → 规格批次：三层字段拆成列表，*_attention_mask 改名为 *_mask。"""
    out: Dict[str, Any] = {}
    contract_to_spec = {v: k for k, v in MASK_ALIASES.items()}
    for key, value in batch.items():
        out[contract_to_spec.get(key, key)] = split_levels(value) if key in LEVEL_FIELDS else value
    return out


def to_model_batch(batch: Mapping[str, Any]) -> Dict[str, Any]:
    """规格批次（或契约批次）→ 契约批次：三层列表堆成 [B, T, 3]，*_mask 改名为 *_attention_mask。"""
    out: Dict[str, Any] = {}
    for key, value in batch.items():
        if key in MASK_ALIASES:
            out.setdefault(MASK_ALIASES[key], value)
        else:
            out[key] = stack_levels(value) if key in LEVEL_FIELDS else value
    return out


class DataCollator(_ContractCollator):
    """规格的批次整理器 `DataCollator(pad_token_id=0, dynamic_padding=True)`。

    参数、校验、截断与 padding 与生产的 `ugt_hf.data.DataCollator` 相同；输出规格的批次形式（见模块说明），
    可直接交给规格写法的训练循环，也可 `model(**batch)` 交给 UGT 模型（它认列表与 *_mask 别名）。
    """

    def __call__(self, features: Sequence[Any]) -> Dict[str, Any]:
        return to_spec_batch(super().__call__(features))
