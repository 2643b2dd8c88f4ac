"""坏数据语料（数据那一半；配置那一半在 tests/test_arguments.py）。

每个坏输入都必须抛出 DataValidationError（ValueError 的子类），消息里写出文件、行号（JSONL，从 1 开始）
或行号（Parquet，从 0 开始）以及字段；同一个坏文件分别用三种方式读取（整表校验、惰性逐条校验、流式），
三者必须报出同一个位置，不能有一种静默放过。
"""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ugt_hf.data.datasets import PreferenceDataset, RecommendDataset, StreamingDataset
from ugt_hf.data.validation import DataValidationError

datasets.disable_progress_bars()

VOCAB = (8, 16, 32)


def rec(uid="u", n=3, m=2):
    return {
        "user_id": uid,
        "encoder_l1_ids": [1] * n, "encoder_l2_ids": [2] * n, "encoder_l3_ids": [3] * n,
        "encoder_positions": list(range(n)), "encoder_token_types": [1] * n, "encoder_mask": [1] * n,
        "decoder_l1_ids": [0] + [4] * (m - 1), "decoder_l2_ids": [0] + [5] * (m - 1),
        "decoder_l3_ids": [0] + [6] * (m - 1),
        "decoder_positions": list(range(m)), "decoder_token_types": [0] + [1] * (m - 1), "decoder_mask": [1] * m,
        "labels_l1": [4] * m, "labels_l2": [5] * m, "labels_l3": [6] * m,
    }


def pref(uid="u"):
    r = rec(uid)
    return {
        "user_id": uid,
        "user_sequence": {k: r[k] for k in r if k.startswith("encoder_")},
        "chosen_item": {"l1_id": 1, "l2_id": 2, "l3_id": 3},
        "rejected_item": {"l1_id": 1, "l2_id": 2, "l3_id": 4},
        "preference_score": 1.0,
    }


def jsonl_lines(tmp_path, lines, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines))
    return str(p)


def jsonl_with(tmp_path, bad_line, mutate, n=5, make=rec, name="data.jsonl"):
    """n 条合法记录，第 bad_line 行（从 1 开始）被 mutate 修改。"""
    records = [make(f"u{i}") for i in range(n)]
    mutate(records[bad_line - 1])
    return jsonl_lines(tmp_path, [json.dumps(r) for r in records], name)


def setitem(field, idx, value):
    def f(r):
        r[field][idx] = value
    return f


# 每个用例：(名字, 记录类型, 构造函数(tmp_path) -> (路径, 期望), 适用的读取方式)
# 期望：path（默认 = 构造出的文件）、line / row、field、text（消息里必须出现的原因片段）
ALL = ("eager", "lazy", "stream")


def _case_truncated(t):
    lines = [json.dumps(rec(f"u{i}")) for i in range(4)]
    lines[2] = lines[2][:-7]
    return jsonl_lines(t, lines), dict(line=3, field=None, text="invalid JSON")


def _case_non_object(t):
    lines = [json.dumps(rec(f"u{i}")) for i in range(4)]
    lines[1] = "[1, 2, 3]"
    return jsonl_lines(t, lines), dict(line=2, field=None, text="not a JSON object")


def _case_json_array_file(t):
    p = t / "array.json"
    p.write_text(json.dumps([rec("a"), rec("b")]))
    return str(p), dict(line=1, field=None, text="not a JSON object")


def _case_missing_field(t):
    return jsonl_with(t, 2, lambda r: r.pop("decoder_mask")), dict(line=2, field="decoder_mask", text="missing")


def _case_string_id(t):
    path = jsonl_with(t, 2, setitem("encoder_l1_ids", 1, "3"))
    return path, dict(line=2, field="encoder_l1_ids", text="expected an integer")


def _case_float_id(t):
    path = jsonl_with(t, 4, setitem("decoder_l3_ids", 1, 2.5))
    return path, dict(line=4, field="decoder_l3_ids", text="expected an integer")


def _case_bool_id(t):
    return jsonl_with(t, 3, setitem("labels_l2", 0, True)), dict(line=3, field="labels_l2", text="expected an integer")


