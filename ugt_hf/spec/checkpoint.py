"""规格 11.6 的 `CheckpointManager`：保存 / 加载 / 清理检查点（save_dir 下的 checkpoint-<step>/）。

不自己实现存储：写入走 `ugt_hf.training.checkpointing` 的原子提交（先写 .staging-*，写完 rename），
完整性判断与最新检查点用它的 `list_checkpoints` / `get_last_checkpoint`（只认含 trainer_state.json 的目录），
轮转用 transformers 的 `rotate_checkpoints`（最佳检查点不删），加载前做同样的 pickle 安全检查并用 weights_only。
训练器自己的检查点（UGTTrainer / 规格 Trainer 的 save_checkpoint）是 HF 格式，不经过这里。
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional

import torch
from transformers.trainer_utils import rotate_checkpoints

from ugt_hf.training import checkpointing as ckpt

__all__ = ["CheckpointManager"]

CHECKPOINT_FILE = "checkpoint.pt"  # 规格 trainer.save_checkpoint 的文件名
BEST_FILE = "best_checkpoint.json"  # save_dir 下记录最佳检查点的位置


def _plain(value: Any) -> Any:
    """配置对象 → dict，使检查点能用 weights_only=True 加载（规格的检查点 dict 里有 "config"）。"""
    if hasattr(value, "to_dict") and not torch.is_tensor(value):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


class CheckpointManager:
    """
    Args:
        save_dir: 检查点根目录；每个检查点是 save_dir/checkpoint-<step>/checkpoint.pt
        max_checkpoints: 最多保留的检查点数（None = 不清理）
        keep_best: 清理时保留最佳检查点（save(..., is_best=True) 记下的那个；与 HF 的 save_total_limit 一样计入上限）
    """

    def __init__(self, save_dir: str, max_checkpoints: Optional[int] = 3, keep_best: bool = True):
        if max_checkpoints is not None and int(max_checkpoints) < 1:
            raise ValueError(f"max_checkpoints must be >= 1 or None, got {max_checkpoints!r}")
        self.save_dir = os.path.abspath(str(save_dir))  # 与 rotate_checkpoints 的路径比较需要同一形式
        self.max_checkpoints = None if max_checkpoints is None else int(max_checkpoints)
        self.keep_best = bool(keep_best)

    # ------------------------------------------------------------------ 保存
    def save(self, checkpoint: Mapping[str, Any], path: Optional[str] = None, step: Optional[int] = None,
             is_best: bool = False) -> str:
        """原子地写一个检查点，返回它的目录。

        Args:
            checkpoint: 要保存的 dict（state_dict、步数等；配置对象转成 dict）
            path: 目标目录；None 时为 save_dir/checkpoint-<step>
            step: 训练步数（path 为 None 时必需；也写进 trainer_state.json 作为“完整”标记）
            is_best: 记为最佳检查点（清理时保留，load_best 返回它）
        """
        if path is None:
            if step is None:
                raise ValueError("CheckpointManager.save: give `path` or `step`")
            path = os.path.join(self.save_dir, f"{ckpt.CHECKPOINT_PREFIX}-{int(step)}")
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = ckpt.staging_dir_for(path)
        if os.path.exists(staging):
            ckpt.clean_stale_staging(os.path.dirname(path))
        os.makedirs(staging)
        torch.save({k: _plain(v) for k, v in checkpoint.items()}, os.path.join(staging, CHECKPOINT_FILE))
        # trainer_state.json 最后写：它的存在就是“完整”的标志（同 UGTTrainer 的检查点）
        _write_json_atomic(os.path.join(staging, ckpt.TRAINER_STATE_FILE), {"global_step": step})
        ckpt.commit_staging(staging, path)
        if is_best:
            os.makedirs(self.save_dir, exist_ok=True)
            _write_json_atomic(os.path.join(self.save_dir, BEST_FILE), {"path": path, "step": step})
        self._rotate()
        return path

    def _rotate(self) -> None:
        if self.max_checkpoints is None or not os.path.isdir(self.save_dir):
            return
        best = self.best_path() if self.keep_best else None
        rotate_checkpoints(self.save_dir, save_total_limit=self.max_checkpoints, best_model_checkpoint=best,
                           use_mtime=False)

    # ------------------------------------------------------------------ 加载
    def load(self, path: str) -> Dict[str, Any]:
        """加载 path（检查点目录或其中的 checkpoint.pt）；先做 pickle 安全检查，再 weights_only 加载。"""
        file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"CheckpointManager.load: no {CHECKPOINT_FILE} at {path}")
        ckpt.verify_checkpoint_files(os.path.dirname(os.path.abspath(file)))
        return torch.load(file, map_location="cpu", weights_only=True)

    def latest_path(self) -> Optional[str]:
        """save_dir 下步数最大的完整检查点；半成品（.staging-*）不算。"""
        return ckpt.get_last_checkpoint(self.save_dir)

    def best_path(self) -> Optional[str]:
        file = os.path.join(self.save_dir, BEST_FILE)
        if not os.path.isfile(file):
            return None
        with open(file, encoding="utf-8") as f:
            path = json.load(f).get("path")
        return path if path and os.path.isdir(path) else None

    def load_latest(self) -> Optional[Dict[str, Any]]:
        path = self.latest_path()
        return None if path is None else self.load(path)

    def load_best(self) -> Optional[Dict[str, Any]]:
        path = self.best_path()
        return None if path is None else self.load(path)
