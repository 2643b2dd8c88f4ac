"""metrics.py 的测试：规格 10.2 的例子与手算值。"""

import math

import numpy as np
import pytest
import torch

from ugt_hf.generation import ItemCatalogue
from ugt_hf.item_keys import METRICS_RADIX, pack_triples
from ugt_hf.metrics import (
    MetricsCalculator,
    coverage,
    diversity,
    gini,
    hit_rate,
    make_compute_metrics,
    mrr,
    ndcg_at_k,
    recall_at_k,
)

SPEC_PRED = [
    [(1, 1, 1), (2, 2, 2), (3, 3, 3)],
    [(4, 4, 4), (5, 5, 5), (6, 6, 6)],
]
SPEC_GT = [(1, 1, 1), (5, 5, 5)]


def test_spec_section_10_2_example():
    assert recall_at_k(SPEC_PRED, SPEC_GT, k=10) == 1.0
    assert ndcg_at_k(SPEC_PRED, SPEC_GT, k=10) == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert mrr(SPEC_PRED, SPEC_GT) == pytest.approx(0.75)
    calc = MetricsCalculator()
    calc.add_batch(SPEC_PRED, SPEC_GT)
    m = calc.compute(k_values=[5, 10, 20, 50])
    assert m["recall@10"] == 1.0 and m["mrr"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["diversity@10"] == 1.0  # 元组的 L1 码 1,2,3 / 4,5,6 各不相同
    assert "coverage@10" not in m  # 不知道目录大小
    # 规格 10.2 的返回里有 gini：目录取见过的 6 个物品，每个被推荐一次 -> 完全均匀
    assert m["gini"] == pytest.approx(0.0)


def test_id_arrays_torch_and_partial_k():
    preds = np.array([[3, 1, 2], [0, 5, 4], [7, 8, 9]])
    gt = np.array([1, 4, 6])
    # 命中位置：1、2、未命中
    assert recall_at_k(preds, gt, 1) == 0.0
    assert recall_at_k(preds, gt, 2) == pytest.approx(1 / 3)
    assert hit_rate(torch.tensor(preds), torch.tensor(gt), 3) == pytest.approx(2 / 3)
    assert ndcg_at_k(preds, gt, 3) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert mrr(preds, gt) == pytest.approx((1 / 2 + 1 / 3) / 3)


def test_absent_ground_truth_counts_as_miss():
    preds = [[1, 2], [-1, 3], [5, 6]]
    gt = [1, -1, None]
    assert recall_at_k(preds, gt, 2) == pytest.approx(1 / 3)  # 预测中的 -1 不会与缺失目标 -1 “命中”
    assert mrr(preds, gt) == pytest.approx(1 / 3)
    assert recall_at_k([[(1, 1, 1)]], [None], 5) == 0.0


def test_k_beyond_list_uses_whole_list_and_ragged_lists():
    preds = [[4, 9], [1, 2, 3, 8]]
    gt = [9, 8]
    assert recall_at_k(preds, gt, 50) == 1.0
    assert ndcg_at_k(preds, gt, 50) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)
    assert recall_at_k(preds, gt, 2) == 0.5


def test_batch_of_one():
    assert recall_at_k([[7, 3]], [3], 1) == 0.0
    assert ndcg_at_k([[7, 3]], [3], 2) == pytest.approx(1 / math.log2(3))
    calc = MetricsCalculator(num_items=4)
    calc.add_batch(np.array([[3, 0]]), np.array([3]))
    m = calc.compute(k_values=[1])
    assert m["recall@1"] == 1.0 and m["mrr"] == 1.0 and m["coverage@1"] == 0.25
    # 4 个物品的次数 [0, 0, 0, 1]：G = (3·1)/(4·1) = 0.75
    assert m["gini@1"] == pytest.approx(0.75)


