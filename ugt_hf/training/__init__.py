"""训练层：参数类、UGTTrainer（阶段 1–2）、UGTDPOTrainer（阶段 3）、回调与检查点加固。

规格的名字（TrainingConfig / Stage*Config、DPOLoss、UnifiedLoss、MetricsCalculator 等）在 `ugt_hf.spec`；
纯排序指标在 `ugt_hf.metrics`。这里不导入它们，生产路径与规格层互不依赖。

再导出的名字惰性导入（PEP 562）：`ugt train --help` 要读 training.argument_fields 而不加载 torch。
"""

import importlib

_LAZY = {"ContrastiveLoss": "losses", "UGTTrainer": "trainer"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ContrastiveLoss", "UGTTrainer"]
