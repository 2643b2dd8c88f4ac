"""训练层：参数类、UGTTrainer（阶段 1–2）、UGTDPOTrainer（阶段 3）、回调与检查点加固。

规格的名字（TrainingConfig / Stage*Config、DPOLoss、UnifiedLoss、MetricsCalculator 等）在 `ugt_hf.spec`；
纯排序指标在 `ugt_hf.metrics`。这里不导入它们，生产路径与规格层互不依赖。

再导出的名字惰性导入（PEP 562）：`ugt train --help` 要读 training.argument_fields 而不加载 torch。
"""

from .._lazy import lazy_getattr

_LAZY = {"ContrastiveLoss": "losses", "UGTTrainer": "trainer"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = ["ContrastiveLoss", "UGTTrainer"]
