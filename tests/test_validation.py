"""ugt_hf.data.validation：逐条校验、截断、文件解析，以及向量化校验与逐条校验的一致性。"""

import copy
import pickle
import random

import numpy as np
import pyarrow as pa
import pytest

from ugt_hf.data.validation import (
    DataValidationError,
    as_int_array,
    encoder_keep_indices,
    iter_jsonl,
    locate_row,
    resolve_data_files,
    truncate_decoder,
    truncate_encoder,
    validate_preference_record,
    validate_recommend_record,
    vector_check_table,
)

VOCAB = (8, 16, 32)


def make_record(uid="u1", n=4, m=3, rng=None):
    """一条合法的 RecommendDataset 记录（encoder 全是物品，decoder = [BOS, ...]）。"""
    rng = rng or random.Random(0)
    ids = lambda k, v: [rng.randrange(1, v) for _ in range(k)]  # noqa: E731
    return {
        "user_id": uid,
        "encoder_l1_ids": ids(n, VOCAB[0]),
        "encoder_l2_ids": ids(n, VOCAB[1]),
        "encoder_l3_ids": ids(n, VOCAB[2]),
        "encoder_positions": list(range(n)),
        "encoder_token_types": [1] * n,
        "encoder_mask": [1] * n,
        "decoder_l1_ids": [0] + ids(m - 1, VOCAB[0]),
        "decoder_l2_ids": [0] + ids(m - 1, VOCAB[1]),
        "decoder_l3_ids": [0] + ids(m - 1, VOCAB[2]),
        "decoder_positions": list(range(m)),
        "decoder_token_types": [0] + [1] * (m - 1),
        "decoder_mask": [1] * m,
        "labels_l1": ids(m, VOCAB[0]),
        "labels_l2": ids(m, VOCAB[1]),
        "labels_l3": ids(m, VOCAB[2]),
    }


def make_preference(uid="u1", n=3):
    rec = make_record(uid, n=n)
    return {
        "user_id": uid,
        "user_sequence": {k: rec[k] for k in rec if k.startswith("encoder_")},
        "chosen_item": {"l1_id": 1, "l2_id": 2, "l3_id": 3},
        "rejected_item": {"l1_id": 1, "l2_id": 2, "l3_id": 4},
        "preference_score": 0.5,
    }


def test_valid_record_normalises_user_id_and_types():
    rec = make_record(uid=17)
    out = validate_recommend_record(rec, VOCAB)
    assert out["user_id"] == "17"
    assert out["encoder_l1_ids"].dtype == np.int64
    assert out["encoder_l1_ids"].tolist() == rec["encoder_l1_ids"]
    # labels 允许 -100
    rec["labels_l2"][0] = -100
    validate_recommend_record(rec, VOCAB)


