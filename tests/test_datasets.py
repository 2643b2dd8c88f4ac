"""ugt_hf.data.datasets：RecommendDataset / PreferenceDataset / StreamingDataset。"""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ugt_hf.data.datasets import PreferenceDataset, RecommendDataset, StreamingDataset, resolve_world
from ugt_hf.data.validation import DataValidationError

datasets.disable_progress_bars()

VOCAB = (8, 16, 32)


def make_record(uid, n=4, m=3, base=1):
    """确定性的合法记录：encoder 物品 id 由 base 决定，便于检查截断保留了哪些。"""
    return {
        "user_id": uid,
        "encoder_l1_ids": [(base + i) % VOCAB[0] for i in range(n)],
        "encoder_l2_ids": [(base + 2 * i) % VOCAB[1] for i in range(n)],
        "encoder_l3_ids": [(base + 3 * i) % VOCAB[2] for i in range(n)],
        "encoder_positions": list(range(n)),
        "encoder_token_types": [1] * n,
        "encoder_mask": [1] * n,
        "decoder_l1_ids": [0] + [5] * (m - 1),
        "decoder_l2_ids": [0] + [6] * (m - 1),
        "decoder_l3_ids": [0] + [7] * (m - 1),
        "decoder_positions": list(range(m)),
        "decoder_token_types": [0] + [1] * (m - 1),
        "decoder_mask": [1] * m,
        "labels_l1": [5] * (m - 1) + [3],
        "labels_l2": [6] * (m - 1) + [4],
        "labels_l3": [7] * (m - 1) + [-100],
    }


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), str(path))
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("lazy", [False, True])
def test_recommend_dataset_getitem_structure(tmp_path, cache, fmt, lazy):
    recs = [make_record(i, n=3 + i, m=2 + i % 2) for i in range(5)]
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"train.{fmt}", recs)
    ds = RecommendDataset(path, vocab_sizes=VOCAB, lazy_loading=lazy, cache_dir=cache)
    assert len(ds) == 5 and isinstance(ds.hf_dataset, datasets.Dataset)
    s = ds[3]
    r = recs[3]
    assert s["user_id"] == "3"  # int user_id 统一成 str
    assert [t.tolist() for t in s["encoder_semantic_ids"]] == [r[f"encoder_l{i}_ids"] for i in (1, 2, 3)]
    assert [t.tolist() for t in s["decoder_semantic_ids"]] == [r[f"decoder_l{i}_ids"] for i in (1, 2, 3)]
    assert [t.tolist() for t in s["labels"]] == [r["labels_l1"], r["labels_l2"], r["labels_l3"]]
    for k in ("encoder_positions", "encoder_token_types", "encoder_mask",
              "decoder_positions", "decoder_token_types", "decoder_mask"):
        assert s[k].tolist() == r[k], k
    tensors = (s["encoder_semantic_ids"] + s["decoder_semantic_ids"] + s["labels"]
               + [s["encoder_mask"], s["decoder_mask"]])
    assert all(t.dtype == torch.long for t in tensors)


def test_truncation_encoder_recent_decoder_first(tmp_path, cache):
    rec = make_record("u", n=6, m=5)
    rec["encoder_positions"] = [10, 11, 12, 13, 14, 15]
    path = write_jsonl(tmp_path / "t.jsonl", [rec])
    s = RecommendDataset(path, max_encoder_length=4, max_decoder_length=2, vocab_sizes=VOCAB, cache_dir=cache)[0]
    assert s["encoder_semantic_ids"][0].tolist() == rec["encoder_l1_ids"][-4:]
    assert s["encoder_positions"].tolist() == [10, 11, 12, 13]  # 保留尾部，位置从原起点重新排
    assert s["decoder_semantic_ids"][1].tolist() == rec["decoder_l2_ids"][:2]
    assert s["labels"][2].tolist() == rec["labels_l3"][:2]
    assert s["decoder_mask"].tolist() == [1, 1]