def _case_unequal_lengths(t):
    path = jsonl_with(t, 3, lambda r: r["encoder_l2_ids"].pop())
    return path, dict(line=3, field="encoder_l2_ids", text="length 2 differs")


def _case_oov(t):
    path = jsonl_with(t, 2, setitem("encoder_l3_ids", 0, VOCAB[2]))
    return path, dict(line=2, field="encoder_l3_ids", text="out-of-vocabulary id 32")


def _case_negative_id(t):
    path = jsonl_with(t, 5, setitem("decoder_l2_ids", 1, -1))
    return path, dict(line=5, field="decoder_l2_ids", text="negative id -1")


def _case_bad_label(t):
    return jsonl_with(t, 1, setitem("labels_l1", 1, -5)), dict(line=1, field="labels_l1", text="negative id -5")


def _case_labels_length(t):
    path = jsonl_with(t, 2, lambda r: r["labels_l3"].append(6))
    return path, dict(line=2, field="labels_l3", text="differs from decoder_l1_ids")


def _case_bad_mask(t):
    return jsonl_with(t, 3, setitem("encoder_mask", 2, 2)), dict(line=3, field="encoder_mask", text="mask value 2")


def _case_negative_token_type(t):
    path = jsonl_with(t, 2, setitem("decoder_token_types", 0, -1))
    return path, dict(line=2, field="decoder_token_types", text="negative value")


def _case_null_user(t):
    return jsonl_with(t, 4, lambda r: r.__setitem__("user_id", None)), dict(line=4, field="user_id", text="missing")


def _case_empty_user(t):
    return jsonl_with(t, 3, lambda r: r.__setitem__("user_id", "  ")), dict(line=3, field="user_id",
                                                                           text="empty user id")


def _case_empty_encoder(t):
    def f(r):
        for k in r:
            if k.startswith("encoder_"):
                r[k] = []
    return jsonl_with(t, 2, f), dict(line=2, field="encoder_l1_ids", text="empty encoder sequence")


def _case_position_too_large(t):
    path = jsonl_with(t, 2, setitem("decoder_positions", 1, 5000))
    return path, dict(line=2, field="decoder_positions", text="max_seq_length")


def _case_empty_file(t):
    p = t / "empty.jsonl"
    p.write_text("")
    return str(p), dict(text="empty file")


def _case_blank_file(t):
    p = t / "blank.jsonl"
    p.write_text("\n  \n\n")
    return str(p), dict(text="empty file")


def _case_missing_file(t):
    return str(t / "does_not_exist.jsonl"), dict(text="file not found")


def _case_unsupported_ext(t):
    p = t / "train.csv"
    p.write_text("a,b\n")
    return str(p), dict(text="unsupported file extension")


def _write_parquet(t, records, name="data.parquet", schema=None):
    p = t / name
    pq.write_table(pa.Table.from_pylist(records, schema=schema), str(p))
    return str(p)


def _case_parquet_missing_column(t):
    records = [rec(f"u{i}") for i in range(3)]
    for r in records:
        del r["encoder_mask"]
    return _write_parquet(t, records), dict(field="encoder_mask", text="schema: required column is missing")


def _case_parquet_wrong_type(t):
    records = [rec(f"u{i}") for i in range(3)]
    for r in records:
        r["encoder_l1_ids"] = [str(x) for x in r["encoder_l1_ids"]]
    return _write_parquet(t, records), dict(field="encoder_l1_ids", text="string>, expected list<int>")


def _case_parquet_row(t):
    records = [rec(f"u{i}") for i in range(4)]
    records[2]["encoder_l1_ids"][0] = VOCAB[0]
    return _write_parquet(t, records), dict(row=2, field="encoder_l1_ids", text="out-of-vocabulary id 8")


def _case_not_parquet(t):
    p = t / "broken.parquet"
    p.write_text("this is not parquet")
    return str(p), dict(text="not a readable Parquet file")