@pytest.mark.parametrize(
    "mutate, field, text",
    [
        (lambda r: r.pop("decoder_mask"), "decoder_mask", "missing"),
        (lambda r: r.__setitem__("user_id", None), "user_id", "missing"),
        (lambda r: r.__setitem__("user_id", 1.5), "user_id", "int or a string"),
        (lambda r: r.__setitem__("user_id", True), "user_id", "int or a string"),
        (lambda r: r.__setitem__("user_id", " "), "user_id", "empty user id"),
        (lambda r: r["encoder_l1_ids"].__setitem__(1, "3"), "encoder_l1_ids", "element 1"),
        (lambda r: r["encoder_l1_ids"].__setitem__(1, True), "encoder_l1_ids", "element 1"),
        (lambda r: r["encoder_l1_ids"].__setitem__(1, 2.0), "encoder_l1_ids", "element 1"),
        (lambda r: r.__setitem__("encoder_l2_ids", 5), "encoder_l2_ids", "list of integers"),
        (lambda r: r["encoder_l2_ids"].pop(), "encoder_l2_ids", "length 3 differs"),
        (lambda r: r["encoder_l3_ids"].__setitem__(0, VOCAB[2]), "encoder_l3_ids", "out-of-vocabulary id 32"),
        (lambda r: r["decoder_l2_ids"].__setitem__(0, -1), "decoder_l2_ids", "negative id -1"),
        (lambda r: r["labels_l1"].__setitem__(0, -5), "labels_l1", "negative id -5"),
        (lambda r: r["labels_l3"].append(1), "labels_l3", "differs from decoder_l1_ids"),
        (lambda r: r["encoder_mask"].__setitem__(2, 2), "encoder_mask", "mask value 2"),
        (lambda r: r["decoder_token_types"].__setitem__(1, -1), "decoder_token_types", "negative value"),
        (lambda r: [r[k].clear() for k in r if k.startswith("encoder_")], "encoder_l1_ids", "empty encoder"),
    ],
)
def test_record_errors_name_the_field(mutate, field, text):
    rec = make_record()
    mutate(rec)
    with pytest.raises(DataValidationError) as ei:
        validate_recommend_record(rec, VOCAB)
    assert ei.value.field == field
    assert text in str(ei.value)
    assert f"field '{field}'" in str(ei.value)


def test_non_object_record():
    with pytest.raises(DataValidationError, match="not a JSON object"):
        validate_recommend_record([1, 2, 3], VOCAB)


def test_vocab_none_checks_only_sign():
    rec = make_record()
    rec["encoder_l1_ids"][0] = 10**6
    validate_recommend_record(rec, None)
    rec["encoder_l1_ids"][0] = -2
    with pytest.raises(DataValidationError, match="negative id"):
        validate_recommend_record(rec, None)


def test_positions_checked_after_truncation():
    rec = make_record(n=6)
    rec["encoder_positions"] = [100, 101, 102, 103, 104, 105]
    # 截断到 3：保留 [103, 104, 105] → 重排为从原起点 100 开始：[100, 101, 102]
    validate_recommend_record(rec, VOCAB, max_encoder_length=3, max_seq_length=103)
    with pytest.raises(DataValidationError) as ei:
        validate_recommend_record(rec, VOCAB, max_encoder_length=3, max_seq_length=102)
    assert ei.value.field == "encoder_positions"
    rec["decoder_positions"] = [0, 1, 50]
    validate_recommend_record(rec, VOCAB, max_encoder_length=6, max_decoder_length=2, max_seq_length=200)
    with pytest.raises(DataValidationError, match="max_seq_length=50"):
        validate_recommend_record(rec, VOCAB, max_encoder_length=6, max_decoder_length=3, max_seq_length=50)


def test_truncation_keeps_recent_and_leading_special_token():
    arrays = {
        "encoder_l1_ids": np.array([0, 1, 2, 3, 4, 5]),
        "encoder_positions": np.array([0, 1, 2, 3, 4, 5]),
        "encoder_token_types": np.array([0, 1, 1, 1, 1, 1]),
    }
    fields = ("encoder_l1_ids", "encoder_positions", "encoder_token_types")
    out = truncate_encoder(arrays, 3, fields=fields)
    # 特殊位 0 保留，物品保留最近的 2 个（4、5），位置接在特殊位后
    assert out["encoder_l1_ids"].tolist() == [0, 4, 5]
    assert out["encoder_positions"].tolist() == [0, 1, 2]
    arrays["encoder_token_types"] = np.ones(6, np.int64)
    out = truncate_encoder(arrays, 3, fields=fields)
    assert out["encoder_l1_ids"].tolist() == [3, 4, 5]
    assert out["encoder_positions"].tolist() == [0, 1, 2]
    # 不超长时原样返回
    assert encoder_keep_indices(np.ones(3), 3)[0].tolist() == [0, 1, 2]
    dec = truncate_decoder({"a": np.arange(5)}, 2, fields=("a",))
    assert dec["a"].tolist() == [0, 1]