def test_coverage_gini_diversity_hand_computed():
    preds = np.array([[0, 1, 2], [0, 1, 3], [0, 4, -1]])  # -1 是 padding
    item_l1 = np.array([0, 0, 1, 1, 2, 9])  # 物品 id -> L1；6 个物品
    # top-2 推荐次数：0->3, 1->2, 4->1, 其余 0
    assert coverage(preds, 6, k=2) == pytest.approx(3 / 6)
    assert coverage(preds, [0, 1, 2, 3], k=2) == pytest.approx(2 / 4)  # 只统计目录内的物品
    x = sorted([3, 2, 1, 0, 0, 0])
    n, s = 6, 6
    g = sum((2 * (i + 1) - n - 1) * v for i, v in enumerate(x)) / (n * s)
    assert gini(preds, 6, k=2) == pytest.approx(g)
    assert gini(np.array([[0], [1], [2]]), 3, k=1) == pytest.approx(0.0)  # 完全均匀
    # top-3 的 L1：[0,0,1] -> 2/3；[0,0,1] -> 2/3；[0,2] -> 2/2
    assert diversity(preds, item_l1, k=3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert diversity(preds, item_l1, k=1) == 1.0
    calc = MetricsCalculator(item_l1=item_l1)
    calc.add_batch(preds[:2], [1, 5])
    calc.add_batch(preds[2:, :2], [4])  # 各批的 K 不同
    m = calc.compute(k_values=[2, 3])
    assert m["coverage@2"] == pytest.approx(3 / 6) and m["gini@2"] == pytest.approx(g)
    assert m["diversity@3"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    calc.reset()
    with pytest.raises(ValueError, match="no batches"):
        calc.compute()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="3 users but ground_truth has 2"):
        recall_at_k([[1], [2], [3]], [1, 2], 1)
    with pytest.raises(ValueError, match=r"ground_truth\[1\]"):
        recall_at_k([[1], [2]], [1, "x"], 1)
    with pytest.raises(ValueError, match="k must be a positive"):
        recall_at_k([[1]], [1], 0)
    with pytest.raises(ValueError, match="outside item_l1"):
        diversity([[1, 9]], [0, 1], k=2)


def test_make_compute_metrics_with_eval_prediction():
    from transformers import EvalPrediction

    fn = make_compute_metrics(k_values=(1, 2), num_items=10)
    # Trainer 跨批拼接时用 -100 补齐较短的预测
    ep = EvalPrediction(predictions=np.array([[3, 1], [2, -100]]), label_ids=np.array([1, 2]))
    m = fn(ep)
    assert m["recall@1"] == 0.5 and m["recall@2"] == 1.0
    assert m["coverage@2"] == pytest.approx(3 / 10)


def test_evaluate_metric_offline(tmp_path):
    from ugt_hf.metrics import RecommendationMetrics

    metric = RecommendationMetrics(num_items=8, cache_dir=str(tmp_path))
    metric.add_batch(predictions=[[1, 2, 3], [4, 5, 6]], references=[1, 5])
    metric.add_batch(predictions=[[7]], references=[-1])
    m = metric.compute(k_values=[1, 3])
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2) / 3)
    assert m["coverage@1"] == pytest.approx(3 / 8)


def test_gini_without_num_items_uses_the_items_seen():
    calc = MetricsCalculator()
    calc.add_batch([[0, 0], [0, 1]], [0, 5])  # 见过 0、1（推荐）与 5（目标）：3 个物品，次数 [3, 1, 0]
    m = calc.compute(k_values=[1])
    x, n = [0, 1, 3], 3
    assert m["gini"] == pytest.approx(sum((2 * (i + 1) - n - 1) * v for i, v in enumerate(x)) / (n * sum(x)))
    assert "gini@1" not in m and "coverage@1" not in m
    with_size = MetricsCalculator(num_items=4)
    with_size.add_batch([[0, 0], [0, 1]], [0, 5])
    assert "gini" not in with_size.compute(k_values=[1])  # 知道目录大小时只有 gini@k（输出与以前相同）


def test_triple_packing_is_the_catalogue_rule_and_equals_the_old_shifts():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 1 << 21, size=(1000, 3), dtype=np.int64)
    old = (t[:, 0] << 42) | (t[:, 1] << 21) | t[:, 2]
    assert np.array_equal(pack_triples(t, METRICS_RADIX), old)
    cat = ItemCatalogue(np.array([[0, 1, 2], [1, 0, 0], [1, 1, 1]]), vocab_sizes=[2, 2, 3])
    keys = cat.pack(cat.triples)
    assert keys.tolist() == [(0 * 2 + 1) * 3 + 2, (1 * 2 + 0) * 3 + 0, (1 * 2 + 1) * 3 + 1]
    assert cat.lookup(cat.triples).tolist() == [0, 1, 2]
