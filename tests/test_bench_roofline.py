"""benchmarks/bench_roofline.py --quick：很小的配置上跑完峰值、FLOP 计数、计时与剖析，JSON 的数值自洽。"""

import json

import pytest
from _benchmarks import load_benchmark


def _module():
    return load_benchmark("bench_roofline")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roofline")
    out = tmp / "r.json"
    assert _module().main(["--quick", "--compare-stock", "--out", str(out), "--work", str(tmp / "work")]) == 0
    return json.loads(out.read_text())


def test_quick_report_is_consistent(report):
    r = report
    assert r["quick"] is True and r["threads"] >= 1 and r["config"].endswith("beauty_stage1.yaml")
    peak = r["peak"]
    assert set(peak["square_gflops"]) == {"64", "128"}
    assert peak["peak_gflops"] == max(peak["square_gflops"].values()) > 0
    assert peak["model_shape"][0] == r["batch"]["size"] * r["batch"]["encoder_length"]
    # FLOP 计数：一步前向+反向全是矩阵乘类算子，分项之和等于总数
    assert r["step_flops"] > 0 and sum(r["step_flops_by_op"].values()) == r["step_flops"]
    assert any("mm" in op for op in r["step_flops_by_op"])
    # CPU 的注意力内核也算进去（FlopCounterMode 默认只登记了 CUDA 的）
    assert any("scaled_dot_product" in op and f > 0 for op, f in r["step_flops_by_op"].items())
    # achieved = FLOP / 前向+反向时间；比值与峰值一致
    assert r["achieved_gflops"] == pytest.approx(r["step_flops"] / r["fwd_bwd_seconds_median"] / 1e9, rel=1e-2)
    assert r["achieved_over_peak"] == pytest.approx(r["achieved_gflops"] / peak["peak_gflops"], rel=1e-2)
    assert len(r["fwd_bwd_seconds_all"]) == 2 and r["optimizer_step_seconds_median"] > 0


def test_profile_lists_ops_by_self_time(report):
    prof = report["profile"]
    rows = prof["top_self_cpu"]
    assert rows and all(row["self_ms"] >= 0 and row["calls"] >= 1 for row in rows)
    assert [row["self_ms"] for row in rows] == sorted((row["self_ms"] for row in rows), reverse=True)
    assert 0 < prof["matmul_self_pct"] < 100
    assert any(row["op"].startswith("aten::") for row in rows)


def test_flop_count_matches_hand_count_for_a_linear_layer():
    # FlopCounterMode 的约定（前向 2mkn，反向再 2 倍）与峰值的 2n³ 是同一口径
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    lin = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8, requires_grad=True)
    with FlopCounterMode(display=False) as c:
        lin(x).sum().backward()
    assert c.get_total_flops() == 3 * (2 * 3 * 8 * 4)


def test_stock_ops_comparison_is_interleaved_and_restores_the_ops(report):
    import torch

    from ugt_hf import loss_utils
    from ugt_hf.modeling_ugt import UGTDropout

    c = report["stock_ops_comparison"]
    assert len(c["current_seconds"]) == len(c["stock_seconds"]) == 2  # quick：repeats 2，各去掉一次预热
    assert c["stock_over_current"] == pytest.approx(c["stock_median"] / c["current_median"], rel=1e-3)
    # 换回自带算子只在计时的那一段里：之后 UGTDropout 与 _argmax_hits 还是本仓库的实现
    assert UGTDropout.forward is not torch.nn.Dropout.forward
    assert loss_utils._argmax_hits.__name__ == "_argmax_hits"


def test_stock_ops_context_swaps_dropout_and_argmax():
    import torch

    from ugt_hf import loss_utils
    from ugt_hf.modeling_ugt import UGTDropout

    x = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    with _module().stock_ops():
        assert UGTDropout.forward is torch.nn.Dropout.forward
        assert loss_utils._argmax_hits(x, torch.tensor([1, 1])).tolist() == [False, True]
    assert UGTDropout.forward is not torch.nn.Dropout.forward
