"""数据：离线准备（原始日志 → 语义 ID → 产物目录）与训练时读取（HF datasets）。

再导出的名字惰性导入（PEP 562）：`ugt prepare --help` 只需 data.prepare 的参数类，不加载 torch / pyarrow。
"""

from .._lazy import lazy_getattr

_LAZY = {
    "DataCollator": "collator", "PreferenceCollator": "collator", "PreferenceDataset": "datasets",
    "RecommendDataset": "datasets", "StreamingDataset": "datasets", "DataValidationError": "validation",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = ["DataCollator", "PreferenceCollator", "PreferenceDataset", "RecommendDataset", "StreamingDataset",
           "DataValidationError"]
