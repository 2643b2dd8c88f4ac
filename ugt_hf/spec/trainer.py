"""规格第 7 节的 `Trainer`：`TrainerInterface`（train_epoch / evaluate / save_checkpoint / load_checkpoint）与
`train() -> {"best_eval_loss": ...}`，建立在生产的 `UGTTrainer`（HF Trainer 子类）之上。

规格的方法到 HF 机制的映射：
    train()              = HF train；有 eval_dataset 时每个 epoch 评估（规格循环的做法），返回 dict：
                           best_eval_loss（没有评估时为 inf）、train_loss、global_step 与 HF 的训练指标。
    train_epoch()        = 把 num_train_epochs 设为“已完成 epoch 数 + 1”，从上一次写下的检查点续训（HF 的 resume：
                           恢复参数、优化器、调度器、RNG、数据位置），结束后写 epoch 检查点作为下一次的起点。
                           学习率调度的总长按配置的 epoch 数计算，与一次 train() 跑完全部 epoch 相同。
    evaluate()           = HF evaluate；除 eval_* 外再给出去掉前缀的同名键（规格的 {"loss": ...}）。
    save_checkpoint(p)   = 在 p 原子地写一个完整的 HF 检查点（权重 safetensors、优化器、调度器、RNG、trainer_state、
                           training_args.json）；可用 load_checkpoint(p) 或 train(resume_from_checkpoint=p) 续训。
    load_checkpoint(p)   = 安全检查后加载权重/优化器/调度器/状态/RNG；之后的 train()/train_epoch() 从 p 续训。

批次：模型收到规格的形式——encoder/decoder_semantic_ids 是 3 个 [B, T] 张量的列表（规格 MockModel 按
`kwargs["encoder_semantic_ids"][0].shape[0]` 取 batch 大小）；labels 与损失仍按契约 [B, T, 3] 计算。
数据可以来自生产 collator（契约形式）或 `ugt_hf.spec.DataCollator`（规格形式），两种都先转成契约形式。
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn
from transformers import TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy

from ugt_hf.interfaces import TrainerInterface
from ugt_hf.training import checkpointing as ckpt
from ugt_hf.training.trainer import UGTTrainer

from .dataset import split_levels, to_model_batch

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "as_training_arguments"]

# 规格批次中按“3 个 [B, T] 的列表”交给模型的字段（labels 留给损失，仍是 [B, T, 3]）
_SPEC_FORM_INPUTS = ("encoder_semantic_ids", "decoder_semantic_ids")
BEST_MODEL_DIR = "best_model"  # 规格 train() 保存最佳模型的位置
SPEC_MODEL_FILE = "model.pt"  # 规格 8.3 / 8.4 读取的 state_dict 文件


def as_training_arguments(config: Any) -> TrainingArguments:
    """规格配置 → HF `TrainingArguments`。规格配置类本身就是其子类时原样返回。"""
    if isinstance(config, TrainingArguments):
        return config
    convert = getattr(config, "to_training_arguments", None)
    if callable(convert):
        return convert()
    raise TypeError(
        "config must be a TrainingConfig / Stage*Config (or transformers.TrainingArguments), "
        f"got {type(config).__name__}"
    )


class Trainer(UGTTrainer, TrainerInterface):
    """规格的训练器 `Trainer(model, config, train_dataset, eval_dataset=None, optimizer=None, scheduler=None,
    reference_model=None)`；其余关键字参数交给 UGTTrainer（如 data_collator、catalogue、callbacks）。

    reference_model 只为与规格签名一致而保存（`self.reference_model`）：阶段 3 的 DPO 用 `DPOTrainer`。
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        config: Any = None,
        train_dataset=None,
        eval_dataset=None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler=None,
        reference_model: Optional[nn.Module] = None,
        **kwargs: Any,
    ):
        if config is None:
            config = kwargs.pop("args", None)
        if config is None:
            raise ValueError("Trainer needs `config` (a TrainingConfig / Stage*Config)")
        args = as_training_arguments(config)
        if eval_dataset is not None and args.eval_strategy == IntervalStrategy.NO:
            # 规格的 train() 在每个 epoch 后评估（并据此给出 best_eval_loss）
            args.eval_strategy = IntervalStrategy.EPOCH
        if optimizer is not None or scheduler is not None:
            kwargs["optimizers"] = (optimizer, scheduler)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        self.config = config
        self.reference_model = reference_model
        self._spec_resume_point: Optional[str] = None  # 下一次 train()/train_epoch() 的续训点
        self._spec_total_epochs: Optional[float] = None  # train_epoch 模式下调度器按它计算总长
        self._warned_no_grad = False
        self._spec_best_eval_loss = math.inf  # 本次 train() 中最好的验证损失

    # ------------------------------------------------------------------ 批次形式
    def _prepare_inputs(self, inputs: Mapping[str, Any]) -> Dict[str, Any]:
        return super()._prepare_inputs(to_model_batch(inputs))

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        view = [to_model_batch(b) if isinstance(b, Mapping) else b for b in batch_samples]
        return super()._get_num_items_in_batch(view, device)

    def compute_loss(self, model: nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Optional[Union[torch.Tensor, int]] = None):
        """生产的损失组合不变；只是模型看到规格形式的语义 ID。

        损失与任何可训练参数都无关时（例如规格 MockModel 输出随机 logits），补一条 0 梯度路径，
        让 backward 与优化步照常进行（参数梯度为 0），而不是在 autograd 里报错。
        """
        spec_inputs = dict(inputs)
        for key in _SPEC_FORM_INPUTS:
            if key in spec_inputs:
                spec_inputs[key] = split_levels(spec_inputs[key])
        result = super().compute_loss(model, spec_inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and torch.is_grad_enabled() and not loss.requires_grad:
            params = [p for p in model.parameters() if p.requires_grad]
            if params:
                if not self._warned_no_grad:
                    logger.warning("the loss does not depend on any trainable parameter (e.g. a mock model that "
                                   "returns random logits): parameters get zero gradients")
                    self._warned_no_grad = True
                loss = loss + sum(p.sum() for p in params) * 0.0
                result = (loss, result[1]) if return_outputs else loss
        return result

    # ------------------------------------------------------------------ 训练
    def train(self, resume_from_checkpoint: Optional[Union[str, bool]] = None, trial=None,
              ignore_keys_for_eval=None, **kwargs: Any) -> Dict[str, float]:
        """完整训练（规格 7.1）；load_checkpoint 之后从该检查点续训。返回 best_eval_loss 等（见模块说明）。"""
        if resume_from_checkpoint is None:
            # 规格 Q4：配置里写了 resume_from_checkpoint 就自动续训
            resume_from_checkpoint = self._spec_resume_point or getattr(self.args, "resume_from_checkpoint", None)
        self._spec_best_eval_loss = math.inf
        out = self._hf_train(resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                             **kwargs)
        evals = [h["eval_loss"] for h in self.state.log_history if "eval_loss" in h]
        result: Dict[str, float] = {
            "best_eval_loss": float(min(evals)) if evals else math.inf,
            "train_loss": float(out.training_loss),
            "global_step": float(out.global_step),
        }
        for key, value in out.metrics.items():
            if isinstance(value, (int, float)):
                result.setdefault(key, float(value))
        return result

    def _hf_train(self, resume_from_checkpoint, **kwargs: Any):
        self._spec_resume_point = None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """train_epoch 期间调度器的总步数按配置的全部 epoch 计算（否则每次调用都会重新拉伸余弦曲线）。"""
        if self._spec_total_epochs is not None and self.lr_scheduler is None:
            done_plus_one = max(float(self.args.num_train_epochs), 1.0)
            num_training_steps = int(math.ceil(num_training_steps * self._spec_total_epochs / done_plus_one))
        return super().create_scheduler(num_training_steps, optimizer)

    # ------------------------------------------------------------------ TrainerInterface
    def train_epoch(self) -> Dict[str, float]:
        """训练一个 epoch，返回本 epoch 的训练指标：loss、各损失分量、learning_rate、epoch、global_step。"""
        if self.args.max_steps is not None and self.args.max_steps > 0:
            raise ValueError("train_epoch() counts epochs: set max_steps=-1 (or use train() with max_steps)")
        if self._spec_total_epochs is None:
            self._spec_total_epochs = float(self.args.num_train_epochs)
        if self._spec_resume_point is None and self.state.global_step > 0:
            # 之前用 train() 训练过：先把当前状态存成检查点，再从它继续一个 epoch
            self._spec_resume_point = self._epoch_checkpoint()
        resume = self._spec_resume_point
        done = int(round(self.state.epoch or 0)) if resume is not None else 0
        configured = self.args.num_train_epochs
        self.args.num_train_epochs = done + 1
        try:
            out = self._hf_train(resume)
        finally:
            self.args.num_train_epochs = configured
        metrics: Dict[str, float] = {"loss": float(out.training_loss)}
        metrics.update(self._run_components.averages(reduce=self._cross_rank_sum()))
        metrics["learning_rate"] = float(self._get_learning_rate())
        metrics["epoch"] = float(self.state.epoch or 0.0)
        metrics["global_step"] = float(self.state.global_step)
        metrics["nonfinite_skipped"] = float(self.nonfinite_guard.total_skipped)
        # 本 epoch 的结束状态写成检查点，作为下一次 train_epoch 的起点（规格的循环本来也每个 epoch 存一次）
        self._spec_resume_point = self._epoch_checkpoint()
        return metrics

    def _epoch_checkpoint(self) -> str:
        """output_dir/checkpoint-<global_step>（HF 的保存与轮转）；已有完整的就直接用。"""
        final_dir = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if not ckpt.is_complete_checkpoint(final_dir):
            if self.optimizer is None or self.lr_scheduler is None:
                self.save_checkpoint(final_dir)
            else:
                self._save_checkpoint(self.model_wrapped, trial=None)
        return final_dir

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """HF evaluate 的指标，另加去掉 `eval_` 前缀的同名键（规格：{"loss": ..., "recall@10": ...}）。"""
        metrics = super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                   metric_key_prefix=metric_key_prefix)
        out = dict(metrics)
        prefix = f"{metric_key_prefix}_"
        for key, value in metrics.items():
            if key.startswith(prefix):
                out.setdefault(key[len(prefix):], value)
        loss = out.get("loss")
        if self.is_in_train and metric_key_prefix == "eval" and loss is not None and loss < self._spec_best_eval_loss:
            self._spec_best_eval_loss = float(loss)
            self._save_best_model()
        return out

    def _save_best_model(self) -> None:
        """规格 train() 的“保存最佳模型”：output_dir/best_model，HF 格式（from_pretrained 可读）外加
        规格 8.3 用 `torch.load(".../best_model/model.pt")` 读取的 state_dict（只含张量，weights_only 可加载）。"""
        best_dir = os.path.join(self.args.output_dir, BEST_MODEL_DIR)
        self.save_model(best_dir)
        if self.args.should_save:
            state = self.accelerator.get_state_dict(self.model)
            torch.save(state, os.path.join(best_dir, SPEC_MODEL_FILE))

    def save_checkpoint(self, path: str) -> None:
        """在 path 原子地写一个完整检查点（先写 .staging-*，写完 rename；所有 rank 都要调用）。"""
        if self.optimizer is None or self.lr_scheduler is None:
            # 还没训练过：先建优化器与调度器，保证检查点可续训
            self.create_optimizer_and_scheduler(num_training_steps=max(int(self.args.max_steps), 1))
        # 与 UGTTrainer 的周期检查点同一条路径：HF 的 _save_checkpoint 写进 staging，再原子 rename 到 path
        self._write_checkpoint(os.path.abspath(path))

    def load_checkpoint(self, path: str) -> None:
        """安全检查后加载 path 的权重、优化器、调度器、训练状态与 RNG；之后 train()/train_epoch() 从这里续训。"""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"load_checkpoint: folder not found: {path}")
        state_file = os.path.join(path, ckpt.TRAINER_STATE_FILE)
        if not os.path.isfile(state_file):
            raise ValueError(
                f"load_checkpoint: {path} is not a complete checkpoint (missing {ckpt.TRAINER_STATE_FILE})"
            )
        ckpt.verify_checkpoint_files(path)
        self._load_from_checkpoint(path)
        if self.optimizer is not None and self.lr_scheduler is not None:
            self._load_optimizer_and_scheduler(path)
            self._load_scaler(path)
        self.state = TrainerState.load_from_json(state_file)
        self._load_rng_state(path)
        self._spec_resume_point = path
