"""训练：规格的配置、损失、指标、UGTTrainer（阶段 1–2）、UGTDPOTrainer（阶段 3）与回调。"""

from .arguments import ConfigError, Stage1Config, Stage2Config, Stage3Config, TrainingConfig, parse_config
from .losses import ContrastiveLoss, DPOLoss, NextTokenPredictionLoss, UnifiedLoss
from .metrics import MetricsCalculator, coverage, hit_rate, mrr, ndcg_at_k, recall_at_k
from .trainer import UGTTrainer

__all__ = [
    "ConfigError", "TrainingConfig", "Stage1Config", "Stage2Config", "Stage3Config", "parse_config",
    "NextTokenPredictionLoss", "ContrastiveLoss", "DPOLoss", "UnifiedLoss",
    "MetricsCalculator", "recall_at_k", "ndcg_at_k", "mrr", "hit_rate", "coverage", "UGTTrainer",
]
