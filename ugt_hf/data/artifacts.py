"""交互表 -> 用户序列 -> 留一法切分 -> 训练/验证/测试样本与偏好对 -> JSONL + Parquet，原子写入。

协议（写进 meta.json 的 protocol 文本）：
- 每个用户的事件按 (timestamp, 输入顺序) 稳定排序；完全相同的 (user, item, timestamp) 事件只保留第一条并计数。
- 只有 1 个事件的用户被丢弃并计数；2 个事件的用户只进训练（没有验证/测试）；>= 3 个事件的用户：
  最后一个 = 测试目标，倒数第二个 = 验证目标，其余 = 训练前缀。
- 训练样本：在训练前缀 p[0..m-1] 上滑动切点 s = 1, 1+stride, ...（s < m）：
  encoder = p[max(0, s-E):s]，decoder 物品 = p[s:s+D]，decoder 输入 = [BOS, p[s], ..., p[s+D-2]]，
  labels = p[s:s+D]。stride <= D 保证除 p[0]（前面没有历史）以外的每个训练前缀物品至少当一次标签；
  默认 stride = 1，使每个物品都以“只有 BOS 的 decoder”被预测一次（与验证/测试的用法一致）。
- 验证：encoder = 训练前缀的最后 E 个，labels = [验证物品]；测试：encoder = (训练前缀 + 验证物品) 的最后 E 个，
  labels = [测试物品]；二者 decoder = [BOS]。
- 偏好对（有评分时）：每个用户的训练前缀在 c = floor(preference_cut * m) 处切开；
  每个 rejected 事件（评分 <= rejected_max）与同一段内时间上最近的、物品不同的 chosen 事件（评分 >= chosen_min）配对；
  preference_train 的对来自切点之前，历史 = 两个事件中较早者之前的所有事件；
  preference_test 的对来自切点之后（仍在训练前缀内，不碰验证/测试目标），历史 = 切点之前的前缀。
  preference_score = (chosen 评分 - rejected 评分) / 4。
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..interfaces import ITEM_TOKEN_TYPE, SPECIAL_TOKEN_TYPE
from . import schema
from .readers import DataFormatError, Interactions

PROTOCOL = __doc__.split("协议（写进 meta.json 的 protocol 文本）：", 1)[1].strip()


# ---------------------------------------------------------------- 规范化


@dataclass
class Sequences:
    """按用户分组、时间排序后的序列（物品用 0..N-1 的下标）。"""

    user_ids: List[str]  # 每个用户的原始 id
    item_ids: List[str]  # item_index -> 原始 id
    items: np.ndarray  # [E] 所有用户事件首尾相接
    ratings: Optional[np.ndarray]  # [E] 或 None
    offsets: np.ndarray  # [U+1]
    stats: Dict[str, int] = field(default_factory=dict)

    def seq(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def train_lengths(self) -> np.ndarray:
        """每个用户训练前缀的长度 [U]：>= 3 个事件时去掉最后两个（验证与测试目标），否则整条序列。"""
        lens = self.lengths()
        return np.where(lens >= 3, lens - 2, lens)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def _sort_ids(ids: np.ndarray) -> np.ndarray:
    """物品/用户 id 的确定性排序：全是整数时按数值，否则按字符串。"""
    try:
        as_int = np.array([int(x) for x in ids], dtype=np.int64)
        return ids[np.argsort(as_int, kind="stable")]
    except (ValueError, OverflowError):  # 非整数，或超出 int64 的长数字 id：按字符串排
        return np.sort(ids)


def factorize(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """id 列（转成字符串）-> (按字符串排序的不同值 [object], 每个值在其中的下标 [int64])。

    与 np.unique(values.astype(str), return_inverse=True) 结果相同；Arrow 的哈希去重只需排序不同的值，
    500 万条时快一倍多（np.unique 要对全部字符串排序）。
    """
    try:
        arr = pa.array(values, type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # 不全是字符串（例如整数 id）：先逐个 str()
        arr = pa.array(values.astype(str), pa.string())
    if arr.null_count:  # None：与 astype(str) 一样当作 "None"
        arr = pa.array(values.astype(str), pa.string())
    enc = arr.dictionary_encode()
    uniq = np.array(enc.dictionary.to_pylist(), dtype=object)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[enc.indices.to_numpy()]


def normalise(inter: Interactions, min_events: int = 2) -> Sequences:
    """交互表 -> 用户序列：排序、精确去重、丢弃事件数 < min_events 的用户、物品重新编号。"""
    n = len(inter)
    source = ", ".join(inter.files) or "input"  # 数据本身的问题：DataFormatError（命令行退出码 3），消息带输入文件
    if n == 0:
        raise DataFormatError(f"{source}: no interactions to prepare")
    uniq_u, u_idx = factorize(inter.user)
    uniq_i, i_idx = factorize(inter.item)
    ts = inter.timestamp.astype(np.int64)
    order = np.lexsort((inter.order, ts, u_idx))  # 用户 -> 时间 -> 输入顺序
    u_s, i_s, t_s = u_idx[order], i_idx[order], ts[order]
    # 精确重复：同一用户、同一物品、同一时间戳；排序后不一定相邻（同一时刻的其他物品可能夹在中间）
    # 排序后 (用户, 时间) 相同的事件相邻：给每组一个编号，(组, 物品) 就是一维键（比三列的 axis=0 去重少几份拷贝）；
    # return_index 取每个键第一次出现的位置，与三列去重相同
    group = np.cumsum(np.r_[True, (u_s[1:] != u_s[:-1]) | (t_s[1:] != t_s[:-1])]) - 1
    _, first = np.unique(group * len(uniq_i) + i_s, return_index=True)
    del group
    keep = np.zeros(n, dtype=bool)
    keep[first] = True
    duplicates = int(n - keep.sum())
    u_s, i_s = u_s[keep], i_s[keep]
    r_s = inter.rating[order][keep] if inter.rating is not None else None
    # 事件数不足的用户
    counts = np.bincount(u_s, minlength=len(uniq_u))
    small = counts < min_events
    dropped_users = int(((counts > 0) & small).sum())
    ev_keep = ~small[u_s]
    dropped_events = int((~ev_keep).sum())
    u_s, i_s = u_s[ev_keep], i_s[ev_keep]
    if r_s is not None:
        r_s = r_s[ev_keep]
    if len(u_s) == 0:
        raise DataFormatError(f"{source}: no user has at least {min_events} interactions after filtering "
                              f"(--min_user_events {min_events}); check the user/item columns or lower the threshold")
    # 物品重新编号（丢掉只被丢弃用户交互过的物品），保持原始 id 的确定性顺序
    present = np.unique(i_s)
    item_raw = uniq_i[present]
    sorted_raw = _sort_ids(item_raw)
    raw_to_new = {r: k for k, r in enumerate(sorted_raw.tolist())}
    remap = np.empty(len(uniq_i), dtype=np.int64)
    remap[present] = [raw_to_new[r] for r in item_raw.tolist()]
    items = remap[i_s]
    # 用户：按原始 id 的确定性顺序
    users_present = np.unique(u_s)
    user_raw = _sort_ids(uniq_u[users_present])
    pos_of = {r: k for k, r in enumerate(user_raw.tolist())}
    new_u = np.empty(len(uniq_u), dtype=np.int64)
    new_u[users_present] = [pos_of[r] for r in uniq_u[users_present].tolist()]
    u_new = new_u[u_s]
    perm = np.argsort(u_new, kind="stable")  # 用户内的时间顺序保持不变
    items, u_new = items[perm], u_new[perm]
    if r_s is not None:
        r_s = r_s[perm]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(u_new, minlength=len(user_raw)))]).astype(np.int64)
    return Sequences(
        user_ids=[str(x) for x in user_raw.tolist()],
        item_ids=[str(x) for x in sorted_raw.tolist()],
        items=items.astype(np.int64),
        ratings=None if r_s is None else r_s.astype(np.float32),
        offsets=offsets,
        stats={
            "raw_interactions": n,
            "duplicate_events_removed": duplicates,
            "users_dropped_too_few_events": dropped_users,
            "events_dropped_with_users": dropped_events,
            "items_dropped_with_users": int(len(uniq_i) - len(present)),
        },
    )


def training_prefixes(seqs: Sequences) -> List[np.ndarray]:
    """每个用户的训练前缀（>= 3 个事件：去掉最后两个；否则整条序列）。只给语义 ID 嵌入用，避免泄漏。"""
    m = seqs.train_lengths()
    return [seqs.items[seqs.offsets[u]:seqs.offsets[u] + m[u]] for u in range(seqs.num_users)]


# ---------------------------------------------------------------- 样本（列式构造）


def _ranges(starts: np.ndarray, ends: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """把多个 [start, end) 区间拼成一个下标数组；返回 (下标, 每段长度)。"""
    lens = (ends - starts).astype(np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64), lens
    seg_start = np.repeat(np.cumsum(lens) - lens, lens)
    idx = np.arange(total, dtype=np.int64) - seg_start + np.repeat(starts.astype(np.int64), lens)
    return idx, lens


def _positions(lens: np.ndarray) -> np.ndarray:
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)


@dataclass
class Block:
    """一批记录的列式表示：user 下标 + 若干变长整数列表字段（values + offsets）。"""

    user: np.ndarray  # [R]
    lists: Dict[str, Tuple[np.ndarray, np.ndarray]]  # 字段 -> (flat values, offsets[R+1])

    def __len__(self) -> int:
        return len(self.user)


def _offsets(lens: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def _encoder_fields(
    codes: np.ndarray, items: np.ndarray, starts: np.ndarray, ends: np.ndarray, prefix: str = "encoder"
):
    idx, lens = _ranges(starts, ends)
    c = codes[items[idx]]  # [T, 3]
    off = _offsets(lens)
    ones = np.ones(len(idx), np.int64)
    return {
        f"{prefix}_l1_ids": (c[:, 0], off),
        f"{prefix}_l2_ids": (c[:, 1], off),
        f"{prefix}_l3_ids": (c[:, 2], off),
        f"{prefix}_positions": (_positions(lens), off),
        f"{prefix}_token_types": (ones * ITEM_TOKEN_TYPE, off),
        f"{prefix}_mask": (ones, off),
    }


def _decoder_and_labels(codes: np.ndarray, items: np.ndarray, starts: np.ndarray, ends: np.ndarray, pad: int):
    """decoder = [BOS] + items[start:end-1]，labels = items[start:end]。"""
    lab_idx, lab_lens = _ranges(starts, ends)
    lab = codes[items[lab_idx]]
    lab_off = _offsets(lab_lens)
    # decoder 与 labels 等长、共用 offsets：在每段开头插入 BOS、去掉最后一个物品
    total = int(lab_lens.sum())
    dec = np.full((total, 3), pad, dtype=np.int64)
    types = np.full(total, ITEM_TOKEN_TYPE, dtype=np.int64)
    seg_first = lab_off[:-1][lab_lens > 0]
    types[seg_first] = SPECIAL_TOKEN_TYPE
    not_first = np.ones(total, dtype=bool)
    not_first[seg_first] = False
    # 每个非首位位置 j 取 labels 的 j-1
    src = np.flatnonzero(not_first) - 1
    dec[not_first] = lab[src]
    return {
        "decoder_l1_ids": (dec[:, 0], lab_off),
        "decoder_l2_ids": (dec[:, 1], lab_off),
        "decoder_l3_ids": (dec[:, 2], lab_off),
        "decoder_positions": (_positions(lab_lens), lab_off),
        "decoder_token_types": (types, lab_off),
        "decoder_mask": (np.ones(total, np.int64), lab_off),
        "labels_l1": (lab[:, 0], lab_off),
        "labels_l2": (lab[:, 1], lab_off),
        "labels_l3": (lab[:, 2], lab_off),
    }


# 每块最多多少条训练样本：prepare 按用户区间分块构造并追加写出，峰值内存只随块大小而不随数据规模增长
SAMPLE_CHUNK_ROWS = 1 << 18


def train_sample_counts(seqs: Sequences, decoder_max_length: int, stride: int = 1) -> np.ndarray:
    """每个用户的训练样本数 [U]：训练前缀长 m 的用户在切点 s = 1, 1+stride, ... < m 各有一条（m < 2 时没有）。"""
    if not 1 <= stride <= decoder_max_length:
        raise ValueError(f"stride must be in [1, decoder_max_length={decoder_max_length}] so every item is a label")
    m = seqs.train_lengths()
    return np.where(m >= 2, (m - 2) // stride + 1, 0)


def user_chunks(rows_per_user: np.ndarray, max_rows: int) -> List[Tuple[int, int]]:
    """把用户按顺序切成连续区间 [u0, u1)，每段的行数不超过 max_rows（一个用户的行不拆开，单个用户超过时独占一段）。

    至少返回一段，这样每个划分至少写一张（可能为空的）表，文件与 schema 总在。
    """
    n = len(rows_per_user)
    ends = np.cumsum(rows_per_user)
    chunks, start, base = [], 0, 0
    while start < n:
        # 第一个使累计行数超过 base + max_rows 的用户之前结束；至少包含一个用户
        stop = max(start + 1, int(np.searchsorted(ends, base + max_rows, side="right")))
        chunks.append((start, stop))
        base = int(ends[stop - 1])
        start = stop
    return chunks or [(0, n)]


def build_recommend_blocks(
    seqs: Sequences, codes: np.ndarray, encoder_max_length: int, decoder_max_length: int, stride: int = 1,
    pad_token_id: int = 0, users: Optional[Tuple[int, int]] = None,
) -> Dict[str, Block]:
    """train / valid / test 三个 Block（列式，写文件前不展开成 Python 字典）。

    users: 只构造用户区间 [u0, u1) 的样本（prepare 分块写出）；各块按顺序拼起来与整体构造逐行相同。
    """
    if encoder_max_length < 1 or decoder_max_length < 1:
        raise ValueError("encoder_max_length and decoder_max_length must be >= 1")
    n_samples = train_sample_counts(seqs, decoder_max_length, stride)
    u0, u1 = users if users is not None else (0, seqs.num_users)
    lens = seqs.lengths()
    off = seqs.offsets[:-1]
    has_eval = lens >= 3
    m = seqs.train_lengths()
    users_ = np.repeat(np.arange(u0, u1), n_samples[u0:u1])
    k = _positions(n_samples[u0:u1])
    s = 1 + k * stride
    base = off[users_]
    enc_start = base + np.maximum(0, s - encoder_max_length)
    enc_end = base + s
    dec_start = base + s
    dec_end = base + np.minimum(s + decoder_max_length, m[users_])
    train = {}
    train.update(_encoder_fields(codes, seqs.items, enc_start, enc_end))
    train.update(_decoder_and_labels(codes, seqs.items, dec_start, dec_end, pad_token_id))
    blocks = {"train": Block(users_, train)}
    eu = np.flatnonzero(has_eval[u0:u1]) + u0
    for name, hist_len in (("valid", lens[eu] - 2), ("test", lens[eu] - 1)):
        b = off[eu]
        cols = _encoder_fields(codes, seqs.items, b + np.maximum(0, hist_len - encoder_max_length), b + hist_len)
        cols.update(_decoder_and_labels(codes, seqs.items, b + hist_len, b + hist_len + 1, pad_token_id))
        blocks[name] = Block(eu, cols)
    return blocks


# ---------------------------------------------------------------- 偏好对


@dataclass
class PreferenceBlock:
    user: np.ndarray  # [R]
    hist_start: np.ndarray  # [R] 全局事件下标
    hist_end: np.ndarray
    chosen: np.ndarray  # [R] 物品下标
    rejected: np.ndarray
    score: np.ndarray  # [R] float

    def __len__(self) -> int:
        return len(self.user)

    def slice(self, start: int, stop: int) -> "PreferenceBlock":
        return PreferenceBlock(*(getattr(self, f.name)[start:stop] for f in fields(self)))


def build_preference_pairs(
    seqs: Sequences, chosen_min: float = 4.0, rejected_max: float = 2.0, preference_cut: float = 0.8,
    encoder_max_length: int = 50, max_pairs_per_user: int = 20,
) -> Dict[str, PreferenceBlock]:
    """从评分构造偏好对（规则见模块文档）。没有评分时返回空字典。"""
    if seqs.ratings is None:
        return {}
    if not 0.0 < preference_cut < 1.0:
        raise ValueError(f"preference_cut must be in (0, 1), got {preference_cut}")
    if rejected_max >= chosen_min:
        raise ValueError(f"rejected threshold ({rejected_max}) must be below chosen threshold ({chosen_min})")
    m = seqs.train_lengths()
    cut = np.floor(preference_cut * m).astype(np.int64)
    # 训练前缀里的每个事件：用户、用户内位置 t、所属划分（t >= cut 属于 preference_test）
    ev_user = np.repeat(np.arange(seqs.num_users), m)
    t = _positions(m)
    ev = seqs.offsets[ev_user] + t  # 全局事件下标
    split = (t >= cut[ev_user]).astype(np.int64)
    rating = seqs.ratings[ev]
    # 组 = (用户, 划分)；组键 * stride + t 全局递增（事件本来按用户、时间排好）
    stride = int(m.max()) + 1 if len(m) else 1
    key = (ev_user * 2 + split) * stride + t
    is_pos, is_neg = rating >= chosen_min, rating <= rejected_max
    pos_key, pos_ev = key[is_pos], ev[is_pos]
    neg = np.flatnonzero(is_neg)
    # 每个 rejected 事件 j：同组里时间上最近的 chosen 事件（距离相同取较早者：更早的代价 2d，更晚的 2d+1）。
    # 前后各加一个哨兵（键 -1 与 big 不属于任何组），左右邻居不必判断越界；big 取 int64 最大值的 1/4，代价不溢出
    big = np.iinfo(np.int64).max // 4
    pk, pe = np.r_[-1, pos_key, big], np.r_[-1, pos_ev, -1]
    kj = key[neg]
    group = kj // stride
    right = np.searchsorted(pos_key, kj) + 1  # pk 里第一个晚于 j 的 chosen
    ok_l, ok_r = pk[right - 1] // stride == group, pk[right] // stride == group
    left_cost = np.where(ok_l, (kj - pk[right - 1]) * 2, big)
    right_cost = np.where(ok_r, (pk[right] - kj) * 2 + 1, big)
    has = ok_l | ok_r
    chosen_ev = np.where(has, pe[np.where(left_cost <= right_cost, right - 1, right)], -1)
    # 最近的 chosen 与 rejected 是同一物品（同一物品不能既被选又被拒）：在同组里另找，少见，逐个处理
    same = has & (seqs.items[np.maximum(chosen_ev, 0)] == seqs.items[ev[neg]])
    for q in np.flatnonzero(same).tolist():
        lo, hi = np.searchsorted(pos_key, [group[q] * stride, (group[q] + 1) * stride])
        cand = np.arange(lo, hi)
        cand = cand[seqs.items[pos_ev[cand]] != seqs.items[ev[neg[q]]]]
        if len(cand) == 0:
            chosen_ev[q] = -1
            continue
        d = key[neg[q]] - pos_key[cand]
        chosen_ev[q] = pos_ev[cand[np.argmin(np.abs(d) * 2 + (d < 0))]]
    j_t, j_user, j_split = t[neg], ev_user[neg], split[neg]
    i_t = chosen_ev - seqs.offsets[j_user]
    h_end = np.where(j_split == 0, np.minimum(i_t, j_t), cut[j_user])
    valid = (chosen_ev >= 0) & (h_end > 0)
    # 每个 (用户, 划分) 最多 max_pairs_per_user 对：按 rejected 的时间顺序取前几个有效的
    vq = np.flatnonzero(valid)
    g = group[vq]
    first = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, bool)
    rank = np.arange(len(g)) - np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
    vq = vq[rank < max_pairs_per_user]
    res = {}
    for sid, name in enumerate(schema.PREFERENCE_SPLITS):  # ("preference_train", "preference_test")
        q = vq[j_split[vq] == sid]
        base, he = seqs.offsets[j_user[q]], h_end[q]
        c_ev, r_ev = chosen_ev[q], ev[neg[q]]
        res[name] = PreferenceBlock(
            user=j_user[q].astype(np.int64),
            hist_start=(base + np.maximum(0, he - encoder_max_length)).astype(np.int64),
            hist_end=(base + he).astype(np.int64), chosen=seqs.items[c_ev].astype(np.int64),
            rejected=seqs.items[r_ev].astype(np.int64),
            score=(seqs.ratings[c_ev] - seqs.ratings[r_ev]).astype(np.float64) / 4.0,
        )
    return res


# ---------------------------------------------------------------- 写文件


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))


def recommend_table(block: Block, user_ids: Sequence[str]) -> pa.Table:
    cols = {"user_id": pa.array([user_ids[u] for u in block.user.tolist()], pa.string())}
    for name in schema.RECOMMEND_FIELDS[1:]:
        v, o = block.lists[name]
        cols[name] = _list_array(v, o)
    return pa.table(cols)


def preference_table(pb: PreferenceBlock, seqs: Sequences, codes: np.ndarray) -> pa.Table:
    enc = _encoder_fields(codes, seqs.items, pb.hist_start, pb.hist_end)
    seq_struct = pa.StructArray.from_arrays(
        [_list_array(*enc[f]) for f in schema.PREFERENCE_SEQUENCE_FIELDS],
        names=list(schema.PREFERENCE_SEQUENCE_FIELDS),
    )

    def item_struct(idx: np.ndarray) -> pa.StructArray:
        c = codes[idx] if len(idx) else np.zeros((0, 3), np.int64)
        return pa.StructArray.from_arrays([pa.array(c[:, k], pa.int64()) for k in range(3)],
                                          names=list(schema.ITEM_TRIPLE_FIELDS))

    return pa.table({
        "user_id": pa.array([seqs.user_ids[u] for u in pb.user.tolist()], pa.string()),
        "user_sequence": seq_struct,
        "chosen_item": item_struct(pb.chosen),
        "rejected_item": item_struct(pb.rejected),
        "preference_score": pa.array(pb.score, pa.float64()),
    })


def write_jsonl(table: pa.Table, path: str, progress: Optional[Callable[[int], None]] = None,
                chunk_rows: int = 20000) -> None:
    """pyarrow 表 -> JSON Lines（UTF-8，紧凑分隔符，字段顺序与表一致）。按块转换以控制内存。

    列都是字符串、整数、浮点、整数列表或它们组成的结构（prepare 写的推荐样本与偏好对）时，在 Arrow 里整块拼出每行的
    JSON 文本，与逐行 `json` 编码逐字节相同；逐行编码是 100 万条交互时 `ugt prepare` 的大头（写出 100 s 的大部分）。
    其余的表逐行编码。各块在线程池里并行编码（Arrow 计算不持有 GIL），按原顺序写出。
    """
    with open(path, "wb") as f:
        _append_jsonl(f, table, progress, chunk_rows)


_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _append_jsonl(f, table: pa.Table, progress: Optional[Callable[[int], None]] = None,
                  chunk_rows: int = 20000) -> None:
    """f 以二进制打开。"""
    fast = table.num_columns > 0 and all(_json_fast_type(t) for t in table.schema.types)
    batches = table.to_batches(max_chunksize=chunk_rows)
    for batch, data in zip(batches, _write_pool().map(lambda b: _jsonl_bytes(b, fast), batches)):
        f.write(data)
        if progress is not None:
            progress(batch.num_rows)


def _jsonl_bytes(batch: pa.RecordBatch, fast: bool):
    """一块 -> JSON Lines 字节。快速路径的结果是字符串数组，其值缓冲区就是各行依次相接的文本：直接取那一段。"""
    if not (fast and batch.num_rows and not any(_has_nulls(c) for c in batch.columns)):
        return "".join(_DUMPS(r) + "\n" for r in batch.to_pylist()).encode("utf-8")
    rows = _json_object(list(batch.schema.names), list(batch.columns), _DUMPS, end="}\n")
    offsets = np.frombuffer(rows.buffers()[1], np.int32)[rows.offset:rows.offset + len(rows) + 1]
    return memoryview(rows.buffers()[2])[int(offsets[0]):int(offsets[-1])]


_POOL: List[object] = []


def _write_pool():
    """写出用的共享线程池（JSONL 各块的编码、Parquet 行组的写入）：线程数 = 可用核数，最多 4 个。

    prepare 把 torch 限成 1 个线程（它的矩阵很小）；写出阶段的 Arrow 计算与 Parquet 编码不持有 GIL，能用上其余的核。
    """
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=min(available_cores(), 4), thread_name_prefix="ugt-write"))
    return _POOL[0]


if hasattr(os, "register_at_fork"):  # fork 出的子进程里没有池的线程：丢掉旧池，用到时重建（否则提交的任务永远等着）
    os.register_at_fork(after_in_child=_POOL.clear)


def available_cores() -> int:
    """本进程可用的 CPU 核数（容器、taskset 的限制算在内）。"""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _json_fast_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return all(_json_fast_type(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t):
        return pa.types.is_integer(t.value_type)
    return pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t)


def _has_nulls(arr: pa.Array) -> bool:
    """任何一层有 null（结构的字段、列表的元素）：快速路径不处理，逐行编码。"""
    if arr.null_count:
        return True
    if pa.types.is_struct(arr.type):
        return any(_has_nulls(c) for c in arr.flatten())
    if pa.types.is_list(arr.type):
        return arr.flatten().null_count > 0
    return False


def _json_values(arr: pa.Array, dumps: Callable[[object], str]) -> pa.Array:
    """一列 -> 每行的 JSON 文本（string 数组）；类型见 _json_fast_type，没有 null（见 _has_nulls）。"""
    import pyarrow.compute as pc

    if pa.types.is_struct(arr.type):
        children = arr.flatten()  # 按结构自身的切片偏移取子列
        return _json_object([arr.type.field(i).name for i in range(arr.type.num_fields)], children, dumps)
    if pa.types.is_list(arr.type):
        # 先按切片重建成紧凑的列表：对切片后的 ListArray 做 cast 会转换整个子数组（整块的全部值），而不只是这一段
        text = pa.ListArray.from_arrays(pc.subtract(arr.offsets, arr.offsets[0]), _int_text(arr.flatten()))
        joined = pc.binary_join(text, ",")  # 空列表 -> ""
        return pc.binary_join_element_wise("[", joined, "]", "")
    if pa.types.is_integer(arr.type):
        return _int_text(arr)
    if pa.types.is_floating(arr.type):  # Python 的最短 repr（1.0、1e-07、-0.0）：按位不同的值各交给 json 一次
        bits = arr.to_numpy(zero_copy_only=False).astype(np.float64).view(np.int64)
        uniq, inv = np.unique(bits, return_inverse=True)
        enc = pa.array([dumps(v) for v in uniq.view(np.float64).tolist()], pa.string())
        return enc.take(pa.array(inv.reshape(-1)))
    # 字符串的转义（引号、反斜杠、控制字符）交给 json：每个不同的值编码一次
    uniq = pc.unique(arr)
    enc = pa.array([dumps(v) for v in uniq.to_pylist()], pa.string())
    return pc.take(enc, pc.index_in(arr, value_set=uniq))


_INT_TEXT: List[pa.Array] = []
_INT_TEXT_LIMIT = 1 << 20


def _int_text(arr: pa.Array) -> pa.Array:
    """整数 -> 十进制文本。小的非负整数（语义 ID、位置、掩码）从缓存的 "0".."n-1" 表里取（take 比 cast 快约 3 倍），
    其余的交给 cast；两者文本相同。"""
    import pyarrow.compute as pc

    lo_hi = pc.min_max(arr)
    lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    if lo is None or lo < 0 or hi >= _INT_TEXT_LIMIT:
        return pc.cast(arr, pa.string())
    table = _INT_TEXT[0] if _INT_TEXT else None
    if table is None or len(table) <= hi:  # 写出线程池里并发调用：用本地引用，缓存只换成更大的表
        table = pa.array([str(i) for i in range(min(_INT_TEXT_LIMIT, max(1024, 2 * (hi + 1))))], pa.string())
        if not _INT_TEXT or len(_INT_TEXT[0]) < len(table):
            _INT_TEXT[:] = [table]
    return pc.take(table, arr)


def _json_object(names: List[str], columns: List[pa.Array], dumps: Callable[[object], str],
                 end: str = "}") -> pa.Array:
    import pyarrow.compute as pc

    parts: List[object] = []
    for i, (name, col) in enumerate(zip(names, columns)):
        parts += [("{" if i == 0 else ",") + dumps(name) + ":", _json_values(col, dumps)]
    return pc.binary_join_element_wise(*parts, end, "")


class SplitWriter:
    """一个划分的 `<name>.parquet` 与 `<name>.jsonl`，逐块追加（每块一个 Parquet 行组）。

    prepare 分块构造样本再追加写出，整个划分不必同时在内存里；各块 schema 必须相同（Parquet 写入器会检查）。
    Parquet 行组在写出线程池里写，同时本线程编码 JSONL；下一块（或 close）先等上一行组写完，最多压着一块。
    """

    def __init__(self, folder: str, name: str, progress: Optional[Callable[[int], None]] = None):
        self.folder, self.name, self.progress = folder, name, progress
        self._parquet: Optional[pq.ParquetWriter] = None
        self._pending = None
        self._jsonl = open(os.path.join(folder, f"{name}.jsonl"), "wb")

    def write(self, table: pa.Table) -> None:
        self._wait()
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(os.path.join(self.folder, f"{self.name}.parquet"), table.schema)
        self._pending = _write_pool().submit(self._parquet.write_table, table)
        _append_jsonl(self._jsonl, table, self.progress)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # 行组写入的异常在这里抛出

    def close(self) -> None:
        try:
            self._wait()
        finally:
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None
            self._jsonl.close()

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def items_table(seqs: Sequences, codes: np.ndarray, titles: Dict[str, str]) -> pa.Table:
    return pa.table({
        "item_id": pa.array(seqs.item_ids, pa.string()),
        "item_index": pa.array(np.arange(seqs.num_items), pa.int64()),
        "l1": pa.array(codes[:, 0], pa.int64()),
        "l2": pa.array(codes[:, 1], pa.int64()),
        "l3": pa.array(codes[:, 2], pa.int64()),
        "title": pa.array([titles.get(i) for i in seqs.item_ids], pa.string()),
    })


# ---------------------------------------------------------------- 原子目录


class AtomicDir:
    """在目标目录的兄弟临时目录里写，全部完成后再改名到位；出错时删除临时目录，目标保持原样。

    用法：with AtomicDir(out, replace=force) as tmp: 写 tmp/...
    """

    def __init__(self, target: str, replace: bool = False):
        self.target = os.path.abspath(target)
        self.replace = replace
        self.tmp: Optional[str] = None

    def __enter__(self) -> str:
        parent = os.path.dirname(self.target) or "."
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.tmp-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            os.chmod(self.tmp, 0o755)
            if os.path.exists(self.target):
                if not self.replace and os.listdir(self.target):
                    raise FileExistsError(f"{self.target} exists and is not empty")
                old = f"{self.target}.old-{uuid.uuid4().hex[:8]}"
                os.rename(self.target, old)
                try:
                    os.rename(self.tmp, self.target)
                except BaseException:
                    os.rename(old, self.target)  # 换入失败：把原目录放回，保证“目标保持原样”
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.tmp, self.target)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


# ---------------------------------------------------------------- 数据集卡


DATASET_CARD_FILE = "README.md"
# 产物目录的切分名 -> HF 的切分名（HF 约定用 validation）
HF_SPLIT_NAMES = {"train": "train", "valid": "validation", "test": "test",
                  "preference_train": "train", "preference_test": "test"}


def _split_file(folder: str, name: str) -> Optional[str]:
    """切分 name 的数据文件名（优先 Parquet：有类型、读得快；没有时用 JSONL）。"""
    for ext in ("parquet", "jsonl"):
        if os.path.isfile(os.path.join(folder, f"{name}.{ext}")):
            return f"{name}.{ext}"
    return None


def dataset_card_configs(folder: str, meta: Optional[Dict] = None) -> List[Dict]:
    """数据集卡 YAML 的 `configs:`（HF “Manual configuration”）。

    没有它时 `datasets.load_dataset(folder)` 按文件名猜切分，把 preference_* 也归进 train，列名对不上就失败。
    default = train/validation/test 记录；preference = 偏好对（有时）；items = 物品表。行数为 0 的切分不列出。
    """
    counts = (meta or {}).get("splits") or {}
    configs = []
    for config_name, names in (("default", schema.SPLITS), ("preference", schema.PREFERENCE_SPLITS)):
        files = []
        for name in names:
            path = _split_file(folder, name)
            if path is not None and counts.get(name, 1) > 0:
                files.append({"split": HF_SPLIT_NAMES[name], "path": path})
        if files:
            entry = {"config_name": config_name, "data_files": files}
            if config_name == "default":
                entry["default"] = True
            configs.append(entry)
    if os.path.isfile(os.path.join(folder, schema.ITEMS_FILE)):
        configs.append({"config_name": "items", "data_files": [{"split": "train", "path": schema.ITEMS_FILE}]})
    return configs


def dataset_card(folder: str, meta: Optional[Dict] = None) -> str:
    """产物目录的 README.md：YAML 头（configs、tags）+ 简短说明（文件、规模、加载方法）。"""
    meta = meta or {}
    configs = dataset_card_configs(folder, meta)
    front = {"configs": configs, "tags": ["recommendation", "sequential-recommendation", "semantic-ids", "ugt"]}
    names = {c["config_name"] for c in configs}
    splits = meta.get("splits") or {}
    lines = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        "",
        "# UGT prepared data",
        "",
        "Written by `ugt prepare` (ugt-hf): next-item recommendation records whose items are 3-level semantic IDs "
        "`(l1, l2, l3)`, leave-one-out split per user (last item = test target, second to last = validation "
        "target, the rest = training prefix). `meta.json` holds the counts, vocabulary sizes, options and the full "
        "protocol.",
        "",
        f"- source: `{meta.get('source')}`, users: {meta.get('num_users')}, items: {meta.get('num_items')}, "
        f"interactions: {meta.get('num_interactions')}, vocab_sizes: {meta.get('vocab_sizes')}",
        "- rows: " + ", ".join(f"{k}={v}" for k, v in splits.items()),
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'records = load_dataset("path/to/folder")  # train / validation / test',
    ]
    if "preference" in names:
        lines.append('pairs = load_dataset("path/to/folder", "preference")  # chosen / rejected pairs (stage 3)')
    if "items" in names:
        lines.append('items = load_dataset("path/to/folder", "items", split="train")  # item_id -> (l1, l2, l3)')
    lines += [
        "```",
        "",
        "For training use the folder as `--data_dir` (or `ugt_hf.data.DataDir(folder)`).",
        "",
    ]
    return "\n".join(lines)


def write_dataset_card(folder: str, meta: Optional[Dict] = None, overwrite: bool = True) -> Optional[str]:
    """写 folder/README.md（overwrite=False 且已存在时不动它）；先写临时文件再改名。"""
    path = os.path.join(folder, DATASET_CARD_FILE)
    if not overwrite and os.path.exists(path):
        return None
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dataset_card(folder, meta))
    os.replace(tmp, path)
    return path
