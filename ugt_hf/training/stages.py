"""三个训练阶段的装配：解析配置 → 构建数据/模型/训练器 → `train()` → 保存最佳模型。

recipes/stage{1,2,3}.py 只是 `run_stage(n)` 的薄封装；`ugt pipeline` 依次调用同一个函数，
所以命令行脚本、`accelerate launch` 与流水线走的是完全相同的代码路径。
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Subset
from transformers import set_seed

from ..argparsing import BEST_MODEL_DIR, check_model_dir
from ..configuration_ugt import UGTConfig
from ..data.collator import DataCollator
from ..data.datadir import DataDir
from ..data.datasets import RecommendDataset
from ..generation import recommend
from ..interfaces import SEMANTIC_PAD_ID
from ..locking import OutputLock, OutputLockedError
from ..modeling_ugt import UGTForGenerativeRecommendation
from .arguments import ConfigError, StageArguments, parse_stage_args, save_resolved_config
from .callbacks import TrainingInterrupted
from .checkpointing import get_last_checkpoint
from .dpo_trainer import UGTDPOTrainer, pairwise_preference_accuracy
from .trainer import UGTTrainer

logger = logging.getLogger(__name__)

STAGE_SUMMARY_FILE = "stage_summary.json"


# ---------------------------------------------------------------------------------------------------------------- 数据
def resolve_data(args) -> DataDir:
    """args：DataArguments。确定产物目录：data_dir 缺省时取 train_data_path 所在目录（须含 items/meta）。"""
    data_dir = args.data_dir
    if data_dir is None and args.train_data_path:
        data_dir = str(Path(args.train_data_path).parent)
    if data_dir is None:
        raise ConfigError("needs data_dir (the artifact folder written by `ugt prepare`) or train_data_path",
                          field="data_dir")
    data = DataDir(data_dir)
    for path in data.missing_files():
        raise ConfigError(f"{path} does not exist: data_dir must be a folder written by `ugt prepare`",
                          field="data_dir")
    return data


def _model_config_kwargs(value) -> Dict[str, Any]:
    """model_config：dict / JSON 字符串 / config.json 路径 / 含 config.json 的目录。未知键是错误（带最接近的合法键）：
    PretrainedConfig 对未知键照单全收，写错的 `d_modle: 16` 会悄悄训练出默认 d_model 的模型。"""
    if value is None:
        return {}
    source = None
    if isinstance(value, dict):
        kwargs = dict(value)
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                kwargs = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"not valid JSON: {e}", field="model_config") from None
        else:
            path = Path(text)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise ConfigError(f"{path} does not exist", field="model_config")
            source = str(path)
            try:
                kwargs = json.loads(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ConfigError(f"not valid UTF-8 ({e.reason} at byte {e.start})", field="model_config",
                                  source=source) from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"invalid JSON: {e.msg}", field="model_config", source=source,
                                  line=e.lineno) from None
    from ..configuration_ugt import unknown_config_keys

    if not isinstance(kwargs, dict):
        raise ConfigError(f"expected a mapping of UGTConfig fields, got {type(kwargs).__name__}",
                          field="model_config", source=source)
    unknown = unknown_config_keys(kwargs)
    if unknown:
        key, close = unknown[0]
        hint = f"; did you mean '{close}'?" if close else " (see ugt_hf/configuration_ugt.py for the fields)"
        raise ConfigError(f"unknown UGTConfig field '{key}'{hint}", field=f"model_config.{key}", source=source)
    return kwargs


# 三张哈希表的 "auto" 大小：不小于“倍数 × 会落进表的键数”的最小 2 的幂，让配置不随数据集改。键数：输入嵌入每个物品
# 一个；节点输出向量每个 L2 格子与每个物品一个（<= 2 × 物品数）；宽记忆项每条训练转移在三层各占一个
# (前一物品, 节点) 格（<= 3 × 交互数）。倍数使装载率不超过 1/2、1/2、3/8。Beauty（12,101 个物品、198,502 条交互）上
# 正好得到以前手写的 32768 / 65536 / 2^21，所以它的质量表不变；表大小减半、加倍的对照见 README 的消融表。
AUTO_TABLE_SIZES = {"item_id_buckets": ("num_items", 2), "node_embedding_buckets": ("num_items", 4),
                    "transition_buckets": ("num_interactions", 8)}
# 内存上限（格数）：宽记忆项每格一个 float32，2^24 格 = 64 MiB；输入物品嵌入每格 d_model 维，2^20 格在 d = 128 时
# 512 MiB；节点向量每格 node_embedding_dim 维，2^21 格在 32 维时 256 MiB（训练时再加梯度与 Adam 两份状态，共 4 倍）。
# 向量表到百万级目录才碰到上限（那时装载率约 1），宽记忆项从约 105 万条交互起封顶（2,000 万条时装载率约 3.6）；
# Beauty 上表减半、输入嵌入装载率 0.74 时质量不变，更高的装载率没有量过。
AUTO_TABLE_MAX = {"item_id_buckets": 1 << 20, "node_embedding_buckets": 1 << 21, "transition_buckets": 1 << 24}


def auto_table_size(field: str, num_items: int, num_interactions: int) -> int:
    """`field` 写 "auto" 时的表大小（见 AUTO_TABLE_SIZES、AUTO_TABLE_MAX）。"""
    source, factor = AUTO_TABLE_SIZES[field]
    keys = factor * max(1, num_items if source == "num_items" else num_interactions)
    return min(1 << (keys - 1).bit_length(), AUTO_TABLE_MAX[field])


def _resolve_auto_tables(kwargs: Dict[str, Any], data: DataDir, catalogue) -> None:
    """把 model_config 里写 "auto" 的表大小换成由数据算出的整数（原地改 kwargs），并记一行日志。"""
    wanted = [f for f in AUTO_TABLE_SIZES if kwargs.get(f) == "auto"]
    if not wanted:
        return
    num_items = (catalogue or data.catalogue()).num_items
    num_interactions = data.meta.get("num_interactions")
    if "transition_buckets" in wanted and (isinstance(num_interactions, bool) or not isinstance(num_interactions, int)
                                           or num_interactions < 0):
        raise ConfigError(f"transition_buckets: auto needs an integer 'num_interactions' in {data.meta_path} (got "
                          f"{num_interactions!r}); re-run `ugt prepare` or give transition_buckets a number",
                          field="model_config.transition_buckets")
    for field in wanted:
        kwargs[field] = auto_table_size(field, num_items, num_interactions or 0)
        if field == "transition_buckets" and kwargs.get("transition_layout") == "block":
            # block 布局一块装一个节点的全部子节点：极小的数据上也至少要一块
            kwargs[field] = max(kwargs[field], 1 << (max(kwargs["vocab_sizes"]) - 1).bit_length())
        logger.info("model_config.%s: auto -> %d (%d items, %s interactions)", field, kwargs[field], num_items,
                    num_interactions)


def build_model(args, train_args, data: DataDir) -> UGTForGenerativeRecommendation:
    """args：ModelArguments；有 pretrained_model_path 时从上一阶段加载（safetensors），否则按 model_config 新建
    （位置编码长度取 train_args 的 encoder/decoder_max_length）。"""
    vocab = data.vocab_sizes
    if args.pretrained_model_path:
        from safetensors import SafetensorError

        try:
            model = UGTForGenerativeRecommendation.from_pretrained(args.pretrained_model_path)
        except (OSError, ValueError, SafetensorError) as e:  # 坏的 config.json / 权重：指明目录与原因，不是程序缺陷
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--pretrained {args.pretrained_model_path}: cannot load the model ({first}); point it "
                              "at a save_pretrained folder such as RUN/stage1/best_model",
                              field="pretrained_model_path") from None
        if list(model.config.vocab_sizes) != vocab:
            raise ConfigError(
                f"model {args.pretrained_model_path} has vocab_sizes {model.config.vocab_sizes} but the data has "
                f"{vocab}",
                field="pretrained_model_path",
            )
        if model.item_head is not None and not torch.equal(model.item_head.triples.cpu(), data.catalogue().triples):
            # 物品头的下标按保存时的目录排列；换了目录时打分会悄悄错位
            raise ConfigError(f"the item head of model {args.pretrained_model_path} was built for another item "
                              "catalogue than the data's items.parquet",
                              field="pretrained_model_path")
        return model
    kwargs = _model_config_kwargs(args.model_config)
    kwargs.setdefault("max_position_embeddings",
                      max(int(train_args.encoder_max_length), int(train_args.decoder_max_length), 64))
    kwargs["vocab_sizes"] = vocab
    kwargs.setdefault("semantic_pad_id", data.semantic_pad_id)
    # 物品头：num_items 写 "auto" 时取数据的目录大小（配置不随数据集改）；给了具体数值则必须与目录一致
    num_items = kwargs.get("num_items", 0)
    catalogue = data.catalogue() if num_items else None
    if num_items == "auto":
        kwargs["num_items"] = num_items = catalogue.num_items
    if num_items and (isinstance(num_items, bool) or not isinstance(num_items, int)
                      or num_items != catalogue.num_items):
        raise ConfigError(f"num_items={num_items!r} but the data folder has {catalogue.num_items} items (or write "
                          "num_items: auto)",
                          field="model_config")
    _resolve_auto_tables(kwargs, data, catalogue)
    # tokenizer 的 pad id 写进新模型的 config：否则 HF 的 Trainer 发现两者不一致，每次运行都警告
    # "tokenizer has new PAD/BOS/EOS tokens"（无害，用户也无从处理）
    kwargs.setdefault("pad_token_id", data.tokenizer().pad_token_id)
    try:
        config = UGTConfig(**kwargs)
    except (ValueError, TypeError) as e:  # UGTConfig 的校验：消息以 "UGTConfig.<字段>" 开头
        import re

        match = re.match(r"UGTConfig\.(\w+)", str(e))
        raise ConfigError(str(e), field=f"model_config.{match.group(1)}" if match else "model_config") from None
    model = UGTForGenerativeRecommendation(config)
    if model.item_head is not None:
        model.set_item_catalogue(catalogue.triples)
    return model


def _recommend_dataset(data: DataDir, split_or_path, args) -> RecommendDataset:
    """args：训练参数（encoder/decoder_max_length）。"""
    return data.recommend_dataset(split_or_path, max_encoder_length=int(args.encoder_max_length),
                                  max_decoder_length=int(args.decoder_max_length))


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
        "encoder_l1_ids": ids[:, 0].tolist(), "encoder_l2_ids": ids[:, 1].tolist(),
        "encoder_l3_ids": ids[:, 2].tolist(),
        "encoder_positions": list(range(t)), "encoder_token_types": [1] * t, "encoder_mask": [1] * t,
    }


@torch.inference_mode()
def self_generated_pairs(model, dataset: RecommendDataset, catalogue, max_pairs: Optional[int] = None,
                         num_beams: int = 20, batch_size: int = 256, seed: int = 0,
                         num_negatives: int = 1) -> List[Dict[str, Any]]:
    """没有评分时的偏好对（OneRec 式）：chosen = 用户真实的下一个物品，rejected = 模型自己 beam 候选里
    排名最高、但用户没有选的物品。对齐把模型“错误地最自信”的候选压下去。
    num_negatives = K > 1 时取前 K 个这样的候选（`rejected_items`，第一个同 `rejected_item`），给 S-DPO 用；
    候选不足 K 个的样本跳过（每条记录的负样本数相同，批次才能拼成 [(K+1)B, 3]）。"""
    n = len(dataset)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)[: (max_pairs or n)]
    collator = DataCollator(semantic_pad_id=SEMANTIC_PAD_ID)
    device = next(model.parameters()).device
    pairs: List[Dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size].tolist()
            if hasattr(dataset, "collate"):  # RecommendDataset：整批在 Arrow 列上拼，user_id 单独取一列
                batch = dataset.collate(idx, semantic_pad_id=SEMANTIC_PAD_ID)
                user_ids = dataset.hf_dataset.select_columns(["user_id"])[idx]["user_id"]
            else:
                samples = [dataset[i] for i in idx]
                batch = collator(samples)
                user_ids = [s.get("user_id", i) for s, i in zip(samples, idx)]
            labels = batch.pop("labels")[:, 0, :]  # [B, 3]：BOS 位置预测的下一个物品
            model_batch = {k: v.to(device) for k, v in batch.items()
                           if k.startswith("encoder_")}  # 从 BOS 出发，与评估一致
            result = recommend(model, model_batch, catalogue, top_k=min(num_beams, 20), num_beams=num_beams)
            cand = result.triples.cpu()  # [B, K, 3]
            for row in range(len(idx)):
                chosen = labels[row]
                differs = (cand[row] != chosen).any(-1) & (cand[row] >= 0).all(-1)
                negatives = differs.nonzero()[:, 0][:num_negatives]
                if len(negatives) < max(1, num_negatives):
                    continue
                rejected = cand[row][int(negatives[0])]
                record = {
                    "user_id": str(user_ids[row]),
                    "user_sequence": _seq_from_encoder(batch["encoder_semantic_ids"][row],
                                                       batch["encoder_attention_mask"][row]),
                    "chosen_item": dict(zip(("l1_id", "l2_id", "l3_id"), chosen.tolist())),
                    "rejected_item": dict(zip(("l1_id", "l2_id", "l3_id"), rejected.tolist())),
                    "preference_score": 1.0,
                }
                if num_negatives > 1:
                    record["rejected_items"] = [dict(zip(("l1_id", "l2_id", "l3_id"), cand[row][int(j)].tolist()))
                                                for j in negatives]
                pairs.append(record)
    finally:
        model.train(was_training)
    return pairs


def preference_data(args: StageArguments, model, data: DataDir, catalogue):
    """阶段 3 的训练/留出偏好对。返回 (train, eval, source)。"""
    source = args.data.preference_source
    if source not in ("auto", "ratings", "self"):
        raise ConfigError(f"must be auto, ratings or self, got {source!r}", field="preference_source")
    length = int(args.training.encoder_max_length)
    if source != "self" and args.data.train_data_path:
        # 规格 2.3 的阶段 3 命令：--train_data 直接给偏好对文件（--eval_data 可给留出偏好对）
        held_path = args.data.eval_data_path
        held = data.preference_dataset(held_path, max_encoder_length=length) if held_path else None
        return data.preference_dataset(args.data.train_data_path, max_encoder_length=length), held, "file"
    num_negatives = int(getattr(args.training, "preference_negatives", 1) or 1)
    has_pairs = data.num_records("preference_train") > 0
    if num_negatives > 1 and (source == "ratings" or (source == "auto" and has_pairs) or args.data.train_data_path):
        raise ConfigError(f"preference_negatives={num_negatives} needs self-generated pairs (preference_source: "
                          "self); rating and file pairs have one rejected item each", field="preference_negatives")
    if source == "ratings" and not has_pairs:
        raise ConfigError(f"{data} has no rating preference pairs (meta.json splits.preference_train = 0)",
                          field="preference_source")
    if source == "ratings" or (source == "auto" and has_pairs):
        train = data.preference_dataset("preference_train", max_encoder_length=length)
        held = None
        if data.num_records("preference_test") > 0:
            held = data.preference_dataset("preference_test", max_encoder_length=length)
        return train, held, "ratings"
    seed = args.training.seed
    train_ds = _recommend_dataset(data, args.data.train_data_path or "train", args.training)
    records = self_generated_pairs(model, train_ds, catalogue,
                                   max_pairs=args.data.max_preference_pairs, num_beams=args.evaluation.num_beams,
                                   seed=seed, num_negatives=num_negatives)
    if not records:
        raise RuntimeError("self-generated preference pairs: the model's beam candidates never differ from the target")
    random.Random(seed).shuffle(records)
    n_eval = max(1, min(1000, len(records) // 20))
    return records[n_eval:], records[:n_eval], "self"


# --------------------------------------------------------------------------------------------------------- 阶段
def check_model_source(stage: int, args) -> None:
    """args：ModelArguments（或兼有其字段的规格配置）。阶段 2/3 接着上一阶段训练：不给 --pretrained 时
    悄悄从头训练是最常见的错，所以必须显式写 from_scratch: true；本地路径必须存在（不交给 Hub 解析）。"""
    pretrained = args.pretrained_model_path
    from_scratch = bool(getattr(args, "from_scratch", False))
    if stage > 1 and not pretrained and not from_scratch:
        raise ConfigError(f"stage {stage} continues from the previous stage's model, but --pretrained is not set: "
                          f"pass --pretrained RUN/stage{stage - 1}/best_model (`ugt pipeline` does this), "
                          "or set from_scratch: true to train a new model from model_config",
                          field="pretrained_model_path")
    if pretrained and from_scratch:
        raise ConfigError(f"from_scratch: true contradicts --pretrained {pretrained}; keep only one",
                          field="from_scratch")
    if pretrained:
        check_model_dir(pretrained, "--pretrained", field="pretrained_model_path")
    if stage == 3 and args.reference_model_path:
        check_model_dir(args.reference_model_path, "--reference_model_path", field="reference_model_path")


def run_stage(stage: int, argv: Optional[Sequence[str]] = None, args=None) -> Dict[str, Any]:
    """运行一个阶段；返回摘要（也写到 output_dir/stage_summary.json）。

    args：StageArguments，或一个兼有全部字段的配置对象（如规格的 Stage{n}Config），不给则从 argv 解析。
    被 SIGTERM/SIGINT 停下时抛 TrainingInterrupted（检查点已保存；best_model/ 与摘要不写）；
    output_dir 正被另一个进程使用时抛 OutputLockedError。
    """
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    if args is None:
        args = parse_stage_args(stage, argv)
    elif not isinstance(args, StageArguments):
        args = StageArguments(args, args, args, args)
    targs = args.training
    check_model_source(stage, args.model)
    # 同一个 output_dir 只允许一个写入者（多进程时只有主进程加锁：各 rank 共用一个目录）
    lock = OutputLock(targs.output_dir, what=f"stage {stage} run") if getattr(targs, "process_index", 0) == 0 else None
    with lock or contextlib.nullcontext():
        return _train_stage(stage, args)


def _train_stage(stage: int, args: StageArguments) -> Dict[str, Any]:
    """run_stage 拿到输出目录的锁之后的部分。"""
    targs, evargs = args.training, args.evaluation
    if targs.torch_num_threads:
        torch.set_num_threads(int(targs.torch_num_threads))
    set_seed(targs.seed)
    data = resolve_data(args.data)
    data_dir = str(data)
    catalogue = data.catalogue()
    tokenizer = data.tokenizer()
    model = build_model(args.model, targs, data)
    os.makedirs(targs.output_dir, exist_ok=True)
    save_resolved_config(args, targs.output_dir)
    t0 = time.perf_counter()
    summary: Dict[str, Any] = {"stage": stage, "data_dir": data_dir, "output_dir": targs.output_dir}

    if stage in (1, 2):
        eval_split = args.data.eval_data_path or ("valid" if targs.eval_strategy != "no" else None)
        train_ds = _recommend_dataset(data, args.data.train_data_path or "train", targs)
        eval_ds = _subset(_recommend_dataset(data, eval_split, targs), evargs.eval_max_samples, targs.seed) \
            if eval_split else None
        trainer = UGTTrainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                             catalogue=catalogue, num_beams=evargs.num_beams, exclude_history=evargs.exclude_history,
                             k_values=targs.eval_k_values, processing_class=tokenizer)
    else:
        train_pairs, held_pairs, source = preference_data(args, model, data, catalogue)
        summary["preference_source"] = source
        summary["num_preference_pairs"] = len(train_pairs)
        # 留出偏好准确率只对真实偏好对（评分或给定的偏好文件）有意义：
        # 自生成的 rejected 本就是模型自己的首选候选，准确率按构造接近 0
        if held_pairs is not None and source in ("ratings", "file"):
            summary["preference_before"] = pairwise_preference_accuracy(model, held_pairs)
        ref_model = None
        if args.model.reference_model_path and not targs.dpo_reference_free:
            ref_model = UGTForGenerativeRecommendation.from_pretrained(args.model.reference_model_path).eval()
        # 统一损失的 L_ntp 与阶段 1/2 相同：训练集上的 next-item NTP（与偏好对批次交替抽样，见 UGTDPOTrainer）
        # 规格的 `--train_data 偏好对文件`（不给 data_dir）时，文件所在目录里没有推荐数据：退回 chosen 物品的 NTP
        spec_pairs_only = bool(args.data.train_data_path) and not args.data.data_dir
        ntp_ds = None
        if not spec_pairs_only and data.num_records("train") > 0:
            ntp_ds = _recommend_dataset(data, "train", targs)
        if ntp_ds is None:
            logger.info("stage 3: no recommendation train split next to the preference pairs; L_ntp is the NTP of "
                        "the chosen items (pass --data_dir DIR to use DIR's train split)")
        trainer = UGTDPOTrainer(model=model, ref_model=ref_model, args=targs, train_dataset=train_pairs,
                                eval_dataset=held_pairs if targs.eval_strategy != "no" else None,
                                processing_class=tokenizer, ntp_dataset=ntp_ds)

    # 摘要是“阶段已完成”的标志（`ugt pipeline` 据此跳过该阶段）：训练开始前删掉上一次的，完成后才重写
    summary_path = Path(targs.output_dir, STAGE_SUMMARY_FILE)
    previous = _read_summary(summary_path)
    if trainer.is_world_process_zero() and summary_path.exists():
        summary_path.unlink()
    train_output = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    if trainer.stopped_by_signal is not None:
        raise TrainingInterrupted(trainer.stopped_by_signal, trainer.state.global_step,
                                  get_last_checkpoint(targs.output_dir), targs.output_dir,
                                  how_to_resume="run the same command with --resume_from_checkpoint auto to continue")
    best_dir = os.path.join(targs.output_dir, BEST_MODEL_DIR)
    if trainer.resumed_finished_run and previous is not None and model_dir_complete(best_dir):
        # 已完成的运行再续训：什么也没训练，保留原来的 best_model 与摘要
        logger.warning("%s: the run had already finished; kept %s and %s", targs.output_dir, best_dir,
                       STAGE_SUMMARY_FILE)
        if trainer.is_world_process_zero():
            write_json_atomic(summary_path, previous)
        return previous
    summary["train_seconds"] = time.perf_counter() - t0
    summary["train_metrics"] = train_output.metrics
    summary["log_history"] = trainer.state.log_history
    summary["best_model_checkpoint"] = trainer.state.best_model_checkpoint
    if trainer.is_world_process_zero():
        trainer.save_model(best_dir)  # load_best_model_at_end 时这就是最佳模型
        tokenizer.save_pretrained(best_dir)
        save_resolved_config(args, best_dir)
    if stage == 3 and "preference_before" in summary:
        summary["preference_after"] = pairwise_preference_accuracy(trainer.accelerator.unwrap_model(trainer.model),
                                                                   held_pairs)
    summary["best_model_dir"] = best_dir
    if trainer.is_world_process_zero():
        write_json_atomic(summary_path, summary)
    late = trainer.shutdown_callback.received if trainer.shutdown_callback is not None else None
    if late is not None:  # 信号在最后一步之后（收尾评估、保存时）到达：阶段已完成，但进程不该再往下跑
        raise TrainingInterrupted(late, trainer.state.global_step, None, targs.output_dir, finished=True)
    return summary


def _read_summary(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path, obj) -> None:
    """先写临时文件再 rename：被杀在中途时不会留下半个 JSON（摘要是阶段完成的标志）。"""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def model_dir_complete(folder) -> bool:
    """save_pretrained 写完的模型目录：config.json 与权重都在。"""
    folder = Path(folder)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in weights)


def completed_stage(output_dir) -> Optional[Dict[str, Any]]:
    """阶段目录里有完整的 best_model/ 与摘要时返回摘要（该阶段已完成），否则 None。"""
    summary = _read_summary(Path(output_dir, STAGE_SUMMARY_FILE))
    if summary is None or not model_dir_complete(Path(output_dir, BEST_MODEL_DIR)):
        return None
    return summary


def close_process_group() -> None:
    """进程正常结束前销毁 torch.distributed 的进程组（多进程运行时；单进程什么也不做）。
    不销毁就退出时，Gloo 的 C++ 工作线程在解释器收尾阶段才析构，偶尔以 "terminate called without an active
    exception" 中止（SIGABRT，退出码 -6）：训练已完成、检查点已写，调度器却看到一次失败的运行。
    只在各 rank 一起走到结尾时调用（完成，或一起停在信号后的保存点）；出错退出时不调——别的 rank 可能还在
    集合通信里，销毁会卡住（torchtitan 的做法）。"""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(stage: int, argv: Optional[Sequence[str]] = None) -> int:
    """recipes/stage{n}.py 的入口：错误配置、输出目录被占用给一行清楚的错误并以 2 退出；
    被 SIGTERM/SIGINT 停下时以 128 + 信号编号退出（143 / 130），检查点已保存，可续训。"""
    try:
        summary = run_stage(stage, argv)
    except ConfigError as e:
        print(f"stage{stage}: {e}", flush=True, file=sys.stderr)
        return 2
    except OutputLockedError as e:
        print(f"stage{stage}: error: {e}", flush=True, file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"stage{stage}: {e}", flush=True, file=sys.stderr)
        close_process_group()
        return e.exit_code
    except KeyboardInterrupt:  # 第二次 Ctrl-C（或训练循环之外）：不等保存，立即退出
        print(f"stage{stage}: interrupted (SIGINT) before a checkpoint could be saved; the last complete checkpoint "
              "(if any) can be resumed with --resume_from_checkpoint auto", flush=True, file=sys.stderr)
        return 128 + signal.SIGINT
    print(json.dumps({k: summary[k] for k in ("stage", "best_model_dir", "train_seconds") if k in summary}))
    close_process_group()
    return 0
