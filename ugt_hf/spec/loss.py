"""规格第 6 节的损失：NextTokenPredictionLoss、ContrastiveLoss、DPOLoss、UnifiedLoss。

NTP 与 InfoNCE 是生产路径也用的纯损失（`ugt_hf.training.losses`），这里原样导出；DPOLoss 与 UnifiedLoss 只是规格的
名字（生产的阶段 3 用 TRL 的 DPO 损失，阶段 1–2 由 UGTTrainer 组合各项），因此住在这里。

UnifiedLoss 接受规格的三种写法：
    UnifiedLoss(config)                          # 任务书：TrainingConfig / Stage*Config（或任何带同名属性的对象）
    UnifiedLoss(l1_weight=0.5, ..., lambda_moe_balance=0.01)   # 模块文档 6.2
    UnifiedLoss.from_config(config, **overrides)
配置里的层权重字段叫 l1/l2/l3_loss_weight（规格 4.1），关键字参数叫 l1/l2/l3_weight（规格 6.2），两种都认。
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ugt_hf.interfaces import IGNORE_INDEX, NUM_LEVELS, get_output
from ugt_hf.loss_utils import ntp_loss_sums
from ugt_hf.training.losses import ContrastiveLoss

logger = logging.getLogger(__name__)

MetricsDict = Dict[str, torch.Tensor]

__all__ = ["ContrastiveLoss", "DPOLoss", "NextTokenPredictionLoss", "UnifiedLoss"]


# NTP 损失
# ---------------------------------------------------------------------------------------------------------------------


class NextTokenPredictionLoss(nn.Module):
    """层次化下一物品预测损失：L_ntp = w1·CE(L1) + w2·CE(L2) + w3·CE(L3)（`loss_utils.ntp_loss_sums` 的外壳）。

    归一化：
    - 默认：每层对自己的有效（非 ignore_index）位置求平均；全部被忽略时该层损失为 0（仍有梯度路径）。
    - 给出 `num_items_in_batch` 时：每层损失求和后除以 `num_items_in_batch / 3`。`num_items_in_batch` 按
      HF Trainer 的口径统计，即整个梯度累积批次（及各进程）的 `labels.ne(-100).sum()`，labels 为 [B, T, 3]，
      三层合计；三层的 padding 位置相同，所以每层的有效位置数正好是它的 1/3。这样各 micro-batch 的损失之和
      等于把它们拼成一个大批次时的均值损失（有效标签数不同也成立）。
    """

    def __init__(
        self,
        l1_weight: float = 0.5,
        l2_weight: float = 0.3,
        l3_weight: float = 0.2,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        chunk_size: Optional[int] = None,
        inplace_backward: bool = False,
    ):
        super().__init__()
        for name, w in (("l1_weight", l1_weight), ("l2_weight", l2_weight), ("l3_weight", l3_weight)):
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"NextTokenPredictionLoss: {name} must be a finite number >= 0, got {w}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"NextTokenPredictionLoss: label_smoothing must be in [0, 1), got {label_smoothing}")
        if chunk_size is not None and int(chunk_size) <= 0:
            raise ValueError(f"NextTokenPredictionLoss: chunk_size must be a positive integer, got {chunk_size}")
        self.level_weights = (float(l1_weight), float(l2_weight), float(l3_weight))
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        # 仅对分块路径生效：梯度写回 logits 的存储（见 chunked_cross_entropy）
        self.inplace_backward = bool(inplace_backward)

    @property
    def weights(self) -> Tuple[float, float, float]:
        return self.level_weights

    def forward(
        self,
        l1_logits: torch.Tensor,
        l2_logits: torch.Tensor,
        l3_logits: torch.Tensor,
        labels_l1: Optional[torch.Tensor] = None,
        labels_l2: Optional[torch.Tensor] = None,
        labels_l3: Optional[torch.Tensor] = None,
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, MetricsDict]:
        """
        Args:
            l1_logits: [B, T, V1]；l2_logits: [B, T, V2]；l3_logits: [B, T, V3]
            labels_l1 / labels_l2 / labels_l3: [B, T]，padding 为 ignore_index；
                也可以把 [B, T, 3] 的整体标签作为 labels_l1 或 `labels=` 传入
            num_items_in_batch: 见类说明（HF Trainer 的有效标签总数，三层合计）
        Returns:
            loss 标量；metrics：ntp_loss、ntp_l{1,2,3}_loss、ntp_l{1,2,3}_acc（detach 的 0 维张量）
        """
        if labels is None and labels_l1 is not None and labels_l2 is None and labels_l3 is None:
            labels = labels_l1
        level_labels = labels if labels is not None else (labels_l1, labels_l2, labels_l3)
        sums = ntp_loss_sums(
            l1_logits, l2_logits, l3_logits, level_labels, level_weights=self.level_weights,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, chunk_size=self.chunk_size,
            inplace_backward=self.inplace_backward,
        )
        denom = None
        if num_items_in_batch is not None:
            denom = torch.as_tensor(num_items_in_batch, dtype=torch.float32).reshape(-1)[0] / NUM_LEVELS
            # 整个累积批次都没有有效标签时分子为 0：除以 1 得 0，而不是 NaN（torch.where 避免一次设备同步）
            denom = torch.where(denom > 0, denom, torch.ones_like(denom))
        return sums.weighted(denom), sums.metrics(denom)


# ---------------------------------------------------------------------------------------------------------------------


class DPOLoss(nn.Module):
    """sigmoid DPO（Rafailov et al. 2023）：

        h = β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]
        L = −(1−ε)·log σ(h) − ε·log σ(−h)       （ε = label_smoothing，即 cDPO；ε=0 为原始 DPO）

    reference_free=True 时把参考对数概率视为 0（忽略传入的参考值）。
    """

    def __init__(self, beta: float = 0.1, reference_free: bool = False, label_smoothing: float = 0.0):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"DPOLoss: beta must be > 0, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"DPOLoss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = float(beta)
        self.reference_free = reference_free
        self.label_smoothing = float(label_smoothing)

    def forward(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        reference_chosen_logps: Optional[torch.Tensor] = None,
        reference_rejected_logps: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, MetricsDict]:
        """
        Args:
            chosen_logps: [B] 策略模型对 chosen 物品的序列对数概率
            rejected_logps: [B]
            reference_chosen_logps / reference_rejected_logps: [B] 参考模型（冻结）的对数概率
        Returns:
            loss 标量；metrics：dpo_loss、dpo_accuracy、dpo_reward_margin、dpo_chosen_reward、dpo_rejected_reward
            （奖励 = β·(log π − log π_ref)，取批内平均）
        """
        if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape or chosen_logps.numel() == 0:
            raise ValueError(
                f"DPOLoss expects non-empty chosen_logps and rejected_logps of shape [B], got "
                f"{tuple(chosen_logps.shape)} and {tuple(rejected_logps.shape)}"
            )
        if self.reference_free:
            ref_c = torch.zeros_like(chosen_logps)
            ref_r = torch.zeros_like(rejected_logps)
        else:
            if reference_chosen_logps is None or reference_rejected_logps is None:
                raise ValueError(
                    "DPOLoss: reference_chosen_logps and reference_rejected_logps are required unless "
                    "reference_free=True"
                )
            for name, t in (
                ("reference_chosen_logps", reference_chosen_logps),
                ("reference_rejected_logps", reference_rejected_logps),
            ):
                if t.shape != chosen_logps.shape:
                    raise ValueError(
                        f"DPOLoss: {name} has shape {tuple(t.shape)}, expected {tuple(chosen_logps.shape)}"
                    )
            ref_c = reference_chosen_logps.to(chosen_logps.dtype)
            ref_r = reference_rejected_logps.to(chosen_logps.dtype)
        chosen_logratio = chosen_logps - ref_c  # [B]
        rejected_logratio = rejected_logps - ref_r  # [B]
        h = self.beta * (chosen_logratio - rejected_logratio)  # [B]
        eps = self.label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
        loss = losses.mean()
        with torch.no_grad():
            chosen_reward = self.beta * chosen_logratio
            rejected_reward = self.beta * rejected_logratio
            metrics = {
                "dpo_loss": loss.detach(),
                "dpo_accuracy": (chosen_reward > rejected_reward).float().mean(),
                "dpo_reward_margin": (chosen_reward - rejected_reward).mean(),
                "dpo_chosen_reward": chosen_reward.mean(),
                "dpo_rejected_reward": rejected_reward.mean(),
            }
        return loss, metrics


# UnifiedLoss 的参数 → 配置里可能的字段名（按优先级）；规格 4.1 的层权重叫 l{k}_loss_weight
_CONFIG_NAMES: Dict[str, Tuple[str, ...]] = {
    "l1_weight": ("l1_loss_weight", "l1_weight"),
    "l2_weight": ("l2_loss_weight", "l2_weight"),
    "l3_weight": ("l3_loss_weight", "l3_weight"),
    "lambda_contrastive": ("lambda_contrastive",),
    "lambda_preference": ("lambda_preference",),
    "lambda_moe_balance": ("lambda_moe_balance",),
    "label_smoothing": ("label_smoothing",),
    "contrastive_temperature": ("contrastive_temperature",),
    "dpo_beta": ("dpo_beta",),
    "dpo_reference_free": ("dpo_reference_free",),
    "dpo_label_smoothing": ("dpo_label_smoothing",),
    "ignore_index": ("ignore_index",),
    "chunk_size": ("chunk_size",),
    "contrastive_normalize": ("contrastive_normalize",),
}

_DEFAULTS: Dict[str, Any] = {
    "l1_weight": 0.5,
    "l2_weight": 0.3,
    "l3_weight": 0.2,
    "lambda_contrastive": 0.1,
    "lambda_preference": 0.1,
    "lambda_moe_balance": 0.01,
    "label_smoothing": 0.0,
    "contrastive_temperature": 0.07,
    "dpo_beta": 0.1,
    "dpo_reference_free": False,
    "dpo_label_smoothing": 0.0,
    "ignore_index": IGNORE_INDEX,
    "chunk_size": None,
    "contrastive_normalize": True,
}


def _from_config(config: Any) -> Dict[str, Any]:
    """配置对象 → UnifiedLoss 参数；同一参数的两个名字取值矛盾时报错，而不是悄悄二选一。"""
    out: Dict[str, Any] = {}
    for param, names in _CONFIG_NAMES.items():
        found = {n: getattr(config, n) for n in names if getattr(config, n, None) is not None}
        if len(set(found.values())) > 1:
            given = ", ".join(f"{n}={v!r}" for n, v in found.items())
            raise ValueError(f"UnifiedLoss: config gives conflicting values for the same weight ({given})")
        if found:
            out[param] = next(iter(found.values()))
    return out


class UnifiedLoss(nn.Module):
    """L_total = L_ntp + λ1·L_contrastive + λ2·L_preference + λ3·L_moe_balance（规格 6.1）。

    λ 为 0 的项不计算。返回的 dict 中只有 total_loss 带梯度，其余为 detach 的 0 维张量（供日志）。
    参数优先级：显式关键字 > config 的同名字段 > 规格默认值。
    """

    # from_config 读取的配置字段（TrainingConfig / Stage*Config 的字段名；两种层权重名都认）
    CONFIG_FIELDS = tuple(n for names in _CONFIG_NAMES.values() for n in names)

    def __init__(
        self,
        config: Any = None,
        *,
        l1_weight: Optional[float] = None,
        l2_weight: Optional[float] = None,
        l3_weight: Optional[float] = None,
        lambda_contrastive: Optional[float] = None,
        lambda_preference: Optional[float] = None,
        lambda_moe_balance: Optional[float] = None,
        label_smoothing: Optional[float] = None,
        contrastive_temperature: Optional[float] = None,
        dpo_beta: Optional[float] = None,
        dpo_reference_free: Optional[bool] = None,
        dpo_label_smoothing: Optional[float] = None,
        ignore_index: Optional[int] = None,
        chunk_size: Optional[int] = None,
        contrastive_normalize: Optional[bool] = None,
    ):
        super().__init__()
        if isinstance(config, (int, float)) and not isinstance(config, bool):
            raise TypeError(
                "UnifiedLoss(config): the first positional argument is a config object; "
                "pass the weights as keywords, e.g. UnifiedLoss(l1_weight=0.5, l2_weight=0.3, l3_weight=0.2)"
            )
        explicit = {
            "l1_weight": l1_weight, "l2_weight": l2_weight, "l3_weight": l3_weight,
            "lambda_contrastive": lambda_contrastive, "lambda_preference": lambda_preference,
            "lambda_moe_balance": lambda_moe_balance, "label_smoothing": label_smoothing,
            "contrastive_temperature": contrastive_temperature, "dpo_beta": dpo_beta,
            "dpo_reference_free": dpo_reference_free, "dpo_label_smoothing": dpo_label_smoothing,
            "ignore_index": ignore_index, "chunk_size": chunk_size, "contrastive_normalize": contrastive_normalize,
        }
        p = dict(_DEFAULTS)
        if config is not None:
            p.update(_from_config(config))
        p.update({k: v for k, v in explicit.items() if v is not None})
        self.config = config
        for name in ("lambda_contrastive", "lambda_preference", "lambda_moe_balance"):
            lam = p[name]
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"UnifiedLoss: {name} must be a finite number >= 0, got {lam}")
        self.lambda_contrastive = float(p["lambda_contrastive"])
        self.lambda_preference = float(p["lambda_preference"])
        self.lambda_moe_balance = float(p["lambda_moe_balance"])
        self.ntp_loss = NextTokenPredictionLoss(
            p["l1_weight"], p["l2_weight"], p["l3_weight"], ignore_index=p["ignore_index"],
            label_smoothing=p["label_smoothing"], chunk_size=p["chunk_size"],
        )
        self.contrastive_loss = ContrastiveLoss(p["contrastive_temperature"], normalize=p["contrastive_normalize"])
        self.dpo_loss = DPOLoss(
            p["dpo_beta"], reference_free=p["dpo_reference_free"], label_smoothing=p["dpo_label_smoothing"]
        )
        self._warned_missing_repr = False

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "UnifiedLoss":
        """从带同名属性的配置对象（TrainingConfig / Stage*Config / 任意对象）构造；缺的字段用默认值。"""
        return cls(config, **overrides)

    def forward(
        self,
        model_outputs: Any,
        labels: Union[Mapping[str, torch.Tensor], torch.Tensor],
        aux_loss: Optional[torch.Tensor] = None,
        preference: Optional[Mapping[str, torch.Tensor]] = None,
        item_ids: Optional[torch.Tensor] = None,
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            model_outputs: GenerativeRecOutput 或 dict；需要 l1/l2/l3_logits [B, T, V]，可选 user_repr/item_repr [B, D]
            labels: {"l1", "l2", "l3"} 各 [B, T]，或 [B, T, 3]
            aux_loss: MoE 负载均衡损失（标量）；为 None 时取 model_outputs.aux_loss
            preference: {"chosen_logps", "rejected_logps", "reference_chosen_logps",
                "reference_rejected_logps"}，各 [B]
            item_ids: [B] 目标物品 id，对比学习中屏蔽重复物品
            num_items_in_batch: 见 NextTokenPredictionLoss
        Returns:
            dict：total_loss（带梯度）、ntp_loss、ntp_l*_loss/acc、[contrastive_*]、[dpo_*]、[moe_balance_loss]
        """
        logits = [get_output(model_outputs, f"l{k}_logits") for k in (1, 2, 3)]
        for k, lg in enumerate(logits, start=1):
            if lg is None:
                raise ValueError(f"UnifiedLoss: model output is missing required field 'l{k}_logits'")
        if isinstance(labels, Mapping):
            missing = [k for k in ("l1", "l2", "l3") if k not in labels]
            if missing:
                raise ValueError(f"UnifiedLoss: labels dict is missing keys {missing} (expected 'l1', 'l2', 'l3')")
            ntp, out = self.ntp_loss(*logits, labels["l1"], labels["l2"], labels["l3"],
                                     num_items_in_batch=num_items_in_batch)
        else:
            ntp, out = self.ntp_loss(*logits, labels=labels, num_items_in_batch=num_items_in_batch)
        total = ntp

        if self.lambda_contrastive > 0:
            user_repr = get_output(model_outputs, "user_repr")
            item_repr = get_output(model_outputs, "item_repr")
            if user_repr is not None and item_repr is not None:
                con, m = self.contrastive_loss(user_repr, item_repr, item_ids=item_ids)
                total = total + self.lambda_contrastive * con
                out.update(m)
            elif not self._warned_missing_repr:
                # 规格允许模型不输出表示（阶段 1）；提示一次，避免静默丢掉一项
                logger.warning("lambda_contrastive=%s but the model output has no user_repr/item_repr: "
                               "contrastive term skipped", self.lambda_contrastive)
                self._warned_missing_repr = True

        if preference is not None and self.lambda_preference > 0:
            for key in ("chosen_logps", "rejected_logps"):
                if key not in preference:
                    raise ValueError(f"UnifiedLoss: preference dict is missing '{key}'")
            dpo, m = self.dpo_loss(
                preference["chosen_logps"], preference["rejected_logps"],
                preference.get("reference_chosen_logps"), preference.get("reference_rejected_logps"),
            )
            total = total + self.lambda_preference * dpo
            out.update(m)

        if aux_loss is None:
            aux_loss = get_output(model_outputs, "aux_loss")
        if aux_loss is not None:
            aux_loss = torch.as_tensor(aux_loss)
            if aux_loss.numel() != 1:
                raise ValueError(f"UnifiedLoss: aux_loss must be a scalar, got shape {tuple(aux_loss.shape)}")
            aux_loss = aux_loss.reshape(())
            out["moe_balance_loss"] = aux_loss.detach()
            if self.lambda_moe_balance > 0:
                total = total + self.lambda_moe_balance * aux_loss

        out["total_loss"] = total
        return out
