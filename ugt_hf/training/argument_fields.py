"""训练参数的字段声明（名字、类型、默认值、英文帮助），不导入 torch / transformers。

`ugt train --stage N --help` 只读这里：HF `TrainingArguments` / TRL `DPOConfig` 的模块一导入就加载 torch
（冷启动 7 s 以上），而帮助只需字段声明。行为（校验、精度与 DeepSpeed 解析、HF 子类）在 arguments.py：

    ModelArguments / DataArguments / EvaluationArguments    完整的参数类（无需 HF 基类）
    TrainingFields, DPOFields                               UGT 的训练旋钮与改过的 HF 默认值；arguments.py 的
                                                            UGTTrainingArguments / UGTDPOConfig 继承它们
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from ..argparsing import ConfigError, arg, build_parser


@dataclass
class ModelArguments:
    """模型从哪里来。"""

    model_config: Union[dict, str, None] = arg(
        None, "UGTConfig parameters when training a new model (mapping, JSON string or config.json path)")
    pretrained_model_path: Optional[str] = arg(
        None, "model folder of the previous stage (save_pretrained directory); required for stages 2 and 3 "
              "unless from_scratch is true", aliases=["--pretrained"])
    reference_model_path: Optional[str] = arg(None, "frozen DPO reference model folder (stage 3)")
    # 阶段 2/3 不给 --pretrained 时必须显式写它：否则悄悄从头训练、退出码 0，错误看不出来
    from_scratch: bool = arg(
        False, "stages 2/3: train a new model from model_config instead of continuing from --pretrained "
               "(without it, a stage 2/3 run without --pretrained is an error)")


@dataclass
class DataArguments:
    """训练数据在哪里。"""

    data_dir: Optional[str] = arg(
        None, "artifact folder written by `ugt prepare`; its train/valid splits are used unless "
              "train_data_path/eval_data_path are given")
    train_data_path: Optional[str] = arg(None, "training data (JSONL/Parquet file or folder)",
                                         aliases=["--train_data"])
    eval_data_path: Optional[str] = arg(
        None, "validation data; when given without eval_strategy, evaluation runs every eval_steps",
        aliases=["--eval_data"])
    preference_source: str = arg(
        "auto", "stage 3 preference pairs: ratings (from the data), self (the model's beam candidates as "
                "rejected) or auto")
    max_preference_pairs: Optional[int] = arg(None, "at most this many self-generated preference pairs")


@dataclass
class EvaluationArguments:
    """训练中全目录排序评估（eval_k_values 在训练参数上：训练器读取）。"""

    num_beams: int = arg(20, "constrained beam search width (evaluation and self-generated preference pairs)")
    exclude_history: bool = arg(False, "never recommend the user's history items during evaluation")
    eval_max_samples: Optional[int] = arg(
        None, "at most this many validation samples per evaluation during training (the final test uses all)")

    def __post_init__(self):
        check_evaluation_arguments(self)
        parent = getattr(super(), "__post_init__", None)  # 规格配置类多重继承：把链传下去（训练参数的校验在后面）
        if parent is not None:
            parent()


def check_evaluation_arguments(obj: Any) -> None:
    """EvaluationArguments：束宽与样本数必须为正（0 束、-1 个样本会悄悄跑出空评估或在束搜索深处崩）。"""
    beams = getattr(obj, "num_beams", 1)
    if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
        raise ConfigError(f"must be a positive integer (beam width), got {beams!r}", field="num_beams")
    samples = getattr(obj, "eval_max_samples", None)
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"must be a positive integer, or null to use every validation sample, got {samples!r}",
                          field="eval_max_samples")


@dataclass
class TrainingFields:
    """训练旋钮与改过的 HF 默认值；在 MRO 里位于 TrainingArguments/DPOConfig 之前。

    lr_scheduler_type 声明为 str（HF 是 `SchedulerType | str`）：这里不能导入 transformers；名字由
    optim.resolve_scheduler 校验（未知名字报错并给出最接近的合法名），HF 的 __post_init__ 再转成 SchedulerType。"""

    output_dir: Optional[str] = arg("checkpoints", "output folder: checkpoints, logs and the resolved config")
    run_name: Optional[str] = arg("ugt_training", "experiment name (spec name: experiment_name)",
                                  aliases=["--experiment_name"])
    per_device_train_batch_size: int = arg(256, "training batch size per process (spec name: batch_size)",
                                           aliases=["--batch_size"])
    per_device_eval_batch_size: Optional[int] = arg(None, "evaluation batch size per process; default: the "
                                                          "training batch size")
    gradient_accumulation_steps: int = arg(4, "gradient accumulation steps; effective batch = batch_size x "
                                              "processes x accumulation steps")
    num_train_epochs: float = arg(10, "maximum training epochs (spec name: max_epochs)", aliases=["--max_epochs"])
    encoder_max_length: int = arg(512, "encoder (user history) length; longer histories lose their oldest items")
    decoder_max_length: int = arg(128, "decoder (target item sequence) length")
    optimizer_type: str = arg("adamw", "optimizer: adamw (torch AdamW) or lamb (large batches, see optim.LAMB)")
    learning_rate: float = arg(1e-4, "peak learning rate (reached at the end of warmup)")
    weight_decay: float = arg(0.01, "weight decay; applied to matrices only, not to biases and norms")
    lr_scheduler_type: str = arg("cosine", "learning-rate schedule: linear, cosine, cosine_with_min_lr, "
                                           "polynomial, constant, constant_with_warmup, ...")
    warmup_steps: float = arg(10000, "linear warmup steps; a fraction below 1 is a share of all steps")
    min_lr_ratio: float = arg(0.1, "lowest learning rate = learning_rate x min_lr_ratio (floor of the decay)")
    fp16: bool = arg(True, "FP16 mixed precision on a GPU; on a CPU-only machine the run uses fp32 (set "
                           "fp16: false there to say so)")
    bf16: bool = arg(False, "BF16 mixed precision; without a GPU it runs as CPU bf16 autocast (sets use_cpu)")
    lambda_contrastive: float = arg(0.1, "weight of the contrastive (InfoNCE) loss")
    lambda_preference: float = arg(0.1, "weight of the DPO preference loss")
    lambda_moe_balance: float = arg(0.01, "weight of the MoE load-balancing loss")
    l1_loss_weight: float = arg(0.5, "weight of the level-1 (coarsest) cross-entropy in the NTP loss")
    l2_loss_weight: float = arg(0.3, "weight of the level-2 cross-entropy in the NTP loss")
    l3_loss_weight: float = arg(0.2, "weight of the level-3 (finest) cross-entropy in the NTP loss")
    label_smoothing: float = arg(0.0, "NTP label smoothing (applied by our loss; HF's label_smoothing_factor stays "
                                      "unset)")
    contrastive_temperature: float = arg(0.07, "InfoNCE temperature, > 0")
    dpo_reference_free: bool = arg(False, "DPO without a reference model (reference log-probs taken as 0)")
    eval_k_values: Optional[List[int]] = arg(help="cut-offs K of the ranking metrics", factory=lambda: [5, 10, 20])
    torch_num_threads: Optional[int] = arg(None, "torch CPU threads; None = leave unchanged (set 1 when several "
                                                 "processes share a few cores)")
    max_consecutive_nonfinite: int = arg(10, "stop after this many consecutive optimizer steps with a non-finite "
                                             "loss or gradient norm")
    early_stopping_patience: Optional[int] = arg(
        None, "stop when metric_for_best_model has not improved for this many evaluations (needs "
              "load_best_model_at_end and metric_for_best_model); None = train all max_epochs")
    logging_steps: float = arg(100, "log every this many optimizer steps")
    save_steps: float = arg(1000, "save a checkpoint every this many optimizer steps")
    eval_steps: Optional[float] = arg(500, "evaluate every this many optimizer steps")
    save_total_limit: Optional[int] = arg(3, "keep at most this many checkpoints (the best model is kept apart)")
    report_to: Union[None, str, List[str]] = arg(None, "logging backends; default: tensorboard (none when it is "
                                                       "not installed)")
    remove_unused_columns: bool = arg(False, "drop dataset columns by the forward signature; off because the "
                                             "collator decides the batch keys")
    deepspeed: Union[dict, str, None] = arg("auto", "DeepSpeed: auto, true, false or a JSON config path (the bare "
                                                    "flag means true)", nargs="?", const="true")
    zero_stage: int = arg(2, "DeepSpeed ZeRO stage: 0, 1, 2 or 3")
    # TRL 把它默认成 True（我们的模型未必支持）；还原为 HF 的 None（= 关闭）
    gradient_checkpointing: Optional[bool] = arg(None, "deprecated: same as activation_checkpointing", nargs="?",
                                                 const=True)

    # 规格名的只读视图（保存时只有字段名）
    batch_size = property(lambda self: self.per_device_train_batch_size)
    max_epochs = property(lambda self: self.num_train_epochs)
    experiment_name = property(lambda self: self.run_name)


@dataclass
class DPOFields:
    """阶段 3 独有的字段（TRL `DPOConfig` 的 beta，改过默认值与帮助）。"""

    beta: float = arg(0.1, "DPO temperature beta (spec name: dpo_beta), > 0", aliases=["--dpo_beta"])
    dpo_beta = property(lambda self: self.beta)
    preference_negatives: int = arg(
        1, "rejected items per prompt: self-generated pairs take the K highest-ranked candidates that are not the "
           "target; K > 1 trains the softmax-DPO (S-DPO) objective, which equals loss_type sigmoid at K = 1")
    ntp_batch_size: Optional[int] = arg(
        None, "recommendation samples per step for stage 3's next-item NTP term L_ntp (drawn from the train split "
              "beside each preference batch); default: per_device_train_batch_size")


# 各阶段与基础默认值不同之处（即规格 Stage{1,2,3}Config 的默认值），位于 YAML 与命令行之下
STAGE_DEFAULTS: Dict[int, Dict[str, Any]] = {
    1: {"num_train_epochs": 5, "learning_rate": 1e-4, "lambda_contrastive": 0.0, "lambda_preference": 0.0},
    2: {"num_train_epochs": 3, "learning_rate": 5e-5, "lambda_contrastive": 0.1},
    3: {"num_train_epochs": 2, "learning_rate": 1e-5, "lambda_preference": 0.1},
}

_HELP_EPILOG = (
    "Every other field of transformers.TrainingArguments{dpo} is accepted as well, on the command line "
    "(--name value) or in the YAML file: e.g. --seed, --logging_dir, --dataloader_num_workers, "
    "--metric_for_best_model. `ugt train --stage {stage} --help_all` lists them all (it loads torch, a few seconds).")


def stage_help_fields(stage: int) -> tuple:
    """`ugt train --stage N --help` 列出的参数类（与 parse_stage_args 的顺序相同，HF 基类除外）。"""
    training = (TrainingFields, DPOFields) if stage == 3 else (TrainingFields,)
    return (*training, ModelArguments, DataArguments, EvaluationArguments)


def stage_help_parser(stage: int) -> argparse.ArgumentParser:
    """阶段 stage 的帮助解析器：UGT 自己的字段，默认值按阶段（STAGE_DEFAULTS）显示。"""
    return build_parser(stage_help_fields(stage), prog=f"ugt train --stage {stage}", defaults=STAGE_DEFAULTS[stage],
                        epilog=_HELP_EPILOG.format(stage=stage, dpo=" (stage 3: trl.DPOConfig)" if stage == 3 else ""))


__all__ = ["DPOFields", "DataArguments", "EvaluationArguments", "ModelArguments", "STAGE_DEFAULTS", "TrainingFields",
           "stage_help_fields", "stage_help_parser"]
