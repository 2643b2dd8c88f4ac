"""readers：各格式解析、坏输入报错（指明文件与行号）、跳过计数。"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ugt_hf.data.readers import DataFormatError, read_csv, read_ml1m, read_ml100k, read_pairs, read_parquet, read_s3rec


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_ml100k_reads_ratings_titles_and_genres(tmp_path):
    _write(tmp_path / "u.data", "1\t10\t5\t300\n1\t20\t2\t100\n2\t10\t4\t200\n")
    _write(tmp_path / "u.item", "10|Amélie (2001)|01-Jan-2001||url|0|1\n20|Heat (1995)|x||u|1|0\n", "latin-1")
    _write(tmp_path / "u.genre", "unknown|0\nAction|1\n")
    inter = read_ml100k(str(tmp_path))
    assert inter.user.tolist() == ["1", "1", "2"]
    assert inter.item.tolist() == ["10", "20", "10"]
    assert inter.timestamp.tolist() == [300, 100, 200]
    assert inter.rating.tolist() == [5.0, 2.0, 4.0]
    assert inter.titles["10"] == "Amélie (2001) | Action"
    assert inter.titles["20"] == "Heat (1995) | unknown"


def test_ml100k_non_integer_id_names_file_and_line(tmp_path):
    _write(tmp_path / "u.data", "1\t10\t5\t300\n1\tabc\t2\t100\n")
    with pytest.raises(DataFormatError, match=r"u.data:2: field 'item' must be an integer"):
        read_ml100k(str(tmp_path))


def test_ml100k_malformed_line_error_and_skip(tmp_path):
    p = _write(tmp_path / "u.data", "1\t10\t5\t300\n1\t20\n2\t10\t4\t200\n")
    with pytest.raises(DataFormatError, match=r"u.data:2: expected 4 fields"):
        read_ml100k(p)
    inter = read_ml100k(p, skip_bad_lines=True)
    assert len(inter) == 2
    assert inter.stats["malformed_lines_skipped"] == 1
    assert "u.data:2" in inter.warnings[0]


def test_ml_empty_or_na_field_is_an_error_not_nan(tmp_path):
    # pyarrow 默认把空字段 / "NA" 读成 null，曾经静默变成 id "nan"；现在必须报出文件与行号
    p = _write(tmp_path / "u.data", "1\t10\t5\t300\n1\t\t2\t100\n")
    with pytest.raises(DataFormatError, match=r"u.data:2: field 'item' must be an integer, got ''"):
        read_ml100k(p)
    p = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::NA::3::978302109\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: field 'item' must be an integer, got 'NA'"):
        read_ml1m(p)


def test_ml1m_double_colon(tmp_path):
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    _write(tmp_path / "movies.dat",
           "1193::One Flew Over (1975)::Drama\n661::James: Peach (1996)::Animation|Children's\n",
           "latin-1")
    inter = read_ml1m(str(tmp_path))
    assert inter.item.tolist() == ["1193", "661"]
    assert inter.rating.tolist() == [5.0, 3.0]
    assert inter.titles["661"] == "James: Peach (1996) | Animation, Children's"


def test_s3rec_order_is_time(tmp_path):
    inter = read_s3rec(_write(tmp_path / "b.txt", "1 5 3 5\n2 7 8\n"))
    assert inter.user.tolist() == ["1", "1", "1", "2", "2"]
    assert inter.item.tolist() == ["5", "3", "5", "7", "8"]
    assert inter.timestamp.tolist() == [0, 1, 2, 0, 1]
    assert inter.rating is None


def test_s3rec_bad_inputs(tmp_path):
    with pytest.raises(DataFormatError, match=r"b.txt:2: field 'item' must be an integer, got 'x'"):
        read_s3rec(_write(tmp_path / "b.txt", "1 5 3\n2 x 8\n"))
    with pytest.raises(DataFormatError, match=r"c.txt:1: expected 'user item"):
        read_s3rec(_write(tmp_path / "c.txt", "1\n"))
    with pytest.raises(DataFormatError, match="empty"):
        read_s3rec(_write(tmp_path / "e.txt", "\n\n"))
    with pytest.raises(DataFormatError, match="unknown encoding 'klingon'"):
        read_s3rec(_write(tmp_path / "d.txt", "1 2 3\n"), encoding="klingon")
    with pytest.raises(DataFormatError, match=r"f.txt:2: cannot decode"):
        p = tmp_path / "f.txt"
        p.write_bytes(b"1 2 3\n2 \xff\xfe 3\n")
        read_s3rec(str(p))
    with pytest.raises(DataFormatError, match=r"g.txt:1: integer id does not fit in int64"):
        read_s3rec(_write(tmp_path / "g.txt", "1 99999999999999999999\n"))


def test_s3rec_rejects_event_logs_with_a_hint(tmp_path):
    """MovieLens u.data（制表符分隔的 user item rating timestamp）按 S3-Rec 读会把时间戳当物品：必须报错，
    指出文件:行号并建议 --source ml-100k；skip_bad_lines 也不放过（格式错了不是坏行）。"""
    udata = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    for skip in (False, True):
        with pytest.raises(DataFormatError, match=r"u.data:1: tab-separated .*--source ml-100k"):
            read_s3rec(udata, skip_bad_lines=skip)
    # 同样的事件改成空格分隔：多数行恰好 4 个整数且第 4 个像 unix 时间 -> 报第一处这样的行
    spaced = _write(tmp_path / "events.txt", "1 2 3\n196 242 3 881250949\n186 302 3 891717742\n")
    with pytest.raises(DataFormatError, match=r"events.txt:2: 2 of the first 3 lines look like 'user item rating "
                                              r"timestamp'.*--source ml-100k.*csv"):
        read_s3rec(spaced)
    with pytest.raises(DataFormatError, match=r"r.dat:1: expected 'user item.*--source ml-1m"):
        read_s3rec(_write(tmp_path / "r.dat", "1::1193::5::978300760\n"))
    # 合法序列里个别 4 个 token 的行不受影响
    inter = read_s3rec(_write(tmp_path / "ok.txt", "1 5 3 5 9\n2 7 8 900000000\n3 4 4\n"))
    assert inter.item.tolist()[-4:] == ["8", "900000000", "4", "4"]


def test_s3rec_and_pairs_skip_bad_lines_count_and_summarise(tmp_path):
    inter = read_s3rec(_write(tmp_path / "b.txt", "1 5 3\n" + "x 1\n" * 7 + "2 7 8\n"), skip_bad_lines=True)
    assert inter.user.tolist() == ["1", "1", "2", "2"]
    assert inter.stats["malformed_lines_skipped"] == 7
    assert "b.txt:2" in inter.warnings[0] and "2 more malformed lines" in inter.warnings[-1]
    inter = read_pairs(_write(tmp_path / "p.txt", "a x 5\nb y\nc z 7\n"), skip_bad_lines=True)
    assert inter.user.tolist() == ["a", "c"] and inter.timestamp.tolist() == [5, 7]
    assert inter.stats["malformed_lines_skipped"] == 1 and "p.txt:2: inconsistent" in inter.warnings[0]


def test_pairs_with_and_without_timestamp(tmp_path):
    inter = read_pairs(_write(tmp_path / "p.txt", "a x\nb y\na z\n"))
    assert inter.timestamp.tolist() == [0, 1, 2]
    inter = read_pairs(_write(tmp_path / "q.txt", "a x 5\na z 3\n"))
    assert inter.timestamp.tolist() == [5, 3]
    with pytest.raises(DataFormatError, match=r"r.txt:2: inconsistent"):
        read_pairs(_write(tmp_path / "r.txt", "a x 5\na z\n"))


def test_csv_column_mapping_and_errors(tmp_path):
    p = _write(tmp_path / "e.csv", "uid,iid,ts,stars\nu1,i1,10,4.5\nu1,i2,20,1\n")
    inter = read_csv(p, user_col="uid", item_col="iid", time_col="ts", rating_col="stars")
    assert inter.item.tolist() == ["i1", "i2"] and inter.rating.tolist() == [4.5, 1.0]
    with pytest.raises(DataFormatError, match=r"column 'user' \(given by --user_col\) not found; available columns"):
        read_csv(p, user_col="user", item_col="iid")
    bad = _write(tmp_path / "bad.csv", "uid,iid\nu1,i1\nu2,i2,extra\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:3: expected 2 fields, got 3"):
        read_csv(bad, user_col="uid", item_col="iid")
    inter = read_csv(bad, user_col="uid", item_col="iid", skip_bad_lines=True)
    assert len(inter) == 1 and inter.stats["malformed_lines_skipped"] == 1
    with pytest.raises(DataFormatError, match="empty"):
        read_csv(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(DataFormatError, match="must be numeric"):
        read_csv(_write(tmp_path / "r.csv", "u,i,r\na,b,good\n"), user_col="u", item_col="i", rating_col="r")


def test_parquet_missing_values_named(tmp_path):
    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"u": ["a", None], "i": [1, 2], "t": [1, 2]}), path)
    with pytest.raises(DataFormatError, match=r"row 2 .*field 'u' is missing"):
        read_parquet(path, user_col="u", item_col="i", time_col="t")
    pq.write_table(pa.table({"u": ["a", "a"], "i": [1, 2], "t": [5, 3]}), path)
    inter = read_parquet(path, user_col="u", item_col="i", time_col="t")
    assert inter.item.tolist() == ["1", "2"] and inter.timestamp.dtype == np.int64


@pytest.mark.parametrize("value", ["-3", "1e308", "nan", "inf"])
def test_absurd_ratings_are_errors_with_the_line(tmp_path, value):
    """负数、NaN、无穷与 1e308（转 float32 后成 inf）是坏数据；行号数的是文件里的行（空行也算）。"""
    p = _write(tmp_path / "u.data", f"1\t10\t5\t300\n\n1\t20\t{value}\t100\n")
    with pytest.raises(DataFormatError, match=r"u.data:3: field 'rating' must be a finite number"):
        read_ml100k(p)
    c = _write(tmp_path / "r.csv", f"user_id,item_id,rating\nu,a,4\nu,b,{value}\n")
    with pytest.raises(DataFormatError, match=r"r.csv: row 2 .*field 'rating'"):
        read_csv(c, rating_col="rating")


def test_empty_and_overlong_ids_are_errors(tmp_path):
    c = _write(tmp_path / "e.csv", "user_id,item_id\nu,a\n  ,b\n")
    with pytest.raises(DataFormatError, match=r"e.csv: row 2 .*field 'user_id' is empty"):
        read_csv(c)
    c = _write(tmp_path / "i.csv", "user_id,item_id\nu,a\nu,\n")
    with pytest.raises(DataFormatError, match=r"i.csv: row 2 .*field 'item_id' is empty"):
        read_csv(c)
    p = _write(tmp_path / "p.txt", "u a\nu " + "x" * 5000 + "\n")
    with pytest.raises(DataFormatError, match=r"p.txt:2: field 'item' is 5,000 characters long"):
        read_pairs(p)


def test_csv_line_longer_than_the_block_and_invalid_utf8_name_the_line(tmp_path):
    c = _write(tmp_path / "long.csv", "user_id,item_id\nu,a\nu," + "x" * (2 << 20) + "\nu,b\n")
    with pytest.raises(DataFormatError, match=r"long.csv:3: line is 2.1 MB long"):
        read_csv(c)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"user_id,item_id\nu,a\nu,caf\xe9\n")
    with pytest.raises(DataFormatError, match=r"bad.csv: row 2 .*field 'item_id' is not valid UTF-8.*--encoding"):
        read_csv(str(bad))
    assert read_csv(str(bad), encoding="latin-1").item.tolist() == ["a", "café"]
