"""三个训练阶段的装配：解析配置 → 构建数据/模型/训练器 → `train()` → 保存最佳模型。

recipes/stage{1,2,3}.py 只是 `run_stage(n)` 的薄封装；`ugt pipeline` 依次调用同一个函数，
所以命令行脚本、`accelerate launch` 与流水线走的是完全相同的代码路径。
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Subset
from transformers import set_seed

from ..configuration_ugt import UGTConfig
from ..data.datasets import PreferenceDataset, RecommendDataset
from ..data.schema import ITEMS_FILE, META_FILE
from ..evaluation import evaluate_ranking, load_catalogue, load_meta, split_path
from ..generation import recommend
from ..modeling_ugt import UGTForGenerativeRecommendation
from ..tokenization_ugt import UGTTokenizer
from .arguments import ConfigError, Stage1Config, Stage2Config, Stage3Config, parse_config, save_resolved_config

logger = logging.getLogger(__name__)

STAGE_CONFIGS = {1: Stage1Config, 2: Stage2Config, 3: Stage3Config}
BEST_MODEL_DIR = "best_model"
STAGE_SUMMARY_FILE = "stage_summary.json"


# ---------------------------------------------------------------------------------------------------------------- 数据
def resolve_data(args) -> Dict[str, Any]:
    """确定产物目录与 train/eval 文件。data_dir 缺省时取 train_data_path 所在目录（须含 items.parquet/meta.json）。"""
    data_dir = args.data_dir
    if data_dir is None and args.train_data_path:
        data_dir = str(Path(args.train_data_path).parent)
    if data_dir is None:
        raise ConfigError("需要 data_dir（`ugt prepare` 的产物目录）或 train_data_path", field="data_dir")
    for name in (ITEMS_FILE, META_FILE):
        if not (Path(data_dir) / name).is_file():
            raise ConfigError(f"{Path(data_dir) / name} 不存在：data_dir 必须是 `ugt prepare` 写出的目录",
                              field="data_dir")
    meta = load_meta(data_dir)
    return {"data_dir": data_dir, "meta": meta}


def _model_config_kwargs(value) -> Dict[str, Any]:
    """model_config：dict / JSON 字符串 / config.json 路径 / 含 config.json 的目录。"""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    text = str(value).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"不是合法 JSON：{e}", field="model_config") from None
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} 不存在", field="model_config")
    return json.loads(path.read_text())


def build_model(args, meta: dict) -> UGTForGenerativeRecommendation:
    """有 pretrained_model_path 时从上一阶段加载（safetensors），否则按 model_config 新建。"""
    vocab = [int(v) for v in meta["vocab_sizes"]]
    if args.pretrained_model_path:
        model = UGTForGenerativeRecommendation.from_pretrained(args.pretrained_model_path)
        if list(model.config.vocab_sizes) != vocab:
            raise ConfigError(
                f"模型 {args.pretrained_model_path} 的 vocab_sizes {model.config.vocab_sizes} 与数据 {vocab} 不一致",
                field="pretrained_model_path",
            )
        return model
    kwargs = _model_config_kwargs(args.model_config)
    kwargs.setdefault("max_position_embeddings", max(int(args.encoder_max_length), int(args.decoder_max_length), 64))
    kwargs["vocab_sizes"] = vocab
    kwargs.setdefault("pad_token_id", int(meta.get("pad_token_id", 0)))
    return UGTForGenerativeRecommendation(UGTConfig(**kwargs))


def build_tokenizer(data_dir: str, args) -> UGTTokenizer:
    return UGTTokenizer.from_items_parquet(Path(data_dir) / ITEMS_FILE)


def _recommend_dataset(path, args, meta) -> RecommendDataset:
    return RecommendDataset(str(path), vocab_sizes=meta["vocab_sizes"], max_encoder_length=int(args.encoder_max_length),
                            max_decoder_length=int(args.decoder_max_length),
                            pad_token_id=int(meta.get("pad_token_id", 0)))


def _subset(dataset, limit: Optional[int], seed: int):
    """评估子集：固定种子抽样（而非取前 N 个，避免按用户顺序带来的偏差）。"""
    if limit is None or limit >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    return Subset(dataset, sorted(rng.choice(len(dataset), size=int(limit), replace=False).tolist()))


# ---------------------------------------------------------------------------------------------------------- 偏好对
def _seq_from_encoder(enc_ids: torch.Tensor, mask: torch.Tensor) -> Dict[str, List[int]]:
    """编码器张量（一行）-> 规格的 user_sequence 字段。"""
    valid = mask.bool()
    ids = enc_ids[valid]  # [T, 3]
    t = ids.shape[0]
    return {
        "encoder_l1_ids": ids[:, 0].tolist(), "encoder_l2_ids": ids[:, 1].tolist(), "encoder_l3_ids": ids[:, 2].tolist(),
        "encoder_positions": list(range(t)), "encoder_token_types": [1] * t, "encoder_mask": [1] * t,
    }


@torch.inference_mode()
def self_generated_pairs(model, dataset: RecommendDataset, catalogue, max_pairs: Optional[int] = None,
                         num_beams: int = 20, batch_size: int = 256, seed: int = 0) -> List[Dict[str, Any]]:
    """没有评分时的偏好对（OneRec 式）：chosen = 用户真实的下一个物品，rejected = 模型自己 beam 候选里
    排名最高、但用户没有选的物品。对齐把模型“错误地最自信”的候选压下去。"""
    from ..data.collator import DataCollator
    from ..interfaces import SEMANTIC_PAD_ID

    n = len(dataset)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)[: (max_pairs or n)]
    collator = DataCollator(pad_token_id=SEMANTIC_PAD_ID)
    device = next(model.parameters()).device
    pairs: List[Dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size].tolist()
            samples = [dataset[i] for i in idx]
            batch = collator(samples)
            labels = batch.pop("labels")[:, 0, :]  # [B, 3]：BOS 位置预测的下一个物品
            model_batch = {k: v.to(device) for k, v in batch.items()
                           if k.startswith("encoder_")}  # 从 BOS 出发，与评估一致
            result = recommend(model, model_batch, catalogue, top_k=min(num_beams, 20), num_beams=num_beams)
            cand = result.triples.cpu()  # [B, K, 3]
            for row in range(len(idx)):
                chosen = labels[row]
                differs = (cand[row] != chosen).any(-1) & (cand[row] >= 0).all(-1)
                if not bool(differs.any()):
                    continue
                rejected = cand[row][int(differs.nonzero()[0])]
                pairs.append({
                    "user_id": str(samples[row].get("user_id", idx[row])),
                    "user_sequence": _seq_from_encoder(batch["encoder_semantic_ids"][row],
                                                       batch["encoder_attention_mask"][row]),
                    "chosen_item": dict(zip(("l1_id", "l2_id", "l3_id"), chosen.tolist())),
                    "rejected_item": dict(zip(("l1_id", "l2_id", "l3_id"), rejected.tolist())),
                    "preference_score": 1.0,
                })
    finally:
        model.train(was_training)
    return pairs


def preference_data(args, model, data_dir: str, meta: dict, catalogue):
    """阶段 3 的训练/留出偏好对。返回 (train, eval, source)。"""
    source = args.preference_source
    if source not in ("auto", "ratings", "self"):
        raise ConfigError(f"必须是 auto / ratings / self，得到 {source!r}", field="preference_source")
    has_pairs = int(meta.get("splits", {}).get("preference_train", 0)) > 0
    if source == "ratings" and not has_pairs:
        raise ConfigError(f"{data_dir} 没有评分偏好对（meta.json splits.preference_train = 0）", field="preference_source")
    if source == "ratings" or (source == "auto" and has_pairs):
        kw = dict(vocab_sizes=meta["vocab_sizes"], max_encoder_length=int(args.encoder_max_length))
        train = PreferenceDataset(str(split_path(data_dir, "preference_train")), **kw)
        held = None
        if int(meta.get("splits", {}).get("preference_test", 0)) > 0:
            held = PreferenceDataset(str(split_path(data_dir, "preference_test")), **kw)
        return train, held, "ratings"
    train_path = args.train_data_path or split_path(data_dir, "train")
    records = self_generated_pairs(model, _recommend_dataset(train_path, args, meta), catalogue,
                                   max_pairs=args.max_preference_pairs, num_beams=args.num_beams, seed=args.seed)
    if not records:
        raise RuntimeError("self-generated preference pairs: the model's beam candidates never differ from the target")
    random.Random(args.seed).shuffle(records)
    n_eval = max(1, min(1000, len(records) // 20))
    return records[n_eval:], records[:n_eval], "self"


# --------------------------------------------------------------------------------------------------------- 阶段
def run_stage(stage: int, argv: Optional[Sequence[str]] = None, args=None) -> Dict[str, Any]:
    """运行一个阶段；返回摘要（也写到 output_dir/stage_summary.json）。"""
    if stage not in STAGE_CONFIGS:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    if args is None:
        args = parse_config(STAGE_CONFIGS[stage], argv)
    if args.torch_num_threads:
        torch.set_num_threads(int(args.torch_num_threads))
    set_seed(args.seed)
    data = resolve_data(args)
    data_dir, meta = data["data_dir"], data["meta"]
    catalogue = load_catalogue(data_dir, meta)
    tokenizer = build_tokenizer(data_dir, args)
    model = build_model(args, meta)
    os.makedirs(args.output_dir, exist_ok=True)
    save_resolved_config(args, args.output_dir)
    t0 = time.perf_counter()
    summary: Dict[str, Any] = {"stage": stage, "data_dir": data_dir, "output_dir": args.output_dir}

    if stage in (1, 2):
        from .trainer import UGTTrainer

        train_path = args.train_data_path or split_path(data_dir, "train")
        eval_path = args.eval_data_path or (split_path(data_dir, "valid") if args.eval_strategy != "no" else None)
        train_ds = _recommend_dataset(train_path, args, meta)
        eval_ds = _subset(_recommend_dataset(eval_path, args, meta), args.eval_max_samples, args.seed) \
            if eval_path else None
        trainer = UGTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             catalogue=catalogue, num_beams=args.num_beams, exclude_history=args.exclude_history,
                             k_values=args.eval_k_values)
        # 不把 tokenizer 作为 processing_class 交给 HF Trainer：它会把 tokenizer 的 pad token id（物品表外的
        # 特殊 token）写进 model.config.pad_token_id，而模型用这个字段作语义 ID 的 padding 值。tokenizer 另存。
    else:
        from .dpo_trainer import UGTDPOTrainer, pairwise_preference_accuracy

        train_pairs, held_pairs, source = preference_data(args, model, data_dir, meta, catalogue)
        summary["preference_source"] = source
        summary["num_preference_pairs"] = len(train_pairs)
        # 留出偏好准确率只对评分偏好对有意义：自生成的 rejected 本就是模型自己的首选候选，准确率按构造接近 0
        if held_pairs is not None and source == "ratings":
            summary["preference_before"] = pairwise_preference_accuracy(model, held_pairs)
        ref_model = None
        if args.reference_model_path and not args.dpo_reference_free:
            ref_model = UGTForGenerativeRecommendation.from_pretrained(args.reference_model_path).eval()
        trainer = UGTDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train_pairs,
                                eval_dataset=held_pairs if args.eval_strategy != "no" else None,
                                processing_class=tokenizer)

    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    summary["train_seconds"] = time.perf_counter() - t0
    summary["train_metrics"] = train_output.metrics
    summary["log_history"] = trainer.state.log_history
    summary["best_model_checkpoint"] = trainer.state.best_model_checkpoint
    best_dir = os.path.join(args.output_dir, BEST_MODEL_DIR)
    if trainer.is_world_process_zero():
        trainer.save_model(best_dir)  # load_best_model_at_end 时这就是最佳模型
        tokenizer.save_pretrained(best_dir)
        save_resolved_config(args, best_dir)
    if stage == 3 and "preference_before" in summary:
        summary["preference_after"] = pairwise_preference_accuracy(trainer.accelerator.unwrap_model(trainer.model),
                                                                   held_pairs)
    summary["best_model_dir"] = best_dir
    if trainer.is_world_process_zero():
        Path(args.output_dir, STAGE_SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main(stage: int, argv: Optional[Sequence[str]] = None) -> int:
    """recipes/stage{n}.py 的入口：错误配置给一行清楚的错误并以 2 退出。"""
    try:
        summary = run_stage(stage, argv)
    except ConfigError as e:
        print(f"stage{stage}: {e}", flush=True)
        return 2
    print(json.dumps({k: summary[k] for k in ("stage", "best_model_dir", "train_seconds") if k in summary}))
    return 0
