"""阶段 3：在 TRL `DPOTrainer` 之上做语义 ID 物品的偏好对齐。

TRL 的 DPOTrainer 把一条偏好样本看成 “prompt + completion 的 token 序列”，在 `_compute_loss` 里用
`model(..., labels=..., fused_lm_head=True).log_probs` 取每个 completion token 的 log-prob 再求和。
语义 ID 物品恰好也能写成这种形式：completion = (l1, l2, l3) 三个 token，逐 token log-prob 就是
[log p(l1), log p(l2|l1), log p(l3|l1,l2)]，求和即层次化物品打分 log p(item)。

所以这里只替换 LM 特有的两处，TRL 的损失变体（sigmoid/ipo/hinge/...）、参考模型处理
（precompute_ref_log_probs、同步参考模型）、rewards/* 指标与日志全部原样复用：
1. 批次准备：`UGTPreferencePairCollator` 把偏好记录变成 TRL 期望的键（input_ids/completion_mask/
   attention_mask，[chosen; rejected] 沿 batch 拼接）外加编码器输入；
2. 前向 / log-prob：TRL 在初始化时用 `add_fused_lm_head` 给模型打补丁（它假设模型有 LM backbone + lm_head）。
   我们在 `UGTDPOTrainer.__init__` 期间经 `ugt_hf.compat.trl_fused_lm_head`（按 TRL 版本门控）把这个钩子换成
   `add_ugt_fused_head`，让 `fused_lm_head=True` 的前向走层次化物品打分（模型的 `level_log_probs`）。

语义 ID 的 padding 值是 `UGTConfig.semantic_pad_id`；TRL/HF 写进 `config.pad_token_id` 的 tokenizer pad id
不影响模型，所以 tokenizer 直接作为 `processing_class`，不需要事后还原。

总损失按规格：L = L_ntp + λ2·L_DPO(TRL) + λ1·L_contrastive + λ3·L_moe。L_ntp 与阶段 1/2 是同一个 next-item NTP，
算在推荐数据（`ntp_dataset`，训练集）上：每个优化步从中抽一个批次与偏好对批次一起前向。只在 chosen 物品上做 NTP
会把模型拉向偏好对里的少数物品（ML-100K 上测得 Recall@10 −35%），所以那只是没有推荐数据时的退路。
"""

from __future__ import annotations

import copy
import logging
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from datasets import Dataset
from transformers import GenerationConfig, TrainerCallback
from transformers.utils import ModelOutput
from trl import DPOTrainer

from ..compat import ORIGINAL_ADD_FUSED_LM_HEAD, trl_fused_lm_head
from ..data.collator import DataCollator, PreferenceCollator
from ..generation import prediction_previous_items
from ..interfaces import MODEL_INPUT_KEYS, NUM_LEVELS, SEMANTIC_PAD_ID
from ..loss_utils import moe_aux_loss, weighted_item_nll
from . import checkpointing as ckpt
from .losses import ContrastiveLoss, level_weights_from, next_item_ntp_loss, softmax_dpo_loss
from .trainer import auxiliary_objectives, write_trainer_model_card

logger = logging.getLogger(__name__)

# TRL 批次里不是模型输入的键（与 TRL `_compute_loss` 的 _non_model_keys 一致）
_NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
_ENCODER_KEYS = ("encoder_semantic_ids", "encoder_positions", "encoder_token_types", "encoder_attention_mask")


