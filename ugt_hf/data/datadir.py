"""`ugt prepare` 的产物目录：meta.json、items.parquet、各划分文件，以及由它们构造的数据集、物品目录与 tokenizer。

训练各阶段、离线评估、流水线读同一个目录时都经过这里，文件名与“先 Parquet、后 JSONL”的规则只写一次
（文件格式见 `schema`）。DataDir 只读；写目录的是 `prepare`。

依赖方向：本模块在 generation / tokenization_ugt / data.datasets 之上；它们都不导入本模块
（tokenizer 若要读 meta，用 `read_meta`，但不要在 tokenization_ugt 里导入本模块，否则成环）。
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from ..generation import ItemCatalogue
from ..tokenization_ugt import UGTTokenizer
from .datasets import PreferenceDataset, RecommendDataset
from .schema import ITEMS_FILE, META_FILE, PREFERENCE_SPLITS, SPLITS
from .validation import DataValidationError

SPLIT_EXTENSIONS = ("parquet", "jsonl")  # 同名划分两种都有时优先 Parquet（读得快、类型明确）
DEFAULT_ENCODER_MAX_LENGTH = 50  # 旧产物的 meta 没有 encoder_max_length 时的取值（与 tokenizer 的缺省一致）
DEFAULT_DECODER_MAX_LENGTH = 128  # 同上，RecommendDataset 的缺省

PathLike = Union[str, os.PathLike]


def read_meta(folder: PathLike) -> Dict[str, Any]:
    """读 folder/meta.json。缺文件 -> FileNotFoundError；非 UTF-8、非 JSON 对象 -> DataValidationError（带文件名）。"""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found — is '{folder}' a folder written by `ugt prepare`?")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataValidationError(f"file is not valid UTF-8: {e.reason}", path=str(path)) from None
    except json.JSONDecodeError as e:
        reason = f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        raise DataValidationError(reason, path=str(path)) from None
    if not isinstance(meta, dict):
        raise DataValidationError(f"expected a JSON object, got {type(meta).__name__}", path=str(path))
    return meta


@contextlib.contextmanager
def _readable_parquet(path: Path):
    """pyarrow 对坏 Parquet 抛 ArrowInvalid（消息里有路径，但不是我们的错误类型、CLI 会当成程序缺陷）。"""
    try:
        yield
    except pa.ArrowInvalid as e:
        raise DataValidationError(f"not a readable Parquet file ({e}); rerun `ugt prepare`", path=str(path)) from None


class DataDir:
    """一个准备好的数据目录。meta 与物品目录在第一次用到时读取并缓存（目录在使用期间不应被改写）。

    Args:
        path: 目录；也可以传入 DataDir（原样使用其路径）
    """

    def __init__(self, path: Union[PathLike, "DataDir"]):
        self.path = Path(path.path if isinstance(path, DataDir) else path)
        self._meta: Optional[Dict[str, Any]] = None
        self._catalogue: Optional[ItemCatalogue] = None

    @classmethod
    def of(cls, value: Union[PathLike, "DataDir"]) -> "DataDir":
        """路径或 DataDir -> DataDir（已是 DataDir 时原样返回，保留缓存）。"""
        return value if isinstance(value, DataDir) else cls(value)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r})"

    # ---- 文件 ----

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    @property
    def items_path(self) -> Path:
        return self.path / ITEMS_FILE

    def missing_files(self) -> List[Path]:
        """必需文件（items.parquet、meta.json）中不存在的那些；空列表 = 看起来是 prepare 的产物目录。"""
        return [p for p in (self.items_path, self.meta_path) if not p.is_file()]

    def has_split(self, split: str) -> bool:
        return any((self.path / f"{split}.{ext}").is_file() for ext in SPLIT_EXTENSIONS)

    def split_path(self, split: str) -> Path:
        """划分名（train、valid、test、preference_train、preference_test）-> 文件；优先 Parquet，其次 JSONL。"""
        for ext in SPLIT_EXTENSIONS:
            p = self.path / f"{split}.{ext}"
            if p.is_file():
                return p
        raise FileNotFoundError(f"{self.path}: no {split}.parquet or {split}.jsonl")

    def _resolve(self, split_or_path: PathLike) -> Path:
        """划分名 -> 该划分的文件；其余值视为显式路径（如配置里的 train_data_path）原样使用。"""
        name = os.fspath(split_or_path)
        if name in SPLITS or name in PREFERENCE_SPLITS:
            return self.split_path(name)
        return Path(name)

    def read_table(self, split: str, columns: Optional[Sequence[str]] = None):
        """划分的 Parquet 表（pyarrow.Table，只读给出的列）；基线统计用，不做记录校验。"""
        return pq.read_table(self.split_path(split), columns=None if columns is None else list(columns))

    # ---- meta ----

    @property
    def meta(self) -> Dict[str, Any]:
        if self._meta is None:
            self._meta = read_meta(self.path)
        return self._meta

    @property
    def vocab_sizes(self) -> List[int]:
        try:
            return [int(v) for v in self.meta["vocab_sizes"]]
        except (KeyError, TypeError, ValueError):
            raise DataValidationError("'vocab_sizes' must be a list of three integers", path=str(self.meta_path),
                                      field="vocab_sizes") from None

    @property
    def semantic_pad_id(self) -> int:
        """BOS / padding 用的语义 ID（meta 里的键沿用 prepare 写的 pad_token_id）。"""
        return int(self.meta.get("pad_token_id", 0))

    @property
    def pad_token_id(self) -> int:
        """旧名，等于 semantic_pad_id。"""
        return self.semantic_pad_id

    @property
    def encoder_max_length(self) -> int:
        return int(self.meta.get("encoder_max_length", DEFAULT_ENCODER_MAX_LENGTH))

    @property
    def decoder_max_length(self) -> int:
        return int(self.meta.get("decoder_max_length", DEFAULT_DECODER_MAX_LENGTH))

    @property
    def splits(self) -> Dict[str, int]:
        """meta 里记录的各划分样本数（没有记录的划分不在其中）。"""
        return {str(k): int(v) for k, v in (self.meta.get("splits") or {}).items()}

    def num_records(self, split: str) -> int:
        return self.splits.get(split, 0)

    # ---- 构造 ----

    def catalogue(self) -> ItemCatalogue:
        """items.parquet 的物品目录（按 meta 的词表大小检查越界）；缓存。"""
        if self._catalogue is None:
            vocab = self.meta.get("vocab_sizes")
            with _readable_parquet(self.items_path):
                self._catalogue = ItemCatalogue.from_parquet(self.items_path, vocab_sizes=vocab)
        return self._catalogue

    def tokenizer(self, **kwargs: Any) -> UGTTokenizer:
        """items.parquet 的 UGTTokenizer；词表大小与编码器长度取自 meta（kwargs 可覆盖，传给 from_items_parquet）。"""
        kwargs.setdefault("vocab_sizes", self.meta.get("vocab_sizes"))
        kwargs.setdefault("encoder_max_length", self.encoder_max_length)
        with _readable_parquet(self.items_path):
            return UGTTokenizer.from_items_parquet(self.items_path, **kwargs)

    def recommend_dataset(
        self,
        split: PathLike = "train",
        max_encoder_length: Optional[int] = None,
        max_decoder_length: Optional[int] = None,
        **kwargs: Any,
    ) -> RecommendDataset:
        """划分（或显式路径）的 RecommendDataset。长度缺省取 meta（即 prepare 写出时的长度，截断为空操作）；
        词表大小与 pad_token_id 总是取 meta；其余 kwargs 传给 RecommendDataset。"""
        return RecommendDataset(
            str(self._resolve(split)),
            vocab_sizes=self.vocab_sizes,
            max_encoder_length=self.encoder_max_length if max_encoder_length is None else int(max_encoder_length),
            max_decoder_length=self.decoder_max_length if max_decoder_length is None else int(max_decoder_length),
            pad_token_id=self.pad_token_id,
            **kwargs,
        )

    def preference_dataset(
        self, split: PathLike = "preference_train", max_encoder_length: Optional[int] = None, **kwargs: Any
    ) -> PreferenceDataset:
        """偏好划分（或显式路径）的 PreferenceDataset；长度缺省取 meta，词表大小取 meta。"""
        return PreferenceDataset(
            str(self._resolve(split)),
            vocab_sizes=self.vocab_sizes,
            max_encoder_length=self.encoder_max_length if max_encoder_length is None else int(max_encoder_length),
            **kwargs,
        )


__all__ = ["DataDir", "read_meta"]
