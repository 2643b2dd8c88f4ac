"""训练时的数据读取：规格的 RecommendDataset / PreferenceDataset / StreamingDataset，底层是 HF `datasets`。

- RecommendDataset / PreferenceDataset：`load_dataset("json"|"parquet", split="train")` 生成内存映射的 Arrow 表
  （第二次打开直接读缓存），`__getitem__` 按行取出并转成规格第 2 节的张量结构。
  `lazy_loading=False`（默认）：打开时用 pyarrow/numpy 向量化校验全部记录，坏数据在训练开始前就报错；
  `lazy_loading=True`：打开时只查 schema（列是否齐、类型是否对），每条记录在被访问时逐条校验，
  适合只想打开超大文件取一部分的场景。两种方式的规则和错误信息相同。
- StreamingDataset：`datasets.IterableDataset.from_generator` 按文件分片流式读取（一个文件 = 一个 shard），
  `.shuffle(seed, buffer_size)` + `split_dataset_by_node` + `set_epoch`。没有用 `load_dataset(streaming=True)`：
  它的 JSON 读取器按块解析，拿不到“哪个文件第几行”，而规则要求流式读取的错误也指出 shard 文件与行号。

截断：encoder 保留最近的 max_encoder_length 个 token（开头的特殊 token 保留，位置重新对齐），
decoder 与 labels 保留前 max_decoder_length 个。
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from datasets.distributed import split_dataset_by_node

from ugt_hf.data.collator import DataCollator, RowBatch, collate_recommend_table
from ugt_hf.data.schema import (
    DECODER_LIST_FIELDS,
    ENCODER_LIST_FIELDS,
    LABEL_LIST_FIELDS,
)
from ugt_hf.data.validation import (
    DEFAULT_VOCAB_SIZES,
    DataValidationError,
    check_arrow_schema,
    check_positive,
    check_vocab_sizes,
    file_format,
    first_invalid_utf8,
    is_json_extension,
    iter_jsonl,
    locate_row,
    precheck_files,
    resolve_data_files,
    scan_json_files,
    truncate_decoder,
    truncate_encoder,
    validate_preference_record,
    validate_recommend_record,
    vector_check_table,
)
from ugt_hf.interfaces import IGNORE_INDEX

__all__ = [
    "DataValidationError",
    "RecommendDataset",
    "PreferenceDataset",
    "StreamingDataset",
    "recommend_sample",
    "preference_sample",
]


# --------------------------------------------------------------------------------------------
# 记录 -> 张量
# --------------------------------------------------------------------------------------------


def _t(a: np.ndarray) -> torch.Tensor:
    # 复制一份：Arrow 内存映射出来的数组是只读的，torch.from_numpy 会告警
    return torch.tensor(a, dtype=torch.long)


def recommend_sample(arrays: Mapping[str, Any], max_encoder_length: int, max_decoder_length: int) -> Dict[str, Any]:
    """已校验的记录（int64 数组）→ 规格第 2 节的结构（+ decoder_mask、user_id）。"""
    enc = truncate_encoder(arrays, max_encoder_length)
    dec = truncate_decoder(arrays, max_decoder_length)
    return {
        "user_id": arrays["user_id"],
        "encoder_semantic_ids": [_t(enc[f"encoder_l{i}_ids"]) for i in (1, 2, 3)],  # 3 × [Te]
        "encoder_positions": _t(enc["encoder_positions"]),  # [Te]
        "encoder_token_types": _t(enc["encoder_token_types"]),  # [Te]
        "encoder_mask": _t(enc["encoder_mask"]),  # [Te]
        "decoder_semantic_ids": [_t(dec[f"decoder_l{i}_ids"]) for i in (1, 2, 3)],  # 3 × [Td]
        "decoder_positions": _t(dec["decoder_positions"]),  # [Td]
        "decoder_token_types": _t(dec["decoder_token_types"]),  # [Td]
        "decoder_mask": _t(dec["decoder_mask"]),  # [Td]
        "labels": [_t(dec[f"labels_l{i}"]) for i in (1, 2, 3)],  # 3 × [Td]，-100 = 忽略
    }


def preference_sample(arrays: Mapping[str, Any], max_encoder_length: int) -> Dict[str, Any]:
    """已校验的偏好记录 → encoder 张量 + chosen_ids[3] + rejected_ids[3] + preference_score。"""
    enc = truncate_encoder(arrays, max_encoder_length)
    return {
        "user_id": arrays["user_id"],
        "encoder_semantic_ids": [_t(enc[f"encoder_l{i}_ids"]) for i in (1, 2, 3)],
        "encoder_positions": _t(enc["encoder_positions"]),
        "encoder_token_types": _t(enc["encoder_token_types"]),
        "encoder_mask": _t(enc["encoder_mask"]),
        "chosen_ids": _t(arrays["chosen_ids"]),  # [3]
        "rejected_ids": _t(arrays["rejected_ids"]),  # [3]
        "preference_score": torch.tensor(float(arrays["preference_score"]), dtype=torch.float32),
    }


def _fast_recommend_arrays(row: Mapping[str, Any]) -> Dict[str, Any]:
    """已经整表校验过的行：只做类型转换。"""
    out: Dict[str, Any] = {"user_id": str(row["user_id"])}
    for f in ENCODER_LIST_FIELDS + DECODER_LIST_FIELDS + LABEL_LIST_FIELDS:
        out[f] = np.asarray(row[f], dtype=np.int64)
    return out


def _fast_preference_arrays(row: Mapping[str, Any]) -> Dict[str, Any]:
    seq = row["user_sequence"]
    out: Dict[str, Any] = {"user_id": str(row["user_id"])}
    for f in ENCODER_LIST_FIELDS:
        out[f] = np.asarray(seq[f], dtype=np.int64)
    out["chosen_ids"] = np.asarray([row["chosen_item"][k] for k in ("l1_id", "l2_id", "l3_id")], dtype=np.int64)
    out["rejected_ids"] = np.asarray([row["rejected_item"][k] for k in ("l1_id", "l2_id", "l3_id")], dtype=np.int64)
    score = row.get("preference_score")
    out["preference_score"] = 1.0 if score is None else float(score)
    return out


# --------------------------------------------------------------------------------------------
# 映射式数据集的公共部分
# --------------------------------------------------------------------------------------------


class _ValidatedArrowDataset(torch.utils.data.Dataset):
    """load_dataset + 校验 + 按行取张量；子类只给出记录类型和转换函数。"""

    record_type = "recommend"

    def __init__(
        self,
        data_path: Any,
        max_encoder_length: int,
        max_decoder_length: Optional[int],
        pad_token_id: int,
        lazy_loading: bool,
        vocab_sizes: Optional[Sequence[int]],
        max_seq_length: Optional[int],
        cache_dir: Optional[str],
        validate_batch_size: int,
    ):
        check_positive("max_encoder_length", max_encoder_length)
        check_positive("max_decoder_length", max_decoder_length, allow_none=True)
        check_positive("max_seq_length", max_seq_length, allow_none=True)
        check_positive("validate_batch_size", validate_batch_size)
        self.data_path = data_path
        self.max_encoder_length = max_encoder_length
        self.max_decoder_length = max_decoder_length
        self.pad_token_id = pad_token_id
        self.lazy_loading = bool(lazy_loading)
        self.vocab_sizes = check_vocab_sizes(vocab_sizes)
        self.max_seq_length = max_seq_length
        self.files: List[str] = resolve_data_files(data_path)
        formats = {file_format(f) for f in self.files}
        if len(formats) > 1:
            raise DataValidationError(
                f"mixed file formats {sorted(formats)} in one dataset; use one format per dataset",
                path=", ".join(self.files),
            )
        self.format = formats.pop()
        precheck_files(self.files, self.record_type)
        self.hf_dataset = self._load(cache_dir)
        self._check_schema()
        if not self.lazy_loading:
            self._validate_all(validate_batch_size)

    # ---- 逐条校验（惰性模式、错误定位共用）----
    def _validate_record(self, record: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def _fast_arrays(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def _to_sample(self, arrays: Mapping[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    # ---- 加载 ----
    def _load(self, cache_dir: Optional[str]):
        try:
            return datasets.load_dataset(self.format, data_files=self.files, split="train", cache_dir=cache_dir)
        except Exception as e:  # HF 把解析错误包成 DatasetGenerationError，没有行号
            if self.format == "json":
                # 快速路径失败：逐行扫描找出第一处问题（带文件、行号、字段）
                scan_json_files(self.files, self._validate_record)
            cause = e.__cause__ or e
            raise DataValidationError(
                f"datasets.load_dataset failed: {type(cause).__name__}: {cause}",
                path=", ".join(self.files),
            ) from e

    def _check_schema(self) -> None:
        problem = check_arrow_schema(self.hf_dataset.data.schema, self.record_type)
        if problem is not None:
            if self.format == "json":
                # JSON 的列类型是推断出来的（例如某行的 id 是字符串），逐行扫描能指出是哪一行
                scan_json_files(self.files, self._validate_record)
            raise DataValidationError(problem[1], path=", ".join(self.files), field=problem[0])

    def _raise_at_row(self, row: int, rule_field: str) -> None:
        path, line, prow = locate_row(self.files, row)
        try:
            self._validate_record(self._row(row))
        except DataValidationError as e:
            raise e.with_location(path=path, line=line, row=prow) from None
        # 两套规则不一致时也不放过：用向量化规则的字段名报错
        raise DataValidationError("invalid value", path=path, line=line, row=prow, field=rule_field)

    def _validate_all(self, batch_size: int) -> None:
        """整表向量化校验；只在发现问题时才回到逐条校验生成精确信息。"""
        table_view = self.hf_dataset.with_format("arrow")
        n = len(self.hf_dataset)
        for start in range(0, n, batch_size):
            batch = table_view[start : start + batch_size]
            text = first_invalid_utf8(batch)
            if text is not None:
                # 更早的行若有别的问题，先报那一行（与逐条读取时先遇到的问题一致）
                earlier = vector_check_table(batch.slice(0, text[0]), self.record_type, self.vocab_sizes,
                                             self.max_encoder_length, self.max_decoder_length, self.max_seq_length)
                row, field = text[:2] if earlier is None else earlier
                self._raise_at_row(start + row, field)
            bad = vector_check_table(
                batch,
                self.record_type,
                self.vocab_sizes,
                self.max_encoder_length,
                self.max_decoder_length,
                self.max_seq_length,
            )
            if bad is not None:
                self._raise_at_row(start + bad[0], bad[1])
        if is_json_extension(self.hf_dataset.data.schema.field("user_id").type):
            # user_id 混合了 int 和 str：HF 存成 JSON 列，逐个检查解码后的值
            for i, uid in enumerate(self.hf_dataset["user_id"]):
                if uid is None or isinstance(uid, bool) or not isinstance(uid, (int, str)):
                    self._raise_at_row(i, "user_id")

    def _row(self, idx: int) -> Dict[str, Any]:
        """hf_dataset[idx]；记录里有非 UTF-8 字节时（Arrow 解码成 str 时才发现）报出文件、行与字段。"""
        try:
            return self.hf_dataset[idx]
        except UnicodeDecodeError:
            pass
        idx = idx if idx >= 0 else idx + len(self)
        path, line, prow = locate_row(self.files, idx)
        bad = first_invalid_utf8(self.hf_dataset.with_format("arrow")[idx : idx + 1])
        reason = bad[2] if bad is not None else "invalid byte sequence"
        # 不写字段：流式读取按字节逐行解码，只知道文件与行；三种读取方式报同一个位置
        raise DataValidationError(f"file is not valid UTF-8: {reason}", path=path, line=line, row=prow) from None

    # ---- torch Dataset ----
    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        if isinstance(idx, (np.integer, torch.Tensor)):
            idx = int(idx)
        row = self._row(idx)
        if self.lazy_loading:
            try:
                arrays = self._validate_record(row)
            except DataValidationError as e:
                path, line, prow = locate_row(self.files, idx if idx >= 0 else idx + len(self))
                raise e.with_location(path=path, line=line, row=prow) from None
        else:
            arrays = self._fast_arrays(row)
        return self._to_sample(arrays)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(files={self.files}, num_rows={len(self)}, lazy_loading={self.lazy_loading})"


class RecommendDataset(_ValidatedArrowDataset):
    """规格的推荐训练数据集（记录格式见 schema.RECOMMEND_FIELDS）。

    Args:
        data_path: .jsonl/.json/.parquet 文件、目录（按文件名排序读取其中的文件）、glob，或它们的列表。
        max_encoder_length: encoder 保留最近的 token 数。
        max_decoder_length: decoder/labels 保留前面的 token 数。
        pad_token_id: 记录给 collator 用（数据集本身不 padding）。
        lazy_loading: False = 打开时整表校验；True = 只查 schema，访问时逐条校验。
        vocab_sizes: 三层词表大小，id 必须落在 [0, V)，labels 还可以是 -100。
        max_seq_length: 截断后的位置必须 < max_seq_length（模型位置表大小）；None 不查。
        cache_dir: HF datasets 的 Arrow 缓存目录（None = HF 默认）。
        tokenizer: 规格接口的兼容参数；记录里已是语义 ID，不使用。

    `__getitem__` 返回规格第 2 节的结构：encoder_semantic_ids（3 个 [Te]）、encoder_positions、
    encoder_token_types、encoder_mask、decoder_semantic_ids（3 个 [Td]）、decoder_positions、decoder_token_types、
    decoder_mask、labels（3 个 [Td]），都是 LongTensor；另有 user_id（str）。`.hf_dataset` 是底层 HF Dataset。
    """

    record_type = "recommend"

    def __init__(
        self,
        data_path: Any,
        max_encoder_length: int = 512,
        max_decoder_length: int = 128,
        pad_token_id: int = 0,
        lazy_loading: bool = False,
        vocab_sizes: Optional[Sequence[int]] = DEFAULT_VOCAB_SIZES,
        max_seq_length: Optional[int] = 1024,
        cache_dir: Optional[str] = None,
        tokenizer: Any = None,
        validate_batch_size: int = 65536,
    ):
        self.tokenizer = tokenizer
        super().__init__(
            data_path,
            max_encoder_length,
            max_decoder_length,
            pad_token_id,
            lazy_loading,
            vocab_sizes,
            max_seq_length,
            cache_dir,
            validate_batch_size,
        )

    def _validate_record(self, record: Any) -> Dict[str, Any]:
        return validate_recommend_record(
            record, self.vocab_sizes, self.max_encoder_length, self.max_decoder_length, self.max_seq_length
        )

    def _fast_arrays(self, row):
        return _fast_recommend_arrays(row)

    def _to_sample(self, arrays):
        return recommend_sample(arrays, self.max_encoder_length, self.max_decoder_length)

    def __getitems__(self, indices: Sequence[int]) -> RowBatch:
        """torch DataLoader 一次取一批时调用：返回按需取样本的 RowBatch，DataCollator 在 Arrow 列上整批拼它。"""
        return RowBatch(self, indices)

    def collate(self, indices: Sequence[int], semantic_pad_id: int = 0,
                label_pad_token_id: int = IGNORE_INDEX) -> Dict[str, torch.Tensor]:
        """这些行拼成的批次，等于 `DataCollator(semantic_pad_id=..., label_pad_token_id=...)([self[i] for i in
        indices])`，但在 Arrow 列上整批截断与 padding（见 collate_recommend_table：评估与自生成偏好对逐条取样本
        的开销）。惰性模式的记录还没校验，走逐条路径（逐条校验、报错带位置）。"""
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("RecommendDataset.collate got no indices")
        n = len(self)
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise IndexError(f"index {bad[0]} is out of range for a dataset of {n} rows")
        if self.lazy_loading:
            return DataCollator(semantic_pad_id=semantic_pad_id, label_pad_token_id=label_pad_token_id)(
                [self[i] for i in idx])
        table = self.hf_dataset.with_format("arrow")[[i % n for i in idx]]
        return collate_recommend_table(table, self.max_encoder_length, self.max_decoder_length,
                                       semantic_pad_id, label_pad_token_id)

    def lengths(self) -> List[int]:
        """每条样本截断后的 encoder 长度（按长度分组采样用；直接读 Arrow 列，不逐条解码）。"""
        col = self.hf_dataset.data.column("encoder_l1_ids")
        return np.minimum(pc.list_value_length(col).to_numpy(zero_copy_only=False), self.max_encoder_length).tolist()


class PreferenceDataset(_ValidatedArrowDataset):
    """规格的 DPO 偏好数据集：user_id、user_sequence{encoder_* 列表}、chosen_item / rejected_item{l1_id,l2_id,l3_id}、
    可选 preference_score（缺省 1.0，必须有限且 >= 0）。chosen 与 rejected 相同的记录报错。

    `__getitem__` 返回 encoder 张量（同 RecommendDataset）+ chosen_ids [3] + rejected_ids [3] +
    preference_score（float32 标量）+ user_id。
    """

    record_type = "preference"

    def __init__(
        self,
        data_path: Any,
        max_encoder_length: int = 512,
        vocab_sizes: Optional[Sequence[int]] = DEFAULT_VOCAB_SIZES,
        max_seq_length: Optional[int] = 1024,
        lazy_loading: bool = False,
        pad_token_id: int = 0,
        cache_dir: Optional[str] = None,
        validate_batch_size: int = 65536,
    ):
        super().__init__(
            data_path,
            max_encoder_length,
            None,
            pad_token_id,
            lazy_loading,
            vocab_sizes,
            max_seq_length,
            cache_dir,
            validate_batch_size,
        )

    def _validate_record(self, record: Any) -> Dict[str, Any]:
        return validate_preference_record(record, self.vocab_sizes, self.max_encoder_length, self.max_seq_length)

    def _fast_arrays(self, row):
        return _fast_preference_arrays(row)

    def _to_sample(self, arrays):
        return preference_sample(arrays, self.max_encoder_length)


# --------------------------------------------------------------------------------------------
# 流式数据集
# --------------------------------------------------------------------------------------------


def _iter_file_records(path: str) -> Iterator[tuple]:
    """产出 (位置参数 dict, 原始记录)：JSONL 给 line（从 1 开始），Parquet 给 row（从 0 开始）。"""
    if file_format(path) == "json":
        for lineno, obj in iter_jsonl(path):
            yield {"line": lineno}, obj
    else:
        # 一次只读一个行组：整文件的 iter_batches 的读缓冲随文件变大（HF 的 shuffle 同时读最多 10 个 shard，
        # 流式训练的内存就随数据量涨）；按行组读，每个读者只占一个行组
        row = 0
        pf = pq.ParquetFile(path)
        for group in range(pf.metadata.num_row_groups):
            for batch in pf.iter_batches(batch_size=1024, row_groups=[group]):
                for rec in batch.to_pylist():
                    yield {"row": row}, rec
                    row += 1


def _generate_stream_records(shards: List[str], config: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """HF from_generator 的生成函数（模块级，才能被 DataLoader 工作进程 pickle）：逐条读取并校验。"""
    preference = config["record_type"] == "preference"
    for path in shards:
        n = 0
        for loc, rec in _iter_file_records(path):
            try:
                if preference:
                    arrays = validate_preference_record(
                        rec, config["vocab_sizes"], config["max_encoder_length"], config["max_seq_length"]
                    )
                else:
                    arrays = validate_recommend_record(
                        rec,
                        config["vocab_sizes"],
                        config["max_encoder_length"],
                        config["max_decoder_length"],
                        config["max_seq_length"],
                    )
            except DataValidationError as e:
                raise e.with_location(path=path, **loc) from None
            n += 1
            yield arrays  # 已校验的 int64 数组（未截断）；没有 features，HF 原样传递
        if n == 0:
            raise DataValidationError("empty file (no records)", path=path)


def resolve_world(world_size: Optional[int], rank: Optional[int]) -> tuple:
    """world_size/rank 未给出时取 torch.distributed（已初始化时），否则取环境变量 WORLD_SIZE / RANK。"""
    if world_size is None or rank is None:
        ws, rk = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ws, rk = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            try:
                ws = int(os.environ.get("WORLD_SIZE", "1"))
                rk = int(os.environ.get("RANK", "0"))
            except ValueError as e:
                raise ValueError(f"cannot parse WORLD_SIZE/RANK environment variables: {e}") from None
        world_size = ws if world_size is None else world_size
        rank = rk if rank is None else rank
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    return world_size, rank


class StreamingDataset(torch.utils.data.IterableDataset):
    """规格 5.3 的流式数据集：按 shard 文件流式读取，逐条校验（错误指出 shard 文件与行号）。

    每个 epoch 恰好一次（跨 rank 与 DataLoader worker）的做法全部交给 HF datasets：
    - shard 数是 world_size 的倍数时按 shard 分给各 rank；否则每个 rank 读全部 shard、按样本步长取 1/world_size
      （I/O 多 world_size 倍，但仍然恰好一次）；
    - 每个 rank 内再按 shard 分给 DataLoader worker，worker 数多于 shard 时多出来的 worker 不产出数据。
    前提（HF 的约定）：所有 rank 用相同的 seed、相同的 num_workers。想要最少 I/O，让 shard 数是
    world_size × num_workers 的倍数。各 rank 的样本数可能相差，DDP 训练需 max_steps 或 Accelerate 的
    even_batches 处理。

    Args:
        data_paths: shard 文件列表（或目录 / glob）；JSONL 与 Parquet 可混用。
        shuffle: 打乱 shard 顺序 + 大小为 buffer_size 的样本缓冲区；False 时顺序固定，set_epoch 不改变顺序。
        world_size / rank: 默认取 torch.distributed 或环境变量 WORLD_SIZE / RANK。
        seed: 打乱的种子；set_epoch(e) 在其上叠加 epoch，每个 epoch 顺序不同且可复现。
        record_type: "recommend"（默认，产出同 RecommendDataset.__getitem__）或 "preference"。
    """

    def __init__(
        self,
        data_paths: Any,
        shuffle: bool = True,
        world_size: Optional[int] = None,
        rank: Optional[int] = None,
        seed: int = 42,
        buffer_size: int = 10000,
        vocab_sizes: Optional[Sequence[int]] = DEFAULT_VOCAB_SIZES,
        max_encoder_length: int = 512,
        max_decoder_length: int = 128,
        max_seq_length: Optional[int] = 1024,
        pad_token_id: int = 0,
        record_type: str = "recommend",
    ):
        if record_type not in ("recommend", "preference"):
            raise ValueError(f"record_type must be 'recommend' or 'preference', got {record_type!r}")
        check_positive("buffer_size", buffer_size)
        check_positive("max_encoder_length", max_encoder_length)
        check_positive("max_decoder_length", max_decoder_length)
        check_positive("max_seq_length", max_seq_length, allow_none=True)
        self.files = resolve_data_files(data_paths)
        precheck_files(self.files, record_type)
        self.world_size, self.rank = resolve_world(world_size, rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.buffer_size = buffer_size
        self.vocab_sizes = check_vocab_sizes(vocab_sizes)
        self.max_encoder_length = max_encoder_length
        self.max_decoder_length = max_decoder_length
        self.max_seq_length = max_seq_length
        self.pad_token_id = pad_token_id
        self.record_type = record_type
        self.epoch = 0
        config = {
            "record_type": record_type,
            "vocab_sizes": self.vocab_sizes,
            "max_encoder_length": max_encoder_length,
            "max_decoder_length": max_decoder_length,
            "max_seq_length": max_seq_length,
        }
        # 一个文件 = 一个 shard：gen_kwargs 里的列表就是 HF 分片的单位
        ds = datasets.IterableDataset.from_generator(
            _generate_stream_records, gen_kwargs={"shards": list(self.files), "config": config}
        )
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed, buffer_size=buffer_size)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        self.hf_dataset = ds

    @property
    def num_shards(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """换 epoch 改变打乱顺序（HF 用共享内存里的 epoch，persistent_workers 也能看到）。"""
        self.epoch = int(epoch)
        if self.shuffle:
            # shuffle=False 时不传给 HF：它在 epoch > 0 时会打乱 shard 顺序
            self.hf_dataset.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for arrays in self.hf_dataset:
            if self.record_type == "preference":
                yield preference_sample(arrays, self.max_encoder_length)
            else:
                yield recommend_sample(arrays, self.max_encoder_length, self.max_decoder_length)

    def __repr__(self) -> str:
        return (
            f"StreamingDataset(num_shards={self.num_shards}, world_size={self.world_size}, rank={self.rank}, "
            f"shuffle={self.shuffle}, seed={self.seed}, buffer_size={self.buffer_size})"
        )
