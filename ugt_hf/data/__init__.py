"""数据：离线准备（原始日志 → 语义 ID → 产物目录）与训练时读取（HF datasets）。"""

from .collator import DataCollator, PreferenceCollator
from .datasets import PreferenceDataset, RecommendDataset, StreamingDataset
from .validation import DataValidationError

__all__ = ["DataCollator", "PreferenceCollator", "PreferenceDataset", "RecommendDataset", "StreamingDataset",
           "DataValidationError"]
