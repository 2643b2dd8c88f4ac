"""规格（spec/01 任务书、spec/02 模块文档）的 `algorithm/training/` 公共 API，集中在这一个子包里。

规格的导入路径按模块一一对应：`algorithm.training[.X]` → `ugt_hf.spec[.X]`（`algorithm.interfaces` 的
TrainerInterface / TrainingConfig 也从这里导出）。这里的每个名字都是生产部件（HF Trainer 扩展、
`ugt_hf.data`、`ugt_hf.metrics`、`ugt_hf.training`）之上的薄适配层；生产路径从不导入本子包。

    config.py       TrainingConfig、Stage1Config、Stage2Config、Stage3Config
    dataset.py      RecommendDataset、PreferenceDataset、StreamingDataset、DataCollator（规格的批次形式）
    loss.py         NextTokenPredictionLoss、ContrastiveLoss、DPOLoss、UnifiedLoss
    optimizer.py    AdamW、LAMB、create_optimizer
    scheduler.py    LinearLR、CosineLR、PolynomialLR、create_scheduler
    trainer.py      Trainer（TrainerInterface 的实现，UGTTrainer 子类）
    checkpoint.py   CheckpointManager
    metrics.py      recall_at_k、ndcg_at_k、mrr、hit_rate、coverage、MetricsCalculator
    distributed.py  setup_distributed、DistributedTrainer、DeepSpeedTrainer（Accelerate 之上）
    scripts/        train_stage1 / train_stage2 / train_stage3（DPOTrainer）
"""

from ugt_hf.interfaces import TrainerInterface

from .checkpoint import CheckpointManager
from .config import Stage1Config, Stage2Config, Stage3Config, TrainingConfig
from .dataset import DataCollator, PreferenceDataset, RecommendDataset, StreamingDataset
from .distributed import DeepSpeedTrainer, DistributedTrainer, setup_distributed
from .loss import ContrastiveLoss, DPOLoss, NextTokenPredictionLoss, UnifiedLoss
from .metrics import MetricsCalculator, coverage, diversity, gini, hit_rate, mrr, ndcg_at_k, recall_at_k
from .optimizer import LAMB, AdamW, create_optimizer
from .scheduler import CosineLR, LinearLR, PolynomialLR, create_scheduler
from .trainer import Trainer

__all__ = [
    "TrainerInterface",
    "TrainingConfig", "Stage1Config", "Stage2Config", "Stage3Config",
    "RecommendDataset", "PreferenceDataset", "StreamingDataset", "DataCollator",
    "NextTokenPredictionLoss", "ContrastiveLoss", "DPOLoss", "UnifiedLoss",
    "AdamW", "LAMB", "create_optimizer",
    "LinearLR", "CosineLR", "PolynomialLR", "create_scheduler",
    "Trainer", "CheckpointManager",
    "recall_at_k", "ndcg_at_k", "mrr", "hit_rate", "coverage", "gini", "diversity", "MetricsCalculator",
    "setup_distributed", "DistributedTrainer", "DeepSpeedTrainer",
]
