"""benchmarks/quality.py 的纯函数：验证曲线与阶段 3 的 DPO 曲线从 stage_summary.json 读出。"""

import json

from _benchmarks import load_benchmark

quality = load_benchmark("quality")


def test_dpo_curve_keeps_rewards_losses_and_level_movement(tmp_path):
    history = [
        {"loss": 2.0, "dpo_loss": 0.69, "ntp_loss": 1.9, "rewards/margins": 0.01, "rewards/accuracies": 0.55,
         "logps_delta/rejected_l1": -0.2, "learning_rate": 1e-4, "step": 10, "epoch": 0.5},
        {"train_loss": 1.8, "step": 20, "epoch": 1.0},  # HF 的训练总结，不是 DPO 日志步
        {"loss": 1.7, "dpo_loss": 0.5, "ntp_loss": 1.8, "rewards/margins": 0.4, "rewards/accuracies": 0.8,
         "step": 20, "epoch": 1.0},
    ]
    (tmp_path / "stage_summary.json").write_text(json.dumps({"log_history": history}))
    curve = quality.dpo_curve(tmp_path)
    assert [c["step"] for c in curve] == [10, 20]
    assert curve[0] == {"step": 10, "epoch": 0.5, "loss": 2.0, "dpo_loss": 0.69, "ntp_loss": 1.9,
                        "rewards/margins": 0.01, "rewards/accuracies": 0.55, "logps_delta/rejected_l1": -0.2}
    assert quality.dpo_curve(tmp_path / "missing") == []


def test_load_peer_checks_dataset_and_fields(tmp_path):
    import json

    import pytest

    good = {"dataset": "beauty", "git_commit": "abc", "config": {}, "best_epoch": 3, "epochs_run": 8,
            "wall_seconds": {"total": 1.0}, "valid": {}, "test": {"history_allowed": {}, "history_masked": {}}}
    path = tmp_path / "peer.json"
    path.write_text(json.dumps(good))
    assert quality.load_peer(path, "beauty")["best_epoch"] == 3
    with pytest.raises(SystemExit, match="'dataset' is 'beauty', expected 'ml-100k'"):
        quality.load_peer(path, "ml-100k")
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "test"}))
    with pytest.raises(SystemExit, match="missing field 'test'"):
        quality.load_peer(path, "beauty")


def test_rating_breakdown_hand_computed():
    import math

    # 名次（0 起，-1 = 不在前 10）：喜欢组 [0, 3, -1]，中性组 [-1]，不喜欢组 [1]
    rank = [0, 3, -1, -1, 1]
    ratings = [5, 4, 4.0, 3, 1]
    out = quality.rating_breakdown(rank, ratings)
    liked = out["liked (>= 4)"]
    assert liked["num_users"] == 3
    assert liked["recall@10"] == 2 / 3
    assert math.isclose(liked["ndcg@10"], (1.0 + 1.0 / math.log2(5)) / 3)
    assert out["neutral (3)"] == {"num_users": 1, "recall@10": 0.0, "ndcg@10": 0.0}
    assert out["disliked (<= 2)"]["recall@10"] == 1.0
    assert math.isclose(out["disliked (<= 2)"]["ndcg@10"], 1.0 / math.log2(3))
    assert quality.rating_breakdown([2], [5], k_values=(1,))["liked (>= 4)"]["recall@1"] == 0.0


def test_read_ml100k_ratings(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t1\t891717742\n")
    assert quality.read_ml100k_ratings(path) == {("196", "242"): 3.0, ("186", "302"): 1.0}