def _case_second_shard(t):
    """两个 shard，坏记录在第二个文件第 4 行：位置必须落在那个文件上（整表校验是按全局行号找到它的）。"""
    d = t / "shards"
    d.mkdir()
    jsonl_lines(d, [json.dumps(rec(f"a{i}")) for i in range(3)], name="shard_0.jsonl")
    p = jsonl_with(d, 4, setitem("labels_l2", 0, VOCAB[1]), name="shard_1.jsonl")
    return str(d), dict(path=p, line=4, field="labels_l2", text="out-of-vocabulary id 16")


def _bytes_lines(t, lines, name="data.jsonl"):
    p = t / name
    p.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(p)


def _case_non_utf8_value(t):
    """字符串值里的非 UTF-8 字节：pyarrow 的 JSON 读取器照收，取行时才会抛裸 UnicodeDecodeError。"""
    lines = [json.dumps(rec(f"u{i}")).encode() for i in range(5)]
    lines[2] = lines[2].replace(b'"u2"', b'"u\xff2"')
    return _bytes_lines(t, lines), dict(line=3, text="not valid UTF-8")


def _case_non_utf8_key(t):
    lines = [json.dumps(rec(f"u{i}")).encode() for i in range(4)]
    lines[1] = lines[1].replace(b'"user_id"', b'"user_\xe9id"')  # latin-1 的 é
    return _bytes_lines(t, lines), dict(line=2, text="not valid UTF-8")


def _case_non_utf8_extra_column(t):
    lines = [json.dumps(dict(rec(f"u{i}"), title="ok")).encode() for i in range(4)]
    lines[3] = lines[3].replace(b'"ok"', b'"caf\xe9"')
    return _bytes_lines(t, lines), dict(line=4, text="not valid UTF-8")


def _case_pref_non_utf8(t):
    lines = [json.dumps(pref(f"u{i}")).encode() for i in range(3)]
    lines[1] = lines[1].replace(b'"u1"', b'"\xc3\x28"')  # 截断的两字节序列
    return _bytes_lines(t, lines), dict(line=2, text="not valid UTF-8")


def _case_pref_missing_chosen(t):
    path = jsonl_with(t, 2, lambda r: r.pop("chosen_item"), make=pref)
    return path, dict(line=2, field="chosen_item", text="missing")


def _case_pref_same(t):
    def f(r):
        r["rejected_item"] = dict(r["chosen_item"])
    return jsonl_with(t, 3, f, make=pref), dict(line=3, field="rejected_item", text="identical to chosen_item")


def _case_pref_oov(t):
    def f(r):
        r["chosen_item"]["l2_id"] = VOCAB[1]
    return jsonl_with(t, 1, f, make=pref), dict(line=1, field="chosen_item.l2_id", text="out-of-vocabulary")


def _case_pref_sequence(t):
    def f(r):
        r["user_sequence"]["encoder_mask"] = [1]
    return jsonl_with(t, 4, f, make=pref), dict(line=4, field="user_sequence.encoder_mask", text="differs")


def _case_pref_score(t):
    return jsonl_with(t, 2, lambda r: r.__setitem__("preference_score", -0.5), make=pref), dict(
        line=2, field="preference_score", text=">= 0")


