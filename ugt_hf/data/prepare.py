"""`ugt prepare`：原始交互日志 -> 语义 ID -> 产物目录（格式见 schema.py）。

    ugt prepare --source s3rec --input ../shared/data/amazon-beauty/Beauty.txt --out /tmp/beauty
    ugt prepare --source synthetic --out /tmp/syn --num_users 2000 --num_items 500

重复运行：输出目录已有 meta.json 且输入校验和与选项都相同 -> 什么也不做；来自别的输入/选项的目录
不会被覆盖，除非 --force。所有文件先写到兄弟临时目录，完成后才改名到位（出错不留半成品）。
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..argparsing import ConfigError, arg, parse_args
from ..errors import run_guarded
from ..locking import holding_output_lock
from . import schema
from .schema import DEFAULT_CODEBOOK_SIZES, SOURCES

# torch / pyarrow 与读写、语义 ID 的模块在用到它们的函数里导入：`ugt prepare --help` 与参数错误不必加载它们
if TYPE_CHECKING:
    from .synthetic import SyntheticConfig

FORMAT_VERSION = 2  # 产物格式版本；改变产物内容的代码改动应加一，使旧目录不再被当作“已是最新”


@dataclass
class PrepareOptions:
    """影响产物内容的全部选项（写入 meta.json 的 options，用于判断重复运行是否为 no-op）。"""

    source: str = "synthetic"
    input: Optional[str] = None
    seed: int = 0
    encoder_max_length: int = 50  # encoder 最多保留的最近历史物品数
    decoder_max_length: int = 5  # 一个训练样本的 decoder 最多预测的物品数
    stride: int = 1  # 训练切点的步长（1 <= stride <= decoder_max_length）
    codebook_sizes: List[int] = field(default_factory=lambda: list(DEFAULT_CODEBOOK_SIZES))
    balanced: bool = False  # k-means 是否用容量受限的均衡分配
    embedding: str = "collab"  # collab | text（文本不可用时回退到 collab 并记录）
    text_model: Optional[str] = None
    embedding_dim: int = 64
    cooc_window: int = 5
    kmeans_iters: int = 50
    min_user_events: int = 2
    chosen_min: float = 4.0
    rejected_max: float = 2.0
    preference_cut: float = 0.8
    max_pairs_per_user: int = 20
    # 通用 CSV/Parquet 的列映射与文本选项
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: Optional[str] = None
    rating_col: Optional[str] = None
    title_col: Optional[str] = None
    encoding: Optional[str] = None
    delimiter: str = ","
    skip_bad_lines: bool = False
    # 合成数据
    num_users: int = 2000
    num_items: int = 500
    events_per_user: int = 20
    num_clusters: int = 20

    def __post_init__(self) -> None:
        # ConfigError（ValueError 子类）带字段名：命令行入口按配置错误报告（退出码 2）
        if self.source not in SOURCES:
            raise ConfigError(f"--source must be one of {SOURCES}, got '{self.source}'", field="source")
        if self.source != "synthetic" and not self.input:
            raise ConfigError(f"--input is required for --source {self.source}", field="input")
        if len(self.codebook_sizes) != 3 or any(int(v) < 1 for v in self.codebook_sizes):
            raise ConfigError(f"--codebook_sizes needs three positive integers, got {self.codebook_sizes}",
                              field="codebook_sizes")
        if self.embedding not in ("collab", "text"):
            raise ConfigError(f"--embedding must be 'collab' or 'text', got '{self.embedding}'", field="embedding")
        if self.min_user_events < 2:
            raise ConfigError("--min_user_events must be >= 2 (a user needs a history and a target)",
                              field="min_user_events")
        for name in ("encoder_max_length", "decoder_max_length", "embedding_dim", "cooc_window", "kmeans_iters",
                     "max_pairs_per_user", "num_users", "num_items", "events_per_user", "num_clusters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}", field=name)
        if not 1 <= self.stride <= self.decoder_max_length:
            raise ConfigError(f"--stride must be in [1, --decoder_max_length={self.decoder_max_length}], got "
                              f"{self.stride}", field="stride")
        if self.source == "synthetic" and (self.num_items < 2 or self.events_per_user < 3):
            raise ConfigError("synthetic data needs --num_items >= 2 and --events_per_user >= 3, got "
                              f"{self.num_items} and {self.events_per_user}", field="events_per_user")
        if self.source == "synthetic" and self.num_clusters > self.num_items:
            raise ConfigError(f"--num_clusters ({self.num_clusters}) must not exceed --num_items ({self.num_items})",
                              field="num_clusters")
        if not 0.0 < self.preference_cut < 1.0:
            raise ConfigError(f"--preference_cut must be in (0, 1), got {self.preference_cut}", field="preference_cut")
        if not self.rejected_max < self.chosen_min:
            raise ConfigError(f"--rejected_max ({self.rejected_max}) must be below --chosen_min ({self.chosen_min})",
                              field="rejected_max")

    def content_options(self) -> Dict[str, Any]:
        """记录进 meta.json 的选项；输入路径不算（校验和代表输入内容）。"""
        d = asdict(self)
        d.pop("input")
        if self.source != "synthetic":
            for k in ("num_users", "num_items", "events_per_user", "num_clusters"):
                d.pop(k)
        d["format_version"] = FORMAT_VERSION
        return d


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _input_files(opts: PrepareOptions) -> List[str]:
    """在读取之前就确定要校验的文件（重复运行判断不需要解析数据）。"""
    from .readers import DataFormatError

    p = opts.input
    assert p is not None
    if not os.path.exists(p):
        raise DataFormatError(f"{p}: input not found")
    if os.path.isdir(p):
        names = {"ml-100k": ["u.data", "u.item", "u.genre"], "ml-1m": ["ratings.dat", "movies.dat"],
                 "ml-10m": ["ratings.dat", "movies.dat"]}.get(opts.source)
        if names is None:
            raise DataFormatError(f"{p}: --source {opts.source} expects a file, got a directory")
        files = [os.path.join(p, n) for n in names if os.path.isfile(os.path.join(p, n))]
        if not files or not os.path.isfile(os.path.join(p, names[0])):
            raise DataFormatError(f"{p}: directory has no {names[0]} (needed for --source {opts.source})")
        return files
    files = [p]
    sib = {"ml-100k": ["u.item", "u.genre"], "ml-1m": ["movies.dat"], "ml-10m": ["movies.dat"]}.get(opts.source, [])
    files += [os.path.join(os.path.dirname(p), n) for n in sib if os.path.isfile(os.path.join(os.path.dirname(p), n))]
    return files


def input_checksum(opts: PrepareOptions) -> Dict[str, Any]:
    if opts.source == "synthetic":
        cfg = _synthetic_config(opts)
        return {"sha256": cfg.checksum(), "files": {}}
    files = _input_files(opts)
    per = {os.path.basename(f): _sha256(f) for f in files}
    total = hashlib.sha256("".join(f"{k}:{v};" for k, v in sorted(per.items())).encode()).hexdigest()
    return {"sha256": total, "files": per}


def _synthetic_config(opts: PrepareOptions) -> SyntheticConfig:
    from .synthetic import SyntheticConfig

    return SyntheticConfig(num_users=opts.num_users, num_items=opts.num_items, events_per_user=opts.events_per_user,
                           num_clusters=opts.num_clusters, seed=opts.seed)


def _existing_state(out: str, checksum: str, options: Dict[str, Any]) -> str:
    """返回 'missing' | 'up_to_date' | 'different' | 'foreign'（非空但不是 prepare 产物）。"""
    from .datadir import read_meta
    from .validation import DataValidationError

    if not os.path.exists(out):
        return "missing"
    if not os.path.isdir(out):
        return "foreign"
    if not os.path.isfile(os.path.join(out, schema.META_FILE)):
        return "foreign" if os.listdir(out) else "missing"
    try:
        meta = read_meta(out)
    except (OSError, DataValidationError):  # 读不了、不是 UTF-8 / JSON 对象：不是本工具写的目录
        return "foreign"
    if meta.get("input_checksum") != checksum or meta.get("options") != options:
        return "different"
    expected = [schema.ITEMS_FILE] + [f"{s}.{ext}" for s in schema.SPLITS for ext in ("jsonl", "parquet")]
    if meta.get("has_ratings"):
        expected += [f"{s}.{ext}" for s in schema.PREFERENCE_SPLITS for ext in ("jsonl", "parquet")]
    return "up_to_date" if all(os.path.isfile(os.path.join(out, e)) for e in expected) else "different"


@holding_output_lock("ugt prepare")  # 两个 prepare 写同一目录时第二个得到一行错误（#16）
def prepare(out: str, options: Optional[PrepareOptions] = None, force: bool = False, progress: bool = True,
            log=print, _fail_after: Optional[str] = None, **kwargs) -> Dict[str, Any]:
    """Python API：准备产物目录并返回 meta 字典（目录已是最新时直接返回已有 meta）。

    options 与 kwargs 二选一（kwargs 是 PrepareOptions 的字段）。_fail_after 仅供测试注入失败。
    """
    import pyarrow.parquet as pq
    import torch
    from tqdm.auto import tqdm

    from .artifacts import (
        PROTOCOL,
        SAMPLE_CHUNK_ROWS,
        AtomicDir,
        SplitWriter,
        available_cores,
        build_preference_pairs,
        build_recommend_blocks,
        items_table,
        normalise,
        preference_table,
        recommend_table,
        train_sample_counts,
        training_prefixes,
        user_chunks,
        write_dataset_card,
    )
    from .datadir import read_meta
    from .readers import read_source
    from .semantic_ids import collaborative_embeddings, l1_cooccurrence_ratio, rq_kmeans, text_embeddings
    from .synthetic import generate

    opts = options if options is not None else PrepareOptions(**kwargs)
    # 准备阶段的矩阵都很小（1 万级物品 x 64 维），多线程同步开销在共享的 2 核机器上反而更慢（实测 3.4s vs 11s）
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    timings: Dict[str, float] = {}
    content = opts.content_options()
    checksum = input_checksum(opts)
    timings["checksum_s"] = time.perf_counter() - t0
    state = _existing_state(out, checksum["sha256"], content)
    if state == "up_to_date" and not force:
        log(f"[prepare] {out} is up to date (same inputs and options): nothing to do")
        meta = read_meta(out)
        write_dataset_card(out, meta, overwrite=False)  # 早先版本写的目录没有数据集卡：补上（不改动其余文件）
        return meta
    if state in ("different", "foreign") and not force:
        if state == "different":
            why = "was prepared from other inputs/options"
        else:
            why = "exists and is not a prepare artefact folder"
        raise FileExistsError(f"{out} {why}; pass --force to overwrite it")

    # 1) 读取
    t = time.perf_counter()
    if opts.source == "synthetic":
        inter = generate(_synthetic_config(opts))
    else:
        inter = read_source(opts.source, opts.input, user_col=opts.user_col, item_col=opts.item_col,
                            time_col=opts.time_col, rating_col=opts.rating_col, title_col=opts.title_col,
                            encoding=opts.encoding, delimiter=opts.delimiter, skip_bad_lines=opts.skip_bad_lines)
    for w in inter.warnings:
        log(f"[prepare] warning: {w}")
    timings["read_s"] = time.perf_counter() - t

    # 2) 规范化：排序、去重、过滤
    t = time.perf_counter()
    seqs = normalise(inter, min_events=opts.min_user_events)
    # 只留下后面还要用的小字段：原始交互的字符串列（每条两个 Python 字符串）在 2000 万条时占数 GB
    titles, read_stats, read_warnings = inter.titles, inter.stats, inter.warnings
    del inter
    for k, v in seqs.stats.items():
        if k != "raw_interactions" and v:
            log(f"[prepare] warning: {k} = {v}")
    timings["normalise_s"] = time.perf_counter() - t

    # 3) 物品嵌入（只用训练前缀）与语义 ID
    t = time.perf_counter()
    prefixes = training_prefixes(seqs)
    notes: List[str] = []
    emb = None
    if opts.embedding == "text":
        texts = [titles.get(i, i) for i in seqs.item_ids]
        emb, note = text_embeddings(texts, opts.text_model)
        notes.append(note)
        log(f"[prepare] note: {note}")
    cold = 0
    emb_kind = "text" if emb is not None else "collaborative-ppmi-svd"
    if emb is None:
        emb, cold = collaborative_embeddings(prefixes, seqs.num_items, dim=opts.embedding_dim,
                                             window=opts.cooc_window, seed=opts.seed)
    timings["embedding_s"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        # faiss 的最近质心搜索用上全部核（大目录时占 k-means 的六成；结果与线程数无关），其余 torch 运算仍是 1 线程
        sid = rq_kmeans(emb, opts.codebook_sizes, seed=opts.seed, balanced=opts.balanced, n_iter=opts.kmeans_iters,
                        threads=available_cores())
    except ValueError as e:  # 码本装不下目录（消息里写了该调哪个 --codebook_sizes 值）：选项错误，不是程序缺陷
        raise ConfigError(str(e), field="codebook_sizes") from None
    timings["rq_kmeans_s"] = time.perf_counter() - t
    codes = sid.codes
    full_seqs = [seqs.seq(u) for u in range(seqs.num_users)]
    ratio = l1_cooccurrence_ratio(full_seqs, codes[:, 0])
    ratio_train = l1_cooccurrence_ratio(prefixes, codes[:, 0])

    # 4) 样本：偏好对；推荐样本只数条数，写出时按用户区间分块构造（峰值内存与数据规模无关）
    t = time.perf_counter()
    pad = 0
    train_counts = train_sample_counts(seqs, opts.decoder_max_length, opts.stride)
    prefs = build_preference_pairs(seqs, opts.chosen_min, opts.rejected_max, opts.preference_cut,
                                   opts.encoder_max_length, opts.max_pairs_per_user)
    timings["samples_s"] = time.perf_counter() - t

    # 5) 原子写入
    t = time.perf_counter()
    lens = seqs.lengths()
    num_eval = int((lens >= 3).sum())
    splits = {"train": int(train_counts.sum()), "valid": num_eval, "test": num_eval}
    splits.update({name: (len(prefs[name]) if prefs else 0) for name in schema.PREFERENCE_SPLITS})
    total_rows = sum(splits.values())
    with AtomicDir(out, replace=True) as tmp:
        items_tbl = items_table(seqs, codes, titles)
        pq.write_table(items_tbl, os.path.join(tmp, schema.ITEMS_FILE))
        bar = tqdm(total=total_rows, desc="write records", unit="rec", disable=not progress, leave=False)
        with contextlib.ExitStack() as stack:
            writers = {name: stack.enter_context(SplitWriter(tmp, name, bar.update)) for name in schema.SPLITS}
            for users in user_chunks(train_counts, SAMPLE_CHUNK_ROWS):
                blocks = build_recommend_blocks(seqs, codes, opts.encoder_max_length, opts.decoder_max_length,
                                                opts.stride, pad, users=users)
                for name in schema.SPLITS:
                    writers[name].write(recommend_table(blocks[name], seqs.user_ids))
            for name in schema.SPLITS:
                writers[name].close()
                if _fail_after == name:
                    raise RuntimeError(f"injected failure after writing {name}")
        for name in schema.PREFERENCE_SPLITS if prefs else ():
            pb = prefs[name]
            with SplitWriter(tmp, name, bar.update) as writer:
                for start in range(0, max(len(pb), 1), SAMPLE_CHUNK_ROWS):
                    writer.write(preference_table(pb.slice(start, start + SAMPLE_CHUNK_ROWS), seqs, codes))
        bar.close()
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        meta = {
            "format_version": FORMAT_VERSION,
            "source": opts.source,
            "input": os.path.abspath(opts.input) if opts.input else None,
            "input_checksum": checksum["sha256"],
            "input_files_sha256": checksum["files"],
            "options": content,
            "seed": opts.seed,
            "num_users": seqs.num_users,
            "num_items": seqs.num_items,
            "num_interactions": int(len(seqs.items)),
            "num_eval_users": int((lens >= 3).sum()),
            "num_train_only_users": int((lens < 3).sum()),
            "sequence_length": {"mean": float(lens.mean()), "max": int(lens.max()), "min": int(lens.min())},
            "has_ratings": seqs.ratings is not None,
            "vocab_sizes": sid.vocab_sizes,
            "codebook_sizes_requested": sid.requested_sizes,
            "codebook_sizes_kmeans": sid.kmeans_sizes,
            "codebook_cap_rule": "k-means clusters per level = min(requested, 2^ceil(log2(sqrt(N))), N); "
                                 "V3 = max(level-3 clusters, largest (l1,l2) cell)",
            "codebook_utilisation": sid.utilisation,
            "collisions": sid.collisions,
            "collision_resolution": "within each (l1,l2) cell, items in order of distance to their nearest level-3 "
                                    "centroid take their nearest still-free level-3 centroid; beyond the centroids, "
                                    "codes k3, k3+1, ... in the same order",
            "embedding": {"kind": emb_kind, "dim": int(emb.shape[1]), "cold_items": cold,
                          "uses": "training prefixes only (valid/test targets excluded)", "notes": notes},
            "l1_cooccurrence": {"full_sequences": ratio, "training_prefixes": ratio_train},
            "pad_token_id": pad,
            "bos": {"token_type": 0, "ids": [pad, pad, pad]},
            "encoder_max_length": opts.encoder_max_length,
            "decoder_max_length": opts.decoder_max_length,
            "stride": opts.stride,
            "splits": splits,
            "filtering": {**seqs.stats, **read_stats},
            "warnings": read_warnings,
            "protocol": PROTOCOL,
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        with open(os.path.join(tmp, schema.META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)
        # README.md 的 configs：datasets.load_dataset(out) 才分得清记录、偏好对与物品表
        write_dataset_card(tmp, meta)
    _summary(out, meta, log)
    return meta


def _summary(out: str, meta: Dict[str, Any], log) -> None:
    u = meta["codebook_utilisation"]
    log(f"[prepare] wrote {out}: users={meta['num_users']:,} items={meta['num_items']:,} "
        f"interactions={meta['num_interactions']:,}")
    log("[prepare] splits: " + ", ".join(f"{k}={v:,}" for k, v in meta["splits"].items()))
    log(f"[prepare] codebooks requested={meta['codebook_sizes_requested']} effective={meta['vocab_sizes']} "
        f"used l1={u['l1_used']} l2={u['l2_used']} l3={u['l3_used']} (largest l1 cluster {u['l1_largest_cluster']}, "
        f"largest (l1,l2) cell {u['l1l2_largest_cell']})")
    c = meta["collisions"]
    log(f"[prepare] collisions: {c['items_colliding_before']} items in {c['colliding_groups_before']} groups before "
        f"resolution, {c['items_colliding_after']} after")
    r = meta["l1_cooccurrence"]["full_sequences"]
    log(f"[prepare] L1 co-occurrence ratio (same-L1 pairs vs random pairs): {r['ratio']:.2f}x")
    log(f"[prepare] time {meta['timings']['total_s']:.1f}s")


_D = PrepareOptions()


@dataclass
class PrepareArguments:
    """`ugt prepare` 的命令行（与 PrepareOptions 同名同默认值，另加 --out/--force/--no_progress），由共用的
    HfArgumentParser 解析；每个选项带英文帮助。"""

    source: str = arg(dataclasses.MISSING, "input format", choices=SOURCES)
    out: str = arg(dataclasses.MISSING, "output artifact directory")
    input: Optional[str] = arg(None, "input file or directory (not needed for --source synthetic)")
    force: bool = arg(False, "overwrite a directory prepared from other inputs/options")
    no_progress: bool = arg(False, "hide progress bars")
    seed: int = arg(_D.seed, "random seed (k-means, splits, synthetic data)")
    encoder_max_length: int = arg(_D.encoder_max_length, "most recent history items kept for the encoder")
    decoder_max_length: int = arg(_D.decoder_max_length, "items the decoder predicts per training sample")
    stride: int = arg(_D.stride, "step between training cut points (1 <= stride <= decoder_max_length)")
    codebook_sizes: str = arg(",".join(map(str, _D.codebook_sizes)), "three codebook sizes, comma-separated")
    balanced: bool = arg(_D.balanced, "capacity-constrained (balanced) k-means assignment")
    embedding: str = arg(_D.embedding, "item embedding for semantic IDs: collab or text (text falls back to collab)")
    text_model: Optional[str] = arg(_D.text_model, "sentence-transformers model for --embedding text")
    embedding_dim: int = arg(_D.embedding_dim, "collaborative embedding dimension")
    cooc_window: int = arg(_D.cooc_window, "co-occurrence window (events) for collaborative embeddings")
    kmeans_iters: int = arg(_D.kmeans_iters, "k-means iterations per level")
    min_user_events: int = arg(_D.min_user_events, "drop users with fewer events (>= 2)")
    chosen_min: float = arg(_D.chosen_min, "rating at or above which an item is a preference 'chosen'")
    rejected_max: float = arg(_D.rejected_max, "rating at or below which an item is a preference 'rejected'")
    preference_cut: float = arg(_D.preference_cut, "fraction of each user's timeline for training preference pairs")
    max_pairs_per_user: int = arg(_D.max_pairs_per_user, "preference pairs kept per user at most")
    user_col: str = arg(_D.user_col, "user column (csv/parquet sources)")
    item_col: str = arg(_D.item_col, "item column (csv/parquet sources)")
    time_col: Optional[str] = arg(_D.time_col, "timestamp column (csv/parquet; default: file order)")
    rating_col: Optional[str] = arg(_D.rating_col, "rating column (csv/parquet)")
    title_col: Optional[str] = arg(_D.title_col, "item title column (csv/parquet; used by --embedding text)")
    encoding: Optional[str] = arg(_D.encoding, "text encoding of the input (default: detect UTF-8/Latin-1)")
    delimiter: str = arg(_D.delimiter, "field delimiter (csv source)")
    skip_bad_lines: bool = arg(_D.skip_bad_lines, "skip malformed input lines instead of failing")
    num_users: int = arg(_D.num_users, "synthetic data: number of users")
    num_items: int = arg(_D.num_items, "synthetic data: number of items")
    events_per_user: int = arg(_D.events_per_user, "synthetic data: events per user")
    num_clusters: int = arg(_D.num_clusters, "synthetic data: latent item clusters")


def main(argv: Optional[List[str]] = None) -> int:
    """`ugt prepare`：错误经 ugt_hf.errors 报成一行（配置 2、输入数据 3、输出目录/磁盘 4），不打印回溯。"""
    return run_guarded(_main, argv, prog="ugt prepare")


def _main(argv: List[str]) -> int:
    (args,) = parse_args([PrepareArguments], argv, prog="ugt prepare", config_flag=False)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions)}
    try:
        kw["codebook_sizes"] = [int(v) for v in str(args.codebook_sizes).split(",")]
    except ValueError:
        raise ConfigError(f"--codebook_sizes must be comma-separated integers, got {args.codebook_sizes!r}",
                          field="codebook_sizes") from None
    prepare(args.out, PrepareOptions(**kw), force=args.force, progress=not args.no_progress)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
