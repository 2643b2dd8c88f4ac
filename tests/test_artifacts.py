"""artifacts：排序/去重/过滤、留一法切分、样本构造（BOS、标签移位、滑动切点）、偏好对、原子目录。"""

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ugt_hf.data import schema
from ugt_hf.data.artifacts import (
    DATASET_CARD_FILE,
    AtomicDir,
    SplitWriter,
    build_preference_pairs,
    build_recommend_blocks,
    dataset_card_configs,
    factorize,
    normalise,
    recommend_table,
    train_sample_counts,
    training_prefixes,
    user_chunks,
    write_dataset_card,
    write_jsonl,
)
from ugt_hf.data.readers import Interactions


def _inter(rows, rating=False):
    u, i, t = zip(*[r[:3] for r in rows])
    return Interactions(
        user=np.array(u, dtype=object), item=np.array(i, dtype=object), timestamp=np.array(t, dtype=np.int64),
        rating=np.array([r[3] for r in rows], dtype=np.float32) if rating else None,
    )


def test_normalise_counts():
    rows = [("a", "2", 3), ("a", "10", 1), ("a", "2", 3), ("a", "3", 3), ("b", "10", 5), ("b", "2", 6), ("c", "7", 1)]
    seqs = normalise(_inter(rows))
    assert seqs.user_ids == ["a", "b"]
    assert seqs.item_ids == ["2", "3", "10"]  # 整数 id 按数值排序；物品 7 只属于被丢弃的用户
    # a: 时间 1 -> 10, 时间 3 -> 2, 3（同一时刻按输入顺序）；重复的 (a, 2, 3) 去掉
    assert [seqs.item_ids[i] for i in seqs.seq(0)] == ["10", "2", "3"]
    assert [seqs.item_ids[i] for i in seqs.seq(1)] == ["10", "2"]
    assert seqs.stats["duplicate_events_removed"] == 1
    assert seqs.stats["users_dropped_too_few_events"] == 1
    assert seqs.stats["items_dropped_with_users"] == 1
    with pytest.raises(ValueError, match="no user has at least 2"):
        normalise(_inter([("a", "1", 1), ("b", "1", 1)]))


def _seqs_one_user(n, ratings=None):
    rows = [("u", str(k), k, (ratings[k] if ratings else 0)) for k in range(n)]
    return normalise(_inter(rows, rating=ratings is not None))


def test_leave_one_out_and_training_samples():
    seqs = _seqs_one_user(8)  # 物品 0..7，训练前缀 0..5，验证 6，测试 7
    codes = np.stack([np.arange(8) + 100, np.arange(8) + 200, np.arange(8) + 300], 1)
    blocks = build_recommend_blocks(seqs, codes, encoder_max_length=3, decoder_max_length=2, stride=1, pad_token_id=0)
    train = recommend_table(blocks["train"], seqs.user_ids).to_pylist()
    # 切点 s = 1..5：labels = p[s:s+2] 截到前缀末尾
    assert [r["labels_l1"] for r in train] == [[101, 102], [102, 103], [103, 104], [104, 105], [105]]
    assert [r["encoder_l1_ids"] for r in train][:4] == [[100], [100, 101], [100, 101, 102], [101, 102, 103]]
    r = train[1]
    assert r["decoder_l1_ids"] == [0, 102] and r["decoder_l2_ids"] == [0, 202] and r["decoder_token_types"] == [0, 1]
    assert r["decoder_positions"] == [0, 1] and r["decoder_mask"] == [1, 1]
    assert r["encoder_positions"] == [0, 1] and r["encoder_token_types"] == [1, 1]
    # 除 p[0] 外每个训练前缀物品都当过标签，验证/测试目标从不出现在训练里
    labels = {x for rr in train for x in rr["labels_l1"]}
    assert labels == {101, 102, 103, 104, 105}
    assert not any(106 in rr["encoder_l1_ids"] + rr["decoder_l1_ids"] for rr in train)
    valid = recommend_table(blocks["valid"], seqs.user_ids).to_pylist()[0]
    test = recommend_table(blocks["test"], seqs.user_ids).to_pylist()[0]
    assert valid["encoder_l1_ids"] == [103, 104, 105]
    assert valid["labels_l1"] == [106] and valid["decoder_l1_ids"] == [0]
    assert test["encoder_l1_ids"] == [104, 105, 106] and test["labels_l3"] == [307]
    assert test["decoder_token_types"] == [0]
    assert set(train[0]) == set(schema.RECOMMEND_FIELDS)


