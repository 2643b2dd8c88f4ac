"""规格 11.4 的学习率调度：`create_scheduler` 与 LinearLR / CosineLR / PolynomialLR。

都落到 transformers 的 `get_scheduler` 家族（经 `ugt_hf.training.optim.create_scheduler` 映射规格的名字与
min_lr_ratio）；三个具名工厂只是固定了 scheduler_type 的 create_scheduler。
"""

from __future__ import annotations

from typing import Any

import torch

from ugt_hf.training.optim import create_scheduler, lr_at_step

__all__ = ["CosineLR", "LinearLR", "PolynomialLR", "create_scheduler", "lr_at_step"]

LRScheduler = torch.optim.lr_scheduler.LRScheduler


def LinearLR(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
             **kwargs: Any) -> LRScheduler:
    """线性预热后线性衰减（min_lr_ratio > 0 时衰减到 lr·min_lr_ratio 而非 0）。"""
    return create_scheduler(optimizer, "linear", total_steps, warmup_steps, min_lr_ratio, **kwargs)


def CosineLR(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1,
             **kwargs: Any) -> LRScheduler:
    """线性预热后余弦退火到 lr·min_lr_ratio（规格默认 0.1）。"""
    return create_scheduler(optimizer, "cosine", total_steps, warmup_steps, min_lr_ratio, **kwargs)


def PolynomialLR(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.0, **kwargs: Any) -> LRScheduler:
    """线性预热后多项式衰减（power 等参数经 kwargs 交给 HF）。"""
    return create_scheduler(optimizer, "polynomial", total_steps, warmup_steps, min_lr_ratio, **kwargs)
