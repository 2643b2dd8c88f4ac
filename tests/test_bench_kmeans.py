"""benchmarks/bench_kmeans.py：量化误差的手算值；与 git 提交里的实现对比（对比 HEAD 自己：码必须逐项相同）。"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("bench_kmeans")


def test_quantisation_error_hand_computed():
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])
    err = _module().quantisation_error(emb, codes)
    # L1 均值 (1,0) 与 (10,2)：残差平方 1,1,4,4 -> 2.5；L1+L2 单元 {0},{1},{2,3}：只剩 4,4 -> 2；L3 全部分开 -> 0
    assert err == {"l1": pytest.approx(2.5), "l2": pytest.approx(2.0), "l3": pytest.approx(0.0)}


def test_against_head_is_identical(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    out = tmp_path / "k.json"
    assert _module().main(["--items", "600", "--clusters", "16", "--dim", "8", "--reference", "HEAD",
                           "--threads", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["kmeans_sizes"] == [32, 32, 32] and row["identical_codes"] is True
    assert row["items_with_identical_codes"] == 1.0 and row["seconds"] > 0 and row["reference_seconds"] > 0
    assert row["quantisation_error"] == row["reference_quantisation_error"]
    assert 0 < row["quantisation_error"]["l2"] < row["quantisation_error"]["l1"]
