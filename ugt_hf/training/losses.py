"""损失函数：层次 NTP、双向 InfoNCE、DPO 与统一损失（规格第 6 节）。

约定：纯函数 / `nn.Module`，张量进、`(loss, metrics)` 出；metrics 中的值是 **detach 后的 0 维张量**
（不在每步调用 `.item()`，避免 GPU 同步；由训练器在记录日志时统一转成 float）。

L3 头是 16,384 路分类、B×T 行：朴素 `F.cross_entropy` 会另外物化一份完整的 log-softmax 以及两份同形梯度。
这里提供两条省内存的路径（与朴素路径的损失和梯度一致，见 tests/test_losses.py）：
- `chunked_cross_entropy`：输入 logits，按行分块；前向只保存每行 logsumexp，反向逐块计算 softmax − onehot；
- `fused_linear_cross_entropy`：输入 head 前的 hidden 与 head 权重，逐块算 logits，从不物化 [N, V]。
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ugt_hf.interfaces import IGNORE_INDEX, NUM_LEVELS, get_output

logger = logging.getLogger(__name__)

MetricsDict = Dict[str, torch.Tensor]
# 一个层级的输入：logits [.., V]，或 (hidden [.., H], 线性头) 走融合路径
LevelInput = Union[torch.Tensor, Tuple[torch.Tensor, nn.Module]]

DEFAULT_CHUNK_SIZE = 1024


# ----------------------------------------------------------------------------------------------------------------------
# 公共检查
# ----------------------------------------------------------------------------------------------------------------------


def _check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int, where: str) -> torch.Tensor:
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


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _row_scale(valid: torch.Tensor, reduction: str) -> float:
    """每个有效行对损失的系数：mean 时为 1/有效行数（全部被忽略时为 0，损失为 0 而不是 NaN）。"""
    if reduction == "sum":
        return 1.0
    n = int(valid.sum())
    return 1.0 / n if n > 0 else 0.0


def _chunk_loss_and_grad(
    z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, label_smoothing: float, need_grad: bool
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """一块 logits 的逐行损失与（未缩放的）梯度 softmax − (1−ε)·onehot − ε/V。

    Args:
        z: [C, V] float32 logits 块
        y: [C] 标签（无效行已替换为 0）
        valid: [C] bool
    Returns:
        lse [C]，逐行损失 [C]（无效行为 0），梯度 [C, V] 或 None
    """
    v = z.shape[-1]
    lse = torch.logsumexp(z, dim=-1)  # [C]
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)  # [C]
    loss = lse - z_y
    if label_smoothing > 0:
        # 与 F.cross_entropy 一致：(1−ε)·nll + ε·mean_j(−log p_j)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - z.mean(dim=-1))
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    grad = None
    if need_grad:
        grad = torch.exp(z - lse.unsqueeze(1))  # [C, V] softmax
        if label_smoothing > 0:
            grad.sub_(label_smoothing / v)
        grad.scatter_add_(1, y.unsqueeze(1), torch.full_like(z_y, -(1.0 - label_smoothing)).unsqueeze(1))
        grad.mul_(valid.unsqueeze(1).to(grad.dtype))
    return lse, loss, grad


# ----------------------------------------------------------------------------------------------------------------------
# 分块交叉熵（输入 logits）
# ----------------------------------------------------------------------------------------------------------------------


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, chunk_size, ignore_index, label_smoothing, reduction, inplace_backward):
        n, v = logits.shape
        valid = _check_labels(labels, v, ignore_index, "chunked_cross_entropy")
        safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels, dtype=torch.long))  # [N]
        cdt = _compute_dtype(logits)
        lse = torch.empty(n, dtype=cdt, device=logits.device)  # [N] 反向只需要它
        total = torch.zeros((), dtype=cdt, device=logits.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            # 只有一块被升到 float32，整张 [N, V] 的副本从不出现
            lse_c, loss_c, _ = _chunk_loss_and_grad(
                logits[s:e].to(cdt), safe_labels[s:e], valid[s:e], label_smoothing, need_grad=False
            )
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

    前向逐块计算并只保存每行 logsumexp [N]；反向逐块计算 softmax − onehot，从不物化完整的 log-softmax。
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
    _check_reduction(reduction)
    return _ChunkedCrossEntropy.apply(
        logits, labels, int(chunk_size), ignore_index, float(label_smoothing), reduction, bool(inplace_backward)
    )


# ----------------------------------------------------------------------------------------------------------------------
# 融合线性层 + 交叉熵（输入 hidden 与权重）
# ----------------------------------------------------------------------------------------------------------------------


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, ignore_index, label_smoothing, reduction):
        n, h = hidden.shape
        v = weight.shape[0]
        valid = _check_labels(labels, v, ignore_index, "fused_linear_cross_entropy")
        safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels, dtype=torch.long))
        scale = _row_scale(valid, reduction)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        need_grad = need_h or need_w or need_b
        # 梯度与前向一起逐块算出（logits 块只算一次），反向只需乘上标量 grad_output
        grad_h = torch.empty_like(hidden) if need_h else None  # [N, H]
        cdt = _compute_dtype(hidden)
        grad_w = torch.zeros(v, h, dtype=cdt, device=hidden.device) if need_w else None  # [V, H]
        grad_b = torch.zeros(v, dtype=cdt, device=hidden.device) if need_b else None  # [V]
        preds = torch.empty(n, dtype=torch.long, device=hidden.device)  # [N] 每行 argmax，供准确率使用
        total = torch.zeros((), dtype=cdt, device=hidden.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            h_c = hidden[s:e]  # [C, H]
            z = F.linear(h_c, weight, bias).to(cdt)  # [C, V]，只存在于本块
            preds[s:e] = z.argmax(dim=-1)
            _, loss_c, g = _chunk_loss_and_grad(z, safe_labels[s:e], valid[s:e], label_smoothing, need_grad)
            total += loss_c.sum()
            if need_grad:
                g.mul_(scale)  # [C, V] d loss / d z
                if need_h:
                    grad_h[s:e] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:
                    grad_w += g.t() @ h_c.to(cdt)
                if need_b:
                    grad_b += g.sum(dim=0)
        ctx.save_for_backward(
            grad_h if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
        )
        ctx.mark_non_differentiable(preds)
        return (total * scale).to(hidden.dtype), preds

    @staticmethod
    def backward(ctx, grad_output, _grad_preds):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        out = []
        for g in (grad_h, grad_w, grad_b):
            out.append(None if g is None else g * grad_output.to(g.dtype))
        return out[0], out[1], out[2], None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    return_predictions: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """`F.cross_entropy(F.linear(hidden, weight, bias), labels, ...)` 的逐块版本，前向和反向都不物化 [N, V]。

    梯度在前向时逐块算好（每块 logits 只算一次），反向只乘标量 grad_output，因此只支持标量 reduction，
    且不支持二阶导。不需要梯度时（评估）不计算梯度。

    Args:
        hidden: [N, H] head 的输入
        weight: [V, H] head 权重（nn.Linear 的布局）
        bias: [V] 或 None
        labels: [N] 整数，`ignore_index` 的行不计入
        chunk_size: 每块行数
        reduction: "mean"（除以有效行数；全部被忽略时为 0）或 "sum"
        return_predictions: 同时返回每行 argmax [N]（不可导），用于准确率，免得再算一遍 logits
    Returns:
        标量损失；或 (损失, 预测 [N])
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_linear_cross_entropy expects hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"labels must be [N={hidden.shape[0]}], got {tuple(labels.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if chunk_size is None or int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    _check_reduction(reduction)
    loss, preds = _FusedLinearCrossEntropy.apply(
        hidden, weight, bias, labels, int(chunk_size), ignore_index, float(label_smoothing), reduction
    )
    return (loss, preds) if return_predictions else loss