def test_stride_covers_every_label():
    seqs = _seqs_one_user(30)
    codes = np.stack([np.arange(30)] * 3, 1)
    blocks = build_recommend_blocks(seqs, codes, 50, 4, stride=4)
    rows = recommend_table(blocks["train"], seqs.user_ids).to_pylist()
    labels = [x for r in rows for x in r["labels_l1"]]
    assert sorted(labels) == list(range(1, 28))  # 每个前缀物品（除第一个）恰好一次
    with pytest.raises(ValueError, match="stride"):
        build_recommend_blocks(seqs, codes, 50, 4, stride=5)


def test_short_users_are_training_only():
    seqs = normalise(_inter([("a", "1", 1), ("a", "2", 2), ("b", "1", 1), ("b", "2", 2), ("b", "3", 3)]))
    codes = np.stack([np.arange(3)] * 3, 1)
    blocks = build_recommend_blocks(seqs, codes, 50, 5)
    assert len(blocks["valid"]) == 1 and blocks["valid"].user.tolist() == [1]
    assert blocks["train"].user.tolist() == [0]  # b 的训练前缀只有 1 个物品，没有训练样本
    assert [len(p) for p in training_prefixes(seqs)] == [2, 1]


def test_preference_pairs_respect_cut_and_history():
    # 12 个事件：训练前缀 10 个（0..9），cut = 8
    ratings = [5, 1, 5, 4, 2, 5, 5, 5, 5, 1, 5, 1]
    seqs = _seqs_one_user(12, ratings)
    prefs = build_preference_pairs(seqs, chosen_min=4, rejected_max=2, preference_cut=0.8, encoder_max_length=50)
    tr, te = prefs["preference_train"], prefs["preference_test"]
    # 切点前 rejected: 位置 1（最近 chosen 0，历史空 -> 跳过）、位置 4（最近 chosen 3，历史 0..2）
    assert tr.chosen.tolist() == [3] and tr.rejected.tolist() == [4]
    assert (tr.hist_end - tr.hist_start).tolist() == [3]
    assert te.chosen.tolist() == [8] and te.rejected.tolist() == [9]  # 位置 10/11 是验证/测试目标，不使用
    assert (te.hist_end - te.hist_start).tolist() == [8]
    assert np.allclose(te.score, [1.0])
    assert build_preference_pairs(_seqs_one_user(5)) == {}
    # 同一物品先高分后低分：不能成为自己的 chosen/rejected 对
    rows = [("u", "a", 0, 5), ("u", "b", 1, 5), ("u", "a", 2, 1), ("u", "c", 3, 5), ("u", "d", 4, 5), ("u", "e", 5, 5)]
    seqs = normalise(_inter(rows, rating=True))
    pr = build_preference_pairs(seqs, preference_cut=0.9)["preference_train"]
    assert [seqs.item_ids[i] for i in pr.chosen] == ["b"] and [seqs.item_ids[i] for i in pr.rejected] == ["a"]


def test_write_jsonl_roundtrip(tmp_path):
    seqs = _seqs_one_user(6)
    codes = np.stack([np.arange(6)] * 3, 1)
    tbl = recommend_table(build_recommend_blocks(seqs, codes, 50, 5)["train"], seqs.user_ids)
    write_jsonl(tbl, str(tmp_path / "t.jsonl"))
    rows = [json.loads(x) for x in open(tmp_path / "t.jsonl")]
    assert rows == tbl.to_pylist()


