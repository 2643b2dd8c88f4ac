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


# ---------------------------------------------------------------- 崩溃安全（#16）
def _staged(folder, step, text):
    """已写完的 staging 副本：.staging-checkpoint-N/checkpoint-N（与 CheckpointingMixin 的布局相同）。"""
    d = folder / f".staging-checkpoint-{step}" / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "a.txt").write_text(text)
    (d / "trainer_state.json").write_text("{}")
    return d


def _kill_at_rename(monkeypatch, n):
    """第 n 次 os.rename 之前“被杀”（抛出 SystemExit，之后的代码都不执行）。"""
    calls = {"n": 0}
    real = os.rename

    def rename(src, dst):
        calls["n"] += 1
        if calls["n"] == n:
            raise SystemExit("killed")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)


@pytest.mark.parametrize("new_copy_complete", [True, False])
def test_kill_between_the_two_renames_loses_nothing(tmp_path, monkeypatch, new_copy_complete):
    old = _complete(tmp_path, 4)
    (old / "a.txt").write_text("old")
    staged = _staged(tmp_path, 4, "new")
    if not new_copy_complete:
        os.remove(staged / "trainer_state.json")
    _kill_at_rename(monkeypatch, 2)  # 第 1 次：旧 -> .trash-；第 2 次：staging -> 正式名字
    with pytest.raises(SystemExit):
        ckpt.commit_staging(str(staged), str(old), fsync=False)
    monkeypatch.undo()
    assert not old.exists() and (tmp_path / ".trash-checkpoint-4").is_dir()  # 确实停在两次 rename 之间
    assert ckpt.get_last_checkpoint(str(tmp_path)) is None
    ckpt.clean_stale_staging(str(tmp_path))  # 下次启动
    assert ckpt.get_last_checkpoint(str(tmp_path)) == str(old)
    assert (old / "a.txt").read_text() == ("new" if new_copy_complete else "old")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_kill_during_deletion_never_leaves_a_complete_looking_folder(tmp_path, monkeypatch):
    _complete(tmp_path, 2)
    newest = _complete(tmp_path, 4)
    real_rmtree = ckpt.shutil.rmtree

    def dying_rmtree(path, *a, **kw):  # 删到一半被杀：rmtree 还没开始删就停
        raise SystemExit("killed")

    monkeypatch.setattr(ckpt.shutil, "rmtree", dying_rmtree)
    with pytest.raises(SystemExit):
        ckpt.remove_checkpoint(str(tmp_path / "checkpoint-2"))
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(ckpt.DELETING_PREFIX)]
    assert len(leftovers) == 1
    assert not (tmp_path / leftovers[0] / "trainer_state.json").exists()  # 完整性标志先删
    assert not ckpt.is_complete_checkpoint(str(tmp_path / leftovers[0]))
    assert ckpt.list_checkpoints(str(tmp_path)) == [str(newest)]
    ckpt.clean_stale_staging(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_stray_files_named_like_staging_are_removed(tmp_path):
    (tmp_path / ".staging-checkpoint-8").write_text("not a folder")
    (tmp_path / ".trash-checkpoint-3").write_text("x")
    _complete(tmp_path, 2)
    ckpt.clean_stale_staging(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    # commit 时正式名字上有一个同名文件：也能替换
    (tmp_path / "checkpoint-5").write_text("stray")
    staged = _staged(tmp_path, 5, "new")
    ckpt.commit_staging(str(staged), str(tmp_path / "checkpoint-5"), fsync=False)
    assert (tmp_path / "checkpoint-5" / "a.txt").read_text() == "new"


@pytest.mark.parametrize("limit,best", [(2, None), (1, 4), (2, 2), (3, 6), (1, None)])
def test_rotation_keeps_what_hf_keeps(tmp_path, limit, best):
    from transformers.trainer_utils import rotate_checkpoints as hf_rotate

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        for step in (2, 4, 6, 8, 10):
            _complete(folder, step)
    ckpt.rotate_checkpoints(str(ours), limit, str(ours / f"checkpoint-{best}") if best else None)
    hf_rotate(str(theirs), limit, str(theirs / f"checkpoint-{best}") if best else None)
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    assert len(os.listdir(ours)) < 5


def test_resolve_resume_point(tmp_path):
    assert ckpt.resolve_resume_point("auto", str(tmp_path)) is None  # 没有检查点：从头开始
    assert ckpt.resolve_resume_point(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match=f"no complete checkpoint found in output directory {tmp_path}"):
        ckpt.resolve_resume_point("true", str(tmp_path))
    _complete(tmp_path, 3)
    (tmp_path / "checkpoint-9").mkdir()  # 不完整
    for value in ("auto", True, "latest", "TRUE"):
        assert ckpt.resolve_resume_point(value, str(tmp_path)) == str(tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.resolve_resume_point(str(tmp_path / "checkpoint-9"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="folder not found"):
        ckpt.resolve_resume_point(str(tmp_path / "nope"), str(tmp_path))
