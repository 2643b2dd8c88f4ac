"""benchmarks/bench_scale.py：极小规模上跑通生成 → prepare → 流式训练 → 评估，JSON 与 PNG；RSS 采样的时间窗、
阶段时间窗与增长指数的拟合。"""

import json
import math
import time
from pathlib import Path

import pytest
from _benchmarks import load_benchmark

TINY = ["--quick", "--train-steps", "2", "--warmup", "1", "--batch", "16", "--eval-users", "20", "--num-beams", "5",
        "--shards", "2", "--codebook-sizes", "16,16,32"]


def _module():
    return load_benchmark("bench_scale")


def _check_row(row):
    g, p, t, e = row["generate"], row["prepare"], row["train"], row["evaluate"]
    assert abs(g["interactions"] - row["size"]) < 0.2 * row["size"]
    assert g["sequence_length"]["max"] >= g["sequence_length"]["p99"] >= g["sequence_length"]["median"]
    assert {"read", "embedding", "rq_kmeans", "samples", "write"} <= set(p["phases"])
    # 各阶段时间加起来不超过 prepare 的墙钟时间；有 RSS 的阶段不超过整个进程的峰值
    assert sum(v["seconds"] for v in p["phases"].values()) <= p["wall_s"] + 1e-3
    assert all(v["peak_rss_mib"] is None or v["peak_rss_mib"] <= p["peak_rss_mib"] + 1 for v in p["phases"].values())
    assert p["splits"]["train"] > 0
    assert t["samples_per_s"] > 0 and t["timed_steps"] == 2 and t["batch"] == 16
    assert "StreamingDataset(num_shards=2" in t["dataset"]
    assert len(row["shard"]["shards"]) == 2
    assert e["users"] == 20 and e["num_beams"] == 5 and e["users_per_s"] > 0


def test_tiny_run_in_process(tmp_path):
    out = tmp_path / "scale.json"
    assert _module().main(["--sizes", "1500", *TINY, "--in-process", "--work", str(tmp_path / "w"),
                           "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["sizes"] == [1500] and len(report["results"]) == 1
    _check_row(report["results"][0])
    assert all(v is None for v in report["growth_exponents"].values())  # 一个规模拟合不了斜率
    assert Path(report["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_prepare_only_skips_training_and_evaluation(tmp_path):
    out = tmp_path / "scale.json"
    assert _module().main(["--sizes", "1500", *TINY, "--in-process", "--prepare-only", "--work", str(tmp_path / "w"),
                           "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert set(row) == {"size", "generate", "prepare"} and row["prepare"]["splits"]["train"] > 0
    assert not (tmp_path / "w" / "n1500" / "run").exists()


@pytest.mark.slow
def test_two_sizes_in_subprocesses(tmp_path):
    out = tmp_path / "scale.json"
    assert _module().main(["--sizes", "1500,3000", *TINY, "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for row in report["results"]:
        _check_row(row)
    exps = report["growth_exponents"]
    assert exps["prepare_wall_s"] is not None and math.isfinite(exps["prepare_wall_s"])


def test_shard_streams_rows_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "train.parquet"
    pq.write_table(pa.table({"x": list(range(10)), "s": [[i] * (i % 3) for i in range(10)]}), src, row_group_size=3)
    paths = _module()._shard(src, tmp_path / "shards", 4)
    parts = [pq.read_table(p) for p in paths]
    # 按 linspace 的边界切：2/3/2/3 行，拼回来与原表逐行相同；行数少于分片数时有的分片是空表（文件仍在）
    assert [t.num_rows for t in parts] == [2, 3, 2, 3]
    assert pa.concat_tables(parts).to_pydict() == pq.read_table(src).to_pydict()
    few = _module()._shard(src, tmp_path / "few", 12)
    rows = [pq.read_table(p).num_rows for p in few]
    assert len(rows) == 12 and sum(rows) == 10 and rows.count(0) == 2


def test_growth_exponent_and_phase_windows():
    m = _module()
    assert m.growth_exponent([1e3, 1e4, 1e5], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert m.growth_exponent([1e3, 1e4], [1.0, 100.0]) == pytest.approx(2.0)
    assert m.growth_exponent([1e3], [1.0]) is None and m.growth_exponent([1e3, 1e4], [1.0, None]) is None
    w = m.phase_windows(10.0, {"read_s": 1.0, "embedding_s": 2.0, "total_s": 3.0, "checksum_s": 0.5})
    # 按 prepare 的执行顺序排（checksum 在 read 之前），total 不是阶段
    assert w == {"checksum": (10.0, 10.5), "read": (10.5, 11.5), "embedding": (11.5, 13.5)}


def test_rss_sampler_sees_an_allocation():
    m = _module()
    with m.RssSampler(interval=0.005) as rss:
        time.sleep(0.05)
        t0 = time.perf_counter()
        block = bytearray(200 * 2 ** 20)  # 200 MiB，写满才真正占用常驻内存
        block[:: 4096] = b"x" * len(block[:: 4096])
        time.sleep(0.05)
        t1 = time.perf_counter()
    before = rss.window_peak(rss.samples[0][0], t0 - 0.01)
    during = rss.window_peak(t0, t1)
    del block
    assert during - before > 150
    # 比采样间隔还短的窗：取前后紧挨着的样本，不是 None
    assert rss.window_peak(t1 - 1e-6, t1 - 1e-7) is not None