class UGTPreferencePairCollator:
    """偏好记录 → TRL DPOTrainer 的批次。

    输出：
        encoder_*        [B, Te(,3)]   每个用户一份（chosen 与 rejected 共享，前向里只编码一次）
        input_ids        [2B, 4]       [0, l1, l2, l3]，前 B 行 chosen、后 B 行 rejected（TRL 的约定）；
                                       记录带 K 个 `rejected_items` 时为 [(K+1)B, 4]（S-DPO，见 preference_negatives）
        completion_mask  [2B, 4]       [0, 1, 1, 1]：只有三层 ID 计入 log-prob
        attention_mask   [2B, 4]       全 1（TRL 只用它统计 token 数）
        preference_score [B]
        ref_chosen_logps / ref_rejected_logps [B]（数据集里已预计算时透传）
    """

    def __init__(self, semantic_pad_id: int = SEMANTIC_PAD_ID, vocab_sizes: Optional[Sequence[int]] = None,
                 max_encoder_length: Optional[int] = None):
        self.base = PreferenceCollator(semantic_pad_id=semantic_pad_id, vocab_sizes=vocab_sizes,
                                       max_encoder_length=max_encoder_length)

    def __call__(self, features: List[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        refs = {k: [f[k] for f in features] for k in ("ref_chosen_logps", "ref_rejected_logps") if k in features[0]}
        extra = _extra_negatives(features)  # [K-1, B, 3] 或 None（每个 prompt 只有一个 rejected）
        stripped = [{k: v for k, v in f.items() if k not in refs and k != "rejected_items"} for f in features]
        batch = self.base(stripped)
        chosen, rejected = batch.pop("chosen_ids"), batch.pop("rejected_ids")  # [B, 3]
        # [chosen; rejected_1; ...; rejected_K]：K = 1 时正是 TRL 的 [chosen; rejected]
        items = torch.cat([chosen, rejected] + ([] if extra is None else list(extra)), dim=0)  # [(K+1)B, 3]
        prompt = torch.zeros(items.shape[0], 1, dtype=torch.long)
        batch["input_ids"] = torch.cat([prompt, items], dim=1)  # [2B, 4]
        mask = torch.ones_like(batch["input_ids"])
        batch["attention_mask"] = mask
        completion = mask.clone()
        completion[:, 0] = 0
        batch["completion_mask"] = completion
        for k, v in refs.items():
            batch[k] = torch.as_tensor(v, dtype=torch.float32)
        return batch


def _extra_negatives(features: Sequence[Mapping[str, Any]]) -> Optional[torch.Tensor]:
    """多负样本记录的 `rejected_items`（K 个物品，第一个就是 `rejected_item`）-> 其余 K−1 个 [K-1, B, 3]。"""
    if "rejected_items" not in features[0] or features[0]["rejected_items"] is None:
        return None
    rows = []
    for i, f in enumerate(features):
        items = f.get("rejected_items") or []
        if len(items) != len(features[0]["rejected_items"]):
            raise ValueError(f"preference batch sample {i}: rejected_items has {len(items)} items, the first sample "
                             f"{len(features[0]['rejected_items'])}; every record needs the same number of negatives")
        rows.append([[int(it["l1_id"]), int(it["l2_id"]), int(it["l3_id"])] for it in items[1:]])
    if not rows[0]:
        return None
    return torch.tensor(rows, dtype=torch.long).transpose(0, 1)  # [K-1, B, 3]


@dataclass
class UGTFusedOutput(ModelOutput):
    """与 TRL `FusedCausalLMOutput` 同名字段：每个 completion token（三层 ID）一列。"""

    loss: Optional[torch.Tensor] = None
    log_probs: Optional[torch.Tensor] = None  # [2B, 3]
    entropy: Optional[torch.Tensor] = None  # [2B, 3]
    log_sum_sq_probs: Optional[torch.Tensor] = None
    mean_logits: Optional[torch.Tensor] = None  # [2B, 3]
    is_top1: Optional[torch.Tensor] = None  # [2B, 3] bool
    label_mask: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None


@torch.no_grad()
def _level_stats(logits: torch.Tensor, target: torch.Tensor):
    """TRL 日志用的逐 token 统计。logits [N, V]，target [N] -> (熵, 平均 logit, 是否 top-1, log Σp²)，都是 [N]。"""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    mean_logits = logits.float().mean(-1)
    is_top1 = logits.argmax(-1) == target
    log_sum_sq = torch.logsumexp(2 * logp, dim=-1)
    return entropy, mean_logits, is_top1, log_sum_sq


def ugt_fused_forward(model, labels: torch.Tensor, reference_free: bool = False, **batch) -> UGTFusedOutput:
    """`fused_lm_head=True` 时的前向：从 BOS 位置给 [chosen; rejected] 三层 ID 逐层打分。

    labels: [2B, 4]，第 0 列是 -100（prompt），其余是 (l1, l2, l3)。编码器输入只有 B 行。
    结果同时存到 `model._ugt_last_fused`，供 `UGTDPOTrainer.compute_loss` 加 NTP / 对比 / MoE 项。
    """
    items = labels[:, 1:].long()  # [2B, 3]
    n = items.shape[0]
    if reference_free:
        zeros = torch.zeros(n, NUM_LEVELS, device=items.device)
        return UGTFusedOutput(log_probs=zeros, entropy=zeros, mean_logits=zeros,
                              is_top1=torch.zeros_like(zeros, dtype=torch.bool), log_sum_sq_probs=zeros)
    enc = {k: batch[k] for k in _ENCODER_KEYS if batch.get(k) is not None}
    memory, enc_mask = model.encode(**enc)  # [B, Te, D]
    hidden, balance, z = model.decode(memory, enc_mask)  # BOS 解码 -> [B, 1, D]
    states = hidden[:, 0]  # [B, D]
    b = states.shape[0]
    if n % b != 0:
        raise ValueError(f"preference batch: {n} completion rows for {b} users (expected [chosen; rejected])")
    states = states.repeat(n // b, 1)  # [2B, D]
    prev = prediction_previous_items(model, enc)  # [B, 3] 或 None（宽记忆项没开）
    prev = None if prev is None else prev.repeat(n // b, 1)  # [2B, 3]
    # 每行一个物品（M = 1）：与 item_log_probs 同一个打分实现
    lp, logits = model.level_log_probs(states, items[:, None, :], prev, return_logits=True)  # [2B, 1, 3]
    log_probs = lp[:, 0]  # [2B, 3]
    flat_logits = (logits[0], logits[1][:, 0], logits[2][:, 0])  # [2B, Vk]
    stats = [_level_stats(lg, items[:, k]) for k, lg in enumerate(flat_logits)]
    entropy, mean_logits, is_top1, log_sum_sq = (torch.stack(x, dim=1) for x in zip(*stats))  # [2B, 3]
    aux = moe_aux_loss(balance, z, model.config)
    model._ugt_last_fused = {
        "log_probs": log_probs,
        "aux_loss": aux,
        "user_repr": model.user_representation(memory, enc_mask),  # [B, D]
        "chosen_triples": items[:b],  # [B, 3]
    }
    return UGTFusedOutput(
        loss=-log_probs.sum(-1).mean(), log_probs=log_probs, entropy=entropy, mean_logits=mean_logits,
        is_top1=is_top1, log_sum_sq_probs=log_sum_sq, label_mask=torch.ones_like(is_top1), aux_loss=aux,
    )


def _fused_inputs(inputs):
    """偏好批次 -> fused 前向的 (模型参数, labels)：去掉 TRL 的掩码与预计算参考列，prompt 位置的 label 记 -100。"""
    model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
    return model_kwargs, inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)


def _is_ugt_model(model) -> bool:
    names = ("encode", "decode", "level1_logits", "level2_logits", "level3_logits", "level_log_probs")
    return all(hasattr(model, name) for name in names)


def add_ugt_fused_head(model, *args, reference_free: bool = False, **kwargs) -> None:
    """替代 TRL 的 `add_fused_lm_head`：UGT 模型的 `fused_lm_head=True` 前向走层次化物品打分。"""
    if not _is_ugt_model(model):
        return ORIGINAL_ADD_FUSED_LM_HEAD(model, *args, **kwargs)
    original_forward = model.forward

    def _forward(self, *f_args, fused_lm_head: bool = False, labels=None, use_cache=None, input_ids=None,
                 attention_mask=None, num_items_in_batch=None, output_router_logits=None, **f_kwargs):
        if not fused_lm_head:
            return original_forward(*f_args, labels=labels, **f_kwargs)
        if labels is None:
            labels = input_ids
        return ugt_fused_forward(self, labels, reference_free=getattr(self, "_ugt_reference_free", False),
                                 **f_kwargs)

    model.forward = types.MethodType(_forward, model)



class PreferenceStallCallback(TrainerCallback):
    """到阶段中点时 DPO 项还没动（rewards/margins 接近 0、accuracies 接近 0.5）就警告一次：
    Beauty 上测到过整段 dpo_loss ≈ ln 2、margins ~1e-4，阶段 3 白跑；用户能调的是 λ2、β、学习率与负样本。"""

    def __init__(self, margin_tol: float = 1e-2, accuracy_tol: float = 0.05):
        self.margin_tol, self.accuracy_tol = margin_tol, accuracy_tol
        self.last: Dict[str, float] = {}
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "rewards/margins" in logs and "rewards/accuracies" in logs:
            self.last = {"margins": float(logs["rewards/margins"]), "accuracies": float(logs["rewards/accuracies"])}

    def on_step_end(self, args, state, control, **kwargs):
        if self.warned or not self.last or state.max_steps <= 1 or state.global_step < state.max_steps // 2:
            return
        self.warned = True
        margins, accuracies = self.last["margins"], self.last["accuracies"]
        if abs(margins) < self.margin_tol and abs(accuracies - 0.5) < self.accuracy_tol:
            logger.warning(
                "stage 3: the preference term has not moved by mid-stage (step %d of %d: rewards/margins=%.2g, "
                "rewards/accuracies=%.3f); raise lambda_preference, dpo_beta or learning_rate, or use harder "
                "pairs (preference_negatives > 1)", state.global_step, state.max_steps, margins, accuracies)


def _as_hf_dataset(dataset):
    """PreferenceDataset（有 .hf_dataset）、记录列表或 HF Dataset -> HF Dataset（TRL 只接受它）。"""
    if dataset is None or isinstance(dataset, Dataset):
        return dataset
    if hasattr(dataset, "hf_dataset"):
        return dataset.hf_dataset
    if isinstance(dataset, list):
        return Dataset.from_list(dataset)
    raise TypeError(f"preference dataset must be a datasets.Dataset, a PreferenceDataset or a list of records, "
                    f"got {type(dataset).__name__}")


class UGTDPOTrainer(ckpt.CheckpointingMixin, DPOTrainer):
    """TRL `DPOTrainer` 的语义 ID 版本（见模块说明）。args 是 `Stage3Config`（基于 TRL `DPOConfig`）。

    参考模型：给了 `ref_model` 就用它；`args.dpo_reference_free` 时参考 log-prob 恒为 0；
    `args.precompute_ref_log_probs` 时由 TRL 在训练前用初始策略算好（参考模型不常驻内存，ZeRO-3 友好）；
    否则冻结一份策略模型的拷贝。
    """

    def __init__(self, model, ref_model=None, args=None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), ntp_dataset=None, **kwargs):
        if args is None:
            raise ValueError("UGTDPOTrainer needs args (a Stage3Config)")
        if processing_class is None:
            raise ValueError("UGTDPOTrainer needs processing_class (the model's UGTTokenizer)")
        self.reference_free = bool(getattr(args, "dpo_reference_free", False))
        if ref_model is None and (self.reference_free or not args.precompute_ref_log_probs):
            # TRL 会尝试按 config 里的名字从 hub 重新加载参考模型；我们直接冻结一份内存里的拷贝
            ref_model = copy.deepcopy(model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        if ref_model is not None and self.reference_free:
            ref_model._ugt_reference_free = True
        if data_collator is None:
            data_collator = UGTPreferencePairCollator(
                semantic_pad_id=getattr(model.config, "semantic_pad_id", SEMANTIC_PAD_ID),
                vocab_sizes=getattr(model.config, "vocab_sizes", None),
                max_encoder_length=getattr(args, "encoder_max_length", None),
            )
        if getattr(model, "generation_config", None) is None:
            model.generation_config = GenerationConfig()
        self._card_data_path = getattr(train_dataset, "data_path", None)  # 转成 HF Dataset 后就不知道来源了
        self._card_protocol = ("Evaluation during this stage: DPO loss and TRL rewards/* on held-out preference "
                               "pairs." if eval_dataset is not None else None)
        train_dataset = _as_hf_dataset(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: _as_hf_dataset(v) for k, v in eval_dataset.items()}
        else:
            eval_dataset = _as_hf_dataset(eval_dataset)
        self.lambda_preference = float(getattr(args, "lambda_preference", 1.0))
        self.lambda_contrastive = float(getattr(args, "lambda_contrastive", 0.0))
        self.lambda_moe_balance = float(getattr(args, "lambda_moe_balance", 0.0))
        self.level_weights = level_weights_from(args)
        self.contrastive = ContrastiveLoss(temperature=getattr(args, "contrastive_temperature", 0.07))
        # 统一损失的 L_ntp：推荐数据上的 next-item NTP（见模块说明）；没有时退回 chosen 物品的 NTP
        self.ntp_dataset = ntp_dataset if ntp_dataset is not None and len(ntp_dataset) > 0 else None
        bs = getattr(args, "ntp_batch_size", None)
        self.ntp_batch_size = int(bs) if bs else int(args.per_device_train_batch_size)
        self.ntp_collator = DataCollator(semantic_pad_id=getattr(model.config, "semantic_pad_id", SEMANTIC_PAD_ID))
        self._ntp_draw = (-1, 0)  # (global_step, 本步已抽的 micro-batch 数)
        self.num_negatives = int(getattr(args, "preference_negatives", 1) or 1)
        if self.num_negatives > 1:
            loss_types = args.loss_type if isinstance(args.loss_type, (list, tuple)) else [args.loss_type]
            if list(loss_types) != ["sigmoid"] or args.precompute_ref_log_probs:
                raise ValueError(f"preference_negatives={self.num_negatives} uses the softmax-DPO objective (S-DPO), "
                                 "which generalises loss_type sigmoid with a live reference model: set loss_type: "
                                 f"sigmoid and precompute_ref_log_probs: false (got loss_type={loss_types}, "
                                 f"precompute_ref_log_probs={args.precompute_ref_log_probs}), "
                                 "or preference_negatives: 1")
        with trl_fused_lm_head(add_ugt_fused_head):
            super().__init__(model=model, ref_model=ref_model, args=args, data_collator=data_collator,
                             train_dataset=train_dataset, eval_dataset=eval_dataset,
                             processing_class=processing_class, compute_metrics=compute_metrics,
                             callbacks=callbacks, optimizers=optimizers, **kwargs)
        if self.ref_model is not None:
            # precompute_ref_log_probs 时 TRL 在构造里用参考模型跑过一遍：它留下的是预计算最后一批的输出，
            # 不是某个训练步的；留着会被 _log_level_movement 当成本步的参考
            self.ref_model._ugt_last_fused = None
        self.add_callback(PreferenceStallCallback())

    # 我们的数据已经是语义 ID 记录，不需要 TRL 的文本分词 / 加 EOS
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["user_id", "user_sequence", "chosen_item", "rejected_item", "rejected_items",
                                       "preference_score", "ref_chosen_logps", "ref_rejected_logps"]

    def _next_ntp_batch(self) -> Dict[str, torch.Tensor]:
        """推荐数据的一个批次：下标由 (seed, global_step, micro-batch 序号, 进程号) 决定的生成器有放回抽取，
        与偏好对的采样器互不干扰，从检查点续训时逐位重现（不依赖一个会丢失位置的迭代器）。"""
        step = int(self.state.global_step)
        draw = self._ntp_draw[1] if self._ntp_draw[0] == step else 0
        self._ntp_draw = (step, draw + 1)
        seed = ((int(self.args.seed) * 1_000_003 + step) * 1_009 + draw) * 131 + int(self.args.process_index)
        gen = torch.Generator().manual_seed(seed % (2 ** 63))
        idx = torch.randint(len(self.ntp_dataset), (self.ntp_batch_size,), generator=gen).tolist()
        batch = self.ntp_collator([self.ntp_dataset[i] for i in idx])
        device = self.accelerator.device
        return {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUT_KEYS}

    def _ntp_term(self, model, log_probs: torch.Tensor, mode: str) -> torch.Tensor:
        """训练时：推荐数据上的 next-item NTP（同阶段 1/2）；评估（留出偏好对）或没有推荐数据时：chosen 物品的 NTP。"""
        if mode == "train" and self.ntp_dataset is not None:
            batch = self._next_ntp_batch()
            outputs = model(**batch)  # 打过补丁的 forward：fused_lm_head=False 走模型原本的前向
            config = self.accelerator.unwrap_model(model).config
            ntp, comps = next_item_ntp_loss(outputs, batch["labels"], self.level_weights,
                                            label_smoothing=float(getattr(self.args, "label_smoothing", 0.0) or 0.0),
                                            chunk_size=getattr(config, "loss_chunk_size", None),
                                            item_weight=float(getattr(config, "item_loss_weight", 1.0)))
            if "ntp_item_loss" in comps:  # 物品头的全目录 CE（有物品头时）
                self._metrics[mode]["ntp_item_loss"].append(
                    self.accelerator.gather(comps["ntp_item_loss"]).mean().item())
            return ntp
        b = log_probs.shape[0] // (self.num_negatives + 1)
        return weighted_item_nll(log_probs[:b], self.level_weights).mean()  # chosen 物品的加权 NTP

    def _softmax_dpo_loss(self, model, inputs) -> torch.Tensor:
        """K 个负样本的 S-DPO（losses.softmax_dpo_loss）。rewards/* 与 TRL 同名；accuracies：chosen 高于全部负样本。"""
        mode = "train" if self.model.training else "eval"
        model_kwargs, labels = _fused_inputs(inputs)
        logps = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs.sum(-1)  # [(K+1)B]
        with torch.no_grad():
            if self.reference_free:
                ref_logps = torch.zeros_like(logps)
            else:
                ref_logps = self.ref_model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs.sum(-1)
        rewards = self.beta * (logps - ref_logps).view(-1, inputs["encoder_semantic_ids"].shape[0])  # [K+1, B]
        chosen, rejected = rewards[0], rewards[1:]
        loss = softmax_dpo_loss(chosen, rejected)
        gather = self.accelerator.gather
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen.detach()).mean().item())
        metrics["rewards/rejected"].append(gather(rejected.detach().mean(0)).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen > rejected.max(0).values).float().detach()).mean().item())
        metrics["rewards/margins"].append(gather((chosen - rejected.mean(0)).detach()).mean().item())
        metrics["logps/chosen"].append(gather(logps.detach().view_as(rewards)[0]).mean().item())
        metrics["logps/rejected"].append(gather(logps.detach().view_as(rewards)[1:].mean(0)).mean().item())
        return loss

    def _precomputed_step_reference(self, inputs) -> None:
        """参考 log-prob 是预计算的（precompute_ref_log_probs）时批次里只有三层之和：在要写日志的步上
        让参考模型（若在内存里）对本批再跑一次前向，得到分层的参考 log-prob；其余步不多花这次前向。"""
        if not self.precompute_ref_logps or self.ref_model is None or self.reference_free:
            return
        if self.model.training and (self.state.global_step + 1) % max(1, int(self.args.logging_steps or 1)):
            return
        model_kwargs, labels = _fused_inputs(inputs)
        with torch.no_grad():
            self.ref_model(**model_kwargs, labels=labels, fused_lm_head=True)

    def _log_level_movement(self, log_probs: torch.Tensor, mode: str) -> None:
        """每层 log-prob 相对参考模型的移动（chosen / rejected 各三层）：看出 DPO 推的是哪一层。"""
        ref = getattr(self.ref_model, "_ugt_last_fused", None) if self.ref_model is not None else None
        if ref is None or self.reference_free:
            return
        self.ref_model._ugt_last_fused = None
        delta = (log_probs.detach() - ref["log_probs"].detach()).float()  # [(K+1)B, 3]
        b = delta.shape[0] // (self.num_negatives + 1)
        for name, rows in (("chosen", delta[:b]), ("rejected", delta[b:])):
            per_level = self.accelerator.gather(rows.mean(0, keepdim=True)).mean(0)  # [3]
            for k in range(NUM_LEVELS):
                self._metrics[mode][f"logps_delta/{name}_l{k + 1}"].append(per_level[k].item())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """L = L_ntp + λ2·L_DPO + λ1·L_contrastive + λ3·L_moe；L_DPO 是 TRL 的（含其 loss_weights），
        L_ntp 见 `_ntp_term`。"""
        if self.num_negatives > 1:
            dpo_loss = self._softmax_dpo_loss(model, inputs)
        else:
            dpo_loss = super().compute_loss(model, inputs, return_outputs=False)
        unwrapped = self.accelerator.unwrap_model(model)
        last = getattr(unwrapped, "_ugt_last_fused", None)
        if last is None:
            raise RuntimeError("UGT fused forward did not run: is the model patched by UGTDPOTrainer?")
        unwrapped._ugt_last_fused = None
        mode = "train" if self.model.training else "eval"
        log_probs = last["log_probs"]  # [(K+1)B, 3]
        b = log_probs.shape[0] // (self.num_negatives + 1)
        self._precomputed_step_reference(inputs)
        self._log_level_movement(log_probs, mode)
        ntp = self._ntp_term(model, log_probs, mode)
        loss = ntp + self.lambda_preference * dpo_loss
        self._metrics[mode]["ntp_loss"].append(self.accelerator.gather(ntp.detach()).mean().item())
        self._metrics[mode]["dpo_loss"].append(self.accelerator.gather(dpo_loss.detach()).mean().item())
        if self.lambda_contrastive > 0 and b > 1:
            chosen = last["chosen_triples"]  # [B, 3]
            item_repr = unwrapped.item_representation(chosen)  # [B, D]
            # 只需要“是否同一物品”：三元组相同即同一编号（屏蔽批内的假负样本），不必换算成全局 item_index
            same_item = torch.unique(chosen, dim=0, return_inverse=True)[1]  # [B]
            con, _ = self.contrastive(last["user_repr"], item_repr, item_ids=same_item)
            loss = loss + self.lambda_contrastive * con
            self._metrics[mode]["contrastive_loss"].append(self.accelerator.gather(con.detach()).mean().item())
        aux = last.get("aux_loss")
        if aux is not None and self.lambda_moe_balance > 0:
            loss = loss + self.lambda_moe_balance * aux
            self._metrics[mode]["moe_balance_loss"].append(self.accelerator.gather(aux.detach()).mean().item())
        if return_outputs:
            return loss, {"log_probs": log_probs.detach()}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # 评估只要损失与 rewards/* 指标（TRL 记录在 _metrics 里）；排序指标由 evaluation.evaluate_ranking 给出
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, return_outputs=False)
        return loss.detach(), None, None

    # 检查点的保存 / 加载 / 续训（staging + rename、完整性标志、拒绝 pickle、信号保存、resume=True）都来自
    # CheckpointingMixin，与 UGTTrainer 是同一份代码；这里只有模型卡
    def create_model_card(self, model_name: Optional[str] = None, dataset_name: Optional[str] = None,
                          tags=None, **kwargs) -> None:
        """替代 TRL 的卡（push_to_hub 会调用）：写 output_dir/README.md，总是覆盖。"""
        if not self.is_world_process_zero():
            return
        self._write_card(self.args.output_dir, force=True, model_name=model_name, dataset=dataset_name or None,
                         tags=tags, license=kwargs.get("license"))

    def _write_card(self, folder: str, force: bool = False, **kwargs) -> None:
        rewards = {}
        for entry in reversed(self.state.log_history):
            rewards = {k: v for k, v in entry.items() if k.startswith("rewards/")}
            if rewards:
                break
        write_trainer_model_card(self, folder, force=force, train_metrics=rewards, **kwargs)

    def _card_objective(self) -> str:
        loss_type = getattr(self.args, "loss_type", "sigmoid")
        if isinstance(loss_type, (list, tuple)):
            loss_type = "+".join(str(x) for x in loss_type)
        ref = "reference-free" if self.reference_free else "frozen reference"
        parts = ["NTP (chosen item)", f"DPO (TRL, loss_type={loss_type}, beta={self.beta:g}, {ref}, "
                                       f"lambda_preference={self.lambda_preference:g})"]
        return " + ".join(parts + auxiliary_objectives(self))


