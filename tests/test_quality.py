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
