"""规格中的公共接口：`TrainerInterface` 与模型输出契约。

训练器（UGTTrainer / UGTDPOTrainer）只依赖这里的契约，因此任何满足契约的模型都能被训练；
参考模型（modeling_ugt.py）只是其中一个实现。

批次（DataCollator 的输出、模型 forward 的关键字参数）约定：
    encoder_semantic_ids   [B, Te, 3]  每个位置的 (l1, l2, l3)；也接受规格的 3 个 [B, Te] 张量组成的列表
    encoder_positions      [B, Te]
    encoder_token_types    [B, Te]     0 = 特殊位（BOS/用户，语义 ID 忽略），1 = 物品
    encoder_attention_mask [B, Te]     1 = 有效，0 = padding（规格记录里叫 encoder_mask）
    decoder_semantic_ids   [B, Td, 3]  第 0 位是 BOS（token_type 0），其后是物品
    decoder_positions      [B, Td]
    decoder_token_types    [B, Td]
    decoder_attention_mask [B, Td]
    labels                 [B, Td, 3]  labels[:, t] = 位置 t+1 的物品（即下一个物品），padding 为 -100
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
from transformers.utils import ModelOutput

# 语义 ID 层数固定为 3（L1/L2/L3）
NUM_LEVELS = 3
IGNORE_INDEX = -100
# 语义 ID 的 padding 值（schema 的 pad_token_id）；与 tokenizer 的 "<pad>" token id 不是一回事
SEMANTIC_PAD_ID = 0
SPECIAL_TOKEN_TYPE = 0
ITEM_TOKEN_TYPE = 1

# 模型 forward 接受的批次键（规格的关键字参数 + labels）
MODEL_INPUT_KEYS = (
    "encoder_semantic_ids",
    "encoder_positions",
    "encoder_token_types",
    "encoder_attention_mask",
    "decoder_semantic_ids",
    "decoder_positions",
    "decoder_token_types",
    "decoder_attention_mask",
    "labels",
)


class TrainerInterface(ABC):
    """规格第 1.3 节的训练器接口；HF 实现中它们是 Trainer 机制之上的薄适配层。"""

    @abstractmethod
    def train_epoch(self) -> Dict[str, float]:
        """训练一个 epoch，返回训练指标。"""

    @abstractmethod
    def evaluate(self) -> Dict[str, float]:
        """在验证集上评估，返回评估指标。"""

    @abstractmethod
    def save_checkpoint(self, path: str) -> None:
        """保存检查点。"""

    @abstractmethod
    def load_checkpoint(self, path: str) -> None:
        """加载检查点。"""


@dataclass
class GenerativeRecOutput(ModelOutput):
    """模型输出契约。

    l1_logits: [B, Td, V1]；l2_logits: [B, Td, V2]；l3_logits: [B, Td, V3]
    aux_loss:  标量，MoE 负载均衡损失（无 MoE 时为 None）
    user_repr: [B, D]，用户表示（对比学习用）
    item_repr: [B, D]，目标物品表示（对比学习用）
    loss:      模型自带 labels 时可返回的 NTP 损失（训练器不依赖它）
    """

    loss: Optional[torch.Tensor] = None
    l1_logits: Optional[torch.Tensor] = None
    l2_logits: Optional[torch.Tensor] = None
    l3_logits: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None
    user_repr: Optional[torch.Tensor] = None
    item_repr: Optional[torch.Tensor] = None


def get_output(outputs: Any, name: str) -> Optional[torch.Tensor]:
    """从 ModelOutput / dict / 属性对象中取字段；模型可以返回 dict（如规格里的 MockModel）。"""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def check_model_output(outputs: Any, batch_size: int, seq_len: int) -> None:
    """检查模型输出是否满足契约，不满足时给出指明字段的错误。"""
    for level in (1, 2, 3):
        name = f"l{level}_logits"
        logits = get_output(outputs, name)
        if logits is None:
            raise ValueError(f"model output is missing required field '{name}'")
        if logits.dim() != 3 or logits.shape[0] != batch_size or logits.shape[1] != seq_len:
            raise ValueError(
                f"model output field '{name}' has shape {tuple(logits.shape)}, "
                f"expected [B={batch_size}, T={seq_len}, V{level}]"
            )
    for name in ("user_repr", "item_repr"):
        rep = get_output(outputs, name)
        if rep is not None and (rep.dim() != 2 or rep.shape[0] != batch_size):
            raise ValueError(f"model output field '{name}' has shape {tuple(rep.shape)}, expected [B={batch_size}, D]")
    aux = get_output(outputs, "aux_loss")
    if aux is not None and (not torch.is_tensor(aux) or aux.numel() != 1):
        raise ValueError("model output field 'aux_loss' must be a scalar tensor")
