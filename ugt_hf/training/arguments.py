"""规格的训练配置（TrainingConfig / Stage1Config / Stage2Config / Stage3Config），建立在 HF 参数类之上。

为什么这样做：HF Trainer 与 TRL DPOTrainer 直接读取 `TrainingArguments` / `DPOConfig`，因此规格的配置类就是
它们的子类——规格字段名与默认值保留，HF 同义字段在 `__post_init__` 里对齐：

    规格名               HF/TRL 名
    batch_size      ↔   per_device_train_batch_size（eval batch 未给时也取它）
    max_epochs      ↔   num_train_epochs
    experiment_name ↔   run_name
    dpo_beta        ↔   beta（仅 Stage3Config / DPOConfig）
    min_lr_ratio    →   lr_scheduler_type=cosine_with_min_lr + lr_scheduler_kwargs.min_lr_rate（见 optim.resolve_scheduler）

两种名字只给一个即可；同时给出且取值不同 → ConfigError。`label_smoothing` 是我们自己的字段（NTP 标签平滑，
由我们的 compute_loss 施加），不设置 HF 的 `label_smoothing_factor`，避免平滑两次。

精度：规格默认 fp16=True。没有能跑 fp16 的加速器（CUDA/XPU/MPS）时退回 fp32，并发出恰好一条
`PrecisionFallbackWarning`。bf16 在无 GPU 时：HF 5.23 会报 "Your setup doesn't support bf16/gpu"，除非 use_cpu=True；
我们选择自动设 use_cpu=True，走 torch 的 CPU bf16 autocast（用户显式要 bf16，能跑就照办，不悄悄降级）。

DeepSpeed：规格里是布尔量，HF 里是 JSON 路径/字典。这里接受 true/false/"auto"/JSON 路径/字典/JSON 字符串：
"auto"（默认）= 有 CUDA 且装了 deepspeed 才用，否则静默走普通路径；显式 true 或路径但缺 CUDA/缺包 → 明确报错。
解析后 `deepspeed` 字段只会是 None 或完整的 DeepSpeed 配置字典（交给 HF 集成填 "auto" 值）。

`parse_config` 负责 YAML + 命令行（命令行优先）、别名、未知键（difflib 给出最接近的合法名）、类型错误、
YAML 语法错误（带行号）等，全部抛 `ConfigError`（ValueError 子类），不让 argparse 直接 exit。
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import importlib.util
import inspect
import json
import logging
import math
import re
import sys
import types
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union
from typing import get_args as typing_get_args
from typing import get_origin as typing_get_origin
from typing import get_type_hints

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SchedulerType
from trl import DPOConfig

from .optim import OPTIMIZER_TYPES, resolve_scheduler

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE_NAME",
    "ConfigError",
    "PrecisionFallbackWarning",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "TrainingConfig",
    "build_deepspeed_config",
    "load_yaml_config",
    "parse_config",
    "resolved_config_dict",
    "save_resolved_config",
]

DEEPSPEED_INSTALL_HINT = "pip install 'ugt-hf[deepspeed]'"
CONFIG_FILE_NAME = "ugt_config.yaml"
CLI_SOURCE = "命令行"

# 规格脚本的旧式参数名（仅作别名，不是字段）
CLI_ALIASES: Dict[str, str] = {
    "train_data": "train_data_path",
    "eval_data": "eval_data_path",
    "pretrained": "pretrained_model_path",
}

_TRUE_STRINGS = {"true", "yes", "y", "on", "1"}
_FALSE_STRINGS = {"false", "no", "n", "off", "0", "none", "null", ""}


class ConfigError(ValueError):
    """配置错误：消息里写明来源（YAML 文件:行 或 命令行）与字段名。"""

    def __init__(
        self,
        message: str,
        *,
        field: Optional[str] = None,
        source: Optional[str] = None,
        line: Optional[int] = None,
    ):
        self.message = message
        self.field = field
        self.source = source
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source:
            parts.append(f"{self.source}:{self.line}" if self.line else str(self.source))
        if self.field:
            parts.append(f"字段 '{self.field}'")
        where = "，".join(parts)
        return f"配置错误（{where}）：{self.message}" if where else f"配置错误：{self.message}"

    def located(self, source: Optional[str], line: Optional[int] = None) -> "ConfigError":
        """返回补上来源信息的新异常（已有来源则保持不变）。"""
        if self.source or not source:
            return self
        return ConfigError(self.message, field=self.field, source=source, line=line)


class PrecisionFallbackWarning(UserWarning):
    """请求的混合精度在当前设备上不可用，已退回 fp32。"""


def _h(text: str, **extra: Any) -> Dict[str, Any]:
    return {"help": text, **extra}


# ====================================================================================================================
# 字段（mixin）：规格字段 + 我们改了默认值的 HF 字段
# ====================================================================================================================
@dataclass
class _UGTFields:
    """规格字段与 HF 字段的新默认值。作为 mixin 放在 MRO 最前，覆盖 TrainingArguments/DPOConfig 的默认。"""

    # ----- 基础 -----
    output_dir: Optional[str] = field(default="checkpoints", metadata=_h("输出目录：检查点、日志与解析后的配置都写在这里"))
    experiment_name: Optional[str] = field(
        default="ugt_training", metadata=_h("实验名称（规格名；同步到 HF 的 run_name，用于日志/TensorBoard）")
    )
    run_name: Optional[str] = field(default=None, metadata=_h("HF 名，等同 experiment_name；两者只需给一个"))
    seed: int = field(default=42, metadata=_h("随机种子"))

    # ----- 批次 -----
    batch_size: int = field(default=256, metadata=_h("每个 GPU/进程的训练批次大小（规格名，对应 per_device_train_batch_size）"))
    per_device_train_batch_size: Optional[int] = field(
        default=None, metadata=_h("HF 名，等同 batch_size；两者只需给一个")
    )
    per_device_eval_batch_size: Optional[int] = field(
        default=None, metadata=_h("每个进程的评估批次大小；不给则与 batch_size 相同")
    )
    gradient_accumulation_steps: int = field(
        default=4, metadata=_h("梯度累积步数；有效批次 = batch_size × 进程数 × 累积步数")
    )
    max_epochs: float = field(default=10, metadata=_h("最大训练轮数（规格名，对应 num_train_epochs）"))
    num_train_epochs: Optional[float] = field(default=None, metadata=_h("HF 名，等同 max_epochs；两者只需给一个"))
    max_steps: int = field(default=-1, metadata=_h("最大优化步数；-1 表示不限制（>0 时覆盖 max_epochs）"))

    # ----- 序列 -----
    max_seq_length: int = field(default=1024, metadata=_h("最大序列长度（编码器+解码器总预算）"))
    encoder_max_length: int = field(default=512, metadata=_h("编码器（用户历史）最大长度，超出截断最旧部分"))
    decoder_max_length: int = field(default=128, metadata=_h("解码器（目标物品序列）最大长度"))

    # ----- 优化器 -----
    optimizer_type: str = field(
        default="adamw",
        metadata=_h("优化器：adamw（HF/torch AdamW，具体实现由 optim 决定）或 lamb（大批量，见 optim.LAMB）"),
    )
    learning_rate: float = field(default=1e-4, metadata=_h("峰值学习率（预热结束时达到）"))
    weight_decay: float = field(default=0.01, metadata=_h("权重衰减；只作用于矩阵参数，不作用于偏置与 Norm"))
    adam_beta1: float = field(default=0.9, metadata=_h("Adam/LAMB 一阶矩衰减 β1"))
    adam_beta2: float = field(default=0.999, metadata=_h("Adam/LAMB 二阶矩衰减 β2"))
    adam_epsilon: float = field(default=1e-8, metadata=_h("Adam/LAMB 分母稳定项 ε"))
    max_grad_norm: float = field(default=1.0, metadata=_h("梯度裁剪阈值（全局 L2 范数）；0 表示不裁剪"))

    # ----- 学习率调度 -----
    lr_scheduler_type: Union[SchedulerType, str] = field(
        default="cosine",
        metadata=_h("学习率调度：linear / cosine / polynomial（规格），也接受 HF 的其它 SchedulerType 名"),
    )
    warmup_steps: float = field(default=10000, metadata=_h("线性预热步数；<1 的小数表示占总步数的比例"))
    min_lr_ratio: float = field(
        default=0.1,
        metadata=_h("最小学习率 = learning_rate × min_lr_ratio；cosine→cosine_with_min_lr，linear→线性到下限"),
    )

    # ----- 混合精度 -----
    fp16: bool = field(default=True, metadata=_h("FP16 混合精度；无 GPU 时自动退回 fp32 并警告一次"))
    bf16: bool = field(default=False, metadata=_h("BF16 混合精度；无 GPU 时走 CPU bf16 autocast（自动 use_cpu）"))

    # ----- 损失权重 -----
    lambda_contrastive: float = field(default=0.1, metadata=_h("对比学习损失权重 λ₁"))
    lambda_preference: float = field(default=0.1, metadata=_h("DPO 偏好损失权重 λ₂"))
    lambda_moe_balance: float = field(default=0.01, metadata=_h("MoE 负载均衡损失权重 λ₃"))
    l1_loss_weight: float = field(default=0.5, metadata=_h("NTP 中 L1（粗粒度）层交叉熵权重"))
    l2_loss_weight: float = field(default=0.3, metadata=_h("NTP 中 L2 层交叉熵权重"))
    l3_loss_weight: float = field(default=0.2, metadata=_h("NTP 中 L3（细粒度）层交叉熵权重"))
    label_smoothing: float = field(
        default=0.0,
        metadata=_h(
            "NTP 标签平滑（由我们的 compute_loss 施加，不设置 HF 的 label_smoothing_factor）；"
            "Stage3 中 TRL 的 robust/exo/aot 损失也读取同名字段，默认 sigmoid 损失不受影响"
        ),
    )
    contrastive_temperature: float = field(default=0.07, metadata=_h("InfoNCE 温度 τ，必须 > 0"))
    num_negatives: int = field(default=127, metadata=_h("对比学习负样本数（批内负样本时为 batch_size-1）"))
    dpo_beta: float = field(default=0.1, metadata=_h("DPO 温度 β（规格名；Stage3 中同步到 TRL 的 beta），必须 > 0"))
    dpo_reference_free: bool = field(
        default=False,
        metadata=_h("DPO 不使用参考模型（参考 log-prob 视为 0）；TRL 1.16 无此选项，由 UGTDPOTrainer 实现"),
    )

    # ----- 路径 -----
    pretrained_model_path: Optional[str] = field(
        default=None, metadata=_h("预训练/上一阶段模型目录（命令行别名 --pretrained）", aliases=["--pretrained"])
    )
    reference_model_path: Optional[str] = field(default=None, metadata=_h("DPO 参考模型目录（冻结）"))
    train_data_path: Optional[str] = field(
        default=None, metadata=_h("训练数据（JSONL/Parquet 文件或目录；别名 --train_data）", aliases=["--train_data"])
    )
    eval_data_path: Optional[str] = field(
        default=None,
        metadata=_h("验证数据（别名 --eval_data）；给出且未设 eval_strategy 时按 eval_steps 评估", aliases=["--eval_data"]),
    )
    resume_from_checkpoint: Optional[str] = field(default=None, metadata=_h("从该检查点目录恢复训练"))
    data_dir: Optional[str] = field(
        default=None,
        metadata=_h("`ugt prepare` 的产物目录（items.parquet、meta.json）；未给 train/eval 路径时取其中的 train/valid"),
    )
    model_config: Union[dict, str, None] = field(
        default=None,
        metadata=_h("从头训练时的 UGTConfig 参数（YAML 映射、JSON 字符串或 config.json 路径）；有 pretrained 时忽略"),
    )

    # ----- 评估（全目录排序） -----
    eval_k_values: Optional[List[int]] = field(default_factory=lambda: [5, 10, 20], metadata=_h("排序指标的 K"))
    num_beams: int = field(default=20, metadata=_h("约束 beam search 宽度（评估与自生成偏好对）"))
    exclude_history: bool = field(default=False, metadata=_h("评估时是否不推荐用户历史物品（结果表会注明）"))
    eval_max_samples: Optional[int] = field(
        default=None, metadata=_h("训练中评估最多用多少个验证样本（大数据集上加速选模型；最终测试用全部）")
    )
    torch_num_threads: Optional[int] = field(
        default=None,
        metadata=_h("CPU 上 torch 的线程数；None = 不改。多个进程共用少量核时设 1，避免超额订阅（见 README）"),
    )
    max_consecutive_nonfinite: int = field(
        default=10, metadata=_h("连续多少个优化步出现非有限 loss/梯度范数后停止训练")
    )

    # ----- 阶段 3 偏好对 -----
    preference_source: str = field(
        default="auto",
        metadata=_h("偏好对来源：ratings（数据集的评分对）/ self（阶段 2 模型 beam 候选作 rejected）/ auto（有评分用评分）"),
    )
    max_preference_pairs: Optional[int] = field(
        default=None, metadata=_h("自生成偏好对的最多数量（从训练样本中抽取）")
    )

    # ----- 日志与保存 -----
    logging_steps: float = field(default=100, metadata=_h("每多少优化步记录一次日志"))
    save_steps: float = field(default=1000, metadata=_h("每多少优化步保存一次检查点"))
    eval_steps: Optional[float] = field(default=500, metadata=_h("每多少优化步评估一次"))
    eval_strategy: Union[IntervalStrategy, str, None] = field(
        default=None, metadata=_h("评估策略 no/steps/epoch；不给时：有 eval_data_path 则 steps，否则 no")
    )
    save_total_limit: Optional[int] = field(default=3, metadata=_h("最多保留的检查点数（最佳模型另行保留）"))
    report_to: Union[None, str, List[str]] = field(
        default=None, metadata=_h("日志后端；默认 tensorboard（未安装时为 none）")
    )
    remove_unused_columns: bool = field(
        default=False, metadata=_h("是否按模型 forward 签名删列；我们的批次键由 collator 决定，默认关闭")
    )

    # ----- 分布式 -----
    local_rank: int = field(default=-1, metadata=_h("本地进程序号（启动器传入；-1 表示非分布式）"))
    ddp: bool = field(
        default=False, metadata=_h("规格兼容字段：DDP 由 torchrun/accelerate 启动方式自动启用，这里只作记录")
    )
    deepspeed: Union[dict, str, None] = field(
        default="auto",
        metadata=_h(
            "DeepSpeed：auto（有 CUDA 且已安装才启用）/ true / false / JSON 配置路径（合并到生成的配置上）；"
            "命令行单独写 --deepspeed 表示 true",
            nargs="?",
            const="true",
        ),
    )
    zero_stage: int = field(default=2, metadata=_h("DeepSpeed ZeRO 阶段：0/1/2/3"))
    # TRL 把它默认成 True（我们的模型未必支持）；还原为 HF 的 None（= 关闭）
    gradient_checkpointing: Optional[bool] = field(
        default=None, metadata=_h("（已弃用名）等同 activation_checkpointing", nargs="?", const=True)
    )


# 规格名 → HF 名（两者都是字段）
_BASE_TWINS: Dict[str, str] = {
    "batch_size": "per_device_train_batch_size",
    "max_epochs": "num_train_epochs",
    "experiment_name": "run_name",
}

_NON_NEGATIVE = (
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "warmup_steps",
    "lambda_contrastive",
    "lambda_preference",
    "lambda_moe_balance",
    "l1_loss_weight",
    "l2_loss_weight",
    "l3_loss_weight",
    "num_negatives",
    "max_epochs",
    "adam_epsilon",
)
_POSITIVE = (
    "batch_size",
    "gradient_accumulation_steps",
    "contrastive_temperature",
    "dpo_beta",
    "max_seq_length",
    "encoder_max_length",
    "decoder_max_length",
)
_UNIT_INTERVAL = ("adam_beta1", "adam_beta2", "label_smoothing", "min_lr_ratio")  # [0, 1)


class _UGTConfigMixin:
    """`__post_init__` 前半段：同义字段对齐、校验、调度/精度/DeepSpeed 解析。"""

    _SPEC_TWINS: ClassVar[Dict[str, str]] = _BASE_TWINS

    # ---------------------------------------------------------------- 工具
    @classmethod
    def _field_default(cls, name: str) -> Any:
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    return f.default_factory()  # type: ignore[misc]
        return None

    @classmethod
    def spec_twins(cls) -> Dict[str, str]:
        """规格名 → HF 名 的映射（parse_config 用来把两种名字归一）。"""
        return dict(cls._SPEC_TWINS)

    def _number(self, name: str) -> float:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"期望数值，得到 {type(value).__name__} {value!r}", field=name)
        if not math.isfinite(value):
            raise ConfigError(f"必须是有限数值，得到 {value!r}", field=name)
        return float(value)

    # ---------------------------------------------------------------- 步骤
    def _resolve_twins(self) -> None:
        for spec, hf in self._SPEC_TWINS.items():
            spec_value, hf_value = getattr(self, spec), getattr(self, hf)
            if hf_value is None:
                setattr(self, hf, spec_value)
            elif spec_value == hf_value or spec_value == self._field_default(spec):
                # 只给了 HF 名（规格名仍是默认值）→ 以 HF 名为准
                setattr(self, spec, hf_value)
            else:
                raise ConfigError(
                    f"同时给了 {spec}={spec_value!r} 与 {hf}={hf_value!r}，二者是同一参数；只保留一个",
                    field=f"{spec}/{hf}",
                )
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.batch_size

    def _validate(self) -> None:
        for name in _NON_NEGATIVE:
            if self._number(name) < 0:
                raise ConfigError(f"必须 >= 0，得到 {getattr(self, name)!r}", field=name)
        for name in _POSITIVE:
            if self._number(name) <= 0:
                raise ConfigError(f"必须 > 0，得到 {getattr(self, name)!r}", field=name)
        for name in _UNIT_INTERVAL:
            if not 0.0 <= self._number(name) < 1.0:
                raise ConfigError(f"必须在 [0, 1) 内，得到 {getattr(self, name)!r}", field=name)
        for name in ("batch_size", "gradient_accumulation_steps", "num_negatives", "zero_stage"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
            elif not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"期望整数，得到 {value!r}", field=name)
        if self.l1_loss_weight + self.l2_loss_weight + self.l3_loss_weight <= 0:
            raise ConfigError("l1/l2/l3_loss_weight 不能全为 0", field="l1_loss_weight")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"必须是 0/1/2/3 之一，得到 {self.zero_stage!r}", field="zero_stage")
        name = str(self.optimizer_type).lower()
        if name not in OPTIMIZER_TYPES:
            close = difflib.get_close_matches(name, OPTIMIZER_TYPES, n=1, cutoff=0.5)
            hint = f"；是否想用 '{close[0]}'？" if close else ""
            raise ConfigError(
                f"未知的优化器 '{self.optimizer_type}'，可选：{', '.join(OPTIMIZER_TYPES)}{hint}", field="optimizer_type"
            )
        self.optimizer_type = name

    def _resolve_scheduler(self) -> None:
        kwargs = self.lr_scheduler_kwargs
        if isinstance(kwargs, str):
            text = kwargs.strip()
            if not text:
                kwargs = None
            else:
                try:
                    kwargs = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"不是合法的 JSON：{e}", field="lr_scheduler_kwargs") from None
                if not isinstance(kwargs, dict):
                    raise ConfigError("必须是 JSON 对象（字典）", field="lr_scheduler_kwargs")
        try:
            name, kwargs = resolve_scheduler(self.lr_scheduler_type, self.min_lr_ratio, self.learning_rate, kwargs)
        except ValueError as e:
            field_name = "min_lr_ratio" if "min_lr" in str(e) or "lr_end" in str(e) else "lr_scheduler_type"
            raise ConfigError(str(e), field=field_name) from None
        self.lr_scheduler_type = name
        self.lr_scheduler_kwargs = kwargs or None

    def _resolve_misc(self) -> None:
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.eval_data_path else "no"
        if self.report_to is None:
            from transformers.integrations import is_tensorboard_available

            self.report_to = ["tensorboard"] if is_tensorboard_available() else "none"

    def _resolve_precision(self) -> None:
        if self.fp16 and self.bf16:
            raise ConfigError("fp16 与 bf16 不能同时为 true", field="fp16/bf16")
        if self.fp16 and not _fp16_device_available(self.use_cpu):
            warnings.warn(
                "fp16=True 但当前没有支持 fp16 的加速器（CUDA/XPU/MPS）：退回 fp32 训练。"
                "在 CPU 上请显式设置 fp16: false 以消除此警告。",
                PrecisionFallbackWarning,
                stacklevel=6,  # 指向构造配置的用户代码
            )
            self.fp16 = False
        if self.bf16 and not self.use_cpu and not _cuda_available():
            # HF 5.23 在无 GPU 时要求 use_cpu 才允许 bf16；CPU bf16 autocast 可用，照用户要求执行
            logger.info("bf16=True 且无 CUDA：设置 use_cpu=True，使用 CPU bf16 autocast")
            self.use_cpu = True

    def _resolve_deepspeed(self) -> None:
        request = self.deepspeed
        if isinstance(request, bool) or request is None:
            explicit = bool(request)
        elif isinstance(request, str):
            low = request.strip().lower()
            if low == "auto":
                use = _cuda_available() and _deepspeed_available()
                self.deepspeed = build_deepspeed_config(self, user_config=None) if use else None
                return
            if low in _TRUE_STRINGS:
                explicit, request = True, True
            elif low in _FALSE_STRINGS:
                explicit = False
            else:
                explicit = True  # JSON 路径或 JSON 字符串
        elif isinstance(request, dict):
            explicit = True
        else:
            raise ConfigError(f"期望 true/false/auto/JSON 路径，得到 {request!r}", field="deepspeed")
        if not explicit:
            self.deepspeed = None
            return
        user = None if request is True else _load_deepspeed_user_config(request)
        if not _cuda_available():
            raise ConfigError(
                "要求使用 DeepSpeed，但当前没有 CUDA GPU（DeepSpeed 需要 CUDA）；"
                "在 CPU 上请用 deepspeed: false 或 auto",
                field="deepspeed",
            )
        if not _deepspeed_available():
            raise ConfigError(f"要求使用 DeepSpeed，但未安装 deepspeed 包：请 {DEEPSPEED_INSTALL_HINT}", field="deepspeed")
        self.deepspeed = build_deepspeed_config(self, user_config=user)

    def _ugt_resolve(self) -> None:
        self._resolve_twins()
        self._validate()
        self._resolve_scheduler()
        self._resolve_misc()
        self._resolve_precision()
        self._resolve_deepspeed()

    def _run_post_init(self, parent_post_init) -> None:
        self._ugt_resolve()
        try:
            parent_post_init()
        except ConfigError:
            raise
        except ValueError as e:  # HF/TRL 自己的校验，统一成 ConfigError
            raise ConfigError(str(e)) from e


# ====================================================================================================================
# 具体配置类
# ====================================================================================================================
@dataclass
class TrainingConfig(_UGTConfigMixin, _UGTFields, TrainingArguments):
    """规格的基础训练配置（`TrainingArguments` 子类，可直接交给 HF Trainer）。"""

    def __post_init__(self):
        self._run_post_init(super().__post_init__)


@dataclass
class Stage1Config(TrainingConfig):
    """阶段 1：基础预训练（只用 NTP）。"""

    max_epochs: float = field(default=5, metadata=_h("最大训练轮数（阶段 1 默认 5）"))
    learning_rate: float = field(default=1e-4, metadata=_h("峰值学习率（阶段 1 默认 1e-4）"))
    lambda_contrastive: float = field(default=0.0, metadata=_h("对比学习权重 λ₁（阶段 1 不用，默认 0）"))
    lambda_preference: float = field(default=0.0, metadata=_h("偏好损失权重 λ₂（阶段 1 不用，默认 0）"))


@dataclass
class Stage2Config(TrainingConfig):
    """阶段 2：多任务微调（NTP + 对比学习）。"""

    max_epochs: float = field(default=3, metadata=_h("最大训练轮数（阶段 2 默认 3）"))
    learning_rate: float = field(default=5e-5, metadata=_h("峰值学习率（阶段 2 默认 5e-5，较小）"))
    lambda_contrastive: float = field(default=0.1, metadata=_h("对比学习权重 λ₁（阶段 2 默认 0.1）"))


@dataclass
class Stage3Config(_UGTConfigMixin, _UGTFields, DPOConfig):
    """阶段 3：偏好对齐（TRL `DPOConfig` 子类；dpo_beta ↔ beta）。

    注意：TRL 1.16 没有 reference-free 选项，`dpo_reference_free` 由 UGTDPOTrainer 读取。
    `label_smoothing` 与 TRL 的同名字段是同一个字段（默认 sigmoid 损失不读它）。
    """

    _SPEC_TWINS = {**_BASE_TWINS, "dpo_beta": "beta"}  # 不加注解：类属性而非 dataclass 字段

    max_epochs: float = field(default=2, metadata=_h("最大训练轮数（阶段 3 默认 2）"))
    learning_rate: float = field(default=1e-5, metadata=_h("峰值学习率（阶段 3 默认 1e-5，更小）"))
    lambda_preference: float = field(default=0.1, metadata=_h("偏好损失权重 λ₂（阶段 3 默认 0.1）"))
    dpo_beta: float = field(default=0.1, metadata=_h("DPO 温度 β（同步到 TRL 的 beta），必须 > 0"))
    beta: Optional[float] = field(default=None, metadata=_h("TRL 名，等同 dpo_beta；两者只需给一个"))

    def __post_init__(self):
        self._run_post_init(super().__post_init__)


# ====================================================================================================================
# 设备 / DeepSpeed
# ====================================================================================================================
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _fp16_device_available(use_cpu: bool) -> bool:
    if use_cpu:
        return False
    import torch

    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _load_deepspeed_user_config(value: Union[str, dict]) -> dict:
    if isinstance(value, dict):
        return copy.deepcopy(value)
    text = value.strip()
    source = "deepspeed 字段中的 JSON 字符串"
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"DeepSpeed 配置文件不存在：{path}", field="deepspeed")
        source = str(path)
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"不是合法的 JSON（第 {e.lineno} 行第 {e.colno} 列）：{e.msg}", field="deepspeed", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError("DeepSpeed 配置必须是 JSON 对象", field="deepspeed", source=source)
    return data


def _deep_merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_UNSET = object()


def build_deepspeed_config(args: Any, user_config: Any = _UNSET) -> dict:
    """生成 DeepSpeed 配置：ZeRO 阶段取 args.zero_stage，批次/累积/裁剪/精度写 "auto" 交给 HF 集成填值。

    user_config：字典、JSON 路径或 JSON 字符串，深度合并到生成的配置之上（用户值优先）。
    不传时取 `args.deepspeed`（是路径/字典/JSON 字符串才合并；布尔/"auto"/None 则只用生成的配置）。
    optimizer/scheduler 不写入：由 HF Trainer 创建（因此允许 LAMB 等非 DeepSpeed 优化器）。
    不用依赖 hidden_size 的 "auto" 键（reduce_bucket_size 等），我们的模型配置未必有 hidden_size。
    """
    stage = getattr(args, "zero_stage", 2)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"必须是 0/1/2/3 之一，得到 {stage!r}", field="zero_stage")
    zero: Dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update({"overlap_comm": True, "contiguous_gradients": True})
    if stage == 3:
        # 保存时把分片的权重收集成完整的 16 位 state_dict，save_pretrained 才能得到可用的 safetensors
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    generated = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,  # 0 = 动态损失缩放
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if user_config is _UNSET:
        user_config = getattr(args, "deepspeed", None)
        if isinstance(user_config, bool) or (
            isinstance(user_config, str)
            and user_config.strip().lower() in _TRUE_STRINGS | _FALSE_STRINGS | {"auto"}
        ):
            user_config = None
    if user_config is None:
        return generated
    return _deep_merge(generated, _load_deepspeed_user_config(user_config))


# ====================================================================================================================
# YAML 读取与类型转换
# ====================================================================================================================
def load_yaml_config(path: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """读取 YAML 配置，返回 (键值字典, 键 → 行号)。文件缺失、语法错误、非映射、重复键都抛 ConfigError。"""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError("配置文件不存在", source=source)
    if not path.is_file():
        raise ConfigError("配置路径不是文件", source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"不是 UTF-8 文本：{e}", source=source) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None and context_mark.line + 1 != line:
            # 真正的错误常在上下文起点（如未闭合的 [ ），一并指出
            problem += f"（{context}，始于第 {context_mark.line + 1} 行）"
        raise ConfigError(f"YAML 语法错误：{problem}", source=source, line=line) from None
    if data is None:
        raise ConfigError("配置文件为空（应为 `键: 值` 的映射）", source=source)
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"YAML 顶层必须是 `键: 值` 的映射，得到 {type(data).__name__}", source=source, line=1)
    lines: Dict[str, int] = {}
    for key_node, _ in node.value:
        key = key_node.value
        line = key_node.start_mark.line + 1
        if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
            raise ConfigError(f"键必须是字符串，得到 {key!r}", source=source, line=line)
        if key in lines:
            raise ConfigError(f"重复的键 '{key}'（第一次在第 {lines[key]} 行）", field=key, source=source, line=line)
        lines[key] = line
    return data, lines


class _TypeMismatch(Exception):
    pass


def _type_desc(tp: Any) -> str:
    origin = typing_get_origin(tp)
    if origin in (Union, types.UnionType):
        return " 或 ".join(_type_desc(a) for a in typing_get_args(tp))
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "/".join(repr(a) for a in typing_get_args(tp))
    if inspect.isclass(tp) and issubclass(tp, Enum):
        return "{" + ", ".join(str(m.value) for m in tp) + "}"
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """按字段类型检查/转换 YAML 值；不匹配抛 _TypeMismatch。"""
    if tp is Any:
        return value
    origin = typing_get_origin(tp)
    if origin in (Union, types.UnionType):
        members = typing_get_args(tp)
        if value is None:
            if type(None) in members:
                return None
            raise _TypeMismatch
        # 先试非 str 成员，避免 "1e-4" 之类被当作字符串
        ordered = [m for m in members if m is not str and m is not type(None)] + [m for m in members if m is str]
        for member in ordered:
            try:
                return _coerce(value, member)
            except _TypeMismatch:
                continue
        raise _TypeMismatch
    if tp is type(None):
        if value is None:
            return None
        raise _TypeMismatch
    if value is None:
        raise _TypeMismatch
    if origin is Literal:
        if value in typing_get_args(tp):
            return value
        raise _TypeMismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS | (_FALSE_STRINGS - {"", "none", "null"}):
            return value.strip().lower() in _TRUE_STRINGS
        raise _TypeMismatch
    if tp is int:
        if isinstance(value, bool):
            raise _TypeMismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise _TypeMismatch from None
                if f.is_integer():
                    return int(f)
        raise _TypeMismatch
    if tp is float:
        if isinstance(value, bool):
            raise _TypeMismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # PyYAML 把 1e-4（无小数点）读成字符串
            except ValueError:
                raise _TypeMismatch from None
        raise _TypeMismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _TypeMismatch
    if inspect.isclass(tp) and issubclass(tp, Enum):
        values = [m.value for m in tp]
        if isinstance(value, tp):
            return value.value
        if value in values:
            return value
        raise _TypeMismatch
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _TypeMismatch
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise _TypeMismatch
        args = typing_get_args(tp)
        return [_coerce(v, args[0]) for v in value] if args else value
    if inspect.isclass(tp) and isinstance(value, tp):
        return value
    if inspect.isclass(tp) and isinstance(value, dict):
        return value  # 嵌套配置对象（如 AcceleratorConfig）以字典给出，由 HF 自己构造
    raise _TypeMismatch


# deepspeed 的类型注解是 HF 的 dict|str|None，但 YAML 里常写 true/false
_TYPE_OVERRIDES: Dict[str, Any] = {"deepspeed": Union[bool, dict, str, None]}


def _field_types(config_cls: type) -> Dict[str, Any]:
    hints = get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    return {n: _TYPE_OVERRIDES.get(n, hints.get(n, Any)) for n in names}


# ====================================================================================================================
# parse_config
# ====================================================================================================================
class _ConfigArgParser(HfArgumentParser):
    """argparse 出错时抛 ConfigError 而不是打印用法后 exit(2)。"""

    def error(self, message: str):  # type: ignore[override]
        match = re.search(r"argument (--[\w-]+)", message)
        field_name = match.group(1).lstrip("-").replace("-", "_") if match else None
        raise ConfigError(message, field=field_name, source=CLI_SOURCE)


C = TypeVar("C")


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"；是否想写 '{close[0]}'？" if close else ""


def _canonicalize(
    values: Dict[str, Any], lines: Dict[str, int], twins: Dict[str, str], source: str
) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """别名与 HF 同义名 → 规格名；同一来源里两种名字取值不同 → ConfigError。"""
    hf_to_spec = {hf: spec for spec, hf in twins.items()}
    renames = {**CLI_ALIASES, **hf_to_spec}
    out: Dict[str, Any] = {}
    out_lines: Dict[str, int] = {}
    origin: Dict[str, str] = {}
    for key, value in values.items():
        target = renames.get(key, key)
        if target in out and out[target] != value:
            raise ConfigError(
                f"'{origin[target]}: {out[target]!r}' 与 '{key}: {value!r}' 是同一参数但取值不同；只保留一个",
                field=target,
                source=source,
                line=lines.get(key),
            )
        out[target] = value
        origin.setdefault(target, key)
        if key in lines:
            out_lines.setdefault(target, lines[key])
    return out, out_lines


def _split_config_flag(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    config_path, rest, i = None, [], 0
    while i < len(argv):
        token = argv[i]
        if token in ("--config", "-c"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config 后面需要 YAML 文件路径", field="config", source=CLI_SOURCE)
            config_path = argv[i + 1]
            i += 2
            continue
        if token.startswith("--config="):
            config_path = token.split("=", 1)[1]
            i += 1
            continue
        rest.append(token)
        i += 1
    return config_path, rest


def _parse_cli(config_cls: type, argv: List[str]) -> Dict[str, Any]:
    parser = _ConfigArgParser(config_cls, allow_abbrev=False, prog=Path(sys.argv[0]).name or "ugt")
    parser.add_argument("--config", "-c", help="YAML 配置文件；命令行参数覆盖其中的值")
    # 只收集命令行显式给出的参数：所有默认值设为 SUPPRESS
    # （不能用 set_defaults：它会把 SUPPRESS 字符串当默认值写进 namespace 再做类型转换）
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        token = next((t for t in remaining if t.startswith("-")), remaining[0])
        name = token.lstrip("-").split("=", 1)[0].replace("-", "_")
        valid = [f.name for f in dataclasses.fields(config_cls) if f.init] + list(CLI_ALIASES)
        if token.startswith("-"):
            raise ConfigError(f"未知参数 '{token}'{_suggest(name, valid)}", field=name, source=CLI_SOURCE)
        raise ConfigError(f"多余的位置参数 {remaining!r}", source=CLI_SOURCE)
    values = vars(namespace)
    values.pop("config", None)
    return values


def parse_config(
    config_cls: Type[C],
    argv: Optional[Sequence[str]] = None,
    yaml_file: Optional[Union[str, Path]] = None,
) -> C:
    """从 YAML（`--config FILE` 或 yaml_file）与 `--key value` 构造配置；命令行优先于 YAML。

    规格名、HF 名、脚本别名（--train_data/--eval_data/--pretrained）都接受。所有错误抛 ConfigError，
    消息含来源（文件:行 或 "命令行"）与字段名；未知键给出 difflib 最接近的合法名。
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cli_config, argv = _split_config_flag(argv)
    if cli_config is not None and yaml_file is not None and Path(cli_config) != Path(yaml_file):
        raise ConfigError(f"同时给了 yaml_file={yaml_file} 与 --config {cli_config}；只给一个", source=CLI_SOURCE)
    yaml_path = cli_config if cli_config is not None else yaml_file
    twins = config_cls.spec_twins() if hasattr(config_cls, "spec_twins") else {}
    field_types = _field_types(config_cls)
    valid_keys = list(field_types) + list(CLI_ALIASES)

    yaml_values: Dict[str, Any] = {}
    yaml_lines: Dict[str, int] = {}
    yaml_source = str(yaml_path) if yaml_path is not None else None
    if yaml_path is not None:
        raw, raw_lines = load_yaml_config(yaml_path)
        typed: Dict[str, Any] = {}
        for key, value in raw.items():
            target = CLI_ALIASES.get(key, key)
            if target not in field_types:
                raise ConfigError(
                    f"未知的配置项 '{key}'{_suggest(key, valid_keys)}",
                    field=key,
                    source=yaml_source,
                    line=raw_lines.get(key),
                )
            tp = field_types[target]
            try:
                typed[key] = _coerce(value, tp)
            except _TypeMismatch:
                raise ConfigError(
                    f"类型错误：期望 {_type_desc(tp)}，得到 {type(value).__name__} {value!r}",
                    field=key,
                    source=yaml_source,
                    line=raw_lines.get(key),
                ) from None
        yaml_values, yaml_lines = _canonicalize(typed, raw_lines, twins, yaml_source)

    cli_values, _ = _canonicalize(_parse_cli(config_cls, argv), {}, twins, CLI_SOURCE)

    merged = {**yaml_values, **cli_values}
    provenance: Dict[str, Tuple[str, Optional[int]]] = {k: (yaml_source, yaml_lines.get(k)) for k in yaml_values}
    provenance.update({k: (CLI_SOURCE, None) for k in cli_values})
    try:
        return config_cls(**merged)
    except ConfigError as e:
        raise _locate(e, provenance, twins, yaml_source) from None
    except (ValueError, TypeError) as e:
        where = " + ".join(s for s in (yaml_source, CLI_SOURCE if cli_values else None) if s) or None
        raise ConfigError(str(e), source=where) from e


