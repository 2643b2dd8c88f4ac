"""UGTTrainer：阶段 1–2 的 `transformers.Trainer` 子类（规格的 `TrainerInterface` 适配在 `ugt_hf.spec.trainer`）。

只覆写与 HF 默认行为不同的几处，训练循环、日志、评估循环、检查点轮转都是 HF 自己的：
- `compute_loss`：L = NTP_sum / N + λ1·InfoNCE / M + λ3·MoE / M（torchtitan 的组合方式；N = 整个累积批次的有效
  标签位置数，M = 累积步数），梯度累积下精确且不重算任何一项；NTP 与 MoE 辅助项来自 `ugt_hf.loss_utils`。
  各分量在日志步之间累积（设备上，无同步）并取平均，经 `Trainer.log` 写到 TensorBoard / 进度条。
- `prediction_step`：教师强制的 NTP 损失 + 约束 beam search 的 top-K 物品，`compute_metrics` 算 Recall/NDCG@K 等。
- 加固（HF 不足之处见 checkpointing.py / callbacks.py 的模块说明）：检查点原子写入、只从完整检查点续训、
  加载前拒绝不安全的 pickle、不写 pickle 版 training_args.bin；非有限损失/梯度跳过更新；SIGTERM/SIGINT 保存后退出。

"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..data.collator import DataCollator
from ..data.schema import RECOMMEND_FIELDS
from ..generation import ItemCatalogue, recommend
from ..interfaces import IGNORE_INDEX, MODEL_INPUT_KEYS, NUM_LEVELS, SEMANTIC_PAD_ID, get_output
from ..loss_utils import ntp_loss_sums
from ..metrics import make_compute_metrics
from ..model_card import write_model_card
from . import checkpointing as ckpt
from .callbacks import (
    DEFAULT_MAX_CONSECUTIVE_NONFINITE,
    NonFiniteGuard,
    NonFiniteGuardStepEnd,
    TrainingDivergedError,
)
from .losses import ContrastiveLoss, level_weights_from
from .optim import get_optimizer_cls_and_kwargs

logger = logging.getLogger(__name__)

# 排序器：ranker(model, batch) -> [B, K] 物品 id（按分数降序）
Ranker = Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]

# 数据记录（规格 5.1）与模型输入的字段都要保留给 collator；HF 默认会按 forward 签名删掉“用不到”的列
_KEEP_COLUMNS = tuple(MODEL_INPUT_KEYS) + tuple(RECOMMEND_FIELDS)


class LossComponentAccumulator:
    """在日志步之间累积损失分量（设备上，避免每步 .item() 同步），日志时取平均。

    权重与 compute_loss 的缩放相同：ntp* 分量乘 n_local/N（一个优化步内之和为 1，即该步的 token 平均），
    其余（contrastive/moe）乘 1/M。窗口平均 = Σ 值·权重 / Σ 权重 = 各优化步取值的平均，与 HF 的 "loss" 口径一致
    （只有 NTP 时 ntp_loss 与 loss 相等）。非有限的 micro-batch 不计入（同 HF 的 logging_nan_inf_filter）。
    """

    def __init__(self):
        self.keys: Tuple[str, ...] = ()
        self._sum: Optional[torch.Tensor] = None  # [C]
        self._den: Optional[torch.Tensor] = None  # [C]

    def reset(self) -> None:
        self._sum = None
        self._den = None

    def add(self, comps: Mapping[str, torch.Tensor], ntp_weight: torch.Tensor, other_weight: float,
            finite: torch.Tensor) -> None:
        keys = tuple(sorted(comps))
        if keys != self.keys:
            if self._sum is not None:  # 分量集合变了（极少见）：先结算旧的
                logger.debug("loss component keys changed from %s to %s", self.keys, keys)
            self.keys = keys
            self._sum = None
            self._den = None
        vals = torch.stack([comps[k].detach().float().reshape(()) for k in keys])  # [C]
        w_ntp = ntp_weight.detach().float().reshape(())
        w_other = torch.full_like(w_ntp, float(other_weight))
        weights = torch.stack([w_ntp if k.startswith("ntp") else w_other for k in keys])  # [C]
        weights = weights * finite.float()
        vals = torch.where(torch.isfinite(vals), vals, torch.zeros_like(vals))
        if self._sum is None:
            self._sum = vals * weights
            self._den = weights
        else:
            self._sum = self._sum + vals * weights
            self._den = self._den + weights

    def averages(self, reset: bool = True, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                 ) -> Dict[str, float]:
        """reduce：多进程时对分子、分母做跨进程求和（各进程的 NTP 权重是 n_local·W/N，求和后即全局 token 平均）。
        所有进程必须在同一时刻调用（HF 在每个进程的同一步调用 log / 评估结束）。"""
        if self._sum is None:
            return {}
        if reduce is not None:
            self._sum, self._den = reduce(self._sum), reduce(self._den)
        avg = (self._sum / self._den.clamp(min=1e-12)).tolist()
        den = self._den.tolist()
        out = {k: float(v) for k, v, d in zip(self.keys, avg, den) if d > 0}
        if reset:
            self.reset()
        return out


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """HF 的 LengthGroupedSampler，但每个 epoch 的顺序只由 (seed, epoch) 决定。

    HF 的版本不带 generator，打乱用的是全局 torch RNG：续训时 HF 跳过已训完的 epoch 而不迭代它们，
    全局 RNG 的状态与不中断的运行不同，从第 2 个 epoch 起顺序就变了（续训不再逐位一致）。
    这里每次迭代前把自己的 generator 设为 seed + epoch（同 accelerate 的 SeedableRandomSampler）；
    HF / accelerate 在每个 epoch 开始时调用 set_epoch。
    """

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int = 0):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


def target_item_ids_from_labels(labels: torch.Tensor, catalogue: ItemCatalogue) -> torch.Tensor:
    """评估记录（decoder = [BOS]）的目标物品 = labels 第 0 个位置的 (l1, l2, l3)，映射为物品 id [B]。

    不在目录里的三元组为 IGNORE_INDEX（-100，而不是目录的 -1：排序结果用 -1 表示缺位，二者不能相等）。
    """
    if labels.dim() != 3 or labels.shape[-1] != NUM_LEVELS:
        raise ValueError(f"labels must be [B, T, {NUM_LEVELS}], got {tuple(labels.shape)}")
    ids = catalogue.lookup(labels[:, 0, :])
    return torch.where(ids >= 0, ids, torch.full_like(ids, IGNORE_INDEX)).to(labels.device)


def make_beam_search_ranker(catalogue, num_beams: int, top_k: int, exclude_history: bool = False) -> Ranker:
    """generation.py 的约束 beam search（从 BOS 位置出发）包成 ranker(model, batch) -> [B, K] 物品 id（-1 为缺位）。"""

    def ranker(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        model_batch = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS and k != "labels"}
        result = recommend(model, model_batch, catalogue, top_k=top_k, num_beams=max(num_beams, top_k),
                           exclude_history=exclude_history, position=0, method="beam")
        return result.item_indices

    return ranker


class UGTTrainer(ckpt.CheckpointingMixin, Trainer):
    """阶段 1–2 训练器。除 HF Trainer 的参数外：

    Args:
        loss_fn: 可选的自定义损失，loss_fn(outputs, labels) -> dict，至少含 total_loss（带梯度）与 ntp_loss
            （micro-batch 均值）；组合为 ntp·n/N + (total − ntp)/M。默认 None：内置组合（见 compute_loss）
        ranker: ranker(model, batch) -> [B, K] 物品 id；给了 catalogue 时默认用 generation.py 的约束 beam search
        catalogue: generation.ItemCatalogue（items.parquet 的三元组表）；评估排序全目录，也用它把目标 (l1,l2,l3)
            映射为物品 id
        item_codes: [N, 3] 各物品的语义 ID（没有 catalogue 时由它建一个 ItemCatalogue）
        num_beams: beam 宽度（默认 = max(k_values)）；exclude_history: 是否不推荐历史物品（结果表须注明）
        k_values: 排序指标的 K；默认取 args.eval_k_values 或 (5, 10, 20, 50)
        max_consecutive_nonfinite: 连续多少个优化步非有限后停止；默认取 args 的同名字段或 10
        graceful_shutdown: 是否安装 SIGTERM/SIGINT 回调
    """

    # compute_loss 已按整个累积批次归一（见 compute_loss），HF 不要再除以累积步数
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        *,
        loss_fn: Optional[Callable[..., Dict[str, torch.Tensor]]] = None,
        ranker: Optional[Ranker] = None,
        item_codes: Optional[torch.Tensor] = None,
        catalogue=None,
        num_beams: Optional[int] = None,
        exclude_history: bool = False,
        k_values: Optional[Sequence[int]] = None,
        max_consecutive_nonfinite: Optional[int] = None,
        graceful_shutdown: bool = True,
        **kwargs,
    ):
        if data_collator is None:
            data_collator = _default_collator(args)

        callbacks = list(kwargs.pop("callbacks", None) or [])  # 信号回调由 CheckpointingMixin 安装
        patience = getattr(args, "early_stopping_patience", None)
        if patience and not any(isinstance(c, EarlyStoppingCallback) for c in callbacks):
            # 早停由 HF 的回调完成：最佳轮由验证指标挑，轮数上限只是预算
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(patience)))

        # 评估：ranker + 目标映射（ItemCatalogue，全包唯一的三元组 <-> 物品 id 换算）+ 默认 compute_metrics
        if item_codes is not None:
            self.item_catalogue = ItemCatalogue(item_codes, getattr(catalogue, "vocab_sizes", None))
        else:
            self.item_catalogue = catalogue
        if k_values is None:
            k_values = getattr(args, "eval_k_values", None) or (5, 10, 20, 50)
        self.k_values = tuple(int(k) for k in k_values)
        default_ranker = ranker is None and catalogue is not None
        if default_ranker:
            top_k = max(self.k_values)
            ranker = make_beam_search_ranker(catalogue, num_beams=max(int(num_beams or 0), top_k), top_k=top_k,
                                             exclude_history=exclude_history)
        self.ranker = ranker
        self._card_protocol = _ranking_protocol(self.item_catalogue if default_ranker else None, ranker, num_beams,
                                                self.k_values, exclude_history)
        if kwargs.get("compute_metrics") is None and self.ranker is not None:
            num_items = self.item_catalogue.num_items if self.item_catalogue is not None else None
            kwargs["compute_metrics"] = make_compute_metrics(self.k_values, num_items=num_items)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            graceful_shutdown=graceful_shutdown,
            **kwargs,
        )

        # 内置损失的各项系数（loss_fn 为 None 时使用）；层级权重只有一个名字 level_weights
        self.loss_fn = loss_fn
        self.level_weights = level_weights_from(self.args)
        self.label_smoothing = float(getattr(self.args, "label_smoothing", 0.0) or 0.0)
        self.lambda_contrastive = float(getattr(self.args, "lambda_contrastive", 0.0) or 0.0)
        self.lambda_moe_balance = float(getattr(self.args, "lambda_moe_balance", 0.0) or 0.0)
        for name in ("lambda_contrastive", "lambda_moe_balance"):
            lam = getattr(self, name)
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"UGTTrainer: {name} must be a finite number >= 0, got {lam}")
        self.contrastive_loss = ContrastiveLoss(getattr(self.args, "contrastive_temperature", 0.07))
        self._warned_missing_repr = False
        if self.args.label_names is None:
            self.label_names = ["labels"]
        # 让 HF 统计 num_items_in_batch（它只在模型“接受 loss kwargs”时统计）；我们的 compute_loss 不把它传给模型
        self.model_accepts_loss_kwargs = True

        if max_consecutive_nonfinite is None:
            max_consecutive_nonfinite = getattr(self.args, "max_consecutive_nonfinite", None)
        self.nonfinite_guard = NonFiniteGuard(max_consecutive_nonfinite or DEFAULT_MAX_CONSECUTIVE_NONFINITE)
        self.add_callback(NonFiniteGuardStepEnd(self.nonfinite_guard))
        self._log_components = LossComponentAccumulator()  # 日志窗口
        self._run_components = LossComponentAccumulator()  # 整次 train() 调用（train_epoch 的返回值）
        self._eval_components = LossComponentAccumulator()  # 一次评估

    # ------------------------------------------------------------------ 数据
    def _set_signature_columns_if_needed(self):
        """HF 按 forward 签名保留列；我们的数据集列是规格的记录字段，由 collator 转成模型输入，必须保留。"""
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(
                dict.fromkeys(list(self._signature_columns) + list(_KEEP_COLUMNS))
            )

    def _get_train_sampler(self, train_dataset=None):
        """group_by_length：HF 只会从 datasets.Dataset 的长度列或 input_ids 推长度；我们的数据集直接给出
        encoder 长度（RecommendDataset.lengths），让一个批次里的历史长度相近，padding 少得多。"""
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(ds, "lengths"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=ds.lengths(), seed=seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        """评估按顺序读：HF 在 group_by_length 时对评估集也用 LengthGroupedSampler，需要 input_ids 推长度。"""
        if self.args.train_sampling_strategy == "group_by_length":
            return torch.utils.data.SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """有效标签“位置”数（而非 HF 口径的 labels.ne(-100).sum()，后者对 [B, T, 3] 的标签会数三遍）。

        只把 labels[..., 0] 交给 HF 的实现，复用它的跨进程汇总（average_tokens_across_devices）。
        """
        view = []
        for b in batch_samples:
            labels = b.get("labels") if isinstance(b, Mapping) else None
            if torch.is_tensor(labels) and labels.dim() == 3 and labels.shape[-1] == NUM_LEVELS:
                labels = labels[..., 0]
            view.append({"labels": labels} if labels is not None else {})
        if not view or "labels" not in view[0]:
            return None
        return super()._get_num_items_in_batch(view, device)

    # ------------------------------------------------------------------ 损失
    def compute_loss(
        self,
        model: nn.Module,
        inputs: Dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[Union[torch.Tensor, int]] = None,
    ):
        """L = NTP_sum / N + λ1·InfoNCE / M + λ3·MoE / M（torchtitan 的组合方式）。

        模型有物品头时 NTP_sum 再加 item_loss_weight · 物品 CE_sum（loss_utils.ntp_loss_sums 的 item_*）。

        梯度累积：一个优化步由 M 个 micro-batch 组成，整批有效标签位置数为 N = num_items_in_batch。
        NTP 是 token 平均：本 micro-batch 贡献 Σ_k w_k·CE_sum_k / N，M 个之和就是把它们拼成一个大批次时的均值，
        与 micro-batch 的切法和各序列长度无关（batch 8×1 与 2×4 得到相同梯度）。
        对比与 MoE 项是每个 micro-batch 的均值，贡献 (λ1·con + λ3·moe) / M。各项只算一次，不重算。
        多进程且 average_tokens_across_devices 时 N 是全局数，DDP 又对梯度求平均，所以 NTP 项再乘进程数（同 HF）。
        没有 N（在 HF 循环之外调用）时：NTP 用本 micro-batch 的均值，总损失 / M。
        """
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                "batch has no 'labels': UGTTrainer needs labels [B, Td, 3] from the DataCollator "
                f"(got keys {sorted(inputs)})"
            )
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS}
        if self.loss_fn is None and self._model_takes_return_loss():
            # 内置组合只用 logits：不让模型在前向里再算一遍 NTP（自定义 loss_fn 可能读 outputs.loss，照常算）
            model_inputs["return_loss"] = False
        outputs = model(**model_inputs)

        n_local = (labels[..., 0] != IGNORE_INDEX).sum()  # 本 micro-batch 的有效标签位置数
        accum = 1
        if model.training:
            accum = max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
        n_total = None
        if num_items_in_batch is not None:
            n_total = torch.as_tensor(num_items_in_batch, device=n_local.device).reshape(-1)[0]
        if self.loss_fn is not None:
            if get_output(outputs, "item_logits") is not None and not getattr(self, "_warned_item_head", False):
                # 自定义损失自己决定是否用物品头的 item_logits / item_labels；提示一次，避免静默丢掉这一项
                logger.warning("the model has an item head (num_items > 0) but a custom loss_fn is used: its "
                               "item_logits/item_labels are only trained if loss_fn uses them")
                self._warned_item_head = True
            loss, comps, share = self._custom_loss(outputs, labels, n_local, n_total, accum)
        else:
            loss, comps, share = self._composed_loss(outputs, labels, n_local, n_total, accum)

        finite = torch.isfinite(loss.detach())
        if model.training:
            self._log_components.add(comps, share, 1.0 / accum, finite)
            self._run_components.add(comps, share, 1.0 / accum, finite)
        else:
            self._eval_components.add(comps, share, 1.0, finite)
        return (loss, outputs) if return_outputs else loss

    def _model_takes_return_loss(self) -> bool:
        """模型 forward 是否有 return_loss 参数（UGT 模型有；满足 interfaces 契约的其他模型不一定有）。"""
        flag = getattr(self, "_takes_return_loss", None)
        if flag is None:
            forward = getattr(self.model, "forward", None)
            try:
                flag = forward is not None and "return_loss" in inspect.signature(forward).parameters
            except (TypeError, ValueError):
                flag = False
            self._takes_return_loss = flag
        return flag

    def _ntp_share(self, n_local: torch.Tensor, n_total: Optional[torch.Tensor], dtype: torch.dtype, accum: int):
        """本 micro-batch 的 NTP 在优化步里的份额 n_local/N（多进程时再乘进程数）；没有 N 时为 1/M。"""
        if n_total is None:
            return torch.full((), 1.0 / accum, dtype=dtype, device=n_local.device)
        share = n_local.to(dtype) / torch.clamp(n_total.to(dtype), min=1.0)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            share = share * float(self.accelerator.num_processes // self.get_tp_size())
        return share

    def _composed_loss(self, outputs, labels, n_local, n_total, accum):
        """内置组合：NTP 的求和形式（loss_utils.ntp_loss_sums）+ 单独给出的 InfoNCE 与 MoE 辅助项。"""
        logits = [get_output(outputs, f"l{k}_logits") for k in (1, 2, 3)]
        for k, lg in enumerate(logits, start=1):
            if lg is None:
                raise ValueError(f"UGTTrainer: model output is missing required field 'l{k}_logits'")
        config = getattr(self.model, "config", None)
        chunk_size = getattr(config, "loss_chunk_size", None)
        # 物品头（UGTConfig.num_items > 0）的全目录交叉熵与三层 NTP 同一个除数 N
        item_kw = {}
        item_logits = get_output(outputs, "item_logits")
        if item_logits is not None:
            item_labels = get_output(outputs, "item_labels")
            if item_labels is None:
                raise ValueError("UGTTrainer: model output has item_logits but no item_labels (forward got labels?)")
            item_kw = {"item_logits": item_logits, "item_labels": item_labels,
                       "item_weight": float(getattr(config, "item_loss_weight", 1.0))}
        sums = ntp_loss_sums(*logits, labels, level_weights=self.level_weights, label_smoothing=self.label_smoothing,
                             chunk_size=chunk_size, **item_kw)
        comps = sums.metrics()  # 日志：本 micro-batch 的均值
        dtype = sums.level_sums[0].dtype
        share = self._ntp_share(n_local, n_total, dtype, accum)
        if n_total is not None:
            # NTP_sum / N：逐层 sum_k / N 再加权（N = 本 micro-batch 的位置数时与均值逐位相同）
            denom = torch.clamp(n_total.to(dtype), min=1.0)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                denom = denom / float(self.accelerator.num_processes // self.get_tp_size())
            loss = sums.weighted(denom)
            aux_scale = 1.0 / accum
        else:
            loss = sums.weighted()
            aux_scale = None  # 总损失整体 / M

        if self.lambda_contrastive > 0:
            user_repr, item_repr = get_output(outputs, "user_repr"), get_output(outputs, "item_repr")
            if user_repr is not None and item_repr is not None:
                con, m = self.contrastive_loss(user_repr, item_repr)
                term = self.lambda_contrastive * con
                loss = loss + (term if aux_scale is None or aux_scale == 1.0 else term * aux_scale)
                comps.update(m)
            elif not self._warned_missing_repr:
                # 规格允许模型不输出表示（阶段 1）；提示一次，避免静默丢掉一项
                logger.warning("lambda_contrastive=%s but the model output has no user_repr/item_repr: "
                               "contrastive term skipped", self.lambda_contrastive)
                self._warned_missing_repr = True
        aux = get_output(outputs, "aux_loss")
        if aux is not None:
            aux = torch.as_tensor(aux)
            if aux.numel() != 1:
                raise ValueError(f"UGTTrainer: aux_loss must be a scalar, got shape {tuple(aux.shape)}")
            aux = aux.reshape(())
            comps["moe_balance_loss"] = aux.detach()
            if self.lambda_moe_balance > 0:
                term = self.lambda_moe_balance * aux
                loss = loss + (term if aux_scale is None or aux_scale == 1.0 else term * aux_scale)
        if aux_scale is None:
            loss = loss / accum
        return loss, comps, share

    def _custom_loss(self, outputs, labels, n_local, n_total, accum):
        """自定义 loss_fn：ntp（均值）·n/N + (total − ntp)/M；total − ntp 就是它的辅助项，不必重算。"""
        comps = self.loss_fn(outputs, labels)  # 各项都是本 micro-batch 的均值；只有 total_loss 带梯度
        total, ntp = comps["total_loss"], comps["ntp_loss"]
        share = self._ntp_share(n_local, n_total, total.dtype, accum)
        if n_total is None:
            loss = total / accum
        elif accum == 1 and self.args.world_size <= 1:
            loss = total * share  # share = n/N = 1（单进程、不累积）
        else:
            loss = total * share + (total - ntp) * (1.0 / accum - share)
        return loss, _loggable(comps), share

    # ------------------------------------------------------------------ 评估
    def prediction_step(
        self,
        model: nn.Module,
        inputs: Dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: Optional[List[str]] = None,
    ):
        """教师强制的评估损失；需要指标时再用 ranker 对全目录排序，返回 (loss, top-K 物品 id [B, K], 目标 id [B])。"""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            num_items = self._get_num_items_in_batch([inputs], self.args.device)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items)
            loss = loss.detach().mean()
            if prediction_loss_only or self.ranker is None:
                return loss, None, None
            unwrapped = self.accelerator.unwrap_model(model)
            topk = self.ranker(unwrapped, inputs)  # [B, K]
            if not torch.is_tensor(topk) or topk.dim() != 2 or topk.shape[0] != inputs["labels"].shape[0]:
                shape = tuple(topk.shape) if torch.is_tensor(topk) else type(topk)
                raise ValueError(f"ranker must return [B, K] item ids, got {shape}")
            if "target_item_ids" in inputs:
                targets = inputs["target_item_ids"].reshape(-1)
            elif self.item_catalogue is not None:
                targets = target_item_ids_from_labels(inputs["labels"], self.item_catalogue)
            else:
                raise ValueError("ranking evaluation needs `item_codes` (or a 'target_item_ids' batch key)")
        return loss, topk.long(), targets.long().to(topk.device)

    def evaluation_loop(self, *args, **kwargs):
        """在 HF 的评估循环之外补上评估集的损失分量（eval_ntp_l1_loss 等）。"""
        self._eval_components.reset()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        for k, v in self._eval_components.averages(reduce=self._cross_rank_sum()).items():
            output.metrics.setdefault(f"{prefix}_{k}", v)
        return output

    # ------------------------------------------------------------------ 日志
    def _cross_rank_sum(self):
        """多进程时返回跨进程求和的函数，单进程时 None（记录的损失分量与 HF 的全局 "loss" 同口径）。"""
        if self.args.world_size <= 1:
            return None
        return lambda t: self.accelerator.reduce(t, "sum")

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """训练日志（含 "loss" 的那种）里加上窗口内平均的各损失分量与非有限计数。"""
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            for k, v in self._log_components.averages(reduce=self._cross_rank_sum()).items():
                logs.setdefault(k, v)
            logs["nonfinite_skipped"] = self.nonfinite_guard.total_skipped
        super().log(logs, start_time)

    # ------------------------------------------------------------------ 优化器与非有限守卫
    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        """optimizer_type="lamb" 走 optim.py 的 LAMB；其余交给 HF（args.optim）。"""
        return get_optimizer_cls_and_kwargs(args, model)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        self._install_step_guard(optimizer)
        return optimizer

    def _install_step_guard(self, optimizer) -> None:
        """把守卫装进底层优化器的 step：在 HF 的 `self.optimizer.step()` 处跳过非有限的一步。

        必须在 accelerate 包装之前装（AcceleratedOptimizer / GradScaler 调用的是底层实例的 step）。
        跳过时参数与优化器状态都不变；学习率调度照常前进（保持 lr 只是 global_step 的函数）。
        """
        inner = getattr(optimizer, "optimizer", optimizer)
        if getattr(inner, "_ugt_guarded", False):
            return
        original = inner.step

        @functools.wraps(original)
        def guarded_step(*args, **kwargs):
            if self.nonfinite_guard.step_is_bad():
                self._on_nonfinite_step()
                return None
            return original(*args, **kwargs)

        inner.step = guarded_step
        inner._ugt_guarded = True

    def _on_nonfinite_step(self) -> None:
        g = self.nonfinite_guard
        step = self.state.global_step + 1
        logger.warning(
            "step %d: non-finite loss or gradient norm (grad_norm=%s): optimizer update skipped "
            "(%d in a row, %d in total)", step, g.last_grad_norm, g.consecutive, g.total_skipped,
        )
        if g.exhausted and g.diverged_message is None:
            last = ckpt.get_last_checkpoint(self.args.output_dir)
            g.diverged_message = (
                f"training stopped at step {step}: {g.consecutive} consecutive optimizer steps had a non-finite "
                f"loss or gradient norm (max_consecutive_nonfinite={g.max_consecutive}); parameters were left at "
                f"their last finite values. Last complete checkpoint: {last}. Lower the learning rate, enable "
                f"gradient clipping, or check the data around this step."
            )
            logger.error(g.diverged_message)
            self.control.should_training_stop = True

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.nonfinite_guard.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.nonfinite_guard.observe_grad_norm(grad_norm)
        if torch.is_tensor(grad_norm):
            self.nonfinite_guard.last_grad_norm = None  # 不为日志强制同步；需要时在 warning 里显示 None
        return grad_norm

    # ------------------------------------------------------------------ 训练入口
    def train(self, resume_from_checkpoint: Optional[Union[str, bool]] = None, trial=None,
              ignore_keys_for_eval=None, **kwargs):
        """HF train（续训点解析、安全检查、半成品清理在 CheckpointingMixin.train），外加：发散时抛错。

        resume_from_checkpoint 为 None 时取 args.resume_from_checkpoint（配置里写了就自动续训；
        "true"/"latest" 表示 output_dir 里最新的完整检查点，"auto" 表示有就续训）。
        """
        self._log_components.reset()
        self._run_components.reset()
        g = self.nonfinite_guard
        g.consecutive, g.diverged_message = 0, None
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
        if g.diverged_message is not None:
            raise TrainingDivergedError(g.diverged_message)
        return output

    # ------------------------------------------------------------------ 检查点（保存 / 加载见 CheckpointingMixin）
    def _write_card(self, folder: str, force: bool = False, **kwargs) -> None:
        write_trainer_model_card(self, folder, force=force, **kwargs)

    def create_model_card(self, model_name: Optional[str] = None, dataset=None, tags=None, license=None,
                          **kwargs) -> None:
        """替代 HF 的 TrainingSummary 卡（push_to_hub 会调用）：写 output_dir/README.md，总是覆盖。
        HF 其余参数（language、tasks、dataset_tags ...）对推荐模型没有意义，忽略。"""
        if not self.is_world_process_zero():
            return
        write_trainer_model_card(self, self.args.output_dir, force=True, model_name=model_name, dataset=dataset,
                                 tags=tags, license=license)

    def _card_objective(self) -> str:
        return " + ".join(["NTP (hierarchical next-token prediction)", *auxiliary_objectives(self)])


# ---------------------------------------------------------------------- 模型卡
def auxiliary_objectives(trainer) -> List[str]:
    """模型卡里的附加损失项（两个训练器共用）：λ>0 的 InfoNCE 与 MoE 负载均衡。"""
    parts = []
    if trainer.lambda_contrastive > 0:
        parts.append(f"InfoNCE (lambda_contrastive={trainer.lambda_contrastive:g})")
    if trainer.lambda_moe_balance > 0:
        parts.append(f"MoE balance (lambda_moe_balance={trainer.lambda_moe_balance:g})")
    return parts


# HF 日志里不是指标的 eval_* 键；TRL 的 LM 诊断量（token 数、熵、logits/*）对物品推荐没有意义，也不进卡片
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time",
                "num_tokens", "entropy", "mean_token_accuracy")
_NOT_METRIC_PREFIXES = ("logits/",)


def _logged_metrics(entry: Mapping[str, Any], prefix: str) -> Dict[str, float]:
    out = {}
    for key, value in entry.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if not name or name in _NOT_METRICS or name.startswith(_NOT_METRIC_PREFIXES):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def card_eval_metrics(state, best: bool = False) -> Dict[str, float]:
    """log_history 里的验证指标（去掉 eval_ 前缀）：最近一次评估；best 时取 best_global_step 那次（没有则取最近）。"""
    history = list(getattr(state, "log_history", None) or [])
    if best and getattr(state, "best_global_step", None):
        for entry in reversed(history):
            if entry.get("step") == state.best_global_step:
                found = _logged_metrics(entry, "eval_")
                if found:
                    return found
    for entry in reversed(history):
        found = _logged_metrics(entry, "eval_")
        if found:
            return found
    return {}


def card_dataset(data_path, split: Optional[str] = "validation") -> Optional[Dict[str, Any]]:
    """数据集的卡片信息：目录名（不写绝对路径）+ 旁边 meta.json（`ugt prepare` 产物）里的规模与来源。"""
    if isinstance(data_path, (list, tuple)):
        data_path = data_path[0] if data_path else None
    if not isinstance(data_path, (str, os.PathLike)):
        return None
    path = os.fspath(data_path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    name = os.path.basename(os.path.normpath(folder)) if folder else os.path.basename(path)
    info: Dict[str, Any] = {"name": name or path, "split": split}
    meta_path = os.path.join(folder, "meta.json")
    if folder and os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        for key in ("source", "num_users", "num_items", "num_interactions"):
            if meta.get(key) is not None:
                info[key] = meta[key]
    return info


def _ranking_protocol(catalogue, ranker, num_beams, k_values, exclude_history: bool) -> Optional[str]:
    if ranker is None:
        return None
    if catalogue is None:
        return f"Validation ranking metrics from a custom ranker, K = {', '.join(str(k) for k in k_values)}."
    top_k = max(k_values)
    beams = max(int(num_beams or 0), top_k)
    history = "removed from" if exclude_history else "kept in"
    return (f"Validation during training: each validation user's next item, ranked over the full catalogue "
            f"({catalogue.num_items:,} items) by beam search constrained to existing semantic IDs (beam width "
            f"{beams}, top-{top_k}); items already in the history are {history} the ranking. "
            f"Metrics at K = {', '.join(str(k) for k in k_values)}.")


def write_trainer_model_card(trainer, folder: str, force: bool = False, model_name: Optional[str] = None,
                             dataset=None, tags=None, license=None, stage: Optional[str] = None,
                             objective: Optional[str] = None, train_metrics: Optional[Mapping[str, Any]] = None,
                             protocol: Optional[str] = None) -> Optional[str]:
    """用训练器知道的东西写 folder/README.md：验证指标（最近一次，或加载了最佳模型时最佳那一步）、最佳指标、
    run 名、目标函数、数据集。UGTTrainer 与 UGTDPOTrainer 共用。"""
    args, state = trainer.args, trainer.state
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    config = getattr(model, "config", None)
    if config is None:
        return None
    run = getattr(args, "run_name", None)
    stage = stage or run or "validation"
    metrics = card_eval_metrics(state, best=getattr(trainer, "_card_best_loaded", False))
    if dataset is None:
        source = getattr(trainer, "_card_data_path", None) or getattr(trainer.train_dataset, "data_path", None)
        dataset = card_dataset(source)
    training: Dict[str, Any] = {"run name": run, "objective": objective or trainer._card_objective()}
    if state.global_step:
        training["trained"] = f"{state.global_step} steps, {float(state.epoch or 0):.2f} epochs"
    best_name = getattr(args, "metric_for_best_model", None)
    if state.best_metric is not None and best_name:
        key = best_name if best_name.startswith("eval_") else f"eval_{best_name}"
        where = f" at step {state.best_global_step}" if getattr(state, "best_global_step", None) else ""
        training["best validation"] = f"{key} = {state.best_metric:.4f}{where}"
    for key, value in (train_metrics or {}).items():
        training[f"last training log {key}"] = f"{value:.4f}" if isinstance(value, float) else value
    if isinstance(tags, str):
        tags = [tags]
    # ZeRO-3 下参数是分片占位（numel 0），数不出来时不写
    num_parameters = (model.num_parameters() or None) if hasattr(model, "num_parameters") else None
    return write_model_card(folder, config, force=force, metrics={stage: metrics} if metrics else None,
                            dataset=dataset, protocol=protocol or getattr(trainer, "_card_protocol", None),
                            model_name=model_name or os.path.basename(os.path.normpath(folder)) or None,
                            training=training, tags=list(tags or ()), license=license,
                            num_parameters=num_parameters)


def _loggable(comps: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """日志用的分量：0 维张量；total_loss 不重复记（HF 的 "loss" 就是它）。"""
    return {
        k: v for k, v in comps.items()
        if k != "total_loss" and not k.startswith("_") and torch.is_tensor(v) and v.numel() == 1
    }


def _default_collator(args):
    """默认用本包的 DataCollator（动态 padding，labels 用 -100；语义 ID 的 padding 值为 semantic_pad_id）。"""
    pad = getattr(args, "semantic_pad_id", None)
    return DataCollator(semantic_pad_id=SEMANTIC_PAD_ID if pad is None else int(pad))
