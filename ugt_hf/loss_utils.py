"""模型层的纯损失函数（对应 transformers 的 `loss/loss_utils.py`）：只依赖 torch 与 `ugt_hf.interfaces`。

模型（`modeling_ugt.py` 的 `loss`）与训练器（`training/trainer.py`、`training/dpo_trainer.py`）共用这里的实现，
训练层只负责把各项按梯度累积的口径组合起来（torchtitan 的做法）：

    NTP：`ntp_loss_sums` 返回每层交叉熵之和与有效标签位置数（`NTPSums`），由调用方决定除以谁
         （本 micro-batch 的位置数 = 均值；整个累积批次的位置数 N = 梯度累积下精确的 token 平均）；
    辅助项：InfoNCE（`training.losses.ContrastiveLoss`）与 MoE（`moe_aux_loss`）单独给出，按 micro-batch 平均。

层级权重只有一个名字：`level_weights`（L1/L2/L3，规格默认 0.5/0.3/0.2）。
模型开了物品头（`UGTConfig.num_items`）时，NTP 再加一项全目录 softmax 的交叉熵（`ntp_loss_sums` 的 item_*），
与三层 NTP 同一个除数，所以梯度累积的口径不变。

`chunked_cross_entropy`：按行分块的交叉熵，前向只保存每行 logsumexp，反向逐块算 softmax − onehot，
不物化完整的 log-softmax（L3 词表 16,384 × B×T 行时省一份 [N, V]）；由 `UGTConfig.loss_chunk_size` 选用。
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ugt_hf.interfaces import IGNORE_INDEX, NUM_LEVELS

# 规格的层级权重（L1/L2/L3）
DEFAULT_LEVEL_WEIGHTS = (0.5, 0.3, 0.2)
DEFAULT_CHUNK_SIZE = 1024

MetricsDict = Dict[str, torch.Tensor]
LevelLabels = Union[torch.Tensor, Sequence[torch.Tensor]]


# ---------------------------------------------------------------------------------------------------------------------
# MoE 辅助损失
# ---------------------------------------------------------------------------------------------------------------------


def load_balancing_loss(router_probs: torch.Tensor, expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard 负载均衡损失：E * sum_e f_e * P_e。

    Args:
        router_probs: [N, E] 每个有效 token 的路由概率（softmax 后）
        expert_index: [N, k] 每个 token 选中的专家
    f_e = 分到专家 e 的 token 份额（按 N*k 归一），P_e = 专家 e 的平均路由概率。
    均匀路由时 = 1（最小值），全部塌缩到一个专家时 = E / k。
    """
    if router_probs.shape[0] == 0:
        return router_probs.new_zeros(())
    dispatch = F.one_hot(expert_index, num_experts).sum(dim=1).to(router_probs.dtype)  # [N, E]
    tokens_per_expert = dispatch.mean(dim=0) / expert_index.shape[1]  # [E]
    prob_per_expert = router_probs.mean(dim=0)  # [E]
    return num_experts * torch.sum(tokens_per_expert * prob_per_expert)


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE 的 router z-loss：mean(logsumexp(logits)^2)，抑制路由 logits 变大。router_logits: [N, E]"""
    if router_logits.shape[0] == 0:
        return router_logits.new_zeros(())
    return torch.logsumexp(router_logits, dim=-1).pow(2).mean()


def moe_aux_loss(
    balance: Optional[torch.Tensor], z_loss: Optional[torch.Tensor], config: Any
) -> Optional[torch.Tensor]:
    """模型的 aux_loss = router_aux_loss_coef·负载均衡 + router_z_loss_coef·z-loss；无 MoE（balance 为 None）时 None。

    模型 forward 与 DPO 的融合前向共用这一处（系数缺省时按 UGTConfig 的默认值 1.0 / 0.0）。
    """
    if balance is None:
        return None
    aux = getattr(config, "router_aux_loss_coef", 1.0) * balance
    z_coef = getattr(config, "router_z_loss_coef", 0.0)
    if z_loss is not None and z_coef:
        aux = aux + z_coef * z_loss
    return aux


# ---------------------------------------------------------------------------------------------------------------------
# 分块交叉熵（输入 logits）
# ---------------------------------------------------------------------------------------------------------------------


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int, where: str) -> torch.Tensor:
    """检查标签范围；越界标签给出指明位置的错误（而不是 gather 的索引错误）。返回有效位掩码 [N]。"""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{where}: labels must be an integer tensor, got dtype {labels.dtype}")
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{where}: label {int(labels[idx])} at row {idx} is outside [0, {num_classes}) "
            f"and is not ignore_index={ignore_index}"
        )
    return valid


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """块内计算精度：半精度升到 float32，float32/float64 保持不变（测试用 float64 对比梯度）。"""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def _row_scale(valid: torch.Tensor, reduction: str) -> float:
    """每个有效行对损失的系数：mean 时为 1/有效行数（全部被忽略时为 0，损失为 0 而不是 NaN）。"""
    if reduction == "sum":
        return 1.0
    n = int(valid.sum())
    return 1.0 / n if n > 0 else 0.0


def _chunk_loss(z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, label_smoothing: float
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """一块 logits 的 (logsumexp [C], 逐行损失 [C]，无效行为 0)。z: [C, V] 计算精度；y: [C]（无效行已置 0）"""
    lse = torch.logsumexp(z, dim=-1)  # [C]
    loss = lse - z.gather(1, y.unsqueeze(1)).squeeze(1)
    if label_smoothing > 0:
        # 与 F.cross_entropy 一致：(1−ε)·nll + ε·mean_j(−log p_j)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - z.mean(dim=-1))
    return lse, torch.where(valid, loss, torch.zeros_like(loss))


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, chunk_size, ignore_index, label_smoothing, reduction, inplace_backward):
        n, v = logits.shape
        valid = check_labels(labels, v, ignore_index, "chunked_cross_entropy")
        safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels, dtype=torch.long))  # [N]
        cdt = _compute_dtype(logits)
        lse = torch.empty(n, dtype=cdt, device=logits.device)  # [N] 反向只需要它
        total = torch.zeros((), dtype=cdt, device=logits.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            # 只有一块被升到 float32，整张 [N, V] 的副本从不出现
            lse_c, loss_c = _chunk_loss(logits[s:e].to(cdt), safe_labels[s:e], valid[s:e], label_smoothing)
            lse[s:e] = lse_c
            total += loss_c.sum()
        scale = _row_scale(valid, reduction)
        ctx.save_for_backward(logits, safe_labels, valid, lse)
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        ctx.label_smoothing = label_smoothing
        ctx.inplace_backward = inplace_backward
        return (total * scale).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        logits, safe_labels, valid, lse = ctx.saved_tensors
        n, v = logits.shape
        eps = ctx.label_smoothing
        # inplace_backward：梯度直接写回 logits 的存储（logits 之后不再需要），省掉一份 [N, V]
        # detach() 得到共享存储（和版本计数）的新张量：AccumulateGrad 可以直接接管它而不再复制一份
        grad = logits.detach() if ctx.inplace_backward else torch.empty_like(logits)
        cdt = lse.dtype
        g = grad_output.to(cdt) * ctx.scale
        for s in range(0, n, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n)
            z = logits[s:e].to(cdt)
            p = torch.exp(z - lse[s:e].unsqueeze(1))  # [C, V]
            if eps > 0:
                p.sub_(eps / v)
            onehot = torch.full((e - s, 1), -(1.0 - eps), dtype=cdt, device=p.device)
            p.scatter_add_(1, safe_labels[s:e].unsqueeze(1), onehot)
            p.mul_(valid[s:e].unsqueeze(1).to(cdt) * g)
            grad[s:e] = p.to(grad.dtype)
        return grad, None, None, None, None, None, None


def chunked_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    inplace_backward: bool = False,
) -> torch.Tensor:
    """省内存的交叉熵，与 `F.cross_entropy(logits, labels, ignore_index, label_smoothing, reduction)` 等价。

    与 F.cross_entropy 唯一的差别：mean 且全部标签被忽略时返回 0（PyTorch 返回 NaN）。

    Args:
        logits: [N, V]，任意浮点类型（块内升到 float32 计算）
        labels: [N] 整数，`ignore_index` 的行不计入
        chunk_size: 每块行数，决定临时内存（chunk_size × V × 4 字节的若干份）
        reduction: "mean"（除以有效行数）或 "sum"
        inplace_backward: 反向时把梯度写进 logits 的存储（再省一份 [N, V]）。只在 logits 是中间结果、
            反向后不再使用时开启；若其他反向节点也保存了 logits，autograd 的版本检查会报错而不是算错。
    Returns:
        标量损失
    """
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"chunked_cross_entropy expects logits [N, V] and labels [N], got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if chunk_size is None or int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return _ChunkedCrossEntropy.apply(
        logits, labels, int(chunk_size), ignore_index, float(label_smoothing), reduction, bool(inplace_backward)
    )


# ---------------------------------------------------------------------------------------------------------------------
# 层次化 NTP
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class NTPSums:
    """一个 micro-batch 的 NTP 原始量：每层交叉熵之和（未加权）、有效标签位置数、预测正确数。

    level_sums / num_correct / level_valid: 各 3 个 0 维张量；num_valid = L1 层的有效位置数
    （三层的 padding 位置相同，collator 保证）。
    item_sum / item_valid / item_correct: 物品头（全目录 softmax）的同样三个量，没有物品头时为 None；
    item_weight 是它在加权和里的系数（`UGTConfig.item_loss_weight`）。
    """

    level_sums: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    level_valid: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    num_correct: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    level_weights: Tuple[float, float, float] = DEFAULT_LEVEL_WEIGHTS
    item_sum: Optional[torch.Tensor] = None
    item_valid: Optional[torch.Tensor] = None
    item_correct: Optional[torch.Tensor] = None
    item_weight: float = 1.0

    @property
    def num_valid(self) -> torch.Tensor:
        return self.level_valid[0]

    def level_losses(self, denom: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        """每层 sum / denom；denom 缺省为该层自己的有效位置数（至少 1：全部被忽略时为 0 而不是 NaN）。"""
        if denom is None:
            return tuple(s / n.clamp(min=1).to(s.dtype) for s, n in zip(self.level_sums, self.level_valid))
        return tuple(s / denom.to(s.device) for s in self.level_sums)

    def item_loss(self, denom: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """物品头的 item_sum / denom（denom 缺省为它自己的有效位置数）；没有物品头时 None。"""
        if self.item_sum is None:
            return None
        if denom is None:
            return self.item_sum / self.item_valid.clamp(min=1).to(self.item_sum.dtype)
        return self.item_sum / denom.to(self.item_sum.device)

    def weighted(self, denom: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Σ_k w_k · (sum_k / denom) [+ w_item · item_sum / denom]。先逐层除再加权：与旧 NextTokenPredictionLoss
        运算顺序相同，没有物品头时数值逐位不变。"""
        total = None
        for w, level_loss in zip(self.level_weights, self.level_losses(denom)):
            weighted = w * level_loss
            total = weighted if total is None else total + weighted
        if self.item_sum is not None:
            total = total + self.item_weight * self.item_loss(denom)
        return total

    def metrics(self, denom: Optional[torch.Tensor] = None) -> MetricsDict:
        """日志用：ntp_loss、ntp_l{k}_loss、ntp_l{k}_acc（detach 的 0 维张量）。"""
        out: MetricsDict = {}
        for level, (level_loss, n, c) in enumerate(
            zip(self.level_losses(denom), self.level_valid, self.num_correct), start=1
        ):
            out[f"ntp_l{level}_loss"] = level_loss.detach()
            out[f"ntp_l{level}_acc"] = (c.float() / n.clamp(min=1).float()).detach()
        if self.item_sum is not None:
            out["ntp_item_loss"] = self.item_loss(denom).detach()
            out["ntp_item_acc"] = (self.item_correct.float() / self.item_valid.clamp(min=1).float()).detach()
        out["ntp_loss"] = self.weighted(denom).detach()
        return out