def test_write_jsonl_fast_path_is_byte_identical_to_json(tmp_path):
    """字符串 + 整数列表（推荐样本）与嵌套结构 + 浮点（偏好对）的表走 Arrow 拼接：与逐行 json 编码逐字节相同
    （转义、空列表、负数、大整数、跨块切片）；其余的表逐行编码，结果同样相同。"""
    import pyarrow as pa

    uids = ['a"b', "c\\d", "e\nf", "中文", "x", "\u2028", "tab\t"]
    fast = pa.table({
        "user_id": pa.array([uids[i % 7] for i in range(50)], pa.string()),
        "l": pa.array([[i, -100, 2 ** 40][: i % 4] for i in range(50)], pa.list_(pa.int64())),
        "m": pa.array([list(range(i % 5)) for i in range(50)], pa.list_(pa.int32())),
    })
    # 偏好对的形状：嵌套结构 + 浮点（Python 的 repr：1.0、1e-07）也走拼接；布尔列不支持，逐行编码
    seq = pa.StructArray.from_arrays([fast.column("l").combine_chunks(), fast.column("m").combine_chunks()],
                                     names=["encoder_l1_ids", "encoder_mask"])
    nested = pa.table({"user_id": fast.column("user_id"), "user_sequence": seq,
                       "chosen_item": pa.StructArray.from_arrays([pa.array(np.arange(50)), pa.array(-np.arange(50))],
                                                                 names=["l1_id", "l2_id"]),
                       "preference_score": pa.array(np.r_[np.linspace(0, 1, 46), [-0.0, 1e-7, 1.0, 3e20]])})
    slow = fast.append_column("flag", pa.array([i % 2 == 0 for i in range(50)]))
    # 列表里有 null 元素的块走逐行编码（null -> JSON 的 null），其余块照样拼接
    holes = fast.set_column(1, "l", pa.array([[i, None] if i == 20 else [i] for i in range(50)], pa.list_(pa.int64())))
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for name, table in (("fast", fast), ("nested", nested), ("slow", slow), ("holes", holes)):
        counted = []
        write_jsonl(table, str(tmp_path / f"{name}.jsonl"), progress=counted.append, chunk_rows=16)
        text = (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8")
        assert text == "".join(dumps(r) + "\n" for r in table.to_pylist())
        assert counted == [16, 16, 16, 2]


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with AtomicDir(str(target)) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with AtomicDir(str(target)) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("1")
    with AtomicDir(str(target), replace=True) as tmp:
        open(os.path.join(tmp, "b.txt"), "w").write("2")
    assert os.listdir(target) == ["b.txt"] and os.listdir(tmp_path) == ["out"]
    with pytest.raises(FileExistsError):
        with AtomicDir(str(target), replace=False) as tmp:
            pass
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_dir_restores_target_when_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with AtomicDir(str(target)) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("old")
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in os.path.basename(src):  # 只让“临时目录 -> 目标”这一步失败
            raise OSError("simulated rename failure")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        with AtomicDir(str(target), replace=True) as tmp:
            open(os.path.join(tmp, "b.txt"), "w").write("new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out"] and os.listdir(target) == ["a.txt"]


def test_normalise_accepts_ids_beyond_int64():
    big = "9" * 25  # 数字串但超出 int64：退回按字符串排序，而不是抛 OverflowError
    seqs = normalise(_inter([(big, "1", 1), (big, "2", 2), ("7", "1", 3), ("7", "2", 4)]))
    assert seqs.user_ids == sorted([big, "7"])
    assert seqs.item_ids == ["1", "2"]


# ---------------------------------------------------------------- 数据集卡
def _front_matter(folder):
    yaml = pytest.importorskip("yaml")
    text = open(os.path.join(folder, DATASET_CARD_FILE), encoding="utf-8").read()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_prepared_folder_loads_with_datasets_load_dataset(tmp_path):
    """prepare 写的 README.md 声明 configs：load_dataset(folder) 给出 train/validation/test 记录，
    "preference" 给出偏好对，"items" 给出物品表（没有它时 preference_* 被归进 train，列名不合而失败）。"""
    datasets = pytest.importorskip("datasets")
    from ugt_hf.data.datadir import DataDir
    from ugt_hf.data.prepare import prepare
    from ugt_hf.data.validation import resolve_data_files

    out = str(tmp_path / "syn")
    meta = prepare(out, source="synthetic", num_users=60, num_items=40, events_per_user=8, num_clusters=4,
                   progress=False, log=lambda *a: None)
    splits = meta["splits"]
    assert splits["preference_train"] > 0 and splits["preference_test"] > 0
    front = _front_matter(out)
    default = next(c for c in front["configs"] if c["config_name"] == "default")
    assert default["default"] is True
    assert [f["path"] for f in default["data_files"]] == ["train.parquet", "valid.parquet", "test.parquet"]
    cache = str(tmp_path / "cache")
    ds = datasets.load_dataset(out, cache_dir=cache)
    assert {k: len(v) for k, v in ds.items()} == {"train": splits["train"], "validation": splits["valid"],
                                                  "test": splits["test"]}
    assert set(ds["train"].column_names) == set(schema.RECOMMEND_FIELDS)
    pairs = datasets.load_dataset(out, "preference", cache_dir=cache)
    assert {k: len(v) for k, v in pairs.items()} == {"train": splits["preference_train"],
                                                     "test": splits["preference_test"]}
    assert set(schema.PREFERENCE_FIELDS) <= set(pairs["train"].column_names)
    items = datasets.load_dataset(out, "items", split="train", cache_dir=cache)
    assert len(items) == meta["num_items"] and items.column_names == list(schema.ITEMS_COLUMNS)
    # 本包自己的读取不受 README.md 影响
    data = DataDir(out)
    assert data.missing_files() == [] and data.num_records("valid") == splits["valid"]
    assert not any(f.endswith(".md") for f in resolve_data_files(out))
    # 旧目录（没有卡）再跑一次 prepare：已是最新，只补上卡，meta.json 不动
    os.remove(os.path.join(out, DATASET_CARD_FILE))
    mtime = os.path.getmtime(os.path.join(out, schema.META_FILE))
    prepare(out, source="synthetic", num_users=60, num_items=40, events_per_user=8, num_clusters=4,
            progress=False, log=lambda *a: None)
    assert _front_matter(out) == front and os.path.getmtime(os.path.join(out, schema.META_FILE)) == mtime


def test_dataset_card_lists_only_existing_non_empty_files(tmp_path):
    """只有 JSONL 的切分用 JSONL；0 行的切分与不存在的文件不列出；已有的 README.md 在 overwrite=False 时保留。"""
    from _tiny_artifacts import hand_made_data_dir

    folder = hand_made_data_dir(tmp_path / "hand")
    meta = json.loads((folder / "meta.json").read_text())
    configs = {c["config_name"]: c["data_files"] for c in dataset_card_configs(str(folder), meta)}
    assert configs["preference"] == [{"split": "train", "path": "preference_train.jsonl"}]
    assert configs["items"] == [{"split": "train", "path": "items.parquet"}]
    assert [f["split"] for f in configs["default"]] == ["train", "validation", "test"]
    (folder / "preference_train.jsonl").unlink()
    assert "preference" not in {c["config_name"] for c in dataset_card_configs(str(folder), meta)}
    (folder / DATASET_CARD_FILE).write_text("# mine\n")
    assert write_dataset_card(str(folder), meta, overwrite=False) is None
    assert (folder / DATASET_CARD_FILE).read_text() == "# mine\n"
    write_dataset_card(str(folder), meta)
    assert "preference" not in {c["config_name"] for c in _front_matter(folder)["configs"]}


def test_user_chunks_hand_computed():
    # 累计行数 3,3,5,10,11；每段至多 4 行：用户 3 一人 5 行，独占一段
    assert user_chunks(np.array([3, 0, 2, 5, 1]), 4) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert user_chunks(np.array([1, 1, 1]), 10) == [(0, 3)]
    assert user_chunks(np.zeros(0, np.int64), 4) == [(0, 0)]


def test_chunked_blocks_concatenate_to_the_whole():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", str(int(i)), t) for u in range(9) for t, i in enumerate(rng.choice(30, 2 + u, replace=False))]
    seqs = normalise(_inter(rows))
    codes = np.stack([np.arange(seqs.num_items) + 100, np.arange(seqs.num_items) % 7, np.arange(seqs.num_items)], 1)
    whole = {k: recommend_table(b, seqs.user_ids) for k, b in build_recommend_blocks(seqs, codes, 4, 2).items()}
    counts = train_sample_counts(seqs, 2)
    assert int(counts.sum()) == whole["train"].num_rows
    for max_rows in (1, 5, 1000):
        parts = [build_recommend_blocks(seqs, codes, 4, 2, users=c) for c in user_chunks(counts, max_rows)]
        for split in schema.SPLITS:
            joined = pa.concat_tables([recommend_table(p[split], seqs.user_ids) for p in parts])
            assert joined.equals(whole[split]), (max_rows, split)


def test_split_writer_appends_row_groups(tmp_path):
    sch = pa.schema([("user_id", pa.string()), ("x", pa.list_(pa.int64()))])
    t1 = pa.table({"user_id": ["a", "b"], "x": [[1], [2, 3]]}, schema=sch)
    t2 = pa.table({"user_id": ["c"], "x": [[]]}, schema=sch)
    seen = []
    with SplitWriter(str(tmp_path), "train", seen.append) as w:
        w.write(t1)
        w.write(t2)
    f = pq.ParquetFile(tmp_path / "train.parquet")
    assert f.metadata.num_row_groups == 2 and f.read().equals(pa.concat_tables([t1, t2]))
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == pa.concat_tables([t1, t2]).to_pylist() and seen == [2, 1]


def _reference_pairs(seqs, chosen_min, rejected_max, preference_cut, encoder_max_length, max_pairs_per_user):
    """偏好对规则的逐用户、逐个 rejected 事件的直接写法（向量化实现的参照）。"""
    out = {n: [] for n in schema.PREFERENCE_SPLITS}
    lens = seqs.lengths()
    for u in range(seqs.num_users):
        n = int(lens[u])
        m = n - 2 if n >= 3 else n
        base = int(seqs.offsets[u])
        rat = seqs.ratings[base:base + m]
        cut = int(np.floor(preference_cut * m))
        for split, lo, hi in (("preference_train", 0, cut), ("preference_test", cut, m)):
            pos = np.flatnonzero(rat[lo:hi] >= chosen_min) + lo
            taken = 0
            for j in (np.flatnonzero(rat[lo:hi] <= rejected_max) + lo).tolist():
                cand = pos[seqs.items[base + pos] != seqs.items[base + j]]
                if len(cand) == 0:
                    continue
                i = int(cand[np.argmin(np.abs(cand - j) * 2 + (cand > j))])
                h_end = min(i, j) if split == "preference_train" else cut
                if h_end <= 0:
                    continue
                out[split].append((u, base + max(0, h_end - encoder_max_length), base + h_end,
                                   int(seqs.items[base + i]), int(seqs.items[base + j]), float(rat[i] - rat[j]) / 4.0))
                taken += 1
                if taken >= max_pairs_per_user:
                    break
    return out


@pytest.mark.parametrize("cap,enc", [(20, 50), (2, 3)])
def test_preference_pairs_equal_reference_rule(cap, enc):
    rng = np.random.default_rng(4)
    rows = []
    for u in range(60):
        n = int(rng.integers(2, 30))
        items = rng.integers(0, 8, n)  # 物品很少：同一用户会反复消费同一物品，触发“最近的 chosen 是同一物品”
        for t_, (it, r) in enumerate(zip(items, rng.integers(1, 6, n))):
            rows.append((f"u{u}", str(int(it)), t_, float(r)))
    seqs = normalise(_inter(rows, rating=True))
    got = build_preference_pairs(seqs, 4.0, 2.0, 0.7, enc, cap)
    want = _reference_pairs(seqs, 4.0, 2.0, 0.7, enc, cap)
    for split in schema.PREFERENCE_SPLITS:
        pb = got[split]
        rows_got = list(zip(pb.user.tolist(), pb.hist_start.tolist(), pb.hist_end.tolist(), pb.chosen.tolist(),
                            pb.rejected.tolist(), pb.score.tolist()))
        assert rows_got == want[split] and len(want[split]) > 0, split


@pytest.mark.parametrize("values", [
    ["b", "a", "中", "a", "", "B", "a\x01"],
    [3, "3", 10, "x", None, 2.5],
    [12, 7, 12, 100000000000000000000],
])
def test_factorize_equals_numpy_unique(values):
    """Arrow 去重 + 只排序不同值：与对全部字符串 np.unique 的结果（值、顺序、下标）相同，混合类型按 str() 比较。"""
    arr = np.array(values, dtype=object)
    uniq, idx = factorize(arr)
    want_u, want_i = np.unique(arr.astype(str), return_inverse=True)
    assert uniq.tolist() == want_u.tolist() and idx.tolist() == want_i.reshape(-1).tolist()
    assert idx.dtype == np.int64


def test_normalise_dedup_equals_reference_rule():
    """同一 (用户, 时间, 物品) 只留输入里的第一条，哪怕同一时刻的其他物品夹在中间；用户内按 (时间, 输入顺序)。"""
    rng = np.random.default_rng(7)
    rows = [(f"u{rng.integers(6)}", str(rng.integers(8)), int(rng.integers(4))) for _ in range(300)]
    seqs = normalise(_inter(rows))
    want, seen = {}, set()
    for k, (u, i, t) in sorted(enumerate(rows), key=lambda r: (r[1][0], r[1][2], r[0])):
        if (u, t, i) not in seen:
            seen.add((u, t, i))
            want.setdefault(u, []).append(i)
    got = {u: [seqs.item_ids[i] for i in seqs.seq(k)] for k, u in enumerate(seqs.user_ids)}
    assert got == {u: s for u, s in want.items() if len(s) >= 2}
    assert seqs.stats["duplicate_events_removed"] == len(rows) - len(seen)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_write_pool_works_in_a_forked_child(tmp_path):
    """父进程用过写出线程池后 fork：子进程照样能写 JSONL（不会等一个不存在的线程）。"""
    table = pa.table({"a": pa.array([[1, 2], [3]], pa.list_(pa.int64()))})
    write_jsonl(table, str(tmp_path / "parent.jsonl"))
    pid = os.fork()
    if pid == 0:  # 子进程：写完即退出；出错或卡住都会让父进程看到非 0 退出码或超时
        try:
            write_jsonl(table, str(tmp_path / "child.jsonl"))
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("JSONL writing hung in a forked child")
    assert os.waitstatus_to_exitcode(status) == 0
    want = '{"a":[1,2]}\n{"a":[3]}\n'
    assert (tmp_path / "child.jsonl").read_text() == (tmp_path / "parent.jsonl").read_text() == want
