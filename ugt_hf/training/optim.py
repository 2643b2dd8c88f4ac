"""优化器与学习率调度：规格的 create_optimizer / create_scheduler，建立在 torch 与 transformers 之上。

- AdamW 用 torch 自带实现；调度器用 transformers 的 `get_scheduler` 家族（按规格名字选择）。
- LAMB（规格列出）没有仍在维护、且在允许依赖内的实现（torch-optimizer 已停更），因此按
  You et al. 2019（arXiv:1904.00962）Algorithm 2 自行实现，并以手算单步测试。
- `lr_at_step` 是纯函数，与 HF 调度器逐步一致（测试里交叉核对），方便在不建优化器时推算学习率。
- `get_optimizer_cls_and_kwargs(args, model)` 是给 Trainer 子类的钩子：`optimizer_type="lamb"` 时返回 LAMB，
  其余交给 HF `Trainer.get_optimizer_cls_and_kwargs`。

权重衰减约定（与 nanoGPT 一致，也与 HF Trainer 的默认结果一致）：只衰减 ndim >= 2 的参数（Linear 权重、
Embedding 表）；偏置与各种 Norm 的缩放/平移（均为 1 维）不衰减——它们衰减到 0 只会损害表达能力。
Embedding 也衰减：HF Trainer 同样如此，且语义 ID 词表很大、稀疏更新，衰减可抑制冷门 ID 的范数膨胀。
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn
from transformers import SchedulerType, Trainer, get_scheduler

__all__ = [
    "LAMB",
    "OPTIMIZER_TYPES",
    "SCHEDULER_TYPES",
    "create_optimizer",
    "create_scheduler",
    "get_optimizer_cls_and_kwargs",
    "get_param_groups",
    "lr_at_step",
    "resolve_scheduler",
]

OPTIMIZER_TYPES = ("adamw", "lamb")
# lr_at_step 支持的调度（HF 的其余类型仍可经 create_scheduler 使用，只是没有纯函数版本）
SCHEDULER_TYPES = (
    "linear",
    "cosine",
    "cosine_with_min_lr",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


# --------------------------------------------------------------------------------------------------------------------
# LAMB
# --------------------------------------------------------------------------------------------------------------------
class LAMB(torch.optim.Optimizer):
    """LAMB（Layer-wise Adaptive Moments for Batch training），You et al. 2019, Algorithm 2。

    对每个参数张量（论文中的"层"）：
        m_t = β1 m_{t-1} + (1-β1) g_t
        v_t = β2 v_{t-1} + (1-β2) g_t²
        m̂ = m_t / (1-β1^t),  v̂ = v_t / (1-β2^t)                       # 偏差修正（bias_correction=True）
        r = m̂ / (√v̂ + ε) + λ w                                          # 权重衰减在更新量里（解耦式）
        trust = φ(‖w‖) / ‖r‖，φ 取恒等；任一范数为 0 时 trust = 1      # 防止 0 权重/0 更新卡死
        w ← w - lr · trust · r

    Args:
        params: 参数或参数组（组内可单独设 weight_decay，HF Trainer 正是这么传的）。
        lr: 学习率。
        betas: (β1, β2)。
        eps: 分母稳定项 ε。
        weight_decay: λ。
        bias_correction: 是否做 Adam 偏差修正（论文 Algorithm 2 有）。
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
    ):
        if lr < 0.0:
            raise ValueError(f"LAMB: lr must be >= 0, got {lr}")
        if eps < 0.0:
            raise ValueError(f"LAMB: eps must be >= 0, got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LAMB: betas must be in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"LAMB: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                # 矩估计至少用 fp32（半精度参数下也稳定），fp64 参数保持 fp64
                compute_dtype = torch.promote_types(p.dtype, torch.float32)
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=compute_dtype, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, dtype=compute_dtype, memory_format=torch.preserve_format
                    )
                state["step"] += 1
                t = state["step"]
                g = grad.to(compute_dtype)
                w = p.to(compute_dtype)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(g, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                if group["bias_correction"]:
                    m_hat = exp_avg / (1.0 - beta1**t)
                    v_hat = exp_avg_sq / (1.0 - beta2**t)
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"] != 0.0:
                    update = update.add(w, alpha=group["weight_decay"])
                w_norm = torch.linalg.vector_norm(w)
                u_norm = torch.linalg.vector_norm(update)
                # 任一范数为 0 时信任比取 1（论文：φ(0) 情形与首步零权重）
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


# --------------------------------------------------------------------------------------------------------------------
# 优化器
# --------------------------------------------------------------------------------------------------------------------
def _check_choice(value: str, choices: Iterable[str], what: str) -> str:
    name = str(value).lower()
    choices = list(choices)
    if name not in choices:
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown {what} '{value}', choose one of {', '.join(choices)}{hint}")
    return name


def get_param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """按维度切分参数组：ndim >= 2 衰减，其余（偏置、Norm）不衰减；只收 requires_grad 的参数，去掉空组。"""
    decay, no_decay = [], []
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:  # 共享权重（如 tied embedding）只登记一次
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(
    model: nn.Module,
    optimizer_type: str = "adamw",
    learning_rate: float = 1e-4,
    weight_decay: float = 0.01,
    betas: Tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """规格的优化器工厂：`optimizer_type` 取 "adamw"（torch.optim.AdamW）或 "lamb"（本模块的 LAMB）。

    额外 kwargs 原样传给优化器构造函数（如 AdamW 的 fused=True）。
    """
    name = _check_choice(optimizer_type, OPTIMIZER_TYPES, "optimizer_type")
    if learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    groups = get_param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to optimize")
    cls = torch.optim.AdamW if name == "adamw" else LAMB
    return cls(groups, lr=learning_rate, betas=tuple(betas), eps=eps, **kwargs)


def get_optimizer_cls_and_kwargs(args: Any, model: Optional[nn.Module] = None) -> Tuple[Any, Dict[str, Any]]:
    """Trainer 钩子：与 `transformers.Trainer.get_optimizer_cls_and_kwargs(args, model)` 同签名同返回。

    `args.optimizer_type == "lamb"` 时返回 (LAMB, {lr, betas, eps})；HF Trainer 的 `create_optimizer` 会自己按
    `get_decay_parameter_names` 分好带 weight_decay 的参数组再调用 `LAMB(groups, **kwargs)`。
    其余情况原样交给 HF（args.optim 决定的 AdamW 等）。
    """
    optimizer_type = str(getattr(args, "optimizer_type", "adamw") or "adamw").lower()
    if optimizer_type == "lamb":
        return LAMB, {
            "lr": args.learning_rate,
            "betas": (args.adam_beta1, args.adam_beta2),
            "eps": args.adam_epsilon,
        }
    _check_choice(optimizer_type, OPTIMIZER_TYPES, "optimizer_type")
    return Trainer.get_optimizer_cls_and_kwargs(args, model)


# --------------------------------------------------------------------------------------------------------------------
# 学习率调度
# --------------------------------------------------------------------------------------------------------------------
def _hf_scheduler_names() -> List[str]:
    return [s.value for s in SchedulerType]


def resolve_scheduler(
    scheduler_type: str,
    min_lr_ratio: float = 0.0,
    learning_rate: Optional[float] = None,
    scheduler_kwargs: Optional[Mapping[str, Any]] = None,
) -> Tuple[str, Dict[str, Any]]:
    """把规格的 (调度名, min_lr_ratio) 映射到 HF 的 (SchedulerType 名, scheduler_specific_kwargs)。

    - "cosine" 且 min_lr_ratio > 0 → "cosine_with_min_lr"，min_lr_rate = min_lr_ratio（规格的余弦带下限）。
    - "cosine_with_min_lr" / "cosine_warmup_with_min_lr" → 补上 min_lr_rate（除非用户给了绝对 min_lr）。
    - "linear" 且 min_lr_ratio > 0 → "polynomial"(power=1, lr_end=lr·ratio)：即线性衰减到下限而非 0。
    - "polynomial" 且 min_lr_ratio > 0 → lr_end = lr·ratio（需要 learning_rate）。
    - 其余类型（constant、inverse_sqrt...）与下限无关，min_lr_ratio 被忽略。
    kwargs 里已有且与 min_lr_ratio 矛盾的值会报错，而不是悄悄二选一。
    """
    name = str(getattr(scheduler_type, "value", scheduler_type)).lower()
    name = _check_choice(name, _hf_scheduler_names(), "lr_scheduler_type")
    kwargs: Dict[str, Any] = dict(scheduler_kwargs or {})
    ratio = float(min_lr_ratio or 0.0)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1), got {min_lr_ratio}")

    def _put(key: str, value: float) -> None:
        if key in kwargs and not math.isclose(float(kwargs[key]), value, rel_tol=1e-9, abs_tol=0.0):
            raise ValueError(
                f"lr_scheduler_kwargs['{key}']={kwargs[key]} contradicts the {value} implied by min_lr_ratio={ratio}; "
                "set only one of them"
            )
        kwargs[key] = value

    if name == "cosine" and ratio > 0:
        name = "cosine_with_min_lr"
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if "min_lr" not in kwargs:
            _put("min_lr_rate", ratio)
        elif ratio > 0 and "min_lr_rate" not in kwargs:
            raise ValueError(
                "lr_scheduler_kwargs sets an absolute min_lr while min_lr_ratio > 0; set only one of them "
                "(e.g. min_lr_ratio: 0)"
            )
    elif name in ("linear", "polynomial") and ratio > 0:
        if learning_rate is None:
            raise ValueError(f"{name} with min_lr_ratio needs learning_rate to compute lr_end")
        if name == "linear":
            name = "polynomial"
            _put("power", 1.0)
        _put("lr_end", float(learning_rate) * ratio)
    return name, kwargs


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler_type: str = "cosine",
    total_steps: int = 100000,
    warmup_steps: int = 10000,
    min_lr_ratio: float = 0.1,
    **scheduler_kwargs: Any,
) -> torch.optim.lr_scheduler.LRScheduler:
    """规格的调度器工厂：经 `resolve_scheduler` 映射后调用 transformers 的 `get_scheduler`。

    min_lr_ratio 默认 0.1，与 TrainingConfig 的默认一致（余弦衰减到 10% 而非 0）。
    学习率基准取优化器各组的初始 lr（LambdaLR 乘子语义）。
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    base_lr = optimizer.defaults.get("lr")
    name, kwargs = resolve_scheduler(scheduler_type, min_lr_ratio, base_lr, scheduler_kwargs)
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=int(warmup_steps),
        num_training_steps=int(total_steps),
        scheduler_specific_kwargs=kwargs,
    )


def lr_at_step(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    scheduler_type: str = "cosine",
    min_lr_ratio: float = 0.1,
    power: float = 1.0,
) -> float:
    """第 `step` 次 scheduler.step() 之后的学习率（纯函数，与 create_scheduler 给出的 HF 调度逐步一致）。

    step=0 即训练开始前；预热段线性从 0 升到 base_lr（HF 约定：step=W 时恰为 base_lr）。
    余弦：lr = base·[r + (1-r)·½(1+cos(π·p))]，p = (step-W)/(T-W)，r = min_lr_ratio；step = T 时恰为下限
    （step > T 时与 HF 一样按公式外推，Trainer 不会走到那里）。
    线性/多项式：从 base 衰减到 base·r（r=0 时线性到 0）。
    """
    name, kwargs = resolve_scheduler(scheduler_type, min_lr_ratio, base_lr)
    step, total, warm = int(step), int(total_steps), int(warmup_steps)
    if name not in SCHEDULER_TYPES:
        raise ValueError(f"lr_at_step does not support '{scheduler_type}'; supported: {', '.join(SCHEDULER_TYPES)}")
    if name == "constant":
        return float(base_lr)
    if step < warm:
        return base_lr * step / max(1, warm)
    if name == "constant_with_warmup":
        return float(base_lr)
    if name == "linear":
        return base_lr * max(0.0, (total - step) / max(1, total - warm))
    if name == "cosine_with_min_lr":
        r = float(kwargs.get("min_lr_rate", 0.0))
        progress = (step - warm) / max(1, total - warm)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return base_lr * max(0.0, factor * (1 - r) + r)
    if name == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return base_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    # polynomial：与 HF 一致，lr_end 默认 1e-7
    lr_end = float(kwargs.get("lr_end", 1e-7))
    p = float(kwargs.get("power", power))
    if step > total:
        return lr_end
    pct_remaining = 1 - (step - warm) / (total - warm)
    return (base_lr - lr_end) * pct_remaining**p + lr_end
