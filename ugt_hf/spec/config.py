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

    experiment_name: Optional[str] = arg("ugt_training", "experiment name (copied to HF run_name)")
    run_name: Optional[str] = arg(None, "HF name of experiment_name; give one of the two")
    batch_size: int = arg(256, "training batch size per GPU/process (HF: per_device_train_batch_size)")
    per_device_train_batch_size: Optional[int] = arg(None, "HF name of batch_size")
    max_epochs: float = arg(10, "maximum training epochs (HF: num_train_epochs)")
    num_train_epochs: Optional[float] = arg(None, "HF name of max_epochs")
    max_seq_length: int = arg(1024, "maximum sequence length (encoder + decoder budget)")
    num_negatives: int = arg(127, "contrastive negatives per sample (in-batch negatives: batch_size - 1)")
    dpo_beta: float = arg(0.1, "DPO temperature beta (copied to TRL beta in Stage3Config), > 0")
    ddp: bool = arg(False, "spec compatibility field, recorded only: DDP is enabled by launching with "
                           "torchrun/accelerate")
    eval_strategy: Union[IntervalStrategy, str, None] = arg(
        None, "evaluation strategy; default: steps when validation data is given, else no")


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
                raise ConfigError(f"both {spec}={spec_value!r} and {hf}={hf_value!r} were given; they are the same "
                                  "option, keep one",
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

    max_epochs: float = arg(5, "maximum training epochs (stage 1 default: 5)")
    learning_rate: float = arg(1e-4, "peak learning rate (stage 1 default: 1e-4)")
    lambda_contrastive: float = arg(0.0, "contrastive loss weight (unused in stage 1, default 0)")
    lambda_preference: float = arg(0.0, "preference loss weight (unused in stage 1, default 0)")


@dataclass
class Stage2Config(TrainingConfig):
    """阶段 2：多任务微调（NTP + 对比学习）。"""

    max_epochs: float = arg(3, "maximum training epochs (stage 2 default: 3)")
    learning_rate: float = arg(5e-5, "peak learning rate (stage 2 default: 5e-5, smaller)")
    lambda_contrastive: float = arg(0.1, "contrastive loss weight (stage 2 default: 0.1)")


@dataclass
class Stage3Config(TrainingConfig, UGTDPOConfig):
    """阶段 3：偏好对齐（同时是 TrainingConfig 与 TRL `DPOConfig`；dpo_beta ↔ beta）。"""

    _SPEC_TWINS = {**_TWINS, "dpo_beta": "beta"}

    max_epochs: float = arg(2, "maximum training epochs (stage 3 default: 2)")
    learning_rate: float = arg(1e-5, "peak learning rate (stage 3 default: 1e-5, smaller still)")
    lambda_preference: float = arg(0.1, "preference loss weight (stage 3 default: 0.1)")
    beta: Optional[float] = arg(None, "TRL name of dpo_beta; give one of the two")
