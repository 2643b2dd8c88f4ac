"""原始交互日志读取器：各种格式 -> 统一的交互表 `Interactions`（user, item, timestamp, 可选 rating）。

设计要点：
- 大文件走 pyarrow.csv 向量化解析（ML-10M 有 1000 万行）；快速路径一旦失败，再用逐行扫描定位第一处坏行，
  这样错误信息能指明文件与行号，而正常路径不付出逐行解析的代价。
- `skip_bad_lines=True` 时坏行被跳过并计数（警告里列出前几处 文件:行号），否则直接报错。
- id 统一保存为字符串（items.parquet 的 item_id 是原始 id）；MovieLens 与 S3-Rec 格式要求整数 id。
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .schema import SOURCES  # 定义在 schema：`ugt prepare --help` 不必加载 pyarrow

T = TypeVar("T")


class DataFormatError(ValueError):
    """输入数据格式错误；消息里总是带文件（以及行号/字段，如果能定位）。"""


@dataclass
class Interactions:
    """统一交互表：每行一个事件。数组等长，rating 可为 None（无评分的数据源）。

    user / item: 原始 id（字符串，numpy object 数组）
    timestamp:   int64；没有时间戳的格式用文件内顺序代替
    order:       int64，事件在输入中的顺序，用于时间戳相同时的稳定排序
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: Optional[np.ndarray] = None
    order: Optional[np.ndarray] = None
    titles: Dict[str, str] = field(default_factory=dict)  # item_id -> 标题（+类型），可缺
    files: List[str] = field(default_factory=list)  # 读取过的输入文件（用于校验和）
    stats: Dict[str, int] = field(default_factory=dict)  # 读取阶段的计数（坏行等）
    warnings: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.user)
        if self.order is None:
            self.order = np.arange(n, dtype=np.int64)
        for name in ("item", "timestamp", "order"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Interactions.{name} has length {len(getattr(self, name))}, expected {n}")
        if self.rating is not None and len(self.rating) != n:
            raise ValueError(f"Interactions.rating has length {len(self.rating)}, expected {n}")

    def __len__(self) -> int:
        return len(self.user)


# ---------------------------------------------------------------- 工具


def _check_encoding(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataFormatError(f"unknown encoding '{encoding}' (use a Python codec name such as utf-8 or latin-1)")


def _read_bytes(path: str, encoding: str) -> bytes:
    """先查编码名与文件是否存在，再整文件读入（文本与快速路径共用）。"""
    _check_encoding(encoding)
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: file not found")
    with open(path, "rb") as f:
        return f.read()


def _read_text(path: str, encoding: str) -> str:
    """整文件解码；解码失败时报出行号。"""
    raw = _read_bytes(path, encoding)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: cannot decode bytes with encoding '{encoding}' ({e.reason})")


# 评分的合理范围：负数、无穷、NaN、1e308（转 float32 后成了 inf）都是坏数据，不是“很高的评分”。
# 上限取得很宽（不限定 1-5 或 0-10 的量表），只拦住明显损坏的值
RATING_MAX = 1e6
MAX_ID_LENGTH = 1000  # 用户/物品 id 的最大字符数：更长的“id”几乎总是少了换行或分隔符
_CSV_BLOCK_SIZE = 1 << 20  # pyarrow.csv 的默认块大小；一行比它长时 pyarrow 只说 "straddling object"


def _data_line_number(path: str, index: int) -> int:
    """第 index 个（从 0 开始）非空行在文件里的行号（从 1 开始）；只在报错时调用。"""
    seen = -1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                seen += 1
                if seen == index:
                    return lineno
    return index + 1


def _check_ratings(rating: Optional[np.ndarray], where: Callable[[int], str]) -> None:
    """评分必须是 [0, RATING_MAX] 内的有限数；where(i) 给出第 i 个事件的位置（文件:行）。"""
    if rating is None or len(rating) == 0:
        return
    values = np.asarray(rating, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > RATING_MAX)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(f"{where(i)}: field 'rating' must be a finite number in [0, {RATING_MAX:g}], got "
                              f"{float(values[i])!r} (fix the value or drop the line)")


def _check_ids(values: np.ndarray, what: str, where: Callable[[int], str]) -> None:
    """id 不能为空（或只有空白），也不能长得离谱（少了换行/分隔符）。values：字符串的 object 数组。"""
    if len(values) == 0:
        return
    arr = pa.array(values, type=pa.string())
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0).fill_null(True)
    if pc.any(empty).as_py():
        i = int(pc.index(empty, True).as_py())
        raise DataFormatError(f"{where(i)}: field '{what}' is empty (every event needs a {what})")
    too_long = pc.greater(pc.utf8_length(arr), MAX_ID_LENGTH).fill_null(False)
    if pc.any(too_long).as_py():
        i = int(pc.index(too_long, True).as_py())
        raise DataFormatError(f"{where(i)}: field '{what}' is {len(values[i]):,} characters long (ids are at most "
                              f"{MAX_ID_LENGTH:,}); a missing line break or delimiter?")


def _require_nonempty(path: str, n: int) -> None:
    if n == 0:
        raise DataFormatError(f"{path}: file is empty (no interactions)")


def _bad(path: str, lineno: int, msg: str) -> str:
    return f"{path}:{lineno}: {msg}"


def _to_int(tok: str, path: str, lineno: int, what: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise DataFormatError(_bad(path, lineno, f"field '{what}' must be an integer, got {tok!r}"))


def _scan_lines(
    text: str,
    path: str,
    parse_line: Callable[[int, str], T],
    skip_bad_lines: bool,
    stats: Dict[str, int],
    warnings: List[str],
) -> List[T]:
    """逐行调用 parse_line(行号, 行)（坏行抛 DataFormatError），跳过空白行，返回各行的解析结果。

    所有逐行读取器共用同一套坏行策略：skip_bad_lines=False 时第一处坏行直接报错；
    否则跳过并计入 stats["malformed_lines_skipped"]，警告里列出前 5 处。
    """
    out: List[T] = []
    bad = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(parse_line(lineno, line))
        except DataFormatError as e:
            if not skip_bad_lines:
                raise
            bad += 1
            if bad <= 5:
                warnings.append(f"skipped malformed line {e}")
    stats["malformed_lines_skipped"] = stats.get("malformed_lines_skipped", 0) + bad
    if bad > 5:
        warnings.append(f"... {bad - 5} more malformed lines skipped in {path}")
    return out


def _scan_delimited(
    text: str,
    path: str,
    sep: Optional[str],
    names: Sequence[str],
    int_fields: Sequence[str],
    skip_bad_lines: bool,
    stats: Dict[str, int],
    warnings: List[str],
) -> Dict[str, list]:
    """逐行解析（慢路径）：精确定位坏行；skip_bad_lines 时跳过并计数。"""

    def parse(lineno: int, line: str) -> list:
        parts = line.split(sep) if sep is not None else line.split()
        if len(parts) < len(names):
            raise DataFormatError(
                _bad(path, lineno,
                     f"expected {len(names)} fields ({', '.join(names)}), got {len(parts)}: {line[:80]!r}")
            )
        vals = []
        for name, tok in zip(names, parts):
            tok = tok.strip()
            if name in int_fields:
                vals.append(_to_int(tok, path, lineno, name))
            elif name == "rating":
                try:
                    vals.append(float(tok))
                except ValueError:
                    raise DataFormatError(_bad(path, lineno, f"field 'rating' must be a number, got {tok!r}"))
            else:
                vals.append(tok)
        return vals

    rows = _scan_lines(text, path, parse, skip_bad_lines, stats, warnings)
    return {name: [r[k] for r in rows] for k, name in enumerate(names)}


def _fast_delimited(data: bytes, sep: str, names: Sequence[str], int_fields: Sequence[str]) -> pa.Table:
    """pyarrow 向量化解析；任何异常由调用方转成慢路径以定位坏行。"""
    types = {n: (pa.int64() if n in int_fields else (pa.float64() if n == "rating" else pa.string())) for n in names}
    ncols = data[: data.find(b"\n") if b"\n" in data else len(data)].count(sep.encode()) + 1
    col_names = list(names) + [f"_extra{i}" for i in range(max(0, ncols - len(names)))]
    if ncols < len(names):
        raise ValueError("too few columns")
    return pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(column_names=col_names, use_threads=True),
        parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False, ignore_empty_lines=True),
        # null_values=[]：默认会把空字段、"NA" 等读成 null，int 列随后变成 NaN、id 变成字符串 "nan"；
        # 关掉后这些行在快速路径上解析失败，由慢路径报出文件与行号
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(names), null_values=[]),
    )