CASES = [
    ("truncated_json_line", "recommend", _case_truncated, ALL),
    ("non_object_line", "recommend", _case_non_object, ALL),
    ("json_array_file", "recommend", _case_json_array_file, ALL),
    ("missing_field", "recommend", _case_missing_field, ALL),
    ("string_id", "recommend", _case_string_id, ALL),
    ("float_id", "recommend", _case_float_id, ALL),
    ("bool_id", "recommend", _case_bool_id, ALL),
    ("unequal_list_lengths", "recommend", _case_unequal_lengths, ALL),
    ("out_of_vocabulary_id", "recommend", _case_oov, ALL),
    ("negative_id", "recommend", _case_negative_id, ALL),
    ("bad_label_value", "recommend", _case_bad_label, ALL),
    ("labels_length_ne_decoder", "recommend", _case_labels_length, ALL),
    ("bad_mask_value", "recommend", _case_bad_mask, ALL),
    ("negative_token_type", "recommend", _case_negative_token_type, ALL),
    ("null_user_id", "recommend", _case_null_user, ALL),
    ("empty_user_id", "recommend", _case_empty_user, ALL),
    ("empty_encoder", "recommend", _case_empty_encoder, ALL),
    ("position_beyond_max_seq_length", "recommend", _case_position_too_large, ALL),
    ("empty_file", "recommend", _case_empty_file, ALL),
    ("blank_lines_only", "recommend", _case_blank_file, ALL),
    ("missing_file", "recommend", _case_missing_file, ALL),
    ("unsupported_extension", "recommend", _case_unsupported_ext, ALL),
    ("parquet_missing_column", "recommend", _case_parquet_missing_column, ALL),
    ("parquet_wrong_column_type", "recommend", _case_parquet_wrong_type, ALL),
    ("parquet_bad_row", "recommend", _case_parquet_row, ALL),
    ("not_a_parquet_file", "recommend", _case_not_parquet, ALL),
    ("bad_line_in_second_shard", "recommend", _case_second_shard, ALL),
    ("non_utf8_bytes_in_value", "recommend", _case_non_utf8_value, ALL),
    ("non_utf8_bytes_in_key", "recommend", _case_non_utf8_key, ALL),
    ("non_utf8_bytes_in_extra_column", "recommend", _case_non_utf8_extra_column, ALL),
    ("preference_non_utf8_bytes", "preference", _case_pref_non_utf8, ALL),
    ("preference_missing_chosen_item", "preference", _case_pref_missing_chosen, ALL),
    ("preference_chosen_equals_rejected", "preference", _case_pref_same, ALL),
    ("preference_oov_item", "preference", _case_pref_oov, ALL),
    ("preference_bad_sequence", "preference", _case_pref_sequence, ALL),
    ("preference_negative_score", "preference", _case_pref_score, ALL),
]


def _read_everything(path, record_type, mode, cache_dir):
    """按给定方式完整读一遍（惰性模式要访问每一条，流式要迭代完）。"""
    if mode == "stream":
        return list(StreamingDataset(path, world_size=1, rank=0, vocab_sizes=VOCAB, record_type=record_type))
    cls = RecommendDataset if record_type == "recommend" else PreferenceDataset
    ds = cls(path, vocab_sizes=VOCAB, lazy_loading=(mode == "lazy"), cache_dir=cache_dir)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("mode", ALL)
@pytest.mark.parametrize("name, record_type, build, modes", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_clear_error(tmp_path, name, record_type, build, modes, mode):
    if mode not in modes:
        pytest.skip(f"{name} does not apply to {mode}")
    path, want = build(tmp_path)
    with pytest.raises(DataValidationError) as ei:
        _read_everything(path, record_type, mode, str(tmp_path / "hf_cache"))
    e = ei.value
    msg = str(e)
    expected_path = want.get("path", path)
    assert e.path == expected_path and expected_path in msg, msg
    assert e.line == want.get("line"), msg
    assert e.row == want.get("row"), msg
    assert e.field == want.get("field"), msg
    if e.line is not None:
        assert f"line {e.line}" in msg
    if e.row is not None:
        assert f"row {e.row}" in msg
    if e.field is not None:
        assert f"field '{e.field}'" in msg
    assert want["text"] in msg, msg


def test_corpus_is_large_enough():
    assert len(CASES) >= 13


def test_valid_files_pass_in_every_mode(tmp_path):
    """对照组：同样的构造函数不加破坏时三种方式都能读完（语料里的错误不是别的原因引起的）。"""
    p = jsonl_with(tmp_path, 1, lambda r: None)
    for mode in ALL:
        assert len(_read_everything(p, "recommend", mode, str(tmp_path / "c"))) == 5
    q = jsonl_with(tmp_path, 1, lambda r: None, make=pref, name="p.jsonl")
    for mode in ALL:
        assert len(_read_everything(q, "preference", mode, str(tmp_path / "c"))) == 5
    r = _write_parquet(tmp_path, [rec(f"u{i}") for i in range(3)])
    for mode in ALL:
        assert len(_read_everything(r, "recommend", mode, str(tmp_path / "c"))) == 3
