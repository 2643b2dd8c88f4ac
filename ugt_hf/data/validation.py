"""记录校验：一个异常类型 + 逐条（Python）校验 + 整表（pyarrow/numpy 向量化）校验。

为什么有两套：逐条校验给出精确的字段与元素位置，用于流式读取、惰性读取、collator 的原始记录和错误定位；
向量化校验只负责“快速找出第一条坏记录”（20 万条几秒内），找到后再交给逐条校验生成精确信息，
因此错误文字只有一个来源，两套规则不一致时也不会静默放过（退回到向量化规则自己的字段名）。

所有错误都是 `DataValidationError(ValueError)`，带 `.path/.line/.row/.field`，训练器和 CLI 直接打印即可。
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ugt_hf.data.schema import (
    DECODER_LIST_FIELDS,
    ENCODER_LIST_FIELDS,
    ITEM_TRIPLE_FIELDS,
    LABEL_LIST_FIELDS,
    PREFERENCE_FIELDS,
    RECOMMEND_FIELDS,
)
from ugt_hf.interfaces import IGNORE_INDEX, NUM_LEVELS, SPECIAL_TOKEN_TYPE

# 规格默认的三层词表大小（L1/L2/L3）
DEFAULT_VOCAB_SIZES = (1024, 4096, 16384)

JSON_EXTENSIONS = (".jsonl", ".json")
PARQUET_EXTENSIONS = (".parquet",)
codecs_bom = b"\xef\xbb\xbf"  # UTF-8 BOM


class DataValidationError(ValueError):
    """数据错误：消息里依次写出文件、行（JSONL，从 1 开始）或行号（Parquet，从 0 开始）、字段和原因。"""

    def __init__(
        self,
        reason: str,
        *,
        path: Optional[str] = None,
        line: Optional[int] = None,
        row: Optional[int] = None,
        field: Optional[str] = None,
    ):
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.row = row
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def with_location(
        self, path: Optional[str] = None, line: Optional[int] = None, row: Optional[int] = None
    ) -> "DataValidationError":
        """补上位置（逐条校验只知道字段，读文件的一方知道文件和行）。"""
        return DataValidationError(
            self.reason,
            path=self.path if path is None else path,
            line=self.line if line is None else line,
            row=self.row if row is None else row,
            field=self.field,
        )

    def __reduce__(self):
        # DataLoader 工作进程把异常 pickle 回主进程，需要保留关键字参数
        return (_rebuild_error, (self.reason, self.path, self.line, self.row, self.field))


def _rebuild_error(reason, path, line, row, field):
    return DataValidationError(reason, path=path, line=line, row=row, field=field)


# --------------------------------------------------------------------------------------------
# 参数检查
# --------------------------------------------------------------------------------------------


def check_vocab_sizes(vocab_sizes: Optional[Sequence[int]]) -> Optional[Tuple[int, int, int]]:
    if vocab_sizes is None:
        return None
    sizes = tuple(vocab_sizes)
    if len(sizes) != NUM_LEVELS or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sizes):
        raise ValueError(f"vocab_sizes must be {NUM_LEVELS} positive integers, got {vocab_sizes!r}")
    return sizes  # type: ignore[return-value]


def check_positive(name: str, value: Optional[int], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# 截断：encoder 保留最近的 token（开头的特殊 token 保留），decoder 保留前面的 token
# --------------------------------------------------------------------------------------------


def encoder_keep_indices(token_types: np.ndarray, max_length: int) -> Tuple[np.ndarray, int]:
    """返回保留的下标与“尾部”起点在保留序列里的位置。

    超长时保留最近的 max_length 个 token；若第一个 token 是特殊位（token_type 0，如规格示例里的用户/BOS 位），
    它被保留，只截掉它后面较早的物品（否则截断会丢掉用户位）。
    """
    n = len(token_types)
    if n <= max_length:
        return np.arange(n), 0
    if max_length >= 2 and int(token_types[0]) == SPECIAL_TOKEN_TYPE:
        return np.concatenate([[0], np.arange(n - (max_length - 1), n)]), 1
    return np.arange(n - max_length, n), 0


def encoder_truncation_rows(lengths: np.ndarray, first_type: np.ndarray, max_length: int):
    """encoder_keep_indices 的规则按行向量化：(超长的行, 其中保留开头特殊位的行)，都是 [B] bool。"""
    trunc = lengths > max_length
    return trunc, trunc & (max_length >= 2) & (first_type == SPECIAL_TOKEN_TYPE)


def truncate_encoder(
    arrays: Mapping[str, np.ndarray], max_length: int, fields=ENCODER_LIST_FIELDS, prefix: str = ""
) -> Dict[str, np.ndarray]:
    """按 encoder_keep_indices 截断一组 encoder 列；位置重新对齐，使保留的尾部紧接在原来的起始位置后。"""
    types = arrays[prefix + "encoder_token_types"]
    keep, head = encoder_keep_indices(types, max_length)
    out = {f: arrays[prefix + f][keep] for f in fields}
    if len(keep) < len(types):
        pos = out["encoder_positions"].copy()
        # 尾部第一个保留 token 的位置改成原序列在同一槽位（head）的位置，后面的相对间隔不变
        orig = arrays[prefix + "encoder_positions"]
        pos[head:] = pos[head:] - pos[head] + orig[head]
        out["encoder_positions"] = pos
    return out


def truncate_decoder(
    arrays: Mapping[str, np.ndarray], max_length: int, fields=DECODER_LIST_FIELDS + LABEL_LIST_FIELDS
) -> Dict[str, np.ndarray]:
    return {f: arrays[f][:max_length] for f in fields}


# --------------------------------------------------------------------------------------------
# 逐条校验
# --------------------------------------------------------------------------------------------


def _type_name(x: Any) -> str:
    return type(x).__name__


def _is_int(x: Any) -> bool:
    return (type(x) is int) or (isinstance(x, np.integer) and not isinstance(x, np.bool_))


def as_int_array(value: Any, field: str) -> np.ndarray:
    """把一个字段转成 int64 数组；非整数元素（含 bool、浮点、字符串、null）报错并指出下标。"""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise DataValidationError(f"expected a list of integers, got array of dtype {value.dtype}", field=field)
        if value.ndim != 1:
            raise DataValidationError(
                f"expected a 1-D list of integers, got array of shape {value.shape}", field=field
            )
        return value.astype(np.int64, copy=False)
    if hasattr(value, "numpy") and hasattr(value, "dtype") and hasattr(value, "dim"):  # torch.Tensor
        return as_int_array(value.detach().cpu().numpy(), field)
    if value is None:
        raise DataValidationError("missing required field (null)", field=field)
    if not isinstance(value, (list, tuple)):
        raise DataValidationError(f"expected a list of integers, got {_type_name(value)} {value!r:.60}", field=field)
    if not all(type(x) is int for x in value):
        for i, x in enumerate(value):
            if not _is_int(x):
                raise DataValidationError(
                    f"element {i} is {x!r:.40} ({_type_name(x)}), expected an integer", field=field
                )
    try:
        return np.asarray(value, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise DataValidationError("integer does not fit in int64", field=field) from None


def check_values(arr: np.ndarray, field: str, kind: str, vocab_sizes: Optional[Sequence[int]], level: int = 0) -> None:
    """按字段种类检查取值范围：id / label / mask / type / pos。"""
    if arr.size == 0:
        return
    if kind in ("id", "label"):
        upper = None if vocab_sizes is None else int(vocab_sizes[level])
        bad = arr < 0 if upper is None else (arr < 0) | (arr >= upper)
        if kind == "label":
            bad &= arr != IGNORE_INDEX
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            v = int(arr[i])
            rng = f"[0, {upper})" if upper is not None else "[0, inf)"
            what = "negative id" if v < 0 else "out-of-vocabulary id"
            extra = f" or {IGNORE_INDEX}" if kind == "label" else ""
            raise DataValidationError(
                f"{what} {v} at index {i}: level L{level + 1} ids must be in {rng}{extra}", field=field
            )
    elif kind == "mask":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"mask value {int(arr[i])} at index {i}, expected 0 or 1", field=field)
    elif kind in ("type", "pos"):
        bad = arr < 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"negative value {int(arr[i])} at index {i}", field=field)


# 每个列表字段的种类与层级
FIELD_KINDS: Dict[str, Tuple[str, int]] = {}
for _lvl in range(NUM_LEVELS):
    FIELD_KINDS[f"encoder_l{_lvl + 1}_ids"] = ("id", _lvl)
    FIELD_KINDS[f"decoder_l{_lvl + 1}_ids"] = ("id", _lvl)
    FIELD_KINDS[f"labels_l{_lvl + 1}"] = ("label", _lvl)
for _side in ("encoder", "decoder"):
    FIELD_KINDS[f"{_side}_positions"] = ("pos", 0)
    FIELD_KINDS[f"{_side}_token_types"] = ("type", 0)
    FIELD_KINDS[f"{_side}_mask"] = ("mask", 0)


def _check_user_id(record: Mapping[str, Any]) -> str:
    uid = record.get("user_id")
    if uid is None:
        raise DataValidationError("missing required field (or null)", field="user_id")
    if isinstance(uid, str):
        if not uid.strip():  # 空 id 会把不同用户的记录并成一个“用户”（评估的排除历史、偏好对都按用户分组）
            raise DataValidationError("empty user id (every record needs a non-empty user_id)", field="user_id")
        return uid
    if _is_int(uid) and not isinstance(uid, bool):
        return str(int(uid))
    raise DataValidationError(f"expected an int or a string, got {_type_name(uid)} {uid!r:.40}", field="user_id")


def _check_record_fields(record: Any, fields: Sequence[str]) -> Dict[str, Any]:
    """记录必须是对象且 fields 齐全（非 null）；返回以规范化 user_id 开头的输出字典。"""
    if not isinstance(record, Mapping):
        raise DataValidationError(f"record is not a JSON object (got {_type_name(record)})")
    for f in fields:
        if f not in record or record[f] is None:
            raise DataValidationError("missing required field (or null)", field=f)
    return {"user_id": _check_user_id(record)}


def _check_int_lists(
    seq: Mapping[str, Any], fields: Sequence[str], prefix: str, vocab_sizes: Optional[Sequence[int]], empty_reason: str
) -> Dict[str, np.ndarray]:
    """一组等长的整数列表（fields[0] 是长度基准）：转 int64、查长度一致、非空、取值范围。"""
    arrays: Dict[str, np.ndarray] = {}
    for f in fields:
        if f not in seq or seq[f] is None:
            raise DataValidationError("missing required field (or null)", field=prefix + f)
        arrays[f] = as_int_array(seq[f], prefix + f)
    ref = fields[0]
    n = len(arrays[ref])
    for f in fields[1:]:
        if len(arrays[f]) != n:
            raise DataValidationError(
                f"length {len(arrays[f])} differs from {prefix}{ref} length {n}", field=prefix + f
            )
    if n == 0:
        raise DataValidationError(empty_reason, field=prefix + ref)
    for f in fields:
        kind, lvl = FIELD_KINDS[f]
        check_values(arrays[f], prefix + f, kind, vocab_sizes, lvl)
    return arrays


def _check_encoder_lists(
    seq: Mapping[str, Any],
    prefix: str,
    vocab_sizes: Optional[Sequence[int]],
    max_encoder_length: Optional[int],
    max_seq_length: Optional[int],
) -> Dict[str, np.ndarray]:
    arrays = _check_int_lists(
        seq, ENCODER_LIST_FIELDS, prefix, vocab_sizes, "empty encoder sequence (at least one token is required)"
    )
    if max_seq_length is not None and max_encoder_length is not None:
        pos = truncate_encoder(arrays, max_encoder_length, fields=("encoder_positions",))["encoder_positions"]
        _check_positions(pos, prefix + "encoder_positions", max_seq_length)
    return arrays


def _check_positions(pos: np.ndarray, field: str, max_seq_length: int) -> None:
    bad = (pos < 0) | (pos >= max_seq_length)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"position {int(pos[i])} (after truncation, index {i}) outside [0, max_seq_length={max_seq_length})",
            field=field,
        )


def validate_recommend_record(
    record: Any,
    vocab_sizes: Optional[Sequence[int]] = DEFAULT_VOCAB_SIZES,
    max_encoder_length: Optional[int] = None,
    max_decoder_length: Optional[int] = None,
    max_seq_length: Optional[int] = None,
) -> Dict[str, Any]:
    """校验一条 RecommendDataset 记录，返回 {user_id: str, 各列表字段: int64 数组}（未截断）。

    vocab_sizes=None 时只检查 id 非负（collator 不知道词表）。
    max_seq_length 给出时检查截断后的位置落在 [0, max_seq_length)（模型的位置表大小）。
    """
    out = _check_record_fields(record, RECOMMEND_FIELDS)
    out.update(_check_encoder_lists(record, "", vocab_sizes, max_encoder_length, max_seq_length))
    dec = _check_int_lists(
        record, DECODER_LIST_FIELDS + LABEL_LIST_FIELDS, "", vocab_sizes,
        "empty decoder sequence (at least the BOS token is required)",
    )
    m = len(dec["decoder_l1_ids"])
    if max_seq_length is not None:
        keep = m if max_decoder_length is None else min(m, max_decoder_length)
        _check_positions(dec["decoder_positions"][:keep], "decoder_positions", max_seq_length)
    out.update(dec)
    return out


def _check_item_triple(item: Any, field: str, vocab_sizes: Optional[Sequence[int]]) -> np.ndarray:
    if item is None:
        raise DataValidationError("missing required field (or null)", field=field)
    if not isinstance(item, Mapping):
        raise DataValidationError(
            f"expected an object with {list(ITEM_TRIPLE_FIELDS)}, got {_type_name(item)}", field=field
        )
    ids = []
    for lvl, key in enumerate(ITEM_TRIPLE_FIELDS):
        name = f"{field}.{key}"
        v = item.get(key)
        if v is None:
            raise DataValidationError("missing required field (or null)", field=name)
        if not _is_int(v) or isinstance(v, bool):
            raise DataValidationError(f"expected an integer, got {_type_name(v)} {v!r:.40}", field=name)
        check_values(np.asarray([int(v)], dtype=np.int64), name, "id", vocab_sizes, lvl)
        ids.append(int(v))
    return np.asarray(ids, dtype=np.int64)


def validate_preference_record(
    record: Any,
    vocab_sizes: Optional[Sequence[int]] = DEFAULT_VOCAB_SIZES,
    max_encoder_length: Optional[int] = None,
    max_seq_length: Optional[int] = None,
) -> Dict[str, Any]:
    """校验一条 PreferenceDataset 记录，返回 {user_id, encoder_* 数组, chosen_ids[3], rejected_ids[3],
    preference_score}。

    preference_score 可缺省（1.0），必须是有限的非负数（它是 DPO 样本权重，负值会把损失方向反过来）。
    """
    out = _check_record_fields(record, PREFERENCE_FIELDS)
    seq = record["user_sequence"]
    if not isinstance(seq, Mapping):
        raise DataValidationError(
            f"expected an object with encoder_* lists, got {_type_name(seq)}", field="user_sequence"
        )
    out.update(_check_encoder_lists(seq, "user_sequence.", vocab_sizes, max_encoder_length, max_seq_length))
    chosen = _check_item_triple(record["chosen_item"], "chosen_item", vocab_sizes)
    rejected = _check_item_triple(record["rejected_item"], "rejected_item", vocab_sizes)
    if np.array_equal(chosen, rejected):
        raise DataValidationError(
            f"rejected_item {chosen.tolist()} is identical to chosen_item", field="rejected_item"
        )
    score = record.get("preference_score")
    if score is None:
        score = 1.0
    elif isinstance(score, bool) or not isinstance(score, (int, float, np.integer, np.floating)):
        raise DataValidationError(
            f"expected a number, got {_type_name(score)} {score!r:.40}", field="preference_score"
        )
    elif not math.isfinite(float(score)) or float(score) < 0:
        raise DataValidationError(f"must be a finite number >= 0, got {score!r}", field="preference_score")
    out["chosen_ids"] = chosen
    out["rejected_ids"] = rejected
    out["preference_score"] = float(score)
    return out


# --------------------------------------------------------------------------------------------
# 文件解析：路径 / 目录 / glob / 列表 → 有序文件列表
# --------------------------------------------------------------------------------------------


def file_format(path: str) -> str:
    low = path.lower()
    if low.endswith(JSON_EXTENSIONS):
        return "json"
    if low.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    raise DataValidationError(
        "unsupported file extension (expected .jsonl, .json or .parquet)", path=path
    )


def resolve_data_files(data_path: Any) -> List[str]:
    """把 data_path（文件、目录、glob、或它们的列表）展开成有序文件列表；目录与 glob 按文件名排序。"""
    if isinstance(data_path, (str, os.PathLike)):
        items = [data_path]
    elif isinstance(data_path, (list, tuple)):
        items = list(data_path)
    else:
        raise DataValidationError(f"data_path must be a path or a list of paths, got {_type_name(data_path)}")
    if not items:
        raise DataValidationError("data_path is an empty list")
    files: List[str] = []
    for item in items:
        p = os.fspath(item)
        if os.path.isdir(p):
            found = sorted(
                os.path.join(p, n)
                for n in os.listdir(p)
                if n.lower().endswith(JSON_EXTENSIONS + PARQUET_EXTENSIONS) and os.path.isfile(os.path.join(p, n))
            )
            if not found:
                raise DataValidationError("directory contains no .jsonl/.json/.parquet files", path=p)
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        elif any(c in p for c in "*?["):
            found = sorted(f for f in glob.glob(p) if os.path.isfile(f))
            if not found:
                raise DataValidationError("no file matches this pattern", path=p)
            files.extend(found)
        else:
            raise DataValidationError("file not found", path=p)
    for f in files:
        file_format(f)
    return files


# --------------------------------------------------------------------------------------------
# 文件级预检：空文件、JSON 数组文件、Parquet 元数据与 schema
# --------------------------------------------------------------------------------------------


def iter_jsonl(path: str) -> Iterator[Tuple[int, Any]]:
    """逐行读 JSONL，产出 (行号从 1 开始, 解析后的对象)；空行跳过；坏 JSON 报出行号。"""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataValidationError(f"cannot open file: {e.strerror}", path=path) from None
    with f:
        # 按行解码而不是文本模式：文本模式按块解码，坏字节会在它所在行之前几百行就报错，行号不准
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs_bom):
                raw = raw[len(codecs_bom):]  # 容忍文件开头的 BOM（HF 的 JSON 读取器也容忍）
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataValidationError(f"file is not valid UTF-8: {e.reason}", path=path, line=lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataValidationError(
                    f"invalid JSON (truncated or malformed line): {e.msg} at column {e.colno}", path=path, line=lineno
                ) from None
            yield lineno, obj


def _has_text(t) -> bool:
    """类型里是否含字符串（含 list / struct / 扩展类型的内层）。"""
    if isinstance(t, pa.BaseExtensionType):
        return _has_text(t.storage_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_text(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_text(t.field(i).type) for i in range(t.num_fields))
    return False


def first_invalid_utf8(table) -> Optional[Tuple[int, str, str]]:
    """pyarrow 的 JSON 读取器不校验 UTF-8：非 UTF-8 字节原样进了字符串列，取行时才抛出裸 UnicodeDecodeError。
    这里先检查（整列 validate(full=True)，只有失败时才逐行定位）：返回第一处 (批内行号, 字段, 原因)，没有返回 None。"""
    first: Optional[Tuple[int, str, str]] = None
    for name in table.column_names:
        col = table.column(name)
        if not _has_text(col.type):
            continue
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        for i in range(len(col) if first is None else first[0]):
            try:
                col[i].as_py()
            except UnicodeDecodeError as e:
                first = (i, name, e.reason)
                break
    return first


def precheck_json_file(path: str) -> None:
    """空文件报错；第一条记录不是对象（例如整个文件是 JSON 数组）报错，避免 HF 把数组文件当成别的格式读进来。"""
    try:
        with open(path, "rb") as f:
            lineno = 0
            for lineno, raw in enumerate(f, 1):
                s = raw.strip()
                if not s:
                    continue
                if s.startswith(codecs_bom):
                    s = s[len(codecs_bom):].strip()
                if not s.startswith(b"{"):
                    raise DataValidationError(
                        "record is not a JSON object (JSON Lines expected: one {...} object per line)",
                        path=path,
                        line=lineno,
                    )
                return
    except OSError as e:
        raise DataValidationError(f"cannot open file: {e.strerror}", path=path) from None
    raise DataValidationError("empty file (no records)", path=path)



def is_json_extension(t) -> bool:
    """HF 对同一列混合类型（如 user_id 有 int 也有 str）会存成 JSON 扩展类型，这种列逐条检查。"""
    return isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.json"


def _arrow_type_ok_int(t) -> bool:
    return pa.types.is_integer(t) or pa.types.is_null(t)


def _arrow_type_ok_int_list(t) -> bool:
    if pa.types.is_null(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _arrow_type_ok_int(t.value_type)


def check_arrow_schema(schema, record_type: str) -> Optional[Tuple[str, str]]:
    """检查 Arrow schema；返回第一个问题 (字段, 原因)，没有问题返回 None。"""
    names = set(schema.names)

    def field_type(name):
        return schema.field(name).type

    if "user_id" not in names:
        return "user_id", "schema: required column is missing"
    ut = field_type("user_id")
    if not (is_json_extension(ut) or pa.types.is_integer(ut) or pa.types.is_string(ut)
            or pa.types.is_large_string(ut) or pa.types.is_null(ut)):
        return "user_id", f"schema: column type {ut}, expected int or string"
    if record_type == "recommend":
        for f in RECOMMEND_FIELDS[1:]:
            if f not in names:
                return f, "schema: required column is missing"
            if not _arrow_type_ok_int_list(field_type(f)):
                return f, f"schema: column type {field_type(f)}, expected list<int>"
        return None
    for f in PREFERENCE_FIELDS[1:]:
        if f not in names:
            return f, "schema: required column is missing"
    st = field_type("user_sequence")
    if not pa.types.is_struct(st):
        return "user_sequence", f"schema: column type {st}, expected struct of encoder_* lists"
    sub = {st.field(i).name: st.field(i).type for i in range(st.num_fields)}
    for f in ENCODER_LIST_FIELDS:
        if f not in sub:
            return f"user_sequence.{f}", "schema: required field is missing"
        if not _arrow_type_ok_int_list(sub[f]):
            return f"user_sequence.{f}", f"schema: type {sub[f]}, expected list<int>"
    for col in ("chosen_item", "rejected_item"):
        ct = field_type(col)
        if not pa.types.is_struct(ct):
            return col, f"schema: column type {ct}, expected struct{{l1_id, l2_id, l3_id}}"
        sub = {ct.field(i).name: ct.field(i).type for i in range(ct.num_fields)}
        for k in ITEM_TRIPLE_FIELDS:
            if k not in sub:
                return f"{col}.{k}", "schema: required field is missing"
            if not _arrow_type_ok_int(sub[k]):
                return f"{col}.{k}", f"schema: type {sub[k]}, expected int"
    if "preference_score" in names:
        pt = field_type("preference_score")
        if not (pa.types.is_integer(pt) or pa.types.is_floating(pt) or pa.types.is_null(pt)):
            return "preference_score", f"schema: column type {pt}, expected a number"
    return None


def precheck_parquet_file(path: str, record_type: str) -> int:
    """读 Parquet 元数据：打不开、没有行、schema 不对都报错（schema 错误没有具体行，消息里写 schema）。返回行数。"""
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow 对坏文件抛多种异常
        raise DataValidationError(f"not a readable Parquet file: {e}", path=path) from None
    num_rows = pf.metadata.num_rows
    if num_rows == 0:
        raise DataValidationError("empty file (no records)", path=path)
    problem = check_arrow_schema(pf.schema_arrow, record_type)
    if problem is not None:
        raise DataValidationError(problem[1], path=path, field=problem[0])
    return num_rows


def precheck_files(files: Sequence[str], record_type: str) -> None:
    for f in files:
        if file_format(f) == "json":
            precheck_json_file(f)
        else:
            precheck_parquet_file(f, record_type)


def scan_json_files(files: Sequence[str], validate: Callable[[Any], Any]) -> None:
    """用逐条校验扫描 JSONL 文件，遇到第一个问题就抛出带文件与行号的错误（只在快速路径失败时调用）。"""
    for path in files:
        if file_format(path) != "json":
            continue
        for lineno, obj in iter_jsonl(path):
            try:
                validate(obj)
            except DataValidationError as e:
                raise e.with_location(path=path, line=lineno) from None


def locate_row(files: Sequence[str], row: int) -> Tuple[str, Optional[int], Optional[int]]:
    """把合并后数据集的全局行号映射回 (文件, JSONL 行号, Parquet 行号)；只在报错时调用。

    依赖 load_dataset 按给定顺序拼接文件（tests 里有验证），JSONL 的空行被 HF 跳过，这里同样跳过。
    """
    remaining = row
    for path in files:
        if file_format(path) == "parquet":
            n = pq.ParquetFile(path).metadata.num_rows
            if remaining < n:
                return path, None, remaining
            remaining -= n
        else:
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    if raw.strip():
                        if remaining == 0:
                            return path, lineno, None
                        remaining -= 1
    return files[-1], None, row


# --------------------------------------------------------------------------------------------
# 向量化整表校验（pyarrow + numpy）：只找第一条坏记录
# --------------------------------------------------------------------------------------------


class ListColumn:
    """一个 list<int> 列在一个 batch 内的展开形式。"""

    __slots__ = ("lengths", "values", "offsets", "parents", "bad_rows")

    def __init__(self, arr):
        n = len(arr)
        null_rows = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_null(arr.type):  # 整列都是 null（例如所有记录都缺这个字段）
            lengths = np.zeros(n, np.int64)
        else:
            lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        self.lengths = lengths
        self.offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.parents = np.repeat(np.arange(n), lengths)
        bad = null_rows.copy()
        if pa.types.is_null(arr.type):
            self.values = np.zeros(0, np.int64)
        else:
            flat = arr.flatten()
            if flat.null_count:
                null_el = np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
                bad[self.parents[null_el]] = True
                flat = flat.fill_null(0)
            if pa.types.is_null(flat.type):
                self.values = np.zeros(len(flat), np.int64)
            else:
                self.values = flat.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        self.bad_rows = bad


def _rows_where(col: ListColumn, elem_bad: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    if elem_bad.any():
        out[col.parents[elem_bad]] = True
    return out


def _value_rule(col: ListColumn, kind: str, vocab_sizes, level: int, n: int) -> np.ndarray:
    v = col.values
    if kind in ("id", "label"):
        bad = v < 0 if vocab_sizes is None else (v < 0) | (v >= int(vocab_sizes[level]))
        if kind == "label":
            bad &= v != IGNORE_INDEX
    elif kind == "mask":
        bad = (v != 0) & (v != 1)
    else:
        bad = v < 0
    return _rows_where(col, bad, n)


def _encoder_position_rule(pos: ListColumn, types: ListColumn, max_len: int, max_seq: int, n: int) -> np.ndarray:
    """与 truncate_encoder 同样的截断 + 位置重排，检查保留下来的位置落在 [0, max_seq)。"""
    lengths = pos.lengths
    starts = pos.offsets[:-1]
    nonempty = lengths > 0
    first_type = np.full(n, -1, np.int64)
    has_type = types.lengths > 0  # 长度不一致的行由长度规则报告，这里只需不越界
    first_type[has_type] = types.values[types.offsets[:-1][has_type]]
    trunc, keep_head = encoder_truncation_rows(lengths, first_type, max_len)
    head = keep_head.astype(np.int64)  # 尾部在原序列中的对齐槽位
    tail_start = np.where(trunc, lengths - (max_len - head), 0)  # 尾部起点（行内下标）
    idx = np.arange(len(pos.values)) - starts[pos.parents]  # 元素的行内下标
    p = pos.parents
    kept = (idx >= tail_start[p]) | (keep_head[p] & (idx == 0))
    new = pos.values.copy()
    if trunc.any() and len(new):
        safe_ts = np.minimum(starts + tail_start, max(len(new) - 1, 0))
        safe_h = np.minimum(starts + head, max(len(new) - 1, 0))
        shift = np.where(trunc & nonempty, pos.values[safe_h] - pos.values[safe_ts], 0)
        tail = idx >= np.maximum(tail_start[p], head[p])
        new = np.where(tail, new + shift[p], new)
    bad = kept & ((new < 0) | (new >= max_seq))
    return _rows_where(pos, bad, n)


def _decoder_position_rule(pos: ListColumn, max_len: Optional[int], max_seq: int, n: int) -> np.ndarray:
    idx = np.arange(len(pos.values)) - pos.offsets[:-1][pos.parents]
    kept = idx < (max_len if max_len is not None else np.iinfo(np.int64).max)
    bad = kept & ((pos.values < 0) | (pos.values >= max_seq))
    return _rows_where(pos, bad, n)


def _check_list_group(
    cols: Dict[str, ListColumn], fields: Sequence[str], prefix: str, ref: str, n: int, vocab_sizes, rules: List
) -> None:
    ref_len = cols[prefix + ref].lengths
    for f in fields:
        c = cols[prefix + f]
        rules.append((prefix + f, c.bad_rows))
        if f != ref:
            rules.append((prefix + f, c.lengths != ref_len))
        kind, lvl = FIELD_KINDS[f]
        rules.append((prefix + f, _value_rule(c, kind, vocab_sizes, lvl, n)))
    rules.append((prefix + ref, ref_len == 0))


def vector_check_table(
    table,
    record_type: str,
    vocab_sizes: Optional[Sequence[int]],
    max_encoder_length: Optional[int],
    max_decoder_length: Optional[int],
    max_seq_length: Optional[int],
) -> Optional[Tuple[int, str]]:
    """对一个 pa.Table 批次做全部规则检查，返回第一条坏记录 (批内行号, 规则所在字段)，都合格返回 None。"""
    n = table.num_rows
    if n == 0:
        return None
    if record_type == "preference":
        table = table.flatten()
    rules: List[Tuple[str, np.ndarray]] = []

    def col(name):
        c = table.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    uid = col("user_id")
    rules.append(("user_id", np.asarray(uid.is_null().to_numpy(zero_copy_only=False), dtype=bool)))
    if pa.types.is_string(uid.type) or pa.types.is_large_string(uid.type):
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(uid)), 0).fill_null(False)
        rules.append(("user_id", np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)))
    if record_type == "recommend":
        names = RECOMMEND_FIELDS[1:]
        cols = {f: ListColumn(col(f)) for f in names}
        _check_list_group(cols, ENCODER_LIST_FIELDS, "", "encoder_l1_ids", n, vocab_sizes, rules)
        _check_list_group(cols, DECODER_LIST_FIELDS + LABEL_LIST_FIELDS, "", "decoder_l1_ids", n, vocab_sizes, rules)
        if max_seq_length is not None:
            rules.append(("encoder_positions", _encoder_position_rule(
                cols["encoder_positions"], cols["encoder_token_types"], max_encoder_length, max_seq_length, n)))
            rules.append(("decoder_positions", _decoder_position_rule(
                cols["decoder_positions"], max_decoder_length, max_seq_length, n)))
    else:
        pre = "user_sequence."
        cols = {pre + f: ListColumn(col(pre + f)) for f in ENCODER_LIST_FIELDS}
        _check_list_group(cols, ENCODER_LIST_FIELDS, pre, "encoder_l1_ids", n, vocab_sizes, rules)
        if max_seq_length is not None:
            rules.append((pre + "encoder_positions", _encoder_position_rule(
                cols[pre + "encoder_positions"], cols[pre + "encoder_token_types"], max_encoder_length,
                max_seq_length, n)))
        triples = {}
        for item in ("chosen_item", "rejected_item"):
            ids = []
            for lvl, k in enumerate(ITEM_TRIPLE_FIELDS):
                a = col(f"{item}.{k}")
                rules.append((f"{item}.{k}", np.asarray(a.is_null().to_numpy(zero_copy_only=False), dtype=bool)))
                if pa.types.is_null(a.type):
                    v = np.zeros(n, np.int64)
                else:
                    v = a.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
                bad = v < 0 if vocab_sizes is None else (v < 0) | (v >= int(vocab_sizes[lvl]))
                rules.append((f"{item}.{k}", bad))
                ids.append(v)
            triples[item] = np.stack(ids, 1)
        rules.append(("rejected_item", (triples["chosen_item"] == triples["rejected_item"]).all(1)))
        if "preference_score" in table.column_names:
            s = col("preference_score")
            if not pa.types.is_null(s.type):
                sv = s.cast(pa.float64()).fill_null(1.0).to_numpy(zero_copy_only=False)
                rules.append(("preference_score", ~np.isfinite(sv) | (sv < 0)))
    first: Optional[Tuple[int, str]] = None
    for field, bad in rules:
        if bad.any():
            i = int(np.argmax(bad))
            if first is None or i < first[0]:
                first = (i, field)
    return first
