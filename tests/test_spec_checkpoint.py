"""ugt_hf/spec/checkpoint.py：CheckpointManager 的保存、轮转（最佳保留）、最新/最佳加载与安全加载。"""

import dataclasses
import os

import pytest
import torch

from ugt_hf.spec.checkpoint import CheckpointManager
from ugt_hf.training.checkpointing import UnsafeCheckpointError


@dataclasses.dataclass
class _Cfg:
    lr: float = 0.1


def test_rotation_latest_and_best(tmp_path):
    mgr = CheckpointManager(str(tmp_path / "ckpts"), max_checkpoints=2, keep_best=True)
    for step in range(1, 6):
        path = mgr.save({"step": step, "w": torch.full((2,), float(step)), "config": _Cfg()}, step=step,
                        is_best=(step == 2))
        assert path.endswith(f"checkpoint-{step}")
    kept = sorted(os.listdir(tmp_path / "ckpts"))
    assert kept == ["best_checkpoint.json", "checkpoint-2", "checkpoint-5"]  # 最佳计入上限（同 HF save_total_limit）
    assert mgr.load_latest()["step"] == 5
    best = mgr.load_best()
    assert best["step"] == 2 and torch.equal(best["w"], torch.full((2,), 2.0))
    assert best["config"] == {"lr": 0.1}  # 配置对象存成 dict，weights_only 可加载


def test_empty_and_unsafe(tmp_path):
    mgr = CheckpointManager(str(tmp_path / "none"))
    assert mgr.load_latest() is None and mgr.load_best() is None
    with pytest.raises(ValueError, match="give `path` or `step`"):
        mgr.save({"a": 1})
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"obj": _Cfg()}, bad / "checkpoint.pt")  # 含自定义类：加载时可能执行代码
    with pytest.raises(UnsafeCheckpointError):
        mgr.load(str(bad))