def _argmax_hits(flat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """argmax(flat) == labels，[N, V], [N] -> [N] bool（并列最大时取第一个下标，与 argmax 相同）。

    CPU 上 argmax 比 amax 慢约 6 倍（[1280, 12101]：16 对 2.5 ms；物品头每步都要算）：先看标签的 logit 是否达到
    行最大值（训练中多数行没有达到），只在这些行里跑 argmax。GPU 上 argmax 本身很快，且这里的 nonzero
    会同步，所以直接用 argmax。"""
    if flat.device.type != "cpu":
        return flat.argmax(dim=-1) == labels
    safe = labels.clamp(min=0, max=flat.shape[-1] - 1).long()
    target = flat.gather(1, safe[:, None])  # [N, 1]
    top = flat.amax(dim=-1, keepdim=True)  # [N, 1]
    hits = (target >= top)[:, 0] & (labels == safe)  # [N]
    rows = hits.nonzero()[:, 0]
    if rows.numel() * 4 > hits.numel():  # 命中多时取子行的拷贝比整块 argmax 还贵
        return flat.argmax(dim=-1) == labels
    if rows.numel():
        # 并列最大时 argmax 取第一个下标：只在标签达到最大值的这些行里再跑 argmax
        hits[rows] = flat[rows].argmax(dim=-1) == safe[rows]
    return hits


def _level_sum(level: Union[int, str], logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
               label_smoothing: float, chunk_size: Optional[int], inplace_backward: bool):
    """一层的 (交叉熵之和, 有效数, 预测正确数)。logits: [B, T, V]；labels: [B, T]"""
    name = level if isinstance(level, str) else f"l{level}"
    if not torch.is_tensor(logits) or logits.dim() < 2 or logits.shape[:-1] != labels.shape:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits)
        raise ValueError(f"{name}_logits {shape} does not match labels {tuple(labels.shape)} (+ vocab dim)")
    flat_labels = labels.reshape(-1)  # [N]
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
    if chunk_size is not None:
        loss_sum = chunked_cross_entropy(flat, flat_labels, chunk_size, ignore_index, label_smoothing,
                                         reduction="sum", inplace_backward=inplace_backward)
    else:
        check_labels(flat_labels, flat.shape[-1], ignore_index, f"{name} labels")
        loss_sum = F.cross_entropy(flat, flat_labels.long(), ignore_index=ignore_index,
                                   label_smoothing=label_smoothing, reduction="sum")
    valid = flat_labels != ignore_index
    with torch.no_grad():
        correct = _argmax_hits(flat, flat_labels) & valid
    return loss_sum, valid.sum(), correct.sum()


