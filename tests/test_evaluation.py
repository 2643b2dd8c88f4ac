"""evaluation.py：全目录 beam search 排序评估与流行度基线（与手算一致）。"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _tiny_artifacts import tiny_data_dir

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.data.datadir import DataDir
from ugt_hf.evaluation import (
    TransitionPrior,
    evaluate_ranking,
    evaluate_with_prior,
    format_table,
    main,
    popularity_baseline,
    ranking_metrics,
    select_prior_weight,
    transition_baseline,
)
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation


def _model(meta):
    torch.manual_seed(0)
    return UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=meta["vocab_sizes"], d_model=16, num_heads=2,
                                                    num_encoder_layers=1, num_decoder_layers=1, ffn_dim=32,
                                                    num_experts=1, num_experts_per_tok=1))


def _first_labels(table, catalogue):
    cols = ("labels_l1", "labels_l2", "labels_l3")
    lab = np.stack([np.array([r[0] for r in table.column(c).to_pylist()]) for c in cols], 1)
    return catalogue.lookup(torch.as_tensor(lab)).numpy()


def test_popularity_baseline_matches_hand_count():
    d = DataDir(tiny_data_dir())
    cat = d.catalogue()
    train = pq.read_table(d.split_path("train"))
    counts = np.bincount(_first_labels(train, cat), minlength=cat.num_items)
    top10 = set(np.argsort(-counts, kind="stable")[:10].tolist())
    targets = _first_labels(pq.read_table(d.split_path("test")), cat)
    expected = float(np.mean([t in top10 for t in targets]))
    got = popularity_baseline(d, "test", k_values=[10])
    assert got["recall@10"] == pytest.approx(expected)
    assert got["num_users"] == len(targets)


def test_ranking_metrics_hand_example():
    d = tiny_data_dir()
    cat = DataDir(d).catalogue()
    preds = np.array([[3, 1, 2], [0, 5, 4]])
    m = ranking_metrics(preds, np.array([1, 7]), cat, k_values=[1, 3])
    assert m["recall@1"] == 0.0 and m["recall@3"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx(0.5 / np.log2(3))
    assert m["mrr"] == pytest.approx(0.25)


def test_evaluate_ranking_returns_only_catalogue_items_and_respects_exclusion(tmp_path):
    d = tiny_data_dir()
    meta = DataDir(d).meta
    model = _model(meta)
    m = evaluate_ranking(model, d, "valid", k_values=[5, 10], num_beams=10)
    assert 0.0 <= m["recall@10"] <= 1.0 and m["recall@5"] <= m["recall@10"]
    assert m["num_users"] == meta["splits"]["valid"]
    m2 = evaluate_ranking(model, d, "valid", k_values=[10], num_beams=10, exclude_history=True, max_samples=50)
    assert m2["exclude_history"] == 1.0 and m2["num_users"] == 50
    # CLI：模型目录
    model.save_pretrained(tmp_path / "m")
    assert main(["--model", str(tmp_path / "m"), "--data", str(d), "--split", "valid", "--k_values", "5",
                 "--num_beams", "10", "--max_samples", "20", "--popularity"]) == 0
    assert main(["--model", str(tmp_path / "missing"), "--data", str(d)]) == 2


def test_evaluate_cli_prints_table_or_json(tmp_path, capsys):
    """默认打印对齐的表（4 位小数、num_users 是整数）；--json 给机器读的完整精度。"""
    d = tiny_data_dir()
    _model(DataDir(d).meta).save_pretrained(tmp_path / "m")
    argv = ["--model", str(tmp_path / "m"), "--data", str(d), "--split", "valid", "--k_values", "5",
            "--num_beams", "10", "--max_samples", "20", "--popularity"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["metric", "model", "popularity"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["num_users"][0] == "20" and rows["exclude_history"] == ["false", "false"]
    assert all(len(v.split(".")[1]) == 4 for v in rows["recall@5"])
    assert len({len(line) for line in lines}) == 1  # 列对齐：每行一样长
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["num_users"] == 20 and f"{out['model']['recall@5']:.4f}" == rows["recall@5"][0]
    # --prior_weight 0：融合行就是模型本身；负权重是一行清楚的错误
    assert main(argv + ["--json", "--prior_weight", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model + transition prior (w=0)"]["recall@5"] == pytest.approx(out["model"]["recall@5"])
    for bad in ("-1", "inf"):
        assert main(argv + ["--prior_weight", bad]) == 2
        assert "--prior_weight must be a finite number >= 0" in capsys.readouterr().err


def test_format_table_handles_missing_cells():
    text = format_table({"model": {"recall@5": 0.123456789, "num_users": 2000.0},
                         "transition": {"recall@5": 0.5, "mrr": 1 / 3}})
    assert text.splitlines()[1].split() == ["recall@5", "0.1235", "0.5000"]
    assert text.splitlines()[2].split() == ["num_users", "2000", "-"]
    assert text.splitlines()[3].split() == ["mrr", "-", "0.3333"]


def test_evaluate_missing_model_folder_names_it_and_close_names(tmp_path, capsys, monkeypatch):
    """`ugt evaluate --model run/best_modl`：说目录不存在并建议 best_model，而不是 Hub 的 repo id 错误。"""
    d = tiny_data_dir()
    _model(DataDir(d).meta).save_pretrained(tmp_path / "run" / "best_model")
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "run/best_modl", "--data", str(d)]) == 2
    out = capsys.readouterr().err
    assert "model folder run/best_modl does not exist (did you mean 'run/best_model'?)" in out
    assert "Repo id" not in out and "Traceback" not in out
    assert main(["--model", "run", "--data", str(d)]) == 2  # 运行目录本身：提示其中的 best_model
    assert "without config.json" in capsys.readouterr().err
    assert main(["--model", "run/best_model", "--data", "dta"]) == 2
    assert "data folder dta does not exist" in capsys.readouterr().err


def test_missing_meta_is_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ugt prepare"):
        DataDir(tmp_path).meta


def test_transition_baseline_hand_example(tmp_path):
    from ugt_hf.data.prepare import prepare

    # S3-Rec 格式：训练前缀 = 序列去掉最后两个。训练里的相邻对：
    #   1->2 两次、1->3 一次；3->2、3->1 各一次（同次数按训练标签流行度：2 出现 3 次 > 1 出现 1 次）；2->3 三次
    src = tmp_path / "seq.txt"
    src.write_text("1 1 2 3 1 2\n2 1 3 2 3 2\n3 2 3 1 5 6\n4 1 2 3 2 4\n")
    d = tmp_path / "data"
    prepare(str(d), source="s3rec", input=str(src), encoder_max_length=10, progress=False, log=lambda *a: None)
    # 测试：用户 1 最后 = 1 -> [2, 3]，目标 2 命中第 1 名；用户 2 最后 = 3 -> [2, 1]，目标 2 命中第 1 名；
    # 用户 3 最后 = 5（无后继，退回流行度 3, 2, 1）目标 6 未中；用户 4 最后 = 2 -> [3, 2, 1]，目标 4 未中
    m = transition_baseline(d, "test", k_values=[1, 3])
    assert m["recall@1"] == pytest.approx(0.5) and m["recall@3"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5) and m["num_users"] == 4
    # 去掉历史物品后：用户 1、2 的目标 2 在历史里，必不命中；用户 3、4 只剩零流行度物品，按物品号补位
    # （用户 3：[4, 6] 命中第 2 名；用户 4：后继 3 在历史里，补位 [4, 5, 6] 命中第 1 名）
    ex = transition_baseline(d, "test", k_values=[1, 3], exclude_history=True)
    assert ex["recall@1"] == pytest.approx(0.25) and ex["recall@3"] == pytest.approx(0.5)
    # 它与流行度基线确实不同（流行度对所有人推 [3, 2, 1]）
    assert popularity_baseline(d, "test", k_values=[1])["recall@1"] == 0.0


def test_transition_prior_scores_hand_example():
    # 两阶、4 个物品：一阶 (0->1) 3 次、(2->1) 1 次；二阶 (0->1) 1 次
    prior = TransitionPrior([np.array([0 * 4 + 1, 2 * 4 + 1]), np.array([0 * 4 + 1])],
                            [np.array([3, 1]), np.array([1])], num_items=4)
    history = np.array([[0, 0], [2, -1], [-1, -1]])  # 第 0 列 = 最近的物品；-1 = 缺位
    candidates = np.array([[1, 3, -1], [1, 0, 2], [1, 2, 3]])
    got = prior.scores(history, candidates)
    expected = np.array([[np.log(4) + np.log(2), 0, 0], [np.log(2), 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(got, expected)


def _raw_index(d):
    items = pq.read_table(d / "items.parquet", columns=["item_id", "item_index"]).to_pylist()
    return {r["item_id"]: r["item_index"] for r in items}


def test_transition_prior_counts_pairs_k_steps_apart_in_the_training_prefixes(tmp_path):
    from ugt_hf.data.prepare import prepare

    seqs = ["1 1 2 3 1 2", "2 1 3 2 3 2", "3 2 3 1 5 6", "4 1 2 3 2 4"]
    src = tmp_path / "seq.txt"
    src.write_text("".join(f"{i + 1} {s}\n" for i, s in enumerate(seqs)))
    d = tmp_path / "data"
    prepare(str(d), source="s3rec", input=str(src), encoder_max_length=10, progress=False, log=lambda *a: None)
    idx = _raw_index(d)
    prior = TransitionPrior.from_data(d, window=2)
    # 逐条数：训练前缀 = 序列去掉最后两个；阶 k 的键 = (前缀里位置 t-k 的物品, 位置 t 的物品)
    for k in (1, 2):
        expected = {}
        for s in seqs:
            prefix = [idx[x] for x in s.split()[:-2]]
            for t in range(k, len(prefix)):
                key = prefix[t - k] * prior.num_items + prefix[t]
                expected[key] = expected.get(key, 0) + 1
        assert dict(zip(prior.keys[k - 1].tolist(), prior.counts[k - 1].tolist())) == expected
    # 测试划分的历史：每个用户最近两个物品（用户 1 的历史 = 1 1 2 3 1）
    table = DataDir(d).read_table("test", ["encoder_l1_ids", "encoder_l2_ids", "encoder_l3_ids"])
    hist = prior.history(table, DataDir(d).catalogue())
    assert hist[0].tolist() == [idx["1"], idx["3"]]


def test_evaluate_with_prior_weight_zero_is_the_model_and_selection_picks_the_best(tmp_path):
    d = DataDir(tiny_data_dir())
    model = _model(d.meta)
    prior = TransitionPrior.from_data(d, window=2)
    grid = evaluate_with_prior(model, d, prior, [0.0, 2.0], split="test", k_values=[5, 10], num_beams=10)
    plain = evaluate_ranking(model, d, split="test", k_values=[5, 10], num_beams=10)
    for key in ("recall@5", "recall@10", "ndcg@10", "mrr"):
        assert grid[0.0][key] == pytest.approx(plain[key])
    assert grid[2.0]["prior_weight"] == 2.0
    # 未训练的模型分数接近均匀：计数先验必然改变排序
    assert grid[2.0]["recall@10"] != grid[0.0]["recall@10"] or grid[2.0]["ndcg@10"] != grid[0.0]["ndcg@10"]
    # 屏蔽历史 + 只取前几个用户：候选与历史表的行对齐，权重 0 仍等于模型本身
    masked = evaluate_with_prior(model, d, prior, [0.0], split="test", k_values=[5, 10], num_beams=10,
                                 exclude_history=True, max_samples=7)[0.0]
    plain_masked = evaluate_ranking(model, d, split="test", k_values=[5, 10], num_beams=10, exclude_history=True,
                                    max_samples=7)
    assert masked["num_users"] == 7 and masked["exclude_history"] == 1.0
    for key in ("recall@10", "ndcg@10", "mrr"):
        assert masked[key] == pytest.approx(plain_masked[key])
    hand = {0.0: {"recall@10": 0.2, "ndcg@10": 0.1}, 1.0: {"recall@10": 0.3, "ndcg@10": 0.1},
            3.0: {"recall@10": 0.3, "ndcg@10": 0.2}, 5.0: {"recall@10": 0.3, "ndcg@10": 0.2},
            7.0: {"recall@10": 0.4, "ndcg@10": 0.09}}
    # 7 的 recall 最高但 ndcg 低于模型本身（权重 0），不选；其余 recall 并列时看 ndcg，再并列取较小的权重
    assert select_prior_weight(hand) == 3.0
    # 每个正权重都让某一项变差：留在 0（演示数据的情形）
    assert select_prior_weight({0.0: {"recall@10": 0.79, "ndcg@10": 0.59},
                                0.5: {"recall@10": 0.794, "ndcg@10": 0.58}}) == 0.0
    # 没有权重 0 时不设下限
    no_zero = {1.0: {"recall@10": 0.3, "ndcg@10": 0.1}, 2.0: {"recall@10": 0.2, "ndcg@10": 0.3}}
    assert select_prior_weight(no_zero) == 1.0
    with pytest.raises(ValueError, match="recall@10"):
        select_prior_weight({0.0: {"recall@5": 0.1}})