@torch.no_grad()
def pairwise_preference_accuracy(model, dataset, batch_size: int = 256, collator=None) -> Dict[str, float]:
    """留出偏好对上的成对准确率：log p(chosen) > log p(rejected) 的比例（策略模型本身，不减参考模型）。"""
    dataset = _as_hf_dataset(dataset)
    collator = collator or UGTPreferencePairCollator(
        semantic_pad_id=getattr(model.config, "semantic_pad_id", SEMANTIC_PAD_ID),
        vocab_sizes=getattr(model.config, "vocab_sizes", None),
    )
    was_training = model.training
    model.eval()
    correct = total = 0
    margin_sum = 0.0
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collator(rows)
        enc = {k: batch[k].to(device) for k in _ENCODER_KEYS if k in batch}
        items = batch["input_ids"][:, 1:].to(device)  # [(K+1)B, 3]；成对准确率用第一个负样本
        b = batch["encoder_semantic_ids"].shape[0]
        states = model.prediction_states(**enc)  # [B, D]
        kw = {}
        prev = prediction_previous_items(model, enc)
        if prev is not None:
            kw["previous_items"] = prev
        lp_c = model.item_log_probs(states, items[:b], **kw)  # [B]
        lp_r = model.item_log_probs(states, items[b:2 * b], **kw)
        correct += int((lp_c > lp_r).sum())
        total += b
        margin_sum += float((lp_c - lp_r).sum())
    model.train(was_training)
    return {"preference_accuracy": correct / max(total, 1), "preference_margin": margin_sum / max(total, 1),
            "num_pairs": float(total)}
