"""训练用的损失模块：双向 InfoNCE 与层级权重的读取（规格第 6 节的其余名字在 ugt_hf.spec.loss）。

纯计算在模型层的 `ugt_hf.loss_utils`（NTP 的求和形式、MoE 辅助项、分块交叉熵）；这里是其上的 `nn.Module` 外壳。
UGTTrainer / UGTDPOTrainer 直接用 loss_utils 与 `ContrastiveLoss` 组合总损失，不经过 `UnifiedLoss`；
规格的 `NextTokenPredictionLoss` / `DPOLoss` / `UnifiedLoss` 在 `ugt_hf.spec.loss`（生产路径不依赖它们）。

约定：张量进、`(loss, metrics)` 出；metrics 中的值是 **detach 后的 0 维张量**
（不在每步调用 `.item()`，避免 GPU 同步；由训练器在记录日志时统一转成 float）。
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ugt_hf.interfaces import get_output
from ugt_hf.loss_utils import (
    DEFAULT_LEVEL_WEIGHTS,
    ntp_loss_sums,
)

logger = logging.getLogger(__name__)

MetricsDict = Dict[str, torch.Tensor]


def next_item_ntp_loss(outputs: Any, labels: torch.Tensor, level_weights=DEFAULT_LEVEL_WEIGHTS,
                       label_smoothing: float = 0.0, chunk_size: Optional[int] = None,
                       item_weight: float = 1.0) -> Tuple[torch.Tensor, MetricsDict]:
    """阶段 1/2 的 next-item NTP（有效位置上的 token 均值；模型有物品头时加 item_weight·物品 CE）。

    阶段 3 的统一损失 L_ntp 用它在推荐数据上算同一个目标，而不是只在 chosen 物品上做 NTP：
    后者只拟合偏好对里的少数物品，ML-100K 上测得 Recall@10 掉 35%。
    outputs：模型输出（l{1,2,3}_logits [B, Td, Vk]，可选 item_logits [B, Td, N] / item_labels [B, Td]）；
    labels [B, Td, 3]。返回 (loss, 日志指标)。
    """
    logits = [get_output(outputs, f"l{k}_logits") for k in (1, 2, 3)]
    for k, lg in enumerate(logits, start=1):
        if lg is None:
            raise ValueError(f"next_item_ntp_loss: model output is missing required field 'l{k}_logits'")
    item_kw = {}
    if get_output(outputs, "item_logits") is not None:
        item_kw = {"item_logits": get_output(outputs, "item_logits"),
                   "item_labels": get_output(outputs, "item_labels"), "item_weight": float(item_weight)}
    sums = ntp_loss_sums(*logits, labels, level_weights=level_weights, label_smoothing=label_smoothing,
                         chunk_size=chunk_size, **item_kw)
    return sums.weighted(), sums.metrics()


def softmax_dpo_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """多负样本的 softmax-DPO（S-DPO，Chen et al. 2024）：L = −log σ(−log Σ_j exp(r_j − r_c))，批内取均值。

    chosen_rewards [B]，rejected_rewards [K, B]，r = β·(log π − log π_ref)（物品三层 log-prob 之和）。
    K = 1 时就是 DPO 的 sigmoid 损失 −log σ(r_c − r_1)。损失只依赖差 r_j − r_c：chosen 与某个负样本共享的
    语义 ID 前缀（同一 L1/L2 格子）在这个差里逐位相消，梯度为 0，所以共享前缀不会被压低（即 RAD-DPO 的
    前缀感知 stop-gradient，不需要额外掩码）。
    """
    if rejected_rewards.dim() != 2 or rejected_rewards.shape[1] != chosen_rewards.shape[0]:
        raise ValueError(f"softmax_dpo_loss: rejected_rewards must be [K, B] for chosen_rewards [B], got "
                         f"{tuple(rejected_rewards.shape)} and {tuple(chosen_rewards.shape)}")
    gap = torch.logsumexp(rejected_rewards - chosen_rewards.unsqueeze(0), dim=0)  # [B]
    return -F.logsigmoid(-gap).mean()


def level_weights_from(config: Any) -> Tuple[float, float, float]:
    """配置里的层级权重：`level_weights`，或规格的 l1/l2/l3_loss_weight 三个字段；都没有时为规格默认值。"""
    weights = getattr(config, "level_weights", None)
    if weights is not None:
        return tuple(float(w) for w in weights)
    return tuple(
        float(getattr(config, f"l{k}_loss_weight", None) if getattr(config, f"l{k}_loss_weight", None) is not None
              else DEFAULT_LEVEL_WEIGHTS[k - 1])
        for k in (1, 2, 3)
    )


# ---------------------------------------------------------------------------------------------------------------------
# 对比学习损失
# ---------------------------------------------------------------------------------------------------------------------


class ContrastiveLoss(nn.Module):
    """双向 in-batch InfoNCE：用户 i 的正样本是物品 i，其余物品是负样本（反向同理），两方向取平均。

    同一批里两位用户的目标物品相同时，(i, j) 不是真负样本（in-batch false negative）。传入 `item_ids [B]`
    后，这些 item_ids[i] == item_ids[j] 的非对角位置在两个方向上都被屏蔽（logit 设为 −inf），对角线保留。
    batch 为 1 时只有正样本：损失 0，两个准确率都是 1。
    """

    def __init__(self, temperature: float = 0.07, normalize: bool = True):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"ContrastiveLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.normalize = normalize

    def forward(
        self, user_repr: torch.Tensor, item_repr: torch.Tensor, item_ids: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, MetricsDict]:
        """
        Args:
            user_repr: [B, D]
            item_repr: [B, D]，第 i 行是用户 i 的目标物品
            item_ids: [B] 可选，目标物品 id，用于屏蔽重复物品造成的假负样本
        Returns:
            loss 标量；metrics：contrastive_loss、contrastive_u2i_acc、contrastive_i2u_acc
        """
        if user_repr.dim() != 2 or item_repr.shape != user_repr.shape:
            raise ValueError(
                f"ContrastiveLoss expects user_repr and item_repr of the same shape [B, D], got "
                f"{tuple(user_repr.shape)} and {tuple(item_repr.shape)}"
            )
        b = user_repr.shape[0]
        if b == 0:
            raise ValueError("ContrastiveLoss got an empty batch")
        if self.normalize:
            user_repr = F.normalize(user_repr, dim=-1)
            item_repr = F.normalize(item_repr, dim=-1)
        sim = user_repr @ item_repr.t() / self.temperature  # [B, B]，行 = 用户，列 = 物品
        if item_ids is not None:
            item_ids = torch.as_tensor(item_ids, device=sim.device).reshape(-1)
            if item_ids.shape[0] != b:
                raise ValueError(f"ContrastiveLoss: item_ids must be [B={b}], got {tuple(item_ids.shape)}")
            eye = torch.eye(b, dtype=torch.bool, device=sim.device)
            dup = (item_ids.unsqueeze(0) == item_ids.unsqueeze(1)) & ~eye  # [B, B] 对称
            sim = sim.masked_fill(dup, float("-inf"))
        target = torch.arange(b, device=sim.device)
        loss_u2i = F.cross_entropy(sim, target)
        loss_i2u = F.cross_entropy(sim.t(), target)
        loss = (loss_u2i + loss_i2u) / 2
        with torch.no_grad():
            u2i_acc = (sim.argmax(dim=1) == target).float().mean()
            i2u_acc = (sim.argmax(dim=0) == target).float().mean()
        return loss, {
            "contrastive_loss": loss.detach(),
            "contrastive_u2i_acc": u2i_acc,
            "contrastive_i2u_acc": i2u_acc,
        }


# ---------------------------------------------------------------------------------------------------------------------


__all__ = ["ContrastiveLoss", "level_weights_from", "next_item_ntp_loss", "softmax_dpo_loss"]