def split_level_labels(labels: LevelLabels) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, T, 3] 或 (l1, l2, l3) 各 [B, T] -> 三个 [B, T]。"""
    if torch.is_tensor(labels):
        if labels.dim() != 3 or labels.shape[-1] != NUM_LEVELS:
            raise ValueError(f"labels must be [B, T, {NUM_LEVELS}], got {tuple(labels.shape)}")
        return labels[..., 0], labels[..., 1], labels[..., 2]
    if len(labels) != NUM_LEVELS or any(lab is None for lab in labels):
        raise ValueError("NextTokenPredictionLoss needs labels_l1/l2/l3 [B, T] or one labels [B, T, 3]")
    return tuple(labels)


def ntp_loss_sums(
    l1_logits: torch.Tensor,
    l2_logits: torch.Tensor,
    l3_logits: torch.Tensor,
    labels: LevelLabels,
    *,
    level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    chunk_size: Optional[int] = None,
    inplace_backward: bool = False,
    item_logits: Optional[torch.Tensor] = None,
    item_labels: Optional[torch.Tensor] = None,
    item_weight: float = 1.0,
) -> NTPSums:
    """层次化 NTP 的求和形式：L = Σ_k w_k · CE_sum(L_k) / 除数（除数由调用方给 `NTPSums.weighted`）。

    Args:
        l1_logits / l2_logits / l3_logits: [B, T, V1] / [B, T, V2] / [B, T, V3]
        labels: [B, T, 3]（或 (l1, l2, l3) 各 [B, T]），padding 为 ignore_index
        chunk_size: None 用 F.cross_entropy；给出时走 `chunked_cross_entropy`（数值相同、省一份 [N, V]）
        item_logits / item_labels: 物品头的 [B, T, N] logits 与 [B, T] 物品下标（模型输出的同名字段）；
            给出时再加一项 item_weight · CE_sum(物品) / 除数（同一个 token 平均口径）
    """
    level_labels = split_level_labels(labels)
    stats = [
        _level_sum(level, lg, lab, ignore_index, float(label_smoothing), chunk_size, inplace_backward)
        for level, (lg, lab) in enumerate(zip((l1_logits, l2_logits, l3_logits), level_labels), start=1)
    ]
    sums, valid, correct = zip(*stats)
    out = NTPSums(sums, valid, correct, tuple(float(w) for w in level_weights))
    if (item_logits is None) != (item_labels is None):
        raise ValueError("ntp_loss_sums: item_logits and item_labels must be given together")
    if item_logits is not None:
        if torch.is_tensor(labels) and tuple(item_labels.shape) != tuple(labels.shape[:-1]):
            raise ValueError(f"item_labels {tuple(item_labels.shape)} do not match labels {tuple(labels.shape)}")
        # 物品头的有效位置必须与三层 NTP 相同（同一个除数 N）
        if bool(((item_labels != ignore_index) != (level_labels[0] != ignore_index)).any()):
            raise ValueError("item_labels must be ignore_index exactly where labels are")
        out.item_sum, out.item_valid, out.item_correct = _level_sum(
            "item", item_logits, item_labels, ignore_index, float(label_smoothing), chunk_size, inplace_backward)
        out.item_weight = float(item_weight)
    return out


def ntp_loss(l1_logits, l2_logits, l3_logits, labels: LevelLabels,
             level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS, chunk_size: Optional[int] = None,
             item_logits: Optional[torch.Tensor] = None, item_labels: Optional[torch.Tensor] = None,
             item_weight: float = 1.0) -> torch.Tensor:
    """均值形式的加权 NTP（每层对自己的有效位置求平均）；模型输出的 `loss`。labels: [B, T, 3]
    给出物品头的 item_logits / item_labels 时再加 item_weight · 物品交叉熵均值。"""
    return ntp_loss_sums(l1_logits, l2_logits, l3_logits, labels, level_weights=level_weights,
                         chunk_size=chunk_size, item_logits=item_logits, item_labels=item_labels,
                         item_weight=item_weight).weighted()


def weighted_item_nll(level_log_probs: torch.Tensor, level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS
                      ) -> torch.Tensor:
    """每个物品的加权 NLL：−Σ_k w_k·log p(l_k | 前缀)。level_log_probs: [..., 3] -> [...]

    一行只有一个预测位置（DPO 的 chosen 物品）时，它对行取平均就是该位置的加权 NTP。
    """
    w = torch.as_tensor(tuple(float(x) for x in level_weights), dtype=torch.float32, device=level_log_probs.device)
    return -(level_log_probs * w).sum(-1)


__all__ = [
    "DEFAULT_LEVEL_WEIGHTS",
    "DEFAULT_CHUNK_SIZE",
    "NTPSums",
    "check_labels",
    "chunked_cross_entropy",
    "load_balancing_loss",
    "moe_aux_loss",
    "ntp_loss",
    "ntp_loss_sums",
    "router_z_loss",
    "split_level_labels",
    "weighted_item_nll",
]
