"""与 TRL 内部细节的唯一接触点（按版本门控）。

TRL 1.16 的 `DPOTrainer.__init__` 无条件调用模块级的 `trl.trainer.dpo_trainer.add_fused_lm_head(model, ...)`，
它假设模型是 “LM backbone + lm_head” 的因果语言模型；没有子类钩子可以替换它。UGT 需要在这一步换上层次化物品打分
（`training.dpo_trainer.add_ugt_fused_head`），所以这里在 `DPOTrainer.__init__` 期间换掉这个模块属性，
退出时恢复。只在已验证过的 TRL 版本上这样做；其他版本给出明确的错误，而不是静默地打错补丁。
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import trl
import trl.trainer.dpo_trainer as trl_dpo
from packaging.version import Version

# 验证过的范围：TRL 1.16 的 DPOTrainer 在 __init__ 里调用 add_fused_lm_head，在 _compute_loss 里读
# model(..., fused_lm_head=True).log_probs / entropy / mean_logits / is_top1
TRL_MIN_VERSION = Version("1.16.0")
TRL_MAX_VERSION = Version("1.17.0")  # 不含

ORIGINAL_ADD_FUSED_LM_HEAD: Callable = getattr(trl_dpo, "add_fused_lm_head", None)


def check_trl_version(version: str = trl.__version__) -> None:
    """TRL 版本不在验证过的范围、或没有 `add_fused_lm_head` 钩子时抛 RuntimeError（说明原因与可用的版本）。"""
    v = Version(version)
    if not TRL_MIN_VERSION <= Version(v.base_version) < TRL_MAX_VERSION:
        raise RuntimeError(
            f"UGTDPOTrainer supports trl >= {TRL_MIN_VERSION}, < {TRL_MAX_VERSION} (installed: trl {version}): it "
            "replaces TRL's fused LM head while DPOTrainer is constructed, which depends on TRL internals. "
            f"Install a supported version, e.g. pip install 'trl>={TRL_MIN_VERSION},<{TRL_MAX_VERSION}'."
        )
    if ORIGINAL_ADD_FUSED_LM_HEAD is None:
        raise RuntimeError(f"trl {version}: trl.trainer.dpo_trainer.add_fused_lm_head not found; "
                           "UGTDPOTrainer cannot install the hierarchical item scorer")


@contextlib.contextmanager
def trl_fused_lm_head(replacement: Callable) -> Iterator[Callable]:
    """在 with 块内把 TRL DPOTrainer 使用的 `add_fused_lm_head` 换成 replacement，产出原函数（非 UGT 模型用）。

    用法：`with trl_fused_lm_head(add_ugt_fused_head): DPOTrainer.__init__(...)`。换的是模块全局名，
    同一时刻在别的线程里构造 DPOTrainer 也会看到替换（构造 trainer 本来就不是并发操作）。
    """
    check_trl_version()
    trl_dpo.add_fused_lm_head = replacement
    try:
        yield ORIGINAL_ADD_FUSED_LM_HEAD
    finally:
        trl_dpo.add_fused_lm_head = ORIGINAL_ADD_FUSED_LM_HEAD


__all__ = ["ORIGINAL_ADD_FUSED_LM_HEAD", "TRL_MAX_VERSION", "TRL_MIN_VERSION", "check_trl_version",
           "trl_fused_lm_head"]