def _locate(
    error: ConfigError,
    provenance: Dict[str, Tuple[str, Optional[int]]],
    twins: Dict[str, str],
    default_source: Optional[str],
) -> ConfigError:
    if error.source:
        return error
    hf_to_spec = {hf: spec for spec, hf in twins.items()}
    for part in (error.field or "").split("/"):
        key = hf_to_spec.get(part, part)
        if key in provenance:
            source, line = provenance[key]
            return error.located(source, line)
    return error.located(default_source)


# ====================================================================================================================
# 保存解析后的配置
# ====================================================================================================================
def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def resolved_config_dict(args: TrainingArguments) -> Dict[str, Any]:
    """完整解析后的配置（可 JSON/YAML 序列化）；去掉 *_token（HF 会打码，且属于机密，不落盘）。"""
    data = args.to_dict()
    data = {k: v for k, v in data.items() if not k.endswith("_token")}
    return json.loads(json.dumps(data, default=_jsonable))


def save_resolved_config(args: TrainingArguments, directory: Union[str, Path]) -> Path:
    """把解析后的完整配置写成 `ugt_config.yaml`（和同名 .json），返回 YAML 路径。

    用 `parse_config(type(args), argv=[], yaml_file=path)` 读回可得到相等的配置（测试覆盖）。
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = resolved_config_dict(args)
    yaml_path = directory / CONFIG_FILE_NAME
    json_path = yaml_path.with_suffix(".json")
    header = f"# {type(args).__name__}：解析后的完整配置，可用 --config 复现本次运行\n"
    for path, text in (
        (yaml_path, header + yaml.safe_dump(data, sort_keys=True, allow_unicode=True)),
        (json_path, json.dumps({"config_class": type(args).__name__, "config": data}, indent=2, ensure_ascii=False)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # 先写临时文件再改名，避免中断留下半个文件
    return yaml_path
