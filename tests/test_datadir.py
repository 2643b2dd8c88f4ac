"""data/datadir.py：DataDir 对手写最小产物目录的读取（meta、划分路径、数据集、物品目录、tokenizer）与出错信息。"""

import json

import pytest
import torch
from _tiny_artifacts import HAND_ITEMS, HAND_VOCAB, hand_made_data_dir

from ugt_hf.data.datadir import DataDir, read_meta
from ugt_hf.data.datasets import PreferenceDataset, RecommendDataset
from ugt_hf.data.validation import DataValidationError
from ugt_hf.evaluation import popularity_baseline
from ugt_hf.generation import ItemCatalogue
from ugt_hf.tokenization_ugt import UGTTokenizer


def test_meta_and_properties(tmp_path):
    d = DataDir(hand_made_data_dir(tmp_path / "d"))
    assert d.meta["num_items"] == 3 and d.meta is d.meta  # 缓存
    assert d.vocab_sizes == HAND_VOCAB and d.pad_token_id == 0 and d.semantic_pad_id == 0
    assert d.encoder_max_length == 4 and d.decoder_max_length == 3
    assert d.num_records("train") == 2 and d.num_records("preference_test") == 0 and d.num_records("nope") == 0
    assert d.missing_files() == []
    assert DataDir.of(d) is d and DataDir(d).path == d.path and str(d) == str(tmp_path / "d")
    assert read_meta(d.path) == d.meta


def test_split_paths_prefer_parquet(tmp_path):
    d = DataDir(hand_made_data_dir(tmp_path))
    assert d.split_path("valid").name == "valid.parquet"  # 两种都有：Parquet 优先
    assert d.split_path("preference_train").name == "preference_train.jsonl"  # 只有 JSONL
    assert d.has_split("test") and not d.has_split("preference_test")
    with pytest.raises(FileNotFoundError, match="no preference_test.parquet or preference_test.jsonl"):
        d.split_path("preference_test")
    assert d.read_table("train", ["labels_l1"]).column_names == ["labels_l1"]


def test_builders(tmp_path):
    d = DataDir(hand_made_data_dir(tmp_path))
    cat = d.catalogue()
    assert isinstance(cat, ItemCatalogue) and cat is d.catalogue() and cat.vocab_sizes == HAND_VOCAB
    assert cat.triples.tolist() == [list(r[2:]) for r in HAND_ITEMS]
    train = d.recommend_dataset("train")
    assert isinstance(train, RecommendDataset) and len(train) == 2
    assert train.max_encoder_length == 4 and train.max_decoder_length == 3 and list(train.vocab_sizes) == HAND_VOCAB
    assert [t.tolist() for t in train[0]["labels"]] == [[1, 1], [0, 1], [1, 0]]
    # 显式路径与覆盖长度
    short = d.recommend_dataset(d.path / "train.jsonl", max_encoder_length=1, max_decoder_length=1)
    assert short[1]["encoder_positions"].tolist() == [0] and short.max_decoder_length == 1
    assert len(d.recommend_dataset("valid")) == 1 and d.recommend_dataset("valid").format == "parquet"
    pref = d.preference_dataset()
    assert isinstance(pref, PreferenceDataset) and len(pref) == 1
    assert pref[0]["chosen_ids"].tolist() == [1, 0, 1] and float(pref[0]["preference_score"]) == 2.0
    tok = d.tokenizer()
    assert isinstance(tok, UGTTokenizer) and tok.encoder_max_length == 4 and list(tok.vocab_sizes) == HAND_VOCAB
    assert tok.item_ids == ["a", "b", "c"]


def test_evaluation_accepts_a_datadir(tmp_path):
    d = DataDir(hand_made_data_dir(tmp_path))
    m = popularity_baseline(d, "test", k_values=[1])
    # 训练标签第 0 位：u1 -> 物品 1，u2 -> 物品 0；次数相同按物品号，top-1 = 0；测试目标是物品 1
    assert m["recall@1"] == 0.0 and m["num_users"] == 1.0
    assert popularity_baseline(d.path, "test", k_values=[2])["recall@2"] == 1.0


def test_missing_and_bad_meta_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json: not found.*ugt prepare"):
        DataDir(tmp_path).meta
    assert {p.name for p in DataDir(tmp_path).missing_files()} == {"items.parquet", "meta.json"}
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataValidationError, match=r"meta\.json: invalid JSON"):
        DataDir(tmp_path).meta
    (tmp_path / "meta.json").write_bytes(b'{"x": "\xff"}')
    with pytest.raises(DataValidationError, match=r"meta\.json: file is not valid UTF-8"):
        DataDir(tmp_path).meta
    (tmp_path / "meta.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataValidationError, match="expected a JSON object, got list"):
        DataDir(tmp_path).meta
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_sizes": None}))
    with pytest.raises(DataValidationError, match="field 'vocab_sizes'"):
        DataDir(tmp_path).vocab_sizes


def test_catalogue_checks_meta_vocab(tmp_path):
    d = hand_made_data_dir(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps(dict(meta, vocab_sizes=[2, 1, 2])))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        DataDir(d).catalogue()
    assert torch.equal(DataDir(hand_made_data_dir(tmp_path / "ok")).catalogue().lookup(torch.tensor([1, 0, 1])),
                       torch.tensor(1))