def test_preference_record():
    rec = make_preference()
    out = validate_preference_record(rec, VOCAB)
    assert out["chosen_ids"].tolist() == [1, 2, 3] and out["preference_score"] == 0.5
    del rec["preference_score"]
    assert validate_preference_record(rec, VOCAB)["preference_score"] == 1.0
    rec["rejected_item"] = dict(rec["chosen_item"])
    with pytest.raises(DataValidationError, match="identical") as ei:
        validate_preference_record(rec, VOCAB)
    assert ei.value.field == "rejected_item"
    rec = make_preference()
    rec["user_sequence"]["encoder_l2_ids"][0] = 99
    with pytest.raises(DataValidationError) as ei:
        validate_preference_record(rec, VOCAB)
    assert ei.value.field == "user_sequence.encoder_l2_ids"
    rec = make_preference()
    rec["preference_score"] = float("nan")
    with pytest.raises(DataValidationError, match="finite"):
        validate_preference_record(rec, VOCAB)


def test_error_format_location_and_pickle():
    e = DataValidationError("bad", field="x").with_location(path="/a/b.jsonl", line=3)
    assert str(e) == "/a/b.jsonl, line 3, field 'x': bad"
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.line, e2.field, str(e2)) == (e.path, e.line, e.field, str(e))