def test_directory_and_list_preserve_file_order_and_locate_errors(tmp_path, cache):
    d = tmp_path / "splits"
    d.mkdir()
    write_jsonl(d / "part_0.jsonl", [make_record(f"a{i}") for i in range(3)])
    bad = [make_record(f"b{i}") for i in range(4)]
    write_jsonl(d / "part_1.jsonl", bad)
    ds = RecommendDataset(str(d), vocab_sizes=VOCAB, cache_dir=cache)
    assert [ds[i]["user_id"] for i in range(len(ds))] == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    ds2 = RecommendDataset([str(d / "part_1.jsonl"), str(d / "part_0.jsonl")], vocab_sizes=VOCAB, cache_dir=cache)
    assert ds2[0]["user_id"] == "b0" and ds2[4]["user_id"] == "a0"
    # 错误在第二个文件第 3 行：整表校验报出的是那个文件与行号，而不是全局行号
    bad[2]["encoder_l2_ids"][1] = VOCAB[1]
    write_jsonl(d / "part_1.jsonl", bad)
    with pytest.raises(DataValidationError) as ei:
        RecommendDataset(str(d), vocab_sizes=VOCAB, cache_dir=str(tmp_path / "cache2"))
    e = ei.value
    assert (e.path, e.line, e.field) == (str(d / "part_1.jsonl"), 3, "encoder_l2_ids")


def test_mixed_int_and_str_user_ids(tmp_path, cache):
    path = write_jsonl(tmp_path / "m.jsonl", [make_record(7), make_record("u8")])
    ds = RecommendDataset(path, vocab_sizes=VOCAB, cache_dir=cache)
    assert [ds[0]["user_id"], ds[1]["user_id"]] == ["7", "u8"]


def test_lazy_validates_on_access_only(tmp_path, cache):
    recs = [make_record(i) for i in range(4)]
    recs[2]["encoder_mask"][0] = 3
    path = write_jsonl(tmp_path / "l.jsonl", recs)
    ds = RecommendDataset(path, vocab_sizes=VOCAB, lazy_loading=True, cache_dir=cache)
    ds[0], ds[3]
    with pytest.raises(DataValidationError) as ei:
        ds[2]
    assert (ei.value.line, ei.value.field) == (3, "encoder_mask")
    with pytest.raises(DataValidationError):
        RecommendDataset(path, vocab_sizes=VOCAB, lazy_loading=False, cache_dir=cache)


def test_dataloader_with_collator(tmp_path, cache):
    from ugt_hf.data.collator import DataCollator

    path = write_jsonl(tmp_path / "d.jsonl", [make_record(i, n=2 + i, m=1 + i % 3) for i in range(6)])
    ds = RecommendDataset(path, vocab_sizes=VOCAB, cache_dir=cache)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=DataCollator(pad_token_id=0))
    b = next(iter(dl))
    assert b["encoder_semantic_ids"].shape == (4, 5, 3) and b["labels"].shape == (4, 3, 3)


def make_preference(uid, n=3, chosen=(1, 2, 3), rejected=(1, 2, 4), score=None):
    rec = make_record(uid, n=n)
    out = {
        "user_id": uid,
        "user_sequence": {k: rec[k] for k in rec if k.startswith("encoder_")},
        "chosen_item": dict(zip(("l1_id", "l2_id", "l3_id"), chosen)),
        "rejected_item": dict(zip(("l1_id", "l2_id", "l3_id"), rejected)),
    }
    if score is not None:
        out["preference_score"] = score
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_preference_dataset(tmp_path, cache, fmt):
    recs = [make_preference("u0", n=5, score=0.25), make_preference(1, chosen=(7, 15, 31), rejected=(0, 0, 0))]
    if fmt == "parquet":
        recs[1]["preference_score"] = None
        recs[1]["user_id"] = "1"  # Parquet 列类型必须一致
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"p.{fmt}", recs)
    ds = PreferenceDataset(path, max_encoder_length=3, vocab_sizes=VOCAB, cache_dir=cache)
    s0, s1 = ds[0], ds[1]
    assert s0["chosen_ids"].tolist() == [1, 2, 3] and s0["rejected_ids"].tolist() == [1, 2, 4]
    assert s0["preference_score"].item() == pytest.approx(0.25)
    assert s1["preference_score"].item() == 1.0  # 缺省
    assert s0["encoder_semantic_ids"][0].tolist() == recs[0]["user_sequence"]["encoder_l1_ids"][-3:]
    assert s1["user_id"] == "1" and s1["chosen_ids"].dtype == torch.long


# ---- 流式 ----


def make_shards(tmp_path, n_shards, per_shard=5):
    files, k = [], 0
    for s in range(n_shards):
        recs = []
        for _ in range(per_shard + s):  # 分片大小不等
            recs.append(make_record(f"u{k}", n=2, m=1))
            k += 1
        files.append(write_jsonl(tmp_path / f"shard_{s}.jsonl", recs))
    return files, [f"u{i}" for i in range(k)]


