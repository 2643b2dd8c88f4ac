"""把样本拼成批次（interfaces.py 的批次契约）。

输入可以是数据集 `__getitem__` 的输出（语义 ID 为 3 个 [T] 张量的列表，或一个 [T, 3] 张量），
也可以是原始 schema 记录（JSONL 里的一行 dict），后者先经过与数据集相同的逐条校验。

约定：两侧都右 padding（有效 token 在前）。encoder 的位置是显式给出的，右 padding 不会改变有效 token 的位置；
decoder 右 padding 让 labels[:, t] 与 decoder 第 t 位对齐，生成时在末尾追加 token 也最自然。
padding 处：语义 ID = semantic_pad_id（旧名 pad_token_id），位置 = 0，token_type = 0，attention mask = 0，
labels = -100。
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ugt_hf.data.schema import DECODER_LIST_FIELDS, ENCODER_LIST_FIELDS, LABEL_LIST_FIELDS
from ugt_hf.data.validation import (
    DataValidationError,
    ListColumn,
    as_int_array,
    check_positive,
    check_vocab_sizes,
    encoder_truncation_rows,
    truncate_decoder,
    truncate_encoder,
    validate_preference_record,
    validate_recommend_record,
)
from ugt_hf.interfaces import IGNORE_INDEX, NUM_LEVELS

__all__ = ["DataCollator", "PreferenceCollator", "RowBatch", "collate_recommend_table"]


def _to_numpy(x: Any, field: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise DataValidationError(f"expected an integer tensor, got dtype {x.dtype}", field=field)
        x = x.detach().cpu().numpy()
    return as_int_array(x, field)  # 同时检查是一维（[T, k] 的位置/mask 不能混进来）


def _semantic_ids(x: Any, field: str) -> List[np.ndarray]:
    """接受 3 个 [T] 的列表或 [T, 3] 张量/数组，返回 3 个 [T] int64 数组。"""
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 2:
        if x.shape[1] != NUM_LEVELS:
            raise DataValidationError(f"expected shape [T, {NUM_LEVELS}], got {tuple(x.shape)}", field=field)
        arr = _to_numpy(x.reshape(-1), field).reshape(-1, NUM_LEVELS)
        return [arr[:, i] for i in range(NUM_LEVELS)]
    if not isinstance(x, (list, tuple)) or len(x) != NUM_LEVELS:
        raise DataValidationError(
            f"expected a list of {NUM_LEVELS} id sequences or a [T, {NUM_LEVELS}] tensor", field=field
        )
    levels = [_to_numpy(v, field) for v in x]
    if len({len(v) for v in levels}) != 1:
        raise DataValidationError(
            f"the {NUM_LEVELS} levels have different lengths {[len(v) for v in levels]}", field=field
        )
    return levels


def _check_len(arr: np.ndarray, n: int, field: str, ref: str) -> np.ndarray:
    if len(arr) != n:
        raise DataValidationError(f"length {len(arr)} differs from {ref} length {n}", field=field)
    return arr


def _side_from_sample(s: Mapping[str, Any], side: str) -> Dict[str, np.ndarray]:
    """数据集输出的一侧（side = "encoder" / "decoder"）→ schema 列；缺省的位置/类型/mask 补默认值并核对长度。"""
    ref = f"{side}_semantic_ids"
    ids = _semantic_ids(s[ref], ref)
    n = len(ids[0])
    out = {f"{side}_l{i + 1}_ids": ids[i] for i in range(NUM_LEVELS)}
    defaults = (("positions", np.arange(n)), ("token_types", np.ones(n, np.int64)))
    for key, default in defaults:
        f = f"{side}_{key}"
        out[f] = _check_len(_to_numpy(s[f], f) if f in s else default, n, f, ref)
    mask = s.get(f"{side}_mask", s.get(f"{side}_attention_mask"))
    f = f"{side}_mask"
    out[f] = _check_len(np.ones(n, np.int64) if mask is None else _to_numpy(mask, f), n, f, ref)
    return out


def _decoder_from_sample(s: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    for key in ("decoder_semantic_ids", "labels"):
        if key not in s:
            raise DataValidationError("missing required field", field=key)
    out = _side_from_sample(s, "decoder")
    m = len(out["decoder_l1_ids"])
    labels = _semantic_ids(s["labels"], "labels")
    for i in range(NUM_LEVELS):
        out[f"labels_l{i + 1}"] = _check_len(labels[i], m, "labels", "decoder_semantic_ids")
    return out


def _pad_side(rows: List[Dict[str, np.ndarray]], side: str, T: int, pad_token_id: int) -> Dict[str, np.ndarray]:
    """一侧的变长列 → 右 padding 的 [B, T, 3] / [B, T] 数组（padding：id = pad_token_id，其余 0）。"""
    B = len(rows)
    ids = np.full((B, T, NUM_LEVELS), pad_token_id, np.int64)  # [B, T, 3]
    pos = np.zeros((B, T), np.int64)  # [B, T]
    types = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    for b, r in enumerate(rows):
        n = len(r[f"{side}_l1_ids"])
        for lvl in range(NUM_LEVELS):
            ids[b, :n, lvl] = r[f"{side}_l{lvl + 1}_ids"]
        pos[b, :n] = r[f"{side}_positions"]
        types[b, :n] = r[f"{side}_token_types"]
        mask[b, :n] = r[f"{side}_mask"]
    return {
        f"{side}_semantic_ids": ids,
        f"{side}_positions": pos,
        f"{side}_token_types": types,
        f"{side}_attention_mask": mask,
    }


def _preference_score(score: Any) -> float:
    """与 validate_preference_record 同样的规则：有限且 >= 0 的数（张量取标量）。"""
    if isinstance(score, torch.Tensor):
        if score.numel() != 1:
            raise DataValidationError(
                f"expected a scalar, got a tensor of shape {tuple(score.shape)}", field="preference_score"
            )
        score = score.item()
    if isinstance(score, bool) or not isinstance(score, (int, float, np.integer, np.floating)):
        raise DataValidationError(
            f"expected a number, got {type(score).__name__} {score!r:.40}", field="preference_score"
        )
    if not math.isfinite(float(score)) or float(score) < 0:
        raise DataValidationError(f"must be a finite number >= 0, got {score!r}", field="preference_score")
    return float(score)


def _round_up(n: int, multiple: Optional[int]) -> int:
    if not multiple:
        return n
    return ((n + multiple - 1) // multiple) * multiple


def _semantic_pad(semantic_pad_id, pad_token_id):
    """semantic_pad_id 是新名，pad_token_id 是旧名（别名）；都不给为 0，两个都给且不同则报错。返回 (名字, 值)。"""
    if semantic_pad_id is not None and pad_token_id is not None and semantic_pad_id != pad_token_id:
        raise ValueError(f"semantic_pad_id={semantic_pad_id!r} and its old name pad_token_id={pad_token_id!r} differ")
    if semantic_pad_id is not None:
        return "semantic_pad_id", semantic_pad_id
    return "pad_token_id", 0 if pad_token_id is None else pad_token_id


class _EncoderPadding:
    """encoder 侧的公共逻辑（DataCollator 与 PreferenceCollator 共用）。"""

    def __init__(self, pad_token_id, dynamic_padding, max_encoder_length, pad_to_multiple_of, vocab_sizes,
                 semantic_pad_id=None):
        name, pad = _semantic_pad(semantic_pad_id, pad_token_id)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {pad!r}")
        check_positive("max_encoder_length", max_encoder_length, allow_none=True)
        check_positive("pad_to_multiple_of", pad_to_multiple_of, allow_none=True)
        self.semantic_pad_id = pad
        self.dynamic_padding = bool(dynamic_padding)
        self.max_encoder_length = max_encoder_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.vocab_sizes = check_vocab_sizes(vocab_sizes)
        if not self.dynamic_padding and max_encoder_length is None:
            raise ValueError("dynamic_padding=False needs max_encoder_length (pad every batch to that length)")

    @property
    def pad_token_id(self) -> int:
        """旧名（= semantic_pad_id），保留给尚未改名的调用方。"""
        return self.semantic_pad_id

    def _target_len(self, lengths: Sequence[int], max_len: Optional[int]) -> int:
        n = max(lengths) if self.dynamic_padding else max_len
        if max_len is not None:
            n = min(n, max_len) if self.dynamic_padding else max_len
        return _round_up(max(n, 1), self.pad_to_multiple_of)

    def _pad_encoder(self, encs: List[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
        Te = self._target_len([len(e["encoder_l1_ids"]) for e in encs], self.max_encoder_length)
        return {k: torch.from_numpy(v) for k, v in _pad_side(encs, "encoder", Te, self.semantic_pad_id).items()}

    def _truncate_encoder(self, enc: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.max_encoder_length is None or len(enc["encoder_l1_ids"]) <= self.max_encoder_length:
            return enc
        return truncate_encoder(enc, self.max_encoder_length)


class RowBatch(Sequence):
    """DataLoader 一次取的一批行（`RecommendDataset.__getitems__` 的返回值）：当作序列用时与
    `[dataset[i] for i in indices]` 相同（按需逐条取），所以任何 collate_fn 都照常可用；`DataCollator` 认出它时
    改在 Arrow 列上整批截断与 padding（`RecommendDataset.collate`）。

    为什么：逐条取样本、转张量再拼批在 DataLoader 的 worker 里占掉约 0.8 个核（Beauty 阶段 1，batch 256），
    2 核机器上与 2 个计算线程抢核；整批拼的结果逐元素相同（有测试）。
    """

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.dataset[i] for i in self.indices[k]]
        return self.dataset[self.indices[k]]

    def __repr__(self) -> str:
        return f"RowBatch({len(self)} rows of {self.dataset!r})"


class DataCollator(_EncoderPadding):
    """样本列表 → 批次字典（全部 LongTensor）：

        encoder_semantic_ids [B, Te, 3]、encoder_positions / encoder_token_types / encoder_attention_mask [B, Te]、
        decoder_semantic_ids [B, Td, 3]、decoder_positions / decoder_token_types / decoder_attention_mask [B, Td]、
        labels [B, Td, 3]（padding 为 -100）。

    Args:
        pad_token_id: 语义 ID 的 padding 值（旧名，等同 semantic_pad_id）。
        dynamic_padding: True = pad 到本批最长（不超过 max_*_length）；False = 固定 pad 到 max_*_length。
        max_encoder_length / max_decoder_length: 超长样本按数据集同样的规则截断（encoder 留最近，decoder 留前面）。
        pad_to_multiple_of: 长度向上取整到它的倍数（利于 Tensor Core）。
        vocab_sizes: 原始记录输入时用来检查 id 范围；None 只检查非负。
        semantic_pad_id: 语义 ID 的 padding 值（新名；缺省 0）。
    """

    def __init__(
        self,
        pad_token_id: Optional[int] = None,
        dynamic_padding: bool = True,
        max_encoder_length: Optional[int] = None,
        max_decoder_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        vocab_sizes: Optional[Sequence[int]] = None,
        label_pad_token_id: int = IGNORE_INDEX,
        semantic_pad_id: Optional[int] = None,
    ):
        super().__init__(pad_token_id, dynamic_padding, max_encoder_length, pad_to_multiple_of, vocab_sizes,
                         semantic_pad_id)
        check_positive("max_decoder_length", max_decoder_length, allow_none=True)
        if not self.dynamic_padding and max_decoder_length is None:
            raise ValueError("dynamic_padding=False needs max_decoder_length (pad every batch to that length)")
        self.max_decoder_length = max_decoder_length
        self.label_pad_token_id = label_pad_token_id

    def _sample_arrays(self, s: Any) -> Dict[str, np.ndarray]:
        if not isinstance(s, Mapping):
            raise DataValidationError(f"sample is not a dict (got {type(s).__name__})")
        if "encoder_semantic_ids" in s:
            arrays = {**_side_from_sample(s, "encoder"), **_decoder_from_sample(s)}
        elif "encoder_l1_ids" in s or "user_id" in s:
            arrays = validate_recommend_record(s, self.vocab_sizes)  # 原始 schema 记录
        else:
            raise DataValidationError(
                "sample has neither 'encoder_semantic_ids' (dataset output) nor schema fields (raw record)",
                field="encoder_semantic_ids",
            )
        return arrays

    def _table_collate_matches(self, rows: RowBatch) -> bool:
        """整批拼与逐条拼结果相同的条件：动态 padding、不取整，本 collator 的截断长度不比数据集的短
        （数据集已按自己的长度截断，collator 不再截）。"""
        ds = rows.dataset
        if not self.dynamic_padding or self.pad_to_multiple_of or not hasattr(ds, "collate"):
            return False
        return all(mine is None or (theirs is not None and mine >= theirs) for mine, theirs in (
            (self.max_encoder_length, getattr(ds, "max_encoder_length", None)),
            (self.max_decoder_length, getattr(ds, "max_decoder_length", None))))

    def __call__(self, features: Sequence[Any]) -> Dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("DataCollator got an empty list of samples")
        if isinstance(features, RowBatch) and self._table_collate_matches(features):
            return features.dataset.collate(features.indices, semantic_pad_id=self.semantic_pad_id,
                                            label_pad_token_id=self.label_pad_token_id)
        encs, decs = [], []
        for i, s in enumerate(features):
            try:
                a = self._sample_arrays(s)
            except DataValidationError as e:
                raise DataValidationError(f"batch sample {i}: {e.reason}", field=e.field) from None
            encs.append(self._truncate_encoder({f: a[f] for f in ENCODER_LIST_FIELDS}))
            dec = {f: a[f] for f in DECODER_LIST_FIELDS + LABEL_LIST_FIELDS}
            if self.max_decoder_length is not None:
                dec = truncate_decoder(dec, self.max_decoder_length)
            decs.append(dec)
        batch = self._pad_encoder(encs)
        Td = self._target_len([len(d["decoder_l1_ids"]) for d in decs], self.max_decoder_length)
        padded = _pad_side(decs, "decoder", Td, self.semantic_pad_id)
        labels = np.full((len(decs), Td, NUM_LEVELS), self.label_pad_token_id, np.int64)  # [B, Td, 3]
        for b, d in enumerate(decs):
            m = len(d["decoder_l1_ids"])
            for lvl in range(NUM_LEVELS):
                labels[b, :m, lvl] = d[f"labels_l{lvl + 1}"]
        padded["labels"] = labels
        batch.update({k: torch.from_numpy(v) for k, v in padded.items()})
        return batch


class PreferenceCollator(_EncoderPadding):
    """偏好样本 → encoder 侧同 DataCollator，另有 chosen_ids / rejected_ids [B, 3]（Long）、
    preference_score [B]（float32）。"""

    def __init__(
        self,
        pad_token_id: Optional[int] = None,
        dynamic_padding: bool = True,
        max_encoder_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        vocab_sizes: Optional[Sequence[int]] = None,
        semantic_pad_id: Optional[int] = None,
    ):
        super().__init__(pad_token_id, dynamic_padding, max_encoder_length, pad_to_multiple_of, vocab_sizes,
                         semantic_pad_id)

    def _sample_arrays(self, s: Any) -> Dict[str, Any]:
        if not isinstance(s, Mapping):
            raise DataValidationError(f"sample is not a dict (got {type(s).__name__})")
        if "encoder_semantic_ids" in s:
            a: Dict[str, Any] = dict(_side_from_sample(s, "encoder"))
            for key in ("chosen_ids", "rejected_ids"):
                if key not in s:
                    raise DataValidationError("missing required field", field=key)
                v = _to_numpy(s[key], key).reshape(-1)
                if len(v) != NUM_LEVELS:
                    raise DataValidationError(f"expected {NUM_LEVELS} ids, got {len(v)}", field=key)
                a[key] = v
            a["preference_score"] = _preference_score(s.get("preference_score", 1.0))
            return a
        if "user_sequence" in s or "chosen_item" in s:
            return validate_preference_record(s, self.vocab_sizes)  # 原始 schema 记录
        raise DataValidationError(
            "sample has neither 'encoder_semantic_ids' (dataset output) nor preference schema fields (raw record)",
            field="encoder_semantic_ids",
        )

    def __call__(self, features: Sequence[Any]) -> Dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("PreferenceCollator got an empty list of samples")
        arrays = []
        for i, s in enumerate(features):
            try:
                arrays.append(self._sample_arrays(s))
            except DataValidationError as e:
                raise DataValidationError(f"batch sample {i}: {e.reason}", field=e.field) from None
        batch = self._pad_encoder([self._truncate_encoder({f: a[f] for f in ENCODER_LIST_FIELDS}) for a in arrays])
        batch["chosen_ids"] = torch.from_numpy(np.stack([a["chosen_ids"] for a in arrays]).astype(np.int64))  # [B, 3]
        rejected = np.stack([a["rejected_ids"] for a in arrays]).astype(np.int64)
        batch["rejected_ids"] = torch.from_numpy(rejected)  # [B, 3]
        batch["preference_score"] = torch.tensor([a["preference_score"] for a in arrays], dtype=torch.float32)  # [B]
        return batch


# --------------------------------------------------------------------------------------------
# 整批向量化：已校验的 Arrow 行 -> 批次
# --------------------------------------------------------------------------------------------


def _list_column(table, field: str):
    """list<int> 列 -> (每行长度 [B], 行起点 [B], 展开的值 [sum])；与整表校验同一个展开（偏移按长度重算，
    切片/take 过的列也对）。"""
    col = ListColumn(table.column(field).combine_chunks())
    return col.lengths, col.offsets[:-1], col.values


def _gather(values: np.ndarray, starts: np.ndarray, src: np.ndarray, valid: np.ndarray, fill: int) -> np.ndarray:
    """每行第 src[b, j] 个元素（行内下标），valid 为假处填 fill：[B, T]"""
    flat = starts[:, None] + np.where(valid, src, 0)
    out = values[np.minimum(flat, max(len(values) - 1, 0))] if len(values) else np.zeros(src.shape, np.int64)
    return np.where(valid, out, fill)


def collate_recommend_table(
    table,
    max_encoder_length: Optional[int] = None,
    max_decoder_length: Optional[int] = None,
    semantic_pad_id: int = 0,
    label_pad_token_id: int = IGNORE_INDEX,
) -> Dict[str, torch.Tensor]:
    """已校验的推荐记录（pyarrow Table，schema 列）-> 批次，与逐条
    `DataCollator(semantic_pad_id=..., label_pad_token_id=...)([recommend_sample(row, max_enc, max_dec) ...])`
    逐元素相等（截断规则同 truncate_encoder / truncate_decoder，动态右 padding）。

    为什么：评估与自生成偏好对要给上万个用户逐条取样本、转张量再拼批，这部分 Python 开销占 Beauty 全目录排序
    时间的约五分之一；这里在 Arrow 列上一次做完。记录必须已经校验过（RecommendDataset 非惰性模式）。
    """
    batch: Dict[str, torch.Tensor] = {}
    # ---- encoder：保留最近的 max_encoder_length 个 token（开头的特殊位保留），位置重新对齐 ----
    lengths, starts, types = _list_column(table, "encoder_token_types")
    m = int(lengths.max(initial=0)) if max_encoder_length is None else int(max_encoder_length)
    first_type = types[np.minimum(starts, max(len(types) - 1, 0))] if len(types) else np.zeros_like(lengths)
    trunc, keep_head = encoder_truncation_rows(lengths, first_type, m)
    kept = np.minimum(lengths, m)
    width = max(int(kept.max(initial=0)), 1)
    j = np.arange(width)[None]  # [1, T]
    src = np.where(trunc, lengths - m, 0)[:, None] + j  # 尾部：原序列的第 L - m + j 个
    src = np.where(keep_head[:, None] & (j == 0), 0, src)  # [B, T]
    valid = j < kept[:, None]
    ids = [_gather(_list_column(table, f"encoder_l{i}_ids")[2], starts, src, valid, semantic_pad_id)
           for i in (1, 2, 3)]
    batch["encoder_semantic_ids"] = torch.from_numpy(np.stack(ids, -1))  # [B, T, 3]
    orig = _list_column(table, "encoder_positions")[2]
    pos = _gather(orig, starts, src, valid, 0)
    if trunc.any():  # 尾部整体平移：第一个保留的尾部 token 取原序列同一槽位（head）的位置
        head = keep_head.astype(np.int64)
        shift = orig[starts + head] - orig[starts + np.take_along_axis(src, head[:, None], 1)[:, 0]]
        pos = np.where(trunc[:, None] & (j >= head[:, None]) & valid, pos + shift[:, None], pos)
    batch["encoder_positions"] = torch.from_numpy(pos)
    batch["encoder_token_types"] = torch.from_numpy(_gather(types, starts, src, valid, 0))
    batch["encoder_attention_mask"] = torch.from_numpy(
        _gather(_list_column(table, "encoder_mask")[2], starts, src, valid, 0))
    # ---- decoder 与 labels：保留前 max_decoder_length 个 ----
    lengths, starts, dpos = _list_column(table, "decoder_positions")
    kept = lengths if max_decoder_length is None else np.minimum(lengths, int(max_decoder_length))
    width = max(int(kept.max(initial=0)), 1)
    src = np.broadcast_to(np.arange(width)[None], (len(lengths), width))
    valid = src < kept[:, None]
    batch["decoder_semantic_ids"] = torch.from_numpy(np.stack(
        [_gather(_list_column(table, f"decoder_l{i}_ids")[2], starts, src, valid, semantic_pad_id)
         for i in (1, 2, 3)], -1))
    batch["decoder_positions"] = torch.from_numpy(_gather(dpos, starts, src, valid, 0))
    batch["decoder_token_types"] = torch.from_numpy(
        _gather(_list_column(table, "decoder_token_types")[2], starts, src, valid, 0))
    batch["decoder_attention_mask"] = torch.from_numpy(
        _gather(_list_column(table, "decoder_mask")[2], starts, src, valid, 0))
    batch["labels"] = torch.from_numpy(np.stack(
        [_gather(_list_column(table, f"labels_l{i}")[2], starts, src, valid, label_pad_token_id)
         for i in (1, 2, 3)], -1))
    return batch
