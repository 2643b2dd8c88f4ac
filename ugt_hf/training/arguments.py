"""训练参数：按关注点拆开的 dataclass，由 `HfArgumentParser` 从 YAML + `--key value` 解析。

    ModelArguments / DataArguments / EvaluationArguments    模型来源、数据位置、训练中评估
    UGTTrainingArguments(TrainingArguments), UGTDPOConfig(DPOConfig)
        只放训练旋钮（训练器经 self.args 读取）与改过的默认值
字段声明（名字、默认值、英文帮助）在 argument_fields.py（不导入 torch，`ugt train --help` 只读它）；这里是行为。

规格名是 HF 字段的别名（batch_size → per_device_train_batch_size，max_epochs → num_train_epochs，
experiment_name → run_name，dpo_beta → beta，train_data/eval_data/pretrained → *_path），只以字段名保存一次；
实例上有同名只读属性。规格的配置类（TrainingConfig / Stage{1,2,3}Config）在 ugt_hf.spec.config。

解析（YAML 行号、`base:` 继承、别名、未知键提示、ConfigError）在 ugt_hf.argparsing，prepare/evaluate/pipeline 共用。

精度：默认 fp16=True（规格）；没有能跑 fp16 的加速器时退回 fp32：只有用户显式要求 fp16 时才警告（恰好一次），
默认值的回退只记 info 日志（CPU 上每次运行都警告、而用户无事可做，是噪音）。bf16 且无 GPU → use_cpu=True
（CPU bf16 autocast）。DeepSpeed 接受 true/false/"auto"/JSON 路径/字典：auto = 有 CUDA 且装了 deepspeed 才用；
显式要求但缺 CUDA/缺包 → 明确报错；解析后只会是 None 或完整配置字典。
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Union

import torch
import yaml
from transformers import TrainingArguments
from transformers.integrations import is_tensorboard_available
from trl import DPOConfig

from ..argparsing import CLI_SOURCE, ConfigError, arg, load_yaml_config, parse_args, parse_config
from .argument_fields import (
    STAGE_DEFAULTS,
    DataArguments,
    DPOFields,
    EvaluationArguments,
    ModelArguments,
    TrainingFields,
)
from .optim import OPTIMIZER_TYPES, resolve_scheduler

__all__ = [
    "CLI_SOURCE", "CONFIG_FILE_NAME", "ConfigError", "DataArguments", "EvaluationArguments", "ModelArguments",
    "PrecisionFallbackWarning", "StageArguments", "UGTDPOConfig", "UGTTrainingArguments", "arg",
    "build_deepspeed_config", "load_yaml_config", "parse_args", "parse_config", "parse_stage_args",
    "resolved_config_dict", "save_resolved_config",
]

logger = logging.getLogger(__name__)

DEEPSPEED_INSTALL_HINT = "pip install 'ugt-hf[deepspeed]'"
CONFIG_FILE_NAME = "ugt_config.yaml"
_TRUE_STRINGS = {"true", "yes", "y", "on", "1"}
_FALSE_STRINGS = {"false", "no", "n", "off", "0", "none", "null", ""}
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


class PrecisionFallbackWarning(UserWarning):
    """请求的混合精度在当前设备上不可用，已退回 fp32。"""


# 校验表（字段名）；违反时 ConfigError 指出字段
_NON_NEGATIVE = ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps", "lambda_contrastive",
                 "lambda_preference", "lambda_moe_balance", "l1_loss_weight", "l2_loss_weight", "l3_loss_weight",
                 "num_train_epochs", "adam_epsilon")
_POSITIVE = ("per_device_train_batch_size", "gradient_accumulation_steps", "contrastive_temperature",
             "encoder_max_length", "decoder_max_length")
_UNIT_INTERVAL = ("adam_beta1", "adam_beta2", "label_smoothing", "min_lr_ratio")  # [0, 1)
_INTEGER = ("per_device_train_batch_size", "gradient_accumulation_steps", "zero_stage")


def _number(obj: Any, name: str) -> float:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number, got {type(value).__name__} {value!r}", field=name)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", field=name)
    return float(value)


def check_ranges(obj: Any, non_negative: Sequence[str] = (), positive: Sequence[str] = (),
                 unit_interval: Sequence[str] = (), integer: Sequence[str] = ()) -> None:
    """数值范围校验（规格配置类也用它校验规格独有的字段）；整数值的浮点数转成 int。"""
    for names, ok, text in ((non_negative, lambda v: v >= 0, "must be >= 0"),
                            (positive, lambda v: v > 0, "must be > 0"),
                            (unit_interval, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")):
        for name in names:
            if not ok(_number(obj, name)):
                raise ConfigError(f"{text}, got {getattr(obj, name)!r}", field=name)
    for name in integer:
        value = getattr(obj, name)
        if isinstance(value, float) and value.is_integer():
            setattr(obj, name, int(value))
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {value!r}", field=name)


# ---- 步数、线程数与策略字段（#16）：HF 对这些值要么不查（save_steps 0、torch_num_threads -3 静默接受或在深处崩），
# 要么报一条不带字段名的 ValueError（eval_strategy: sometimes）。这里先查，ConfigError 指出字段与可选值。
_STEP_FIELDS = ("save_steps", "logging_steps", "eval_steps")  # > 0；< 1 的小数是 HF 的“占总步数比例”
_STRATEGY_CHOICES = {"eval_strategy": ("no", "steps", "epoch"), "logging_strategy": ("no", "steps", "epoch"),
                     "save_strategy": ("no", "steps", "epoch", "best")}


def check_steps_and_strategies(obj: Any) -> None:
    """obj：训练参数（或兼有这些字段的规格配置）。缺的字段跳过。"""
    for name, choices in _STRATEGY_CHOICES.items():
        value = getattr(obj, name, None)
        if value is None:
            continue
        text = value.value if isinstance(value, Enum) else value
        if not isinstance(text, str) or text.lower() not in choices:
            close = difflib.get_close_matches(str(text).lower(), choices, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}{hint}", field=name)
    for name in _STEP_FIELDS:
        value = getattr(obj, name, None)
        if value is None and name == "eval_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"must be a number > 0 (optimizer steps; a fraction < 1 means that share of the "
                              f"total steps), got {value!r}", field=name)
    threads = getattr(obj, "torch_num_threads", None)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"must be a positive integer (CPU threads for torch) or null to keep torch's default, "
                          f"got {threads!r}", field="torch_num_threads")
    workers = getattr(obj, "dataloader_num_workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"must be an integer >= 0, got {workers!r}", field="dataloader_num_workers")
    max_steps = getattr(obj, "max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not (max_steps == -1 or max_steps > 0):
        raise ConfigError(f"must be a positive integer, or -1 to train for num_train_epochs, got {max_steps!r}",
                          field="max_steps")
    eval_batch = getattr(obj, "per_device_eval_batch_size", 1)
    if isinstance(eval_batch, bool) or not isinstance(eval_batch, int) or eval_batch < 1:
        raise ConfigError(f"must be a positive integer, got {eval_batch!r}", field="per_device_eval_batch_size")
    ks = getattr(obj, "eval_k_values", None) or []
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"must be positive integers (the K of Recall@K / NDCG@K), got {list(ks)!r}",
                          field="eval_k_values")
    limit = getattr(obj, "max_consecutive_nonfinite", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"must be a positive integer, got {limit!r}", field="max_consecutive_nonfinite")


@dataclass
class _UGTFields(TrainingFields):
    """TrainingFields 的行为：校验、调度、精度与 DeepSpeed 解析；在 MRO 里位于 TrainingArguments/DPOConfig 之前。
    `__post_init__` 只在这里。"""

    def __new__(cls, *args, **kwargs):
        # dataclass 生成的 __init__ 分不出“用户写了 fp16=True”与默认值，构造参数在这里看得到（YAML / 命令行经
        # parse_args 也只传入给出的键）：只对显式的请求警告，默认值静默按设备解析
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init][: len(args)]
        object.__setattr__(self, "_explicit", frozenset(kwargs) | frozenset(names))
        return self

    def __post_init__(self):
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        self._validate()
        self._resolve_scheduler()
        if self.report_to is None:
            self.report_to = ["tensorboard"] if is_tensorboard_available() else "none"
        self._resolve_precision()
        pin_given = "dataloader_pin_memory" in self._given()
        if self.dataloader_pin_memory and not pin_given and not _accelerator_available():
            # 没有加速器时 pin memory 无用，torch 的 DataLoader 还会为每个 DataLoader 警告一次
            self.dataloader_pin_memory = False
        self._resolve_deepspeed()
        try:
            super().__post_init__()
        except ConfigError:
            raise
        except ValueError as e:  # HF/TRL 自己的校验，统一成 ConfigError
            raise ConfigError(str(e)) from e

    def _validate(self) -> None:
        positive = _POSITIVE + (("beta",) if isinstance(self, DPOConfig) else ())
        check_ranges(self, _NON_NEGATIVE, positive, _UNIT_INTERVAL, _INTEGER)
        if self.l1_loss_weight + self.l2_loss_weight + self.l3_loss_weight <= 0:
            raise ConfigError("l1/l2/l3_loss_weight cannot all be 0", field="l1_loss_weight")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"must be one of 0/1/2/3, got {self.zero_stage!r}", field="zero_stage")
        name = str(self.optimizer_type).lower()
        if name not in OPTIMIZER_TYPES:
            close = difflib.get_close_matches(name, OPTIMIZER_TYPES, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown optimizer '{self.optimizer_type}', choose one of "
                              f"{', '.join(OPTIMIZER_TYPES)}{hint}", field="optimizer_type")
        self.optimizer_type = name
        if self.early_stopping_patience is not None:
            if int(self.early_stopping_patience) != self.early_stopping_patience or self.early_stopping_patience < 1:
                raise ConfigError(f"must be a positive integer, got {self.early_stopping_patience!r}",
                                  field="early_stopping_patience")
            if not (self.load_best_model_at_end and self.metric_for_best_model):
                raise ConfigError("needs load_best_model_at_end: true and metric_for_best_model (early stopping "
                                  "keeps the best evaluation)", field="early_stopping_patience")
        check_steps_and_strategies(self)

    def _resolve_scheduler(self) -> None:
        kwargs = self.lr_scheduler_kwargs
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs) if kwargs.strip() else None
            except json.JSONDecodeError as e:
                raise ConfigError(f"not valid JSON: {e}", field="lr_scheduler_kwargs") from None
            if kwargs is not None and not isinstance(kwargs, dict):
                raise ConfigError("must be a JSON object (mapping)", field="lr_scheduler_kwargs")
        try:
            name, kwargs = resolve_scheduler(self.lr_scheduler_type, self.min_lr_ratio, self.learning_rate, kwargs)
        except ValueError as e:
            # “unknown …”列出的可选名里也有 cosine_with_min_lr：先看是不是名字错了
            text = str(e)
            about_floor = not text.startswith("unknown") and ("min_lr" in text or "lr_end" in text)
            field_name = "min_lr_ratio" if about_floor else "lr_scheduler_type"
            raise ConfigError(str(e), field=field_name) from None
        self.lr_scheduler_type = name
        self.lr_scheduler_kwargs = kwargs or None

    def _given(self) -> frozenset:
        return getattr(self, "_explicit", frozenset())

    def _resolve_precision(self) -> None:
        if self.fp16 and self.bf16:
            raise ConfigError("fp16 and bf16 cannot both be true", field="fp16/bf16")
        if self.fp16 and not _fp16_device_available(self.use_cpu):
            if "fp16" in self._given():
                _warn_at_caller("fp16=True but there is no fp16-capable accelerator (CUDA/XPU/MPS): training in fp32. "
                                "Set fp16: false on CPU-only machines to silence this warning.",
                                PrecisionFallbackWarning)
            else:  # 规格默认 fp16=True：无加速器时按设备退回，用户不必为默认值做什么
                logger.info("no fp16-capable accelerator: the default fp16=True resolves to fp32")
            self.fp16 = False
        if self.bf16 and not self.use_cpu and not _cuda_available():
            # HF 5 在无 GPU 时要求 use_cpu 才允许 bf16；CPU bf16 autocast 可用，照用户要求执行
            logger.info("bf16=True without CUDA: setting use_cpu=True (CPU bf16 autocast)")
            self.use_cpu = True

    def _resolve_deepspeed(self) -> None:
        request = self.deepspeed
        if isinstance(request, str):
            low = request.strip().lower()
            if low == "auto":
                use = _cuda_available() and _deepspeed_available()
                self.deepspeed = build_deepspeed_config(self, user_config=None) if use else None
                return
            request = True if low in _TRUE_STRINGS else False if low in _FALSE_STRINGS else request
        elif request is not None and not isinstance(request, (bool, dict)):
            raise ConfigError(f"expected true/false/auto or a JSON path, got {request!r}", field="deepspeed")
        if request is None or request is False:
            self.deepspeed = None
            return
        user = None if request is True else _load_deepspeed_user_config(request)
        if not _cuda_available():
            raise ConfigError("DeepSpeed was requested but there is no CUDA GPU (DeepSpeed needs CUDA); "
                              "use deepspeed: false or auto on CPU", field="deepspeed")
        if not _deepspeed_available():
            raise ConfigError(f"DeepSpeed was requested but the deepspeed package is not installed: "
                              f"{DEEPSPEED_INSTALL_HINT}",
                              field="deepspeed")
        self.deepspeed = build_deepspeed_config(self, user_config=user)


@dataclass
class UGTTrainingArguments(_UGTFields, TrainingArguments):
    """阶段 1/2 的训练参数（HF `TrainingArguments` 子类，直接交给 UGTTrainer）。"""


@dataclass
class UGTDPOConfig(_UGTFields, DPOFields, DPOConfig):
    """阶段 3 的训练参数（TRL `DPOConfig` 子类）。TRL 1.16 没有 reference-free 选项，`dpo_reference_free`
    由 UGTDPOTrainer 读取；`label_smoothing` 与 TRL 的同名字段是同一个字段；beta 见 DPOFields。"""


class StageArguments(NamedTuple):
    """一个训练阶段的全部参数（run_stage 的输入；顺序即解析顺序）。"""

    training: Union[UGTTrainingArguments, UGTDPOConfig]
    model: ModelArguments
    data: DataArguments
    evaluation: EvaluationArguments


STAGE_TRAINING_ARGUMENTS = {1: UGTTrainingArguments, 2: UGTTrainingArguments, 3: UGTDPOConfig}


# ====================================================================================================================
# 设备 / DeepSpeed
# ====================================================================================================================
def _warn_at_caller(message: str, category: type) -> None:
    """警告指向构造配置的用户代码（跳过本包与 dataclass 生成的 __init__）。"""
    frame, level = sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR)
                                 or frame.f_code.co_filename == "<string>"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _accelerator_available() -> bool:
    """有 torch 认得的加速器（CUDA/XPU/MPS…）；与 DataLoader 判断 pin_memory 是否有用的条件相同。"""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def _fp16_device_available(use_cpu: bool) -> bool:
    if use_cpu:
        return False
    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _load_deepspeed_user_config(value: Union[str, dict]) -> dict:
    if isinstance(value, dict):
        return copy.deepcopy(value)
    text, source = value.strip(), "JSON string in the deepspeed field"
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"DeepSpeed config file not found: {path}", field="deepspeed")
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}", field="deepspeed",
                          source=source) from None
    if not isinstance(data, dict):
        raise ConfigError("a DeepSpeed config must be a JSON object", field="deepspeed", source=source)
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

    user_config：字典、JSON 路径或 JSON 字符串，深度合并到生成的配置之上（用户值优先）；不传时取
    `args.deepspeed`（布尔/"auto"/None 则只用生成的配置）。optimizer/scheduler 不写入：由 HF Trainer 创建
    （因此允许 LAMB）。不用依赖 hidden_size 的 "auto" 键，我们的模型配置未必有 hidden_size。
    """
    stage = getattr(args, "zero_stage", 2)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"must be one of 0/1/2/3, got {stage!r}", field="zero_stage")
    zero: Dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update({"overlap_comm": True, "contiguous_gradients": True})
    if stage == 3:
        # 保存时把分片的权重收集成完整的 16 位 state_dict，save_pretrained 才能得到可用的 safetensors
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    generated = {
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},  # loss_scale 0 = 动态损失缩放
        "bf16": {"enabled": "auto"}, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if user_config is _UNSET:
        user_config = getattr(args, "deepspeed", None)
        if isinstance(user_config, bool) or (isinstance(user_config, str) and user_config.strip().lower()
                                             in _TRUE_STRINGS | _FALSE_STRINGS | {"auto"}):
            user_config = None
    if user_config is None:
        return generated
    return _deep_merge(generated, _load_deepspeed_user_config(user_config))