# ----------------------------------------------------------------------------------------------------------------------
# NTP 损失
# ----------------------------------------------------------------------------------------------------------------------


class NextTokenPredictionLoss(nn.Module):
    """层次化下一物品预测损失：L_ntp = w1·CE(L1) + w2·CE(L2) + w3·CE(L3)。

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
        self.weights = (float(l1_weight), float(l2_weight), float(l3_weight))
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        # 仅对分块路径生效：梯度写回 logits 的存储（见 chunked_cross_entropy）
        self.inplace_backward = bool(inplace_backward)

    def _level_sum(self, level: int, inp: LevelInput, labels: torch.Tensor):
        """一层的求和损失、有效数、预测正确数。

        Args:
            inp: logits [B, T, V]，或 (hidden [B, T, H], 线性头)
            labels: [B, T]
        """
        name = f"l{level}"
        flat_labels = labels.reshape(-1)  # [N]
        if isinstance(inp, (tuple, list)):
            if len(inp) != 2 or not hasattr(inp[1], "weight"):
                raise TypeError(f"{name}: expected logits or a (hidden, linear_module) pair, got {type(inp)}")
            hidden, head = inp
            if hidden.shape[:-1] != labels.shape:
                raise ValueError(f"{name}: hidden {tuple(hidden.shape)} does not match labels {tuple(labels.shape)}")
            loss_sum, preds = fused_linear_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]), head.weight, getattr(head, "bias", None), flat_labels,
                chunk_size=self.chunk_size or DEFAULT_CHUNK_SIZE, ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing, reduction="sum", return_predictions=True,
            )
        else:
            logits = inp
            if not torch.is_tensor(logits) or logits.dim() < 2 or logits.shape[:-1] != labels.shape:
                shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits)
                raise ValueError(f"{name}_logits {shape} does not match labels {tuple(labels.shape)} (+ vocab dim)")
            flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
            if self.chunk_size is not None:
                loss_sum = chunked_cross_entropy(
                    flat, flat_labels, self.chunk_size, self.ignore_index, self.label_smoothing, reduction="sum",
                    inplace_backward=self.inplace_backward,
                )
            else:
                _check_labels(flat_labels, flat.shape[-1], self.ignore_index, f"{name} labels")
                loss_sum = F.cross_entropy(
                    flat, flat_labels.long(), ignore_index=self.ignore_index,
                    label_smoothing=self.label_smoothing, reduction="sum",
                )
            with torch.no_grad():
                preds = flat.argmax(dim=-1)
        valid = flat_labels != self.ignore_index
        n_valid = valid.sum()
        n_correct = ((preds == flat_labels) & valid).sum()
        return loss_sum, n_valid, n_correct

    def forward(
        self,
        l1_logits: LevelInput,
        l2_logits: LevelInput,
        l3_logits: LevelInput,
        labels_l1: Optional[torch.Tensor] = None,
        labels_l2: Optional[torch.Tensor] = None,
        labels_l3: Optional[torch.Tensor] = None,
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, MetricsDict]:
        """
        Args:
            l1_logits: [B, T, V1]（或 (hidden [B, T, H], 线性头)）
            l2_logits: [B, T, V2]
            l3_logits: [B, T, V3]
            labels_l1 / labels_l2 / labels_l3: [B, T]，padding 为 ignore_index；
                也可以把 [B, T, 3] 的整体标签作为 labels_l1 或 `labels=` 传入
            num_items_in_batch: 见类说明（HF Trainer 的有效标签总数，三层合计）
        Returns:
            loss 标量；metrics：ntp_loss、ntp_l{1,2,3}_loss、ntp_l{1,2,3}_acc（detach 的 0 维张量）
        """
        if labels is None and labels_l1 is not None and labels_l2 is None and labels_l3 is None:
            labels = labels_l1
        if labels is not None:
            if labels.dim() != 3 or labels.shape[-1] != NUM_LEVELS:
                raise ValueError(f"labels must be [B, T, {NUM_LEVELS}], got {tuple(labels.shape)}")
            level_labels = (labels[..., 0], labels[..., 1], labels[..., 2])
        else:
            if labels_l1 is None or labels_l2 is None or labels_l3 is None:
                raise ValueError("NextTokenPredictionLoss needs labels_l1/l2/l3 [B, T] or one labels [B, T, 3]")
            level_labels = (labels_l1, labels_l2, labels_l3)

        if num_items_in_batch is not None:
            denom = torch.as_tensor(num_items_in_batch, dtype=torch.float32).reshape(-1)[0] / NUM_LEVELS
            # 整个累积批次都没有有效标签时分子为 0：除以 1 得 0，而不是 NaN（torch.where 避免一次设备同步）
            denom = torch.where(denom > 0, denom, torch.ones_like(denom))
        total = None
        metrics: MetricsDict = {}
        for level, (inp, lab) in enumerate(zip((l1_logits, l2_logits, l3_logits), level_labels), start=1):
            loss_sum, n_valid, n_correct = self._level_sum(level, inp, lab)
            if num_items_in_batch is not None:
                level_loss = loss_sum / denom.to(loss_sum.device)
            else:
                level_loss = loss_sum / n_valid.clamp(min=1).to(loss_sum.dtype)
            weighted = self.weights[level - 1] * level_loss
            total = weighted if total is None else total + weighted
            metrics[f"ntp_l{level}_loss"] = level_loss.detach()
            metrics[f"ntp_l{level}_acc"] = (n_correct.float() / n_valid.clamp(min=1).float()).detach()
        metrics["ntp_loss"] = total.detach()
        return total, metrics


# ----------------------------------------------------------------------------------------------------------------------
# 对比学习损失
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# DPO 损失
# ----------------------------------------------------------------------------------------------------------------------


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
            for name, t in (("reference_chosen_logps", reference_chosen_logps),
                            ("reference_rejected_logps", reference_rejected_logps)):
                if t.shape != chosen_logps.shape:
                    raise ValueError(f"DPOLoss: {name} has shape {tuple(t.shape)}, expected {tuple(chosen_logps.shape)}")
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


# ----------------------------------------------------------------------------------------------------------------------
# 统一损失
# ----------------------------------------------------------------------------------------------------------------------


class UnifiedLoss(nn.Module):
    """L_total = L_ntp + λ1·L_contrastive + λ2·L_preference + λ3·L_moe_balance（规格 6.1）。

    λ 为 0 的项不计算。返回的 dict 中只有 total_loss 带梯度，其余为 detach 的 0 维张量（供日志）。
    """

    # from_config 读取的配置字段（与 TrainingConfig / Stage*Config 的字段名一致）
    CONFIG_FIELDS = (
        "l1_weight", "l2_weight", "l3_weight", "lambda_contrastive", "lambda_preference", "lambda_moe_balance",
        "label_smoothing", "contrastive_temperature", "dpo_beta", "dpo_reference_free", "dpo_label_smoothing",
        "ignore_index", "chunk_size", "contrastive_normalize",
    )

    def __init__(
        self,
        l1_weight: float = 0.5,
        l2_weight: float = 0.3,
        l3_weight: float = 0.2,
        lambda_contrastive: float = 0.1,
        lambda_preference: float = 0.1,
        lambda_moe_balance: float = 0.01,
        label_smoothing: float = 0.0,
        contrastive_temperature: float = 0.07,
        dpo_beta: float = 0.1,
        dpo_reference_free: bool = False,
        dpo_label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        chunk_size: Optional[int] = None,
        contrastive_normalize: bool = True,
    ):
        super().__init__()
        for name, lam in (("lambda_contrastive", lambda_contrastive), ("lambda_preference", lambda_preference),
                          ("lambda_moe_balance", lambda_moe_balance)):
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"UnifiedLoss: {name} must be a finite number >= 0, got {lam}")
        self.lambda_contrastive = float(lambda_contrastive)
        self.lambda_preference = float(lambda_preference)
        self.lambda_moe_balance = float(lambda_moe_balance)
        self.ntp_loss = NextTokenPredictionLoss(
            l1_weight, l2_weight, l3_weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
            chunk_size=chunk_size,
        )
        self.contrastive_loss = ContrastiveLoss(contrastive_temperature, normalize=contrastive_normalize)
        self.dpo_loss = DPOLoss(dpo_beta, reference_free=dpo_reference_free, label_smoothing=dpo_label_smoothing)
        self._warned_missing_repr = False

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "UnifiedLoss":
        """从带同名属性的配置对象（TrainingConfig / Stage*Config / 任意对象）构造；缺的字段用默认值。"""
        kwargs = {name: getattr(config, name) for name in cls.CONFIG_FIELDS if getattr(config, name, None) is not None}
        kwargs.update(overrides)
        return cls(**kwargs)

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
            preference: {"chosen_logps", "rejected_logps", "reference_chosen_logps", "reference_rejected_logps"}，各 [B]
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