def _read_delimited(
    path: str,
    sep: str,
    names: Sequence[str],
    int_fields: Sequence[str],
    encoding: str,
    skip_bad_lines: bool,
    stats: Dict[str, int],
    warnings: List[str],
    replace_double_colon: bool = False,
) -> Dict[str, np.ndarray]:
    data = _read_bytes(path, encoding)
    if not data.strip():
        raise DataFormatError(f"{path}: file is empty (no interactions)")
    fast_sep = sep
    if replace_double_colon:
        # "::" 是多字符分隔符，pyarrow 不支持；替换成制表符后走同一条快速路径
        data_fast = data.replace(b"::", b"\t")
        fast_sep = "\t"
    else:
        data_fast = data
    table = None
    if codecs.lookup(encoding).name in ("utf-8", "ascii"):
        try:
            table = _fast_delimited(data_fast, fast_sep, names, int_fields)
        except (pa.ArrowInvalid, ValueError):
            table = None
    if table is not None:
        return {n: table.column(n).to_numpy(zero_copy_only=False) for n in names}
    # 慢路径：精确定位坏行（或按 skip_bad_lines 跳过）
    text = _read_text(path, encoding)
    cols = _scan_delimited(text, path, sep, names, int_fields, skip_bad_lines, stats, warnings)
    out = {}
    for n in names:
        if n in int_fields:
            out[n] = np.asarray(cols[n], dtype=np.int64)
        elif n == "rating":
            out[n] = np.asarray(cols[n], dtype=np.float64)
        else:
            out[n] = np.asarray(cols[n], dtype=object)
    return out