def parse_stage_args(stage: int, argv: Optional[Sequence[str]] = None,
                     yaml_file: Optional[Union[str, Path]] = None) -> StageArguments:
    """阶段 stage 的参数：阶段默认值 < YAML < 命令行。"""
    types_ = (STAGE_TRAINING_ARGUMENTS[stage], ModelArguments, DataArguments, EvaluationArguments)
    return StageArguments(*parse_args(types_, argv, yaml_file, defaults=STAGE_DEFAULTS[stage]))


# ====================================================================================================================
# 保存解析后的配置（只有字段名：规格名是别名，不重复保存）
# ====================================================================================================================
def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def resolved_config_dict(*args: Any) -> Dict[str, Any]:
    """完整解析后的配置（可 JSON/YAML 序列化），多个参数对象合并成一个字典；去掉 *_token（机密，不落盘）
    与规格名的同义字段（`_SPEC_TWINS`，读回时由 HF 名还原）。"""
    data: Dict[str, Any] = {}
    for obj in args:
        part = obj.to_dict() if isinstance(obj, TrainingArguments) else dataclasses.asdict(obj)
        twins = getattr(type(obj), "_SPEC_TWINS", {})
        data.update({k: v for k, v in part.items() if not k.endswith("_token") and k not in twins})
    return json.loads(json.dumps(data, default=_jsonable))


def save_resolved_config(args: Any, directory: Union[str, Path]) -> Path:
    """把解析后的完整配置写成 `ugt_config.yaml`（和同名 .json），返回 YAML 路径。args：一个参数对象或
    StageArguments。用同样的类 + `--config 该文件` 读回得到相等的配置（测试覆盖）。"""
    parts = tuple(args) if isinstance(args, tuple) else (args,)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = resolved_config_dict(*parts)
    names = "+".join(type(p).__name__ for p in parts)
    yaml_path = directory / CONFIG_FILE_NAME
    header = f"# {names}: the complete resolved config; pass it to --config to reproduce this run\n"
    for path, text in (
        (yaml_path, header + yaml.safe_dump(data, sort_keys=True, allow_unicode=True)),
        (yaml_path.with_suffix(".json"),
         json.dumps({"config_class": names, "config": data}, indent=2, ensure_ascii=False)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # 先写临时文件再改名，避免中断留下半个文件
    return yaml_path