def test_resolve_data_files(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.parquet", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert resolve_data_files(str(tmp_path)) == [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "c.parquet")]
    assert resolve_data_files(str(tmp_path / "*.jsonl")) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert resolve_data_files([tmp_path / "b.jsonl", tmp_path / "a.jsonl"]) == [
        str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")]
    with pytest.raises(DataValidationError, match="unsupported file extension"):
        resolve_data_files(str(tmp_path / "notes.txt"))
    with pytest.raises(DataValidationError, match="file not found"):
        resolve_data_files(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataValidationError, match="empty list"):
        resolve_data_files([])


def test_locate_row_skips_blank_lines(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"x": 1}\n\n{"x": 2}\n')
    b.write_text('\n{"x": 3}\n')
    assert locate_row([str(a), str(b)], 1) == (str(a), 3, None)
    assert locate_row([str(a), str(b)], 2) == (str(b), 2, None)



def test_iter_jsonl_bom_and_exact_line_of_bad_bytes(tmp_path):
    p = tmp_path / "a.jsonl"
    lines = [b'{"x": %d}' % i for i in range(2000)]  # 远大于文本模式的解码块（8 KiB）
    lines[1500] = b'{"x": "\xff"}'
    p.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    seen = []
    with pytest.raises(DataValidationError, match="not valid UTF-8") as info:
        for lineno, obj in iter_jsonl(str(p)):
            seen.append((lineno, obj))
    assert info.value.line == 1501 and info.value.path == str(p)
    assert seen[0] == (1, {"x": 0}) and len(seen) == 1500  # BOM 被容忍，坏行之前的都读到了


def test_ndarray_with_wrong_rank_names_shape():
    with pytest.raises(DataValidationError, match=r"field 'f'.*1-D.*shape \(2, 2\)"):
        as_int_array(np.zeros((2, 2), np.int64), "f")

# ---- 向量化校验与逐条校验一致：随机破坏，比较“第一条坏记录” ----

CORRUPTIONS = [
    ("encoder_l1_ids", lambda v, r: VOCAB[0]),
    ("encoder_l3_ids", lambda v, r: -1),
    ("decoder_l2_ids", lambda v, r: VOCAB[1] + r.randrange(5)),
    ("labels_l3", lambda v, r: -100),  # 合法
    ("labels_l1", lambda v, r: -3),
    ("encoder_mask", lambda v, r: 2),
    ("decoder_mask", lambda v, r: 0),  # 合法
    ("encoder_token_types", lambda v, r: -1),
    ("decoder_positions", lambda v, r: -4),
    ("encoder_positions", lambda v, r: v + 40),  # 可能超出 max_seq_length
    ("encoder_l2_ids", None),  # 删除一个元素（长度不一致）
    ("labels_l2", "append"),  # labels 比 decoder 长
    ("decoder_l1_ids", "null"),  # 列表里出现 null
]


def _first_bad_python(records, **kw):
    for i, r in enumerate(records):
        try:
            validate_recommend_record(r, VOCAB, **kw)
        except DataValidationError:
            return i
    return None


def test_vectorised_and_per_record_validation_agree():
    rng = random.Random(1234)
    for trial in range(150):
        n_rows = rng.randrange(1, 12)
        records = []
        for i in range(n_rows):
            rec = make_record(uid=i, n=rng.randrange(1, 9), m=rng.randrange(1, 6), rng=rng)
            if rng.random() < 0.3:
                rec["encoder_token_types"][0] = 0  # 开头的特殊位
            records.append(rec)
        for _ in range(rng.randrange(0, 3)):
            rec = rng.choice(records)
            field, how = rng.choice(CORRUPTIONS)
            j = rng.randrange(len(rec[field]))
            if how is None:
                rec[field].pop(j)
            elif how == "append":
                rec[field].append(1)
            elif how == "null":
                rec[field][j] = None
            else:
                rec[field][j] = how(rec[field][j], rng)
        kw = dict(max_encoder_length=rng.randrange(1, 6), max_decoder_length=rng.randrange(1, 4),
                  max_seq_length=rng.choice([None, 8, 40]))
        table = pa.Table.from_pylist(copy.deepcopy(records))
        got = vector_check_table(table, "recommend", VOCAB, **kw)
        want = _first_bad_python(records, **kw)
        assert (None if got is None else got[0]) == want, (trial, kw, got, want)


def test_vectorised_preference_rules():
    recs = [make_preference(f"u{i}") for i in range(4)]
    assert vector_check_table(pa.Table.from_pylist(recs), "preference", VOCAB, 8, None, 64) is None
    recs[2]["rejected_item"] = dict(recs[2]["chosen_item"])
    recs[3]["chosen_item"]["l3_id"] = VOCAB[2]
    assert vector_check_table(pa.Table.from_pylist(recs), "preference", VOCAB, 8, None, 64) == (2, "rejected_item")


def test_vectorised_position_rule_agrees_after_truncation():
    """位置规则单独扫一遍：随机位置、随机开头特殊位、随机截断长度（覆盖“保留特殊位 + 尾部重排”的分支）。"""
    rng = random.Random(7)
    n_bad = 0
    for trial in range(300):
        records = []
        for i in range(rng.randrange(1, 8)):
            n = rng.randrange(1, 9)
            rec = make_record(uid=i, n=n, m=2, rng=rng)
            rec["encoder_positions"] = [rng.randrange(0, 12) for _ in range(n)]
            if rng.random() < 0.5:
                rec["encoder_token_types"][0] = 0
            records.append(rec)
        kw = dict(max_encoder_length=rng.randrange(1, 6), max_decoder_length=2, max_seq_length=rng.randrange(5, 30))
        got = vector_check_table(pa.Table.from_pylist(records), "recommend", VOCAB, **kw)
        want = _first_bad_python(records, **kw)
        n_bad += want is not None
        assert (None if got is None else got[0]) == want, (trial, kw, got, want)
    assert 30 < n_bad < 270  # 两种结果都被充分覆盖


def test_vectorised_rule_rejects_empty_user_id():
    """整表校验也要查空 user_id，否则整表（非惰性）模式会静默放过。"""
    recs = [make_record(uid=f"u{i}") for i in range(4)]
    assert vector_check_table(pa.Table.from_pylist(recs), "recommend", VOCAB, None, None, None) is None
    recs[2]["user_id"] = ""
    assert vector_check_table(pa.Table.from_pylist(recs), "recommend", VOCAB, None, None, None) == (2, "user_id")
