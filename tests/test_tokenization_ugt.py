"""UGTTokenizer：历史 -> 批次契约、截断、未知物品、解码、保存/加载（AutoTokenizer）。"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from ugt_hf.auto import register
from ugt_hf.tokenization_ugt import ITEMS_JSON, UGTTokenizer

V = [4, 8, 16]


def make_tok(n=20, max_len=4):
    triples = np.array([[i % 4, (i // 4) % 8, i % 16] for i in range(n)])
    return UGTTokenizer(item_ids=[f"i{k}" for k in range(n)], triples=triples, encoder_max_length=max_len,
                        vocab_sizes=V)


def test_single_history_to_contract_batch():
    tok = make_tok()
    enc = tok(["i1", "i2", "i3"])
    assert enc["encoder_semantic_ids"].shape == (1, 3, 3)
    assert enc["encoder_semantic_ids"][0].tolist() == tok.triples[[1, 2, 3]].tolist()
    assert enc["encoder_positions"][0].tolist() == [0, 1, 2]
    assert enc["encoder_token_types"][0].tolist() == [1, 1, 1]
    assert enc["encoder_attention_mask"][0].tolist() == [1, 1, 1]
    assert enc["decoder_semantic_ids"].shape == (1, 1, 3) and enc["decoder_token_types"].tolist() == [[0]]
    # 整数 id 与字符串形式等价
    ints = UGTTokenizer(item_ids=list(range(20)), triples=tok.triples, vocab_sizes=V)
    assert torch.equal(ints([1, 2])["encoder_semantic_ids"], ints(["1", "2"])["encoder_semantic_ids"])


def test_batch_padding_and_truncation_keeps_most_recent():
    tok = make_tok(max_len=4)
    enc = tok([["i1", "i2", "i3", "i4", "i5", "i6"], ["i7"], []])
    assert enc["encoder_semantic_ids"].shape == (3, 4, 3)
    assert enc["encoder_semantic_ids"][0].tolist() == tok.triples[[3, 4, 5, 6]].tolist()
    assert enc["encoder_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert enc["encoder_token_types"][1].tolist() == [1, 0, 0, 0]
    assert tok(["i1"], padding="max_length")["encoder_semantic_ids"].shape == (1, 4, 3)
    assert tok(["i1"], return_tensors=None)["encoder_positions"] == [[0]]


def test_unknown_items_and_mixed_input():
    tok = make_tok()
    with pytest.raises(ValueError, match=r"history\[1\]: unknown item_id 'nope'"):
        tok(["i1", "nope"])
    assert tok(["i1", "nope"], unknown="skip")["encoder_semantic_ids"].shape == (1, 1, 3)
    with pytest.raises(ValueError, match="mix"):
        tok([["i1"], "i2"])


def test_decode_items_and_triples():
    tok = make_tok()
    assert tok.decode_items(torch.tensor([[3, -1], [0, 5]])) == [["i3", None], ["i0", "i5"]]
    assert tok.decode_triples(tok.triples[[7, 2]]) == ["i7", "i2"]
    assert tok.decode_triples(torch.tensor([[3, 7, 15]])) == [None]
    assert tok.convert_tokens_to_ids(["i4"]) == [4] and tok.convert_ids_to_tokens([4]) == ["i4"]
    assert tok.triples_for(["i9"]).tolist() == [tok.triples[9].tolist()]


def test_duplicate_triples_and_ids_rejected():
    with pytest.raises(ValueError, match="share the semantic id"):
        UGTTokenizer(item_ids=["a", "b"], triples=[[0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="appears twice"):
        UGTTokenizer(item_ids=["a", "a"], triples=[[0, 0, 0], [0, 0, 1]])


def test_save_and_autotokenizer_roundtrip(tmp_path):
    register()
    from ugt_hf.configuration_ugt import UGTConfig

    tok = make_tok(max_len=3)
    tok.save_pretrained(tmp_path)
    UGTConfig(vocab_sizes=V).save_pretrained(tmp_path)  # AutoTokenizer 经由 model_type 找到 UGTTokenizer
    assert (tmp_path / ITEMS_JSON).is_file()
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.bin"))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, UGTTokenizer)
    assert loaded.item_ids == tok.item_ids and torch.equal(loaded.triples, tok.triples)
    assert loaded.encoder_max_length == 3 and loaded.vocab_sizes == V
    h = [["i1", "i2", "i3", "i4"], ["i9"]]
    a, b = tok(h), loaded(h)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_items_file_named(tmp_path):
    tok = make_tok()
    tok.save_pretrained(tmp_path)
    path = tmp_path / ITEMS_JSON
    payload = json.loads(path.read_text())
    payload["l2"][3] = -1
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"ugt_items.json: record 3 field 'l2'"):
        UGTTokenizer.from_pretrained(tmp_path)


def test_from_items_parquet_reads_meta(tmp_path):
    pq.write_table(pa.table({"item_id": ["x", "y"], "item_index": [1, 0], "l1": [0, 1], "l2": [0, 0], "l3": [1, 1],
                             "title": [None, None]}), tmp_path / "items.parquet")
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_sizes": [2, 2, 2], "encoder_max_length": 7}))
    tok = UGTTokenizer.from_items_parquet(tmp_path / "items.parquet")
    assert tok.item_ids == ["y", "x"] and tok.triples.tolist() == [[1, 0, 1], [0, 0, 1]]
    assert tok.vocab_sizes == [2, 2, 2] and tok.encoder_max_length == 7
