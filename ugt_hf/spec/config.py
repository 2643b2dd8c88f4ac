"""规格的训练配置类：TrainingConfig / Stage1Config / Stage2Config / Stage3Config（规格的字段名与默认值）。

它们是生产参数类的子类，可直接作为 UGTTrainer / UGTDPOTrainer 的 `args`：

    TrainingConfig(规格字段, ModelArguments, DataArguments, EvaluationArguments, UGTTrainingArguments)
    Stage3Config(TrainingConfig, UGTDPOConfig)   # isinstance(Stage3Config(), TrainingConfig) 且是 TRL DPOConfig

规格名是真字段（构造函数接受 batch_size=...），HF 同义字段在 `__post_init__` 里对齐：两者只给一个即可，
同时给出且取值不同 → ConfigError；保存时只存 HF 名。生产路径（stages / workflow）不导入本模块。
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from transformers.trainer_utils import IntervalStrategy

from ..training.arguments import (
    ConfigError,
    DataArguments,
    EvaluationArguments,
    ModelArguments,
    UGTDPOConfig,
    UGTTrainingArguments,
    arg,
    check_ranges,
    parse_config,
)

__all__ = ["ConfigError", "Stage1Config", "Stage2Config", "Stage3Config", "TrainingConfig", "parse_config"]

_TWINS = {"batch_size": "per_device_train_batch_size", "max_epochs": "num_train_epochs",
          "experiment_name": "run_name"}


@dataclass
class _SpecFields:
    """规格独有的字段与规格名（放在 MRO 最前，覆盖生产类里带别名的 HF 字段）。"""

    experiment_name: Optional[str] = arg("ugt_training", "实验名称（同步到 HF 的 run_name）")
    run_name: Optional[str] = arg(None, "HF 名，等同 experiment_name；两者只需给一个")
    batch_size: int = arg(256, "每个 GPU/进程的训练批次大小（对应 per_device_train_batch_size）")
    per_device_train_batch_size: Optional[int] = arg(None, "HF 名，等同 batch_size")
    max_epochs: float = arg(10, "最大训练轮数（对应 num_train_epochs）")
    num_train_epochs: Optional[float] = arg(None, "HF 名，等同 max_epochs")
    max_seq_length: int = arg(1024, "最大序列长度（编码器+解码器总预算）")
    num_negatives: int = arg(127, "对比学习负样本数（批内负样本时为 batch_size-1）")
    dpo_beta: float = arg(0.1, "DPO 温度 β（Stage3 中同步到 TRL 的 beta），必须 > 0")
    ddp: bool = arg(False, "规格兼容字段：DDP 由 torchrun/accelerate 启动方式自动启用，只作记录")
    eval_strategy: Union[IntervalStrategy, str, None] = arg(None, "评估策略；不给时有验证数据则 steps，否则 no")


@dataclass
class TrainingConfig(_SpecFields, ModelArguments, DataArguments, EvaluationArguments, UGTTrainingArguments):
    """规格的基础训练配置（`TrainingArguments` 子类，可直接交给 HF Trainer）。"""

    _SPEC_TWINS = _TWINS  # 不加注解：类属性而非 dataclass 字段

    def __post_init__(self):
        for spec, hf in self._SPEC_TWINS.items():
            spec_value, hf_value = getattr(self, spec), getattr(self, hf)
            if hf_value is None:
                setattr(self, hf, spec_value)
            elif spec_value != hf_value and spec_value != self.__dataclass_fields__[spec].default:
                raise ConfigError(f"同时给了 {spec}={spec_value!r} 与 {hf}={hf_value!r}，二者是同一参数；只保留一个",
                                  field=f"{spec}/{hf}")
        own_beta = () if "dpo_beta" in self._SPEC_TWINS else ("dpo_beta",)
        check_ranges(self, non_negative=("num_negatives",), positive=("max_seq_length",) + own_beta,
                     integer=("num_negatives",))
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.eval_data_path else "no"
        try:
            super().__post_init__()
        except ConfigError as e:
            spec_name = {hf: spec for spec, hf in self._SPEC_TWINS.items()}.get(e.field)
            if spec_name is None:
                raise
            raise ConfigError(e.message, field=spec_name, source=e.source, line=e.line) from None
        for spec, hf in self._SPEC_TWINS.items():
            setattr(self, spec, getattr(self, hf))


@dataclass
class Stage1Config(TrainingConfig):
    """阶段 1：基础预训练（只用 NTP）。"""

    max_epochs: float = arg(5, "最大训练轮数（阶段 1 默认 5）")
    learning_rate: float = arg(1e-4, "峰值学习率（阶段 1 默认 1e-4）")
    lambda_contrastive: float = arg(0.0, "对比学习权重 λ₁（阶段 1 不用，默认 0）")
    lambda_preference: float = arg(0.0, "偏好损失权重 λ₂（阶段 1 不用，默认 0）")


@dataclass
class Stage2Config(TrainingConfig):
    """阶段 2：多任务微调（NTP + 对比学习）。"""

    max_epochs: float = arg(3, "最大训练轮数（阶段 2 默认 3）")
    learning_rate: float = arg(5e-5, "峰值学习率（阶段 2 默认 5e-5，较小）")
    lambda_contrastive: float = arg(0.1, "对比学习权重 λ₁（阶段 2 默认 0.1）")


@dataclass
class Stage3Config(TrainingConfig, UGTDPOConfig):
    """阶段 3：偏好对齐（同时是 TrainingConfig 与 TRL `DPOConfig`；dpo_beta ↔ beta）。"""

    _SPEC_TWINS = {**_TWINS, "dpo_beta": "beta"}

    max_epochs: float = arg(2, "最大训练轮数（阶段 3 默认 2）")
    learning_rate: float = arg(1e-5, "峰值学习率（阶段 3 默认 1e-5，更小）")
    lambda_preference: float = arg(0.1, "偏好损失权重 λ₂（阶段 3 默认 0.1）")
    beta: Optional[float] = arg(None, "TRL 名，等同 dpo_beta；两者只需给一个")