def _epoch_ids(files, world_size, num_workers, epoch, **kw):
    per_rank = []
    for rank in range(world_size):  # 进程内模拟各个 rank
        ds = StreamingDataset(files, world_size=world_size, rank=rank, seed=3, buffer_size=4, vocab_sizes=VOCAB, **kw)
        ds.set_epoch(epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        per_rank.append([s["user_id"] for s in dl])
    return per_rank


@pytest.mark.parametrize("n_shards", [3, 4])  # 3：不能整除 world_size（按样本步长）；4：按 shard 分
def test_streaming_exactly_once_two_ranks_two_workers(tmp_path, n_shards):
    files, all_ids = make_shards(tmp_path, n_shards)
    e0 = _epoch_ids(files, world_size=2, num_workers=2, epoch=0)
    e1 = _epoch_ids(files, world_size=2, num_workers=2, epoch=1)
    for per_rank in (e0, e1):
        seen = per_rank[0] + per_rank[1]
        assert sorted(seen) == sorted(all_ids)  # 每条恰好一次
        assert per_rank[0] and per_rank[1]
    assert e0 != e1  # 换 epoch 换顺序
    assert _epoch_ids(files, world_size=2, num_workers=2, epoch=1) == e1  # 同一 epoch 可复现


def test_streaming_more_workers_than_shards_and_no_shuffle(tmp_path):
    files, all_ids = make_shards(tmp_path, 1)
    per_rank = _epoch_ids(files, world_size=2, num_workers=2, epoch=0)
    assert sorted(per_rank[0] + per_rank[1]) == sorted(all_ids)
    a = _epoch_ids(files, world_size=1, num_workers=0, epoch=0, shuffle=False)
    b = _epoch_ids(files, world_size=1, num_workers=0, epoch=5, shuffle=False)
    assert a == b == [all_ids]  # 不打乱：文件顺序，epoch 不影响


def test_streaming_sample_matches_map_dataset(tmp_path, cache):
    files, _ = make_shards(tmp_path, 2)
    files.append(write_parquet(tmp_path / "shard_p.parquet", [make_record("p0", n=7, m=3)]))
    streaming = StreamingDataset(files, shuffle=False, world_size=1, rank=0, vocab_sizes=VOCAB, max_encoder_length=4)
    stream = {s["user_id"]: s for s in streaming}
    mapped = RecommendDataset(files[-1], vocab_sizes=VOCAB, max_encoder_length=4, cache_dir=cache)[0]
    s = stream["p0"]
    for k in ("encoder_positions", "decoder_mask"):
        assert torch.equal(s[k], mapped[k])
    assert all(torch.equal(a, b) for a, b in zip(s["encoder_semantic_ids"], mapped["encoder_semantic_ids"]))


def test_streaming_parquet_row_groups_in_order_with_global_rows(tmp_path):
    """Parquet shard 按行组一个一个读（读缓冲不随文件变大）：顺序与行号仍是整个文件的。"""
    recs = [make_record(f"u{i}", n=2, m=1) for i in range(10)]
    path = tmp_path / "rg.parquet"
    pq.write_table(pa.Table.from_pylist(recs), str(path), row_group_size=3)
    assert pq.ParquetFile(str(path)).metadata.num_row_groups == 4
    ds = StreamingDataset([str(path)], shuffle=False, world_size=1, rank=0, vocab_sizes=VOCAB)
    assert [s["user_id"] for s in ds] == [f"u{i}" for i in range(10)]
    recs[7]["labels_l1"] = recs[7]["labels_l1"] + [1]  # 第 3 个行组里的第 2 行
    pq.write_table(pa.Table.from_pylist(recs), str(path), row_group_size=3)
    with pytest.raises(DataValidationError, match=r"rg\.parquet, row 7, field 'labels_l1'"):
        list(StreamingDataset([str(path)], shuffle=False, world_size=1, rank=0, vocab_sizes=VOCAB))


def test_streaming_preference_records(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [make_preference(f"u{i}") for i in range(3)])
    out = list(StreamingDataset([path], record_type="preference", world_size=1, rank=0, vocab_sizes=VOCAB))
    assert len(out) == 3 and out[0]["chosen_ids"].tolist() == [1, 2, 3]


def test_world_defaults_from_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert resolve_world(None, None) == (4, 3)
    assert resolve_world(2, 1) == (2, 1)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert resolve_world(None, None) == (1, 0)
    with pytest.raises(ValueError, match="rank must be"):
        resolve_world(2, 2)
    with pytest.raises(ValueError, match="world_size must be"):
        resolve_world(0, 0)


def test_streaming_worker_error_names_shard_and_line(tmp_path):
    files, _ = make_shards(tmp_path, 2)
    recs = [json.loads(line) for line in open(files[1])]
    recs[3]["labels_l1"] = recs[3]["labels_l1"] + [1]
    write_jsonl(files[1], recs)
    ds = StreamingDataset(files, world_size=1, rank=0, vocab_sizes=VOCAB)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    # 经过 DataLoader 工作进程后异常类型不变，消息仍带文件、行号、字段
    with pytest.raises(DataValidationError, match=r"shard_1\.jsonl, line 4, field 'labels_l1'"):
        list(dl)


def _varied_records():
    """长度不一、部分超长（开头有/没有特殊位）、位置不从 0 连续的记录，覆盖 collate 的每条截断分支。"""
    recs = []
    for u, (n, m) in enumerate([(3, 2), (9, 5), (6, 1), (12, 4), (1, 3), (8, 6)]):
        r = make_record(f"u{u}", n=n, m=m, base=u)
        r["encoder_positions"] = [2 * i + u for i in range(n)]  # 有间隔：截断后的平移看得出来
        r["encoder_mask"] = [1] * (n - 1) + [0] if n > 2 else [1] * n
        if u % 2:  # 奇数行第一个 token 是特殊位（规格示例里的用户位），超长时要保留
            r["encoder_token_types"] = [0] + [1] * (n - 1)
        recs.append(r)
    return recs


@pytest.mark.parametrize("lazy", [False, True])
def test_recommend_dataset_collate_equals_per_row_collator(tmp_path, cache, lazy):
    from ugt_hf.data.collator import DataCollator

    path = write_parquet(tmp_path / "v.parquet", _varied_records())
    ds = RecommendDataset(path, max_encoder_length=5, max_decoder_length=3, vocab_sizes=VOCAB, cache_dir=cache,
                          lazy_loading=lazy)
    for indices in ([0, 1, 2, 3, 4, 5], [3, 1], [5], [4, 0, 4, -1]):
        want = DataCollator(semantic_pad_id=7)([ds[i] for i in indices])
        got = ds.collate(indices, semantic_pad_id=7)
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (indices, k)
    got = ds.collate([1, 3])
    # 第 1 行 9 个 token、开头是特殊位：保留特殊位 + 最近 4 个；位置 [1, 3, 5, ...] 的尾部平移到紧接特殊位之后
    assert got["encoder_token_types"][0].tolist() == [0, 1, 1, 1, 1]
    assert got["encoder_positions"][0].tolist() == [1, 3, 5, 7, 9]
    assert got["encoder_semantic_ids"][0, 1:, 0].tolist() == [(1 + i) % VOCAB[0] for i in range(5, 9)]
    assert got["labels"][1, :, 0].tolist() == [5, 5, 5]  # decoder/labels 留前 3 个
    with pytest.raises(IndexError, match="index 6 is out of range"):
        ds.collate([0, 6])


def test_dataloader_batches_rows_through_the_table_collate(tmp_path, cache, monkeypatch):
    from ugt_hf.data.collator import DataCollator, RowBatch

    path = write_parquet(tmp_path / "v.parquet", _varied_records())
    ds = RecommendDataset(path, max_encoder_length=5, max_decoder_length=3, vocab_sizes=VOCAB, cache_dir=cache)
    rows = ds.__getitems__([4, 0, 2])
    assert isinstance(rows, RowBatch) and len(rows) == 3
    assert torch.equal(rows[1]["labels"][0], ds[0]["labels"][0]) and len(rows[1:]) == 2
    calls = []
    real = RecommendDataset.collate
    monkeypatch.setattr(RecommendDataset, "collate", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    sampler = [[4, 0, 2], [1, 3, 5]]
    for collator, fast in ((DataCollator(semantic_pad_id=7), True),
                           (DataCollator(semantic_pad_id=7, max_encoder_length=9), True),
                           (DataCollator(semantic_pad_id=7, max_encoder_length=4), False),  # 比数据集短：要再截
                           (DataCollator(semantic_pad_id=7, pad_to_multiple_of=4), False)):
        calls.clear()
        got = list(torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collator))
        want = [collator([ds[i] for i in b]) for b in sampler]  # 逐条的路径
        assert bool(calls) == fast
        for g, w in zip(got, want):
            assert list(g) == list(w) and all(torch.equal(g[k], w[k]) for k in w)
    # 别的 collate_fn 拿到的是一个序列，逐条取样本照常可用
    users = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=lambda b: [s["user_id"] for s in b])
    firsts = list(users)
    assert firsts == [[ds[i]["user_id"] for i in b] for b in sampler]
