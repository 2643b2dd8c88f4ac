"""UGTTrainer：阶段 1–2 的 `transformers.Trainer` 子类，同时实现规格的 `TrainerInterface`。

只覆写与 HF 默认行为不同的几处，训练循环、日志、评估循环、检查点轮转都是 HF 自己的：
- `compute_loss`：统一损失（层次化 NTP + λ1·InfoNCE + λ3·MoE），在梯度累积下按整个累积批次的有效标签位置数归一；
  各分量在日志步之间累积（设备上，无同步）并取平均，经 `Trainer.log` 写到 TensorBoard / 进度条。
- `prediction_step`：教师强制的 NTP 损失 + 约束 beam search 的 top-K 物品，`compute_metrics` 算 Recall/NDCG@K 等。
- 加固（HF 不足之处见 checkpointing.py / callbacks.py 的模块说明）：检查点原子写入、只从完整检查点续训、
  加载前拒绝不安全的 pickle、不写 pickle 版 training_args.bin；非有限损失/梯度跳过更新；SIGTERM/SIGINT 保存后退出。

规格接口到 HF 的映射：
    train_epoch()        = 把 num_train_epochs 设为“已完成 epoch 数 + 1”，从上一次 train_epoch 结束时写下的检查点
                           续训（HF 的 resume 机制：恢复参数、优化器、调度器、RNG、数据位置），结束后写 epoch 检查点。
                           学习率调度的总长按配置的 num_train_epochs 计算，与一次 train() 跑完全部 epoch 相同。
    evaluate()           = Trainer.evaluate（评估损失 + 排序指标），返回 eval_* 指标。
    save_checkpoint(p)   = 在 p 原子地写一个完整的 HF 检查点（权重 safetensors、优化器、调度器、RNG、trainer_state、
                           training_args.json）。
    load_checkpoint(p)   = 安全检查后加载权重/优化器/调度器/状态/RNG；之后的 train()/train_epoch() 从 p 续训。
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from transformers import Trainer, TrainerState
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints

from ..interfaces import IGNORE_INDEX, MODEL_INPUT_KEYS, NUM_LEVELS, TrainerInterface, get_output
from . import checkpointing as ckpt
from .callbacks import (
    DEFAULT_MAX_CONSECUTIVE_NONFINITE,
    GracefulShutdownCallback,
    NonFiniteGuard,
    TrainingDivergedError,
)

logger = logging.getLogger(__name__)

# 排序器：ranker(model, batch) -> [B, K] 物品 id（按分数降序）
Ranker = Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]

# 数据记录（规格 5.1）与模型输入的字段都要保留给 collator；HF 默认会按 forward 签名删掉“用不到”的列
_KEEP_COLUMNS = tuple(MODEL_INPUT_KEYS)


def _record_fields() -> Tuple[str, ...]:
    from ..data import schema

    return tuple(schema.RECOMMEND_FIELDS)


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


def target_item_ids_from_labels(labels: torch.Tensor, item_lookup: "ItemLookup") -> torch.Tensor:
    """评估记录（decoder = [BOS]）的目标物品 = labels 第 0 个位置的 (l1, l2, l3)，映射为物品 id [B]。"""
    if labels.dim() != 3 or labels.shape[-1] != NUM_LEVELS:
        raise ValueError(f"labels must be [B, T, {NUM_LEVELS}], got {tuple(labels.shape)}")
    return item_lookup(labels[:, 0, :])


class ItemLookup:
    """(l1, l2, l3) → 物品 id（items.parquet 的 item_index）；语义 ID 唯一，查不到的返回 IGNORE_INDEX。

    item_codes: [N, 3]，第 i 行是物品 i 的三层码。用排序 + searchsorted，O(B log N)，不建 Python 字典。
    """

    def __init__(self, item_codes: torch.Tensor):
        codes = torch.as_tensor(item_codes, dtype=torch.long)
        if codes.dim() != 2 or codes.shape[1] != NUM_LEVELS:
            raise ValueError(f"item_codes must be [num_items, {NUM_LEVELS}], got {tuple(codes.shape)}")
        if (codes < 0).any():
            raise ValueError("item_codes must be non-negative")
        self.base = int(codes.max().item()) + 1
        keys = self._pack(codes)
        order = torch.argsort(keys)
        self.sorted_keys = keys[order]
        self.sorted_ids = order
        if self.sorted_keys.numel() > 1 and (self.sorted_keys[1:] == self.sorted_keys[:-1]).any():
            raise ValueError("item_codes contain duplicate semantic IDs: an item id cannot be recovered from its code")
        self.num_items = codes.shape[0]

    def _pack(self, triples: torch.Tensor) -> torch.Tensor:
        b = self.base
        return (triples[..., 0] * b + triples[..., 1]) * b + triples[..., 2]

    def __call__(self, triples: torch.Tensor) -> torch.Tensor:
        device = triples.device
        t = triples.long().cpu()
        valid = (t >= 0).all(-1) & (t < self.base).all(-1)
        keys = self._pack(t.clamp(min=0))
        pos = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.sorted_keys.numel() - 1)
        found = valid & (self.sorted_keys[pos] == keys)
        ids = torch.where(found, self.sorted_ids[pos], torch.full_like(pos, IGNORE_INDEX))
        return ids.to(device)


def make_beam_search_ranker(catalogue, num_beams: int, top_k: int, exclude_history: bool = False) -> Ranker:
    """generation.py 的约束 beam search（从 BOS 位置出发）包成 ranker(model, batch) -> [B, K] 物品 id（-1 为缺位）。"""
    from ..generation import recommend

    def ranker(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        model_batch = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS and k != "labels"}
        result = recommend(model, model_batch, catalogue, top_k=top_k, num_beams=max(num_beams, top_k),
                           exclude_history=exclude_history, position=0, method="beam")
        return result.item_indices

    return ranker


class UGTTrainer(Trainer, TrainerInterface):
    """阶段 1–2 训练器。除 HF Trainer 的参数外：

    Args:
        config: 规格的名字，等同 `args`（TrainingConfig / Stage1Config / Stage2Config，均为 TrainingArguments 子类）
        optimizer / scheduler: 规格的名字，等同 `optimizers=(optimizer, scheduler)`
        loss_fn: 统一损失，默认 `UnifiedLoss.from_config(args)`；调用约定 loss_fn(outputs, labels) -> dict，
            至少含 total_loss（带梯度）与 ntp_loss
        ranker: ranker(model, batch) -> [B, K] 物品 id；给了 catalogue 时默认用 generation.py 的约束 beam search
        catalogue: generation.ItemCatalogue（items.parquet 的三元组表）；评估排序全目录
        item_codes: [N, 3] 各物品的语义 ID（不给时取 catalogue.triples），评估时把目标 (l1,l2,l3) 映射为物品 id
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
        config=None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler=None,
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
        if config is not None:
            if args is not None and args is not config:
                raise ValueError("pass either `args` or the spec's `config`, not both")
            args = config
        if optimizer is not None or scheduler is not None:
            if "optimizers" in kwargs:
                raise ValueError("pass either `optimizers=(opt, sched)` or the spec's `optimizer`/`scheduler`")
            kwargs["optimizers"] = (optimizer, scheduler)
        if data_collator is None:
            data_collator = _default_collator(args)

        callbacks = list(kwargs.pop("callbacks", None) or [])
        self.shutdown_callback: Optional[GracefulShutdownCallback] = None
        if graceful_shutdown and not any(isinstance(c, GracefulShutdownCallback) for c in callbacks):
            self.shutdown_callback = GracefulShutdownCallback()
            callbacks.append(self.shutdown_callback)
        elif graceful_shutdown:
            self.shutdown_callback = next(c for c in callbacks if isinstance(c, GracefulShutdownCallback))

        # 评估：ranker + 目标映射 + 默认 compute_metrics
        if catalogue is not None and item_codes is None:
            item_codes = catalogue.triples
        self.item_lookup = ItemLookup(item_codes) if item_codes is not None else None
        if k_values is None:
            k_values = getattr(args, "eval_k_values", None) or (5, 10, 20, 50)
        self.k_values = tuple(int(k) for k in k_values)
        if ranker is None and catalogue is not None:
            top_k = max(self.k_values)
            ranker = make_beam_search_ranker(catalogue, num_beams=max(int(num_beams or 0), top_k), top_k=top_k,
                                             exclude_history=exclude_history)
        self.ranker = ranker
        if kwargs.get("compute_metrics") is None and self.ranker is not None:
            from .metrics import make_compute_metrics

            num_items = self.item_lookup.num_items if self.item_lookup is not None else None
            kwargs["compute_metrics"] = make_compute_metrics(self.k_values, num_items=num_items)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            **kwargs,
        )

        if loss_fn is None:
            from .losses import UnifiedLoss

            # arguments.py 的字段名是 l{k}_loss_weight，UnifiedLoss 的是 l{k}_weight
            overrides = {
                f"l{k}_weight": getattr(self.args, f"l{k}_loss_weight")
                for k in (1, 2, 3) if getattr(self.args, f"l{k}_loss_weight", None) is not None
            }
            loss_fn = UnifiedLoss.from_config(self.args, **overrides)
        self.loss_fn = loss_fn
        if self.args.label_names is None:
            self.label_names = ["labels"]
        # 让 HF 统计 num_items_in_batch（它只在模型“接受 loss kwargs”时统计）；我们的 compute_loss 不把它传给模型
        self.model_accepts_loss_kwargs = True

        if max_consecutive_nonfinite is None:
            max_consecutive_nonfinite = getattr(self.args, "max_consecutive_nonfinite", None)
        self.nonfinite_guard = NonFiniteGuard(max_consecutive_nonfinite or DEFAULT_MAX_CONSECUTIVE_NONFINITE)
        self._log_components = LossComponentAccumulator()  # 日志窗口
        self._run_components = LossComponentAccumulator()  # 整次 train() 调用（train_epoch 的返回值）
        self._eval_components = LossComponentAccumulator()  # 一次评估
        self._resume_point: Optional[str] = None  # load_checkpoint / train_epoch 记下的续训起点
        self._epoch_mode_total_epochs: Optional[float] = None  # train_epoch 期间调度器的总 epoch 数

    # ------------------------------------------------------------------ 数据
    def _set_signature_columns_if_needed(self):
        """HF 按 forward 签名保留列；我们的数据集列是规格的记录字段，由 collator 转成模型输入，必须保留。"""
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(
                dict.fromkeys(list(self._signature_columns) + list(_KEEP_COLUMNS) + list(_record_fields()))
            )

    def _get_train_sampler(self, train_dataset=None):
        """group_by_length：HF 只会从 datasets.Dataset 的长度列或 input_ids 推长度；我们的数据集直接给出
        encoder 长度（RecommendDataset.lengths），让一个批次里的历史长度相近，padding 少得多。"""
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(ds, "lengths"):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=ds.lengths())
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
        """统一损失。

        梯度累积：一个优化步由 M 个 micro-batch 组成，整批有效标签位置数为 N = num_items_in_batch。
        NTP 是 token 平均：本 micro-batch 贡献 ntp_mean · n_local / N，M 个之和就是把它们拼成一个大批次时的均值，
        与 micro-batch 的切法和各序列长度无关（batch 8×1 与 2×4 得到相同梯度）。
        对比与 MoE 项是每个 micro-batch 的均值，贡献 (λ1·con + λ3·moe) / M。
        多进程且 average_tokens_across_devices 时 N 是全局数，DDP 又对梯度求平均，所以 NTP 项再乘进程数（同 HF）。
        """
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                "batch has no 'labels': UGTTrainer needs labels [B, Td, 3] from the DataCollator "
                f"(got keys {sorted(inputs)})"
            )
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS}
        outputs = model(**model_inputs)
        comps = self.loss_fn(outputs, labels)  # 各项都是本 micro-batch 的均值；只有 total_loss 带梯度
        total, ntp = comps["total_loss"], comps["ntp_loss"]

        n_local = (labels[..., 0] != IGNORE_INDEX).sum()  # 本 micro-batch 的有效标签位置数
        accum = 1
        if model.training:
            accum = max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
        if num_items_in_batch is not None:
            n_total = torch.as_tensor(num_items_in_batch, device=total.device).reshape(-1)[0].to(total.dtype)
            share = n_local.to(total.dtype) / torch.clamp(n_total, min=1.0)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                share = share * float(self.accelerator.num_processes // self.get_tp_size())
            # loss = ntp·share + rest/M，其中 total = ntp + rest：
            #      = total·share + rest·(1/M - share)；rest 为 0（阶段 1、无 MoE）时不必重算
            loss = total * share
            if accum > 1 or self.args.world_size > 1:  # 否则 1/M - share 恒为 0
                rest = self._aux_terms_with_grad(outputs)
                if rest is not None:
                    loss = loss + rest * (1.0 / accum - share)
        else:
            share = torch.full((), 1.0 / accum, device=total.device)
            loss = total / accum

        finite = torch.isfinite(total.detach())
        if model.training:
            self._log_components.add(_loggable(comps), share, 1.0 / accum, finite)
            self._run_components.add(_loggable(comps), share, 1.0 / accum, finite)
        else:
            self._eval_components.add(_loggable(comps), share, 1.0, finite)
        return (loss, outputs) if return_outputs else loss

    def _aux_terms_with_grad(self, outputs) -> Optional[torch.Tensor]:
        """λ1·InfoNCE + λ3·MoE（带梯度），与 loss_fn 里加进 total 的完全相同；都为 0/缺失时返回 None。

        用 loss_fn 自己的 λ 与 contrastive_loss 子模块重算（B×B 相似度矩阵，代价可忽略），
        保证对比/MoE 项在梯度累积下按 micro-batch 平均，而不是被加 M 次。
        """
        lf = self.loss_fn
        rest = None
        lam3 = float(getattr(lf, "lambda_moe_balance", 0.0) or 0.0)
        aux = get_output(outputs, "aux_loss")
        if lam3 > 0 and aux is not None and torch.is_tensor(aux) and aux.requires_grad:
            rest = lam3 * aux.reshape(())
        lam1 = float(getattr(lf, "lambda_contrastive", 0.0) or 0.0)
        user_repr, item_repr = get_output(outputs, "user_repr"), get_output(outputs, "item_repr")
        if lam1 > 0 and user_repr is not None and item_repr is not None and hasattr(lf, "contrastive_loss"):
            con = lf.contrastive_loss(user_repr, item_repr)
            con = con[0] if isinstance(con, tuple) else con
            rest = lam1 * con if rest is None else rest + lam1 * con
        return rest

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
            elif self.item_lookup is not None:
                targets = target_item_ids_from_labels(inputs["labels"], self.item_lookup)
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
        try:
            from .optim import get_optimizer_cls_and_kwargs
        except ImportError:  # optim.py 不存在时退回 HF
            return Trainer.get_optimizer_cls_and_kwargs(args, model)
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

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """train_epoch 期间调度器的总步数按配置的全部 epoch 计算（否则每次调用都会重新拉伸余弦曲线）。"""
        if self._epoch_mode_total_epochs is not None and self.lr_scheduler is None:
            done_plus_one = max(float(self.args.num_train_epochs), 1.0)
            num_training_steps = int(math.ceil(num_training_steps * self._epoch_mode_total_epochs / done_plus_one))
        return super().create_scheduler(num_training_steps, optimizer)

    # ------------------------------------------------------------------ 训练入口
    def train(self, resume_from_checkpoint: Optional[Union[str, bool]] = None, trial=None,
              ignore_keys_for_eval=None, **kwargs):
        """HF train，外加：解析续训点（只选完整检查点）、加载前安全检查、清理半成品、发散时抛错。

        resume_from_checkpoint 为 None 时依次看 load_checkpoint 记下的点与 args.resume_from_checkpoint
        （规格 Q4：配置里写了就自动续训；"true"/"latest" 表示 output_dir 里最新的完整检查点）。
        """
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self._resume_point or getattr(self.args, "resume_from_checkpoint", None)
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "latest", "auto"):
            resume_from_checkpoint = True
        if resume_from_checkpoint is True:
            resume_from_checkpoint = ckpt.get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint found in output directory ({self.args.output_dir})")
        elif resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if resume_from_checkpoint is not None:
            if not os.path.isdir(resume_from_checkpoint):
                raise FileNotFoundError(f"resume_from_checkpoint: folder not found: {resume_from_checkpoint}")
            if not ckpt.is_complete_checkpoint(resume_from_checkpoint) and not os.path.isfile(
                os.path.join(resume_from_checkpoint, ckpt.TRAINER_STATE_FILE)
            ):
                raise ValueError(
                    f"resume_from_checkpoint: {resume_from_checkpoint} is not a complete checkpoint "
                    f"(missing {ckpt.TRAINER_STATE_FILE})"
                )
            ckpt.verify_checkpoint_files(resume_from_checkpoint)
        if self.args.should_save:
            ckpt.clean_stale_staging(self.args.output_dir)
        self._resume_point = None
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

    @property
    def stopped_by_signal(self) -> Optional[int]:
        """上一次 train() 因 SIGTERM/SIGINT 停止时为信号编号，否则 None。"""
        return self.shutdown_callback.stopped_by_signal if self.shutdown_callback is not None else None

    # ------------------------------------------------------------------ 检查点
    def _save_checkpoint(self, model, trial) -> None:
        """与 transformers 5.23 的 `_save_checkpoint` 相同的内容与顺序，区别只在：先写 .staging-* 再原子 rename，
        不写 pickle 版 training_args.bin、改写 training_args.json，轮转在 rename 之后按步数进行（最佳检查点保留）。"""
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

        if (
            self.args.save_strategy in [SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST]
            and self.state.best_global_step
        ):
            best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            # 最佳就是本步时目录还在 staging 里；rename 之后它就存在
            if self.state.best_global_step == self.state.global_step or os.path.exists(best_dir):
                self.state.best_model_checkpoint = best_dir

        self._write_checkpoint(final_dir)

        if self.args.push_to_hub:
            self._push_from_checkpoint(final_dir)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,  # rename 会改变目录 mtime；按步数排序才可靠
            )

    def _write_checkpoint(self, final_dir: str) -> None:
        """在 final_dir 原子地写一个完整检查点（所有 rank 都要调用；只有主进程提交 rename）。"""
        staging = ckpt.staging_dir_for(final_dir)
        if self.args.should_save and os.path.exists(staging):
            import shutil

            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()

        self.save_model(staging, _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            for cb in [c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]:
                name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks.get(name), list):
                    self.state.stateful_callbacks[name].append(cb.state())
                else:
                    self.state.stateful_callbacks[name] = cb.state()
            ckpt.drop_pickled_args(staging)
            ckpt.write_args_json(self.args, staging)
            # trainer_state.json 最后写：它的存在就是“完整”的标志（见 checkpointing.is_complete_checkpoint）
            self.state.save_to_json(os.path.join(staging, ckpt.TRAINER_STATE_FILE))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            ckpt.commit_staging(staging, final_dir, fsync=getattr(self.args, "checkpoint_fsync", True))
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """HF 的 `_save` 末尾会 torch.save(args)（pickle）；删掉它并写 JSON。`save_model()` 单独调用时同样生效。"""
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            ckpt.drop_pickled_args(output_dir)
            ckpt.write_args_json(self.args, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        ckpt.verify_checkpoint_files(resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self.state.best_model_checkpoint is not None:
            ckpt.verify_checkpoint_files(self.state.best_model_checkpoint)
        super()._load_best_model()

    # ------------------------------------------------------------------ 规格接口（TrainerInterface）
    def train_epoch(self) -> Dict[str, float]:
        """训练一个 epoch（见模块说明中的映射），返回本 epoch 的训练指标：loss、各损失分量、learning_rate、epoch。"""
        if self.args.max_steps is not None and self.args.max_steps > 0:
            raise ValueError("train_epoch() counts epochs: set max_steps=-1 (or use train() with max_steps)")
        if self._epoch_mode_total_epochs is None:
            self._epoch_mode_total_epochs = float(self.args.num_train_epochs)
        done = int(round(self.state.epoch or 0)) if self._resume_point is not None else 0
        if self._resume_point is None and self.state.global_step > 0:
            raise RuntimeError("train_epoch(): the trainer has trained without a checkpoint to continue from; "
                               "call load_checkpoint(path) first")
        configured = self.args.num_train_epochs
        self.args.num_train_epochs = done + 1
        try:
            out = self.train(resume_from_checkpoint=self._resume_point)
        finally:
            self.args.num_train_epochs = configured
        metrics: Dict[str, float] = {"loss": float(out.training_loss)}
        metrics.update(self._run_components.averages(reduce=self._cross_rank_sum()))
        metrics["learning_rate"] = float(self._get_learning_rate())
        metrics["epoch"] = float(self.state.epoch or 0.0)
        metrics["global_step"] = float(self.state.global_step)
        metrics["nonfinite_skipped"] = float(self.nonfinite_guard.total_skipped)
        # 本 epoch 的结束状态写成检查点，作为下一次 train_epoch 的起点（规格的循环本来也每个 epoch 存一次）
        final_dir = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if not ckpt.is_complete_checkpoint(final_dir):
            self._save_checkpoint(self.model_wrapped, trial=None)
        self._resume_point = final_dir
        return metrics

    def save_checkpoint(self, path: str) -> None:
        """在 path 原子地写一个完整检查点（HF 格式，可用 train(resume_from_checkpoint=path) 续训）。"""
        if self.optimizer is None or self.lr_scheduler is None:
            # 还没训练过：先建优化器与调度器，保证检查点可续训
            self.create_optimizer_and_scheduler(num_training_steps=max(int(self.args.max_steps), 1))
        self._write_checkpoint(os.path.abspath(path))

    def load_checkpoint(self, path: str) -> None:
        """安全检查后加载 path 的权重、优化器、调度器、训练状态与 RNG；之后 train()/train_epoch() 从这里续训。"""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"load_checkpoint: folder not found: {path}")
        state_file = os.path.join(path, ckpt.TRAINER_STATE_FILE)
        if not os.path.isfile(state_file):
            raise ValueError(f"load_checkpoint: {path} is not a complete checkpoint (missing {ckpt.TRAINER_STATE_FILE})")
        ckpt.verify_checkpoint_files(path)
        self._load_from_checkpoint(path)
        if self.optimizer is not None and self.lr_scheduler is not None:
            self._load_optimizer_and_scheduler(path)
            self._load_scaler(path)
        self.state = TrainerState.load_from_json(state_file)
        self._load_rng_state(path)
        self._resume_point = path


def _loggable(comps: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """日志用的分量：0 维张量；total_loss 不重复记（HF 的 "loss" 就是它）。"""
    return {
        k: v for k, v in comps.items()
        if k != "total_loss" and not k.startswith("_") and torch.is_tensor(v) and v.numel() == 1
    }


def _default_collator(args):
    """默认用本包的 DataCollator（动态 padding，labels 用 -100）；还没有时交给 HF 的默认值。"""
    try:
        from ..data.collator import DataCollator
    except ImportError:
        return None
    pad = getattr(args, "pad_token_id", None)
    try:
        return DataCollator(pad_token_id=pad) if pad is not None else DataCollator()
    except TypeError:
        return None
