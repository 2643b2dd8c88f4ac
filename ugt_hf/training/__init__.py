"""训练层：参数类、UGTTrainer（阶段 1–2）、UGTDPOTrainer（阶段 3）、回调与检查点加固。

规格的名字（TrainingConfig / Stage*Config、DPOLoss、UnifiedLoss、MetricsCalculator 等）在 `ugt_hf.spec`；
纯排序指标在 `ugt_hf.metrics`。这里不导入它们，生产路径与规格层互不依赖。
"""

from .losses import ContrastiveLoss
from .trainer import UGTTrainer

__all__ = ["ContrastiveLoss", "UGTTrainer"]