def _ids_to_str(a: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        return a
    return np.asarray(pa.array(a).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)


# ---------------------------------------------------------------- MovieLens


def _ml100k_titles(folder: str, stats: Dict[str, int], warnings: List[str]) -> Tuple[Dict[str, str], List[str]]:
    """u.item（竖线分隔，latin-1）：标题 + 类型名（来自 u.genre），作为物品文本。"""
    path = os.path.join(folder, "u.item")
    if not os.path.isfile(path):
        warnings.append(f"{path} not found: items get no titles")
        return {}, []
    genres: List[str] = []
    gpath = os.path.join(folder, "u.genre")
    if os.path.isfile(gpath):
        for line in _read_text(gpath, "latin-1").splitlines():
            if "|" in line:
                genres.append(line.split("|")[0])
    titles: Dict[str, str] = {}
    for lineno, line in enumerate(_read_text(path, "latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 2:
            raise DataFormatError(_bad(path, lineno, f"expected pipe-separated fields, got {line[:80]!r}"))
        _to_int(parts[0], path, lineno, "movie_id")
        flags = parts[5:]
        names = [genres[i] for i, f in enumerate(flags) if f.strip() == "1" and i < len(genres)]
        titles[parts[0]] = parts[1] + (" | " + ", ".join(names) if names else "")
    return titles, [path] + ([gpath] if os.path.isfile(gpath) else [])


def _rating_interactions(
    cols: Dict[str, np.ndarray], titles: Dict[str, str], files: List[str], stats: Dict[str, int], warnings: List[str]
) -> Interactions:
    """MovieLens 的 (user, item, rating, timestamp) 列 -> Interactions（100K 与 1M/10M 共用）。files[0] 是评分文件。"""
    _check_ratings(cols["rating"], lambda i: f"{files[0]}:{_data_line_number(files[0], i)}")
    return Interactions(
        user=_ids_to_str(cols["user"]),
        item=_ids_to_str(cols["item"]),
        timestamp=cols["timestamp"].astype(np.int64),
        rating=cols["rating"].astype(np.float32),
        titles=titles,
        files=files,
        stats=stats,
        warnings=warnings,
    )


def read_ml100k(path: str, encoding: str = "utf-8", skip_bad_lines: bool = False) -> Interactions:
    """MovieLens 100K：目录（含 u.data、u.item）或 u.data 文件本身。"""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    data_path = os.path.join(path, "u.data") if os.path.isdir(path) else path
    stats: Dict[str, int] = {}
    warnings: List[str] = []
    names = ("user", "item", "rating", "timestamp")
    cols = _read_delimited(data_path, "\t", names, ("user", "item", "timestamp"), encoding, skip_bad_lines, stats,
                           warnings)
    _require_nonempty(data_path, len(cols["user"]))
    titles, extra = _ml100k_titles(folder, stats, warnings)
    return _rating_interactions(cols, titles, [data_path] + extra, stats, warnings)


def read_ml1m(path: str, encoding: str = "latin-1", skip_bad_lines: bool = False) -> Interactions:
    """MovieLens 1M / 10M：`::` 分隔的 ratings.dat（user::item::rating::ts）与 movies.dat（id::title::genres）。"""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    data_path = os.path.join(path, "ratings.dat") if os.path.isdir(path) else path
    stats: Dict[str, int] = {}
    warnings: List[str] = []
    names = ("user", "item", "rating", "timestamp")
    # ratings.dat 只含 ASCII，快速路径用 utf-8；标题文件按给定编码（1M 为 latin-1）
    cols = _read_delimited(
        data_path, "::", names, ("user", "item", "timestamp"), "utf-8", skip_bad_lines, stats, warnings,
        replace_double_colon=True,
    )
    _require_nonempty(data_path, len(cols["user"]))
    titles: Dict[str, str] = {}
    files = [data_path]
    mpath = os.path.join(folder, "movies.dat")
    if os.path.isfile(mpath):
        files.append(mpath)
        for lineno, line in enumerate(_read_text(mpath, encoding).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("::")
            if len(parts) < 2:
                raise DataFormatError(_bad(mpath, lineno, f"expected 'id::title::genres', got {line[:80]!r}"))
            _to_int(parts[0], mpath, lineno, "movie_id")
            genres = parts[2].replace("|", ", ") if len(parts) > 2 else ""
            titles[parts[0]] = parts[1] + (" | " + genres if genres else "")
    else:
        warnings.append(f"{mpath} not found: items get no titles")
    return _rating_interactions(cols, titles, files, stats, warnings)


# ---------------------------------------------------------------- S3-Rec / pairs


_UNIX_TIME_MIN = 10 ** 8  # 1973-03-03：比它大的第 4 列几乎只能是 unix 时间戳，不是物品 id
_FORMAT_PROBE_LINES = 1000
_OTHER_SOURCES_HINT = "use --source ml-100k for MovieLens u.data, or --source pairs / csv for other event logs"


def _check_s3rec_shape(text: str, path: str) -> None:
    """S3-Rec 是空格分隔、一行一个用户的 `user item item ...`。事件日志（如 MovieLens u.data：
    `user\titem\trating\ttimestamp`）按它读也“能解析”，时间戳会变成物品、退出码 0，所以读前先看文件形状：
    含制表符，或抽样行里多数恰好 4 个整数且第 4 个像 unix 时间戳，就报错并指出第一处这样的行。"""
    probed, event_like, first_event = 0, 0, None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" in line:
            raise DataFormatError(_bad(path, lineno, "tab-separated fields, but S3-Rec files are space-separated "
                                       f"'user item item ...' (one user per line); {_OTHER_SOURCES_HINT}"))
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts) and int(parts[3]) > _UNIX_TIME_MIN:
            event_like += 1
            first_event = first_event or lineno
        probed += 1
        if probed == _FORMAT_PROBE_LINES:
            break
    if event_like * 2 > probed:
        raise DataFormatError(_bad(path, first_event, f"{event_like} of the first {probed} lines look like "
                                   "'user item rating timestamp' events (4th field is a unix time), not S3-Rec "
                                   f"'user item item ...' sequences; {_OTHER_SOURCES_HINT}"))


def read_s3rec(path: str, encoding: str = "utf-8", skip_bad_lines: bool = False) -> Interactions:
    """S3-Rec/SASRec 文本格式：每行 `user item item ...`（按时间排序）；时间戳 = 行内顺序。"""
    text = _read_text(path, encoding)
    _check_s3rec_shape(text, path)  # 格式错了不是坏行：skip_bad_lines 也不放过
    stats: Dict[str, int] = {}
    warnings: List[str] = []

    def parse(lineno: int, line: str) -> np.ndarray:
        parts = line.split()
        if len(parts) < 2:
            hint = ("; '::'-separated lines are MovieLens ratings.dat: use --source ml-1m" if "::" in line
                    else "")
            raise DataFormatError(_bad(path, lineno, f"expected 'user item [item ...]', got {line[:80]!r}{hint}"))
        try:
            return np.array(parts, dtype=np.int64)
        except (ValueError, OverflowError):
            bad_tok = next((p for p in parts if not p.lstrip("-").isdigit()), None)
            if bad_tok is None:  # 全是数字但超出 int64
                raise DataFormatError(_bad(path, lineno, "integer id does not fit in int64")) from None
            what = "user" if bad_tok == parts[0] else "item"
            raise DataFormatError(_bad(path, lineno, f"field '{what}' must be an integer, got {bad_tok!r}")) from None

    rows = _scan_lines(text, path, parse, skip_bad_lines, stats, warnings)
    users: List[int] = []
    items: List[int] = []
    ts: List[int] = []
    for vals in rows:
        n = len(vals) - 1
        users.extend([int(vals[0])] * n)
        items.extend(vals[1:].tolist())
        ts.extend(range(n))
    _require_nonempty(path, len(users))
    return Interactions(
        user=_ids_to_str(np.asarray(users, dtype=np.int64)),
        item=_ids_to_str(np.asarray(items, dtype=np.int64)),
        timestamp=np.asarray(ts, dtype=np.int64),
        files=[path],
        stats=stats,
        warnings=warnings,
    )


def read_pairs(path: str, encoding: str = "utf-8", skip_bad_lines: bool = False) -> Interactions:
    """`user item [timestamp]` 空白分隔，每行一个事件；无时间戳时按文件顺序。id 可以是任意字符串。"""
    text = _read_text(path, encoding)
    stats: Dict[str, int] = {}
    warnings: List[str] = []
    has_ts: Optional[bool] = None  # 由第一条合格行决定，之后每行必须一致
    n_ok = 0

    def parse(lineno: int, line: str) -> Tuple[str, str, int]:
        nonlocal has_ts, n_ok
        parts = line.split()
        if len(parts) not in (2, 3):
            raise DataFormatError(_bad(path, lineno, f"expected 'user item [timestamp]', got {line[:80]!r}"))
        if has_ts is None:
            has_ts = len(parts) == 3
        if has_ts != (len(parts) == 3):
            raise DataFormatError(
                _bad(path, lineno, "inconsistent number of fields (timestamp present on some lines only)")
            )
        for what, tok in (("user", parts[0]), ("item", parts[1])):
            if len(tok) > MAX_ID_LENGTH:
                raise DataFormatError(_bad(path, lineno, f"field '{what}' is {len(tok):,} characters long (ids are at "
                                           f"most {MAX_ID_LENGTH:,}); a missing line break?"))
        t = _to_int(parts[2], path, lineno, "timestamp") if has_ts else n_ok
        n_ok += 1
        return parts[0], parts[1], t

    rows = _scan_lines(text, path, parse, skip_bad_lines, stats, warnings)
    _require_nonempty(path, len(rows))
    return Interactions(
        user=np.asarray([r[0] for r in rows], dtype=object),
        item=np.asarray([r[1] for r in rows], dtype=object),
        timestamp=np.asarray([r[2] for r in rows], dtype=np.int64),
        files=[path],
        stats=stats,
        warnings=warnings,
    )


# ---------------------------------------------------------------- 通用 CSV / Parquet


def _table_to_interactions(
    table: pa.Table, path: str, user_col: str, item_col: str, time_col: Optional[str], rating_col: Optional[str],
    title_col: Optional[str] = None,
) -> Interactions:
    available = table.column_names
    for flag, col in (("--user_col", user_col), ("--item_col", item_col), ("--time_col", time_col),
                      ("--rating_col", rating_col), ("--title_col", title_col)):
        if col is not None and col not in available:
            raise DataFormatError(
                f"{path}: column '{col}' (given by {flag}) not found; available columns: {available}"
            )
    _require_nonempty(path, table.num_rows)

    def col_nonnull(name: str) -> pa.ChunkedArray:
        c = table.column(name)
        if c.null_count:
            row = int(pc.index(pc.is_null(c), True).as_py())
            raise DataFormatError(f"{path}: row {row + 1} (data row, header excluded): field '{name}' is missing")
        return c

    user = np.asarray(col_nonnull(user_col).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    item = np.asarray(col_nonnull(item_col).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)

    def where(i: int) -> str:
        return f"{path}: row {i + 1} (data row, header excluded)"

    _check_ids(user, user_col, where)
    _check_ids(item, item_col, where)
    if time_col is None:
        ts = np.arange(table.num_rows, dtype=np.int64)
    else:
        c = col_nonnull(time_col)
        if pa.types.is_timestamp(c.type) or pa.types.is_date(c.type):
            c = c.cast(pa.timestamp("s")).cast(pa.int64())
        elif pa.types.is_floating(c.type):
            c = pc.floor(c).cast(pa.int64())
        elif not pa.types.is_integer(c.type):
            raise DataFormatError(
                f"{path}: field '{time_col}' must be an integer/float/timestamp column, got type {c.type}"
            )
        ts = c.to_numpy().astype(np.int64)
    rating = None
    if rating_col is not None:
        c = col_nonnull(rating_col)
        if not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)):
            raise DataFormatError(f"{path}: field '{rating_col}' must be numeric, got type {c.type}")
        _check_ratings(c.cast(pa.float64()).to_numpy(), where)
        rating = c.cast(pa.float32()).to_numpy()
    titles: Dict[str, str] = {}
    if title_col is not None:
        tcol = table.column(title_col).cast(pa.string()).to_pylist()
        for i, t in zip(item.tolist(), tcol):
            if t is not None and i not in titles:
                titles[i] = t
    return Interactions(user=user, item=item, timestamp=ts, rating=rating, titles=titles, files=[path])


def _long_line_message(path: str) -> str:
    longest, where = 0, 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if len(raw) > longest:
                longest, where = len(raw), lineno
    return (f"{path}:{where}: line is {longest / 1e6:.1f} MB long (lines longer than {_CSV_BLOCK_SIZE >> 20} MB are "
            "not supported); a missing line break or an unclosed quote?")


def read_csv(
    path: str, user_col: str = "user_id", item_col: str = "item_id", time_col: Optional[str] = None,
    rating_col: Optional[str] = None, title_col: Optional[str] = None, encoding: str = "utf-8",
    delimiter: str = ",", skip_bad_lines: bool = False,
) -> Interactions:
    """带表头的 CSV；列名由参数映射。坏行（列数不对）报出行号，或 skip_bad_lines 时跳过并计数。"""
    _check_encoding(encoding)
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataFormatError(f"{path}: file is empty (no header, no interactions)")
    bad_rows: List[str] = []

    def on_invalid(row) -> str:
        # row.number 是文件中的行号（单线程读取时可用）
        bad_rows.append(f"{path}:{row.number}: expected {row.expected_columns} fields, got {row.actual_columns}: "
                        f"{row.text[:80]!r}")
        return "skip" if skip_bad_lines else "error"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
        )
    except pa.ArrowInvalid as e:
        if bad_rows:
            raise DataFormatError(bad_rows[-1]) from None
        if "straddling" in str(e):  # 一行比读取块还长：pyarrow 的原话不提行号
            raise DataFormatError(_long_line_message(path)) from None
        raise DataFormatError(f"{path}: cannot parse CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: cannot decode with encoding '{encoding}': {e.reason}") from None
    # 含非 UTF-8 字节的列被 pyarrow 推断成 binary，转字符串时只说 "Invalid UTF8 payload"、不提文件与行
    for column in table.column_names:
        if pa.types.is_binary(table.schema.field(column).type) or pa.types.is_large_binary(
                table.schema.field(column).type):
            for row, value in enumerate(table.column(column).to_pylist()):
                try:
                    value is None or value.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(
                        f"{path}: row {row + 1} (data row, header excluded): field '{column}' is not valid UTF-8 "
                        f"({e.reason}); pass --encoding (e.g. latin-1) or re-save the file as UTF-8") from None
    inter = _table_to_interactions(table, path, user_col, item_col, time_col, rating_col, title_col)
    inter.stats["malformed_lines_skipped"] = len(bad_rows)
    inter.warnings.extend(f"skipped malformed line {b}" for b in bad_rows[:5])
    return inter


def read_parquet(
    path: str, user_col: str = "user_id", item_col: str = "item_id", time_col: Optional[str] = None,
    rating_col: Optional[str] = None, title_col: Optional[str] = None,
) -> Interactions:
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(f"{path}: cannot read Parquet file: {e}") from None
    return _table_to_interactions(table, path, user_col, item_col, time_col, rating_col, title_col)


def read_source(
    source: str, path: str, *, user_col: str = "user_id", item_col: str = "item_id", time_col: Optional[str] = None,
    rating_col: Optional[str] = None, title_col: Optional[str] = None, encoding: Optional[str] = None,
    delimiter: str = ",", skip_bad_lines: bool = False,
) -> Interactions:
    """按数据源名分发到对应读取器（synthetic 不在这里，见 synthetic.py）。"""
    if source == "ml-100k":
        return read_ml100k(path, encoding or "utf-8", skip_bad_lines)
    if source in ("ml-1m", "ml-10m"):
        return read_ml1m(path, encoding or "latin-1", skip_bad_lines)
    if source == "s3rec":
        return read_s3rec(path, encoding or "utf-8", skip_bad_lines)
    if source == "pairs":
        return read_pairs(path, encoding or "utf-8", skip_bad_lines)
    if source == "csv":
        return read_csv(path, user_col, item_col, time_col, rating_col, title_col, encoding or "utf-8", delimiter,
                        skip_bad_lines)
    if source == "parquet":
        return read_parquet(path, user_col, item_col, time_col, rating_col, title_col)
    raise DataFormatError(f"unknown source '{source}'; choose one of {SOURCES}")
