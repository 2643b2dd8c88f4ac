"""prepare：端到端（小合成数据与小 ml-100k 样式数据）、重复运行 no-op、--force、注入失败不留半成品、CLI 错误。"""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from ugt_hf.cli import main as ugt_main
from ugt_hf.data import schema
from ugt_hf.data.prepare import PrepareOptions, prepare

SMALL = dict(source="synthetic", num_users=120, num_items=60, events_per_user=8, num_clusters=4)


def _quiet(*a, **k):
    pass


def test_synthetic_end_to_end(tmp_path):
    out = str(tmp_path / "syn")
    meta = prepare(out, progress=False, log=_quiet, **SMALL)
    files = set(os.listdir(out))
    for s in schema.SPLITS + schema.PREFERENCE_SPLITS:
        assert {f"{s}.jsonl", f"{s}.parquet"} <= files
    assert {schema.ITEMS_FILE, schema.META_FILE} <= files
    for key in ("vocab_sizes", "num_users", "num_items", "num_interactions", "pad_token_id", "encoder_max_length",
                "decoder_max_length", "splits", "source", "seed", "input_checksum", "protocol",
                "codebook_utilisation", "collisions"):
        assert key in meta
    items = pq.read_table(os.path.join(out, schema.ITEMS_FILE))
    assert items.column_names == list(schema.ITEMS_COLUMNS)
    triples = set(zip(*(items.column(c).to_pylist() for c in ("l1", "l2", "l3"))))
    assert len(triples) == meta["num_items"] == items.num_rows
    assert meta["splits"]["valid"] == meta["splits"]["test"] == meta["num_users"]
    assert meta["splits"]["preference_train"] > 0 and meta["splits"]["preference_test"] > 0
    # JSONL 与 Parquet 内容一致；列表长度一致；编码不超出词表
    rows = [json.loads(x) for x in open(os.path.join(out, "train.jsonl"))]
    assert rows == pq.read_table(os.path.join(out, "train.parquet")).to_pylist()
    assert len(rows) == meta["splits"]["train"]
    v = meta["vocab_sizes"]
    for r in rows[:200]:
        assert len(r["decoder_l1_ids"]) == len(r["labels_l1"]) <= meta["decoder_max_length"]
        assert len(r["encoder_l1_ids"]) <= meta["encoder_max_length"]
        assert max(r["labels_l3"]) < v[2] and max(r["labels_l1"]) < v[0]
    pref = json.loads(open(os.path.join(out, "preference_test.jsonl")).readline())
    assert set(pref) == set(schema.PREFERENCE_FIELDS) | {"preference_score"}
    assert set(pref["user_sequence"]) == set(schema.PREFERENCE_SEQUENCE_FIELDS)
    assert set(pref["chosen_item"]) == set(schema.ITEM_TRIPLE_FIELDS)


