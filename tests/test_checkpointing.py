"""checkpointing：只选完整检查点、原子提交、静态拒绝不安全 pickle。"""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint as hf_get_last_checkpoint

from ugt_hf.training import checkpointing as ckpt


def _complete(folder, step):
    d = folder / f"checkpoint-{step}"
    d.mkdir()
    (d / "trainer_state.json").write_text("{}")
    return d


def test_last_checkpoint_ignores_staging_and_incomplete(tmp_path):
    _complete(tmp_path, 2)
    _complete(tmp_path, 10)
    (tmp_path / "checkpoint-12").mkdir()  # 缺 trainer_state.json（例如 HF 原版写到一半）
    (tmp_path / ".staging-checkpoint-14").mkdir()
    (tmp_path / "checkpoint-16.tmp-abc").mkdir()
    assert ckpt.get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert hf_get_last_checkpoint(str(tmp_path)).endswith("checkpoint-12")  # HF 的版本会选中半成品
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == ["checkpoint-2", "checkpoint-10"]
    removed = ckpt.clean_stale_staging(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".staging-checkpoint-14"]


def test_commit_staging_replaces_existing_atomically(tmp_path):
    old = _complete(tmp_path, 4)
    (old / "a.txt").write_text("old")
    staging = tmp_path / ".staging-checkpoint-4"
    staging.mkdir()
    (staging / "a.txt").write_text("new")
    (staging / "trainer_state.json").write_text("{}")
    ckpt.commit_staging(str(staging), str(old))
    assert (old / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_verify_accepts_hf_style_files_and_refuses_unsafe(tmp_path):
    d = _complete(tmp_path, 1)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, d / "rng_state.pth")  # HF 的 rng 文件含 numpy 状态：必须放行
    torch.save(torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))]).state_dict(), d / "optimizer.pt")
    ckpt.verify_checkpoint_files(str(d))

    torch.save(_Evil(), d / "scheduler.pt")
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"scheduler\.pt.*getcwd"):
        ckpt.verify_checkpoint_files(str(d))
    os.remove(d / "scheduler.pt")
    with open(d / "extra.bin", "wb") as f:
        pickle.dump({"x": 1}, f)  # 原始 pickle（非 zip）：无法静态检查，拒绝
    with pytest.raises(ckpt.UnsafeCheckpointError, match="not a torch.save zip"):
        ckpt.verify_checkpoint_files(str(d))
    os.remove(d / "extra.bin")
    torch.save(_Evil(), d / "training_args.bin")  # 从不加载的文件：跳过
    ckpt.verify_checkpoint_files(str(d))


def test_args_json_written_and_pickle_dropped(tmp_path):
    from transformers import TrainingArguments

    (tmp_path / "training_args.bin").write_bytes(b"x")
    ckpt.drop_pickled_args(str(tmp_path))
    path = ckpt.write_args_json(TrainingArguments(output_dir=str(tmp_path), report_to="none"), str(tmp_path))
    assert not (tmp_path / "training_args.bin").exists()
    assert '"output_dir"' in open(path).read()