def test_datasets_can_load(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = str(tmp_path / "syn")
    prepare(out, progress=False, log=_quiet, **SMALL)
    for name in ("valid", "preference_train"):
        a = datasets.load_dataset("json", data_files=os.path.join(out, f"{name}.jsonl"), split="train",
                                  cache_dir=str(tmp_path / "cache"))
        b = datasets.load_dataset("parquet", data_files=os.path.join(out, f"{name}.parquet"), split="train",
                                  cache_dir=str(tmp_path / "cache"))
        assert len(a) == len(b) > 0 and a[0] == b[0]


def test_deterministic_rerun_noop_and_force(tmp_path):
    out = str(tmp_path / "syn")
    prepare(out, progress=False, log=_quiet, **SMALL)
    items1 = open(os.path.join(out, schema.ITEMS_FILE), "rb").read()
    mtime = os.path.getmtime(os.path.join(out, schema.META_FILE))
    logs = []
    prepare(out, progress=False, log=logs.append, **SMALL)
    assert "up to date" in logs[0] and os.path.getmtime(os.path.join(out, schema.META_FILE)) == mtime
    # 同一 seed 在另一目录得到相同的语义 ID
    prepare(str(tmp_path / "again"), progress=False, log=_quiet, **SMALL)
    assert open(os.path.join(tmp_path / "again", schema.ITEMS_FILE), "rb").read() == items1
    with pytest.raises(FileExistsError, match="--force"):
        prepare(out, progress=False, log=_quiet, **{**SMALL, "seed": 1})
    meta = prepare(out, force=True, progress=False, log=_quiet, **{**SMALL, "seed": 1})
    assert meta["seed"] == 1
    os.makedirs(tmp_path / "foreign")
    open(tmp_path / "foreign" / "x.txt", "w").write("keep me")
    with pytest.raises(FileExistsError, match="not a prepare artefact"):
        prepare(str(tmp_path / "foreign"), progress=False, log=_quiet, **SMALL)
    assert os.listdir(tmp_path / "foreign") == ["x.txt"]


def test_chunked_writing_equals_one_chunk(tmp_path, monkeypatch):
    # 分块构造与写出（每块至多 7 条训练样本）与一整块写出：JSONL 逐字节相同，Parquet 内容相同（只是行组多）
    from ugt_hf.data import artifacts

    prepare(str(tmp_path / "one"), progress=False, log=_quiet, **SMALL)
    monkeypatch.setattr(artifacts, "SAMPLE_CHUNK_ROWS", 7)
    prepare(str(tmp_path / "many"), progress=False, log=_quiet, **SMALL)
    names = [n for n in os.listdir(tmp_path / "one") if n.endswith(".jsonl")]
    assert {"train.jsonl", "valid.jsonl", "test.jsonl", "preference_train.jsonl"} <= set(names)
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes(), name
        stem = name[: -len(".jsonl")]
        one, many = (pq.ParquetFile(tmp_path / d / f"{stem}.parquet") for d in ("one", "many"))
        assert one.read().equals(many.read()), stem
    assert pq.ParquetFile(tmp_path / "many" / "train.parquet").metadata.num_row_groups > 1


def test_injected_failure_leaves_nothing(tmp_path):
    out = tmp_path / "syn"
    with pytest.raises(RuntimeError, match="injected"):
        prepare(str(out), progress=False, log=_quiet, _fail_after="valid", **SMALL)
    assert os.listdir(tmp_path) == []
    # 已有目录在失败后保持原样
    prepare(str(out), progress=False, log=_quiet, **SMALL)
    before = sorted(os.listdir(out))
    meta_before = open(out / schema.META_FILE).read()
    with pytest.raises(RuntimeError, match="injected"):
        prepare(str(out), force=True, progress=False, log=_quiet, _fail_after="train", **{**SMALL, "seed": 2})
    assert sorted(os.listdir(out)) == before and open(out / schema.META_FILE).read() == meta_before
    assert os.listdir(tmp_path) == ["syn"]


def _ml100k_like(folder, n_users=30, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        for k, it in enumerate(rng.choice(np.arange(1, n_items + 1), size=12, replace=False)):
            lines.append(f"{u}\t{it}\t{rng.integers(1, 6)}\t{1000 + 10 * k}")
    lines.append("999\t1\t5\t1")  # 只有一个事件的用户：被丢弃并计数
    lines.append(lines[0])  # 精确重复的事件：去重并计数
    os.makedirs(folder)
    open(os.path.join(folder, "u.data"), "w").write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "u.item"), "w", encoding="latin-1") as f:
        for i in range(1, n_items + 1):
            f.write(f"{i}|Film {i} (1999)|01-Jan-1999||url|0|1\n")


def test_cli_ml100k_counts_and_filtering(tmp_path, capsys):
    src = str(tmp_path / "ml")
    _ml100k_like(src)
    out = str(tmp_path / "out")
    assert ugt_main(["prepare", "--source", "ml-100k", "--input", src, "--out", out, "--no_progress",
                     "--codebook_sizes", "8,8,64", "--decoder_max_length", "3"]) == 0
    printed = capsys.readouterr().out
    assert "L1 co-occurrence ratio" in printed and "collisions" in printed
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["num_users"] == 30 and meta["num_interactions"] == 360
    assert meta["filtering"]["users_dropped_too_few_events"] == 1
    assert meta["filtering"]["duplicate_events_removed"] == 1
    assert meta["codebook_sizes_requested"] == [8, 8, 64] and meta["vocab_sizes"][0] == 8
    assert meta["decoder_max_length"] == 3
    items = pq.read_table(os.path.join(out, "items.parquet")).to_pylist()
    assert items[0]["title"] == "Film 1 (1999)"  # 没有 u.genre 时只有标题
    assert set(meta["input_files_sha256"]) == {"u.data", "u.item"}


def test_cli_bad_input_is_clear_error(tmp_path, capsys):
    bad = tmp_path / "b.txt"
    bad.write_text("1 2 3\n2 4 oops\n")
    out = tmp_path / "out"
    assert ugt_main(["prepare", "--source", "s3rec", "--input", str(bad), "--out", str(out), "--no_progress"]) == 3
    err = capsys.readouterr().err
    assert "b.txt:2: field 'item' must be an integer, got 'oops'" in err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["b.txt"]
    assert ugt_main(["prepare", "--source", "s3rec", "--out", str(out)]) == 2
    assert "--input is required" in capsys.readouterr().err
    assert ugt_main(["prepare", "--source", "synthetic", "--out", str(out), "--codebook_sizes", "8,x,2"]) == 2


def test_options_validation():
    with pytest.raises(ValueError, match="--codebook_sizes"):
        PrepareOptions(codebook_sizes=[4, 4])
    with pytest.raises(ValueError, match="--embedding"):
        PrepareOptions(embedding="bert")


def test_text_embedding_falls_back_with_note(tmp_path):
    meta = prepare(str(tmp_path / "t"), progress=False, log=_quiet, embedding="text", **SMALL)
    if meta["embedding"]["kind"] != "text":
        assert meta["embedding"]["notes"] and "skipped" in meta["embedding"]["notes"][0]
