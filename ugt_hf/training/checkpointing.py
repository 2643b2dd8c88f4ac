"""检查点加固：原子写入（临时目录 + rename）、只选完整检查点、拒绝不安全的 pickle。

为什么需要（transformers 5.23 的不足）：
- `Trainer._save_checkpoint` 直接写进 `checkpoint-N/`；进程在写到一半时被杀，留下的半成品目录名与完整的一样，
  `get_last_checkpoint` 只按目录名挑选，`resume_from_checkpoint=True` 会选中它然后在加载时崩溃。
  这里先写到 `.staging-checkpoint-N-*`（不以 `checkpoint-` 开头，既不匹配 `get_last_checkpoint` 的正则，
  也不进入 `sort_checkpoints` 的 glob 与轮转），写完 fsync 后一次 `os.rename` 成为 `checkpoint-N`。
- `Trainer._save` 用 `torch.save(self.args)` 写 `training_args.bin`（pickle，反序列化可执行任意代码）。
  我们不写它，改写 JSON（`training_args.json`）。
- HF 在非 DeepSpeed 路径上已用 `torch.load(weights_only=True)` 读 optimizer/scheduler/scaler/rng；
  这里在加载前再做一次静态检查（`torch.serialization.get_unsafe_globals_in_checkpoint`，不执行 pickle），
  把失败变成指明文件名的清晰错误，而不是深处的 UnpicklingError。
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from typing import Iterable, List, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"  # 与 transformers.trainer_utils.PREFIX_CHECKPOINT_DIR 一致
STAGING_PREFIX = ".staging-"  # 半成品目录前缀：.staging-checkpoint-N-<tag>
TRASH_PREFIX = ".trash-"  # 覆盖同名检查点时旧目录先改名到这里再删除
TRAINER_STATE_FILE = "trainer_state.json"
ARGS_JSON_FILE = "training_args.json"  # 代替 HF 的 pickle 版 training_args.bin
PICKLED_ARGS_FILE = "training_args.bin"
# 会被 torch.load 的扩展名；safetensors / json 不经过 pickle
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")

_RE_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


class UnsafeCheckpointError(RuntimeError):
    """检查点中有文件在反序列化时可能执行代码（或不是 torch.save 的 zip 格式），拒绝加载。"""


# ---------------------------------------------------------------- 选择检查点
def is_complete_checkpoint(path: str) -> bool:
    """完整检查点：目录名是 checkpoint-N，且含 trainer_state.json（我们最后写它、再整体 rename）。"""
    name = os.path.basename(os.path.normpath(path))
    return (
        _RE_CHECKPOINT.match(name) is not None
        and os.path.isdir(path)
        and os.path.isfile(os.path.join(path, TRAINER_STATE_FILE))
    )


def list_checkpoints(folder: str) -> List[str]:
    """folder 下所有完整检查点，按步数升序；半成品（.staging-*）与缺 trainer_state.json 的目录被忽略。"""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _RE_CHECKPOINT.match(name)
        path = os.path.join(folder, name)
        if m is not None and is_complete_checkpoint(path):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def get_last_checkpoint(folder: str) -> Optional[str]:
    """比 transformers 的同名函数多一条：只返回完整检查点（见模块说明）。"""
    ckpts = list_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def staging_dir_for(final_dir: str, tag: str = "") -> str:
    """final_dir 对应的半成品目录（同一父目录下，rename 才是原子的）。多进程时 tag 必须在各 rank 上一致。"""
    parent, name = os.path.split(os.path.normpath(final_dir))
    return os.path.join(parent, f"{STAGING_PREFIX}{name}{('-' + tag) if tag else ''}")


def clean_stale_staging(folder: str) -> List[str]:
    """删除上次崩溃留下的半成品与回收目录；返回删掉的路径。只应由主进程在训练开始时调用。"""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(STAGING_PREFIX) or name.startswith(TRASH_PREFIX):
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d incomplete checkpoint folder(s) left by an interrupted save: %s",
                       len(removed), removed)
    return removed


# ---------------------------------------------------------------- 原子提交
def _fsync_tree(path: str) -> None:
    """把目录内文件与目录项刷到磁盘：只防进程被杀时不需要，但断电时 rename 先于数据落盘会留下空文件。"""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # 某些平台不能打开目录
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_staging(staging: str, final_dir: str, fsync: bool = True) -> None:
    """把写完的 staging 目录原子地变成 final_dir。

    final_dir 已存在（同一步保存两次，例如信号触发的保存后又遇 epoch 末保存）时：旧目录先改名到 .trash-*，
    新目录 rename 到位后再删旧的；任一时刻磁盘上要么是旧的完整目录，要么是新的完整目录。
    """
    if fsync:
        _fsync_tree(staging)
    parent = os.path.dirname(os.path.normpath(final_dir))
    trash = None
    if os.path.exists(final_dir):
        trash = os.path.join(parent, TRASH_PREFIX + os.path.basename(os.path.normpath(final_dir)))
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final_dir, trash)
    os.rename(staging, final_dir)
    if fsync:
        _fsync_dir(parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------- 配置 JSON
def write_args_json(args, folder: str) -> str:
    """把解析后的完整配置写成 JSON（TrainingArguments.to_json_string 已处理枚举与不可序列化字段）。"""
    path = os.path.join(folder, ARGS_JSON_FILE)
    if hasattr(args, "to_json_string"):
        text = args.to_json_string()
    else:  # 普通 dataclass / dict
        text = json.dumps(getattr(args, "__dict__", args), indent=2, sort_keys=True, default=str)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def drop_pickled_args(folder: str) -> None:
    """删除 HF `_save` 写下的 pickle 版 training_args.bin（我们从不读取它，留着只会诱导别人 torch.load）。"""
    path = os.path.join(folder, PICKLED_ARGS_FILE)
    if os.path.isfile(path):
        os.remove(path)


# ---------------------------------------------------------------- 安全检查
def _allowed_extra_globals() -> set:
    """HF 的 rng_state.pth 含 numpy RNG 状态；`_load_rng_state` 用 safe_globals 放行这几个 numpy 符号，这里也放行。"""
    np_core = getattr(np, "_core", None) or np.core
    objs = [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    names = set()
    for o in objs:
        names.add(f"{o.__module__}.{o.__name__}")
    # numpy 2 的 _reconstruct 在 pickle 中可能以 numpy.core.multiarray 记录
    names.add("numpy.core.multiarray._reconstruct")
    names.add("numpy._core.multiarray._reconstruct")
    return names


def pickle_files_in(folder: str, skip: Iterable[str] = (PICKLED_ARGS_FILE,)) -> List[str]:
    """folder（递归）中会被 torch.load 的文件。training_args.bin 我们从不加载，默认跳过。"""
    skip = set(skip)
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if name in skip:
                continue
            if name.endswith(PICKLE_SUFFIXES):
                out.append(os.path.join(root, name))
    return out


def verify_checkpoint_files(folder: str) -> None:
    """静态检查 folder 中每个 pickle 类文件：必须是 torch.save 的 zip 格式，且只引用 weights_only 允许的符号。

    不执行任何 pickle 操作码；不通过时抛 UnsafeCheckpointError 并指明文件与符号。
    真正的加载仍用 weights_only=True（双保险）。
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    allowed = _allowed_extra_globals()
    for path in pickle_files_in(folder):
        if not zipfile.is_zipfile(path):
            raise UnsafeCheckpointError(
                f"{path}: refused to load: not a torch.save zip archive (a raw pickle can run code when loaded)"
            )
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as exc:  # 损坏的 zip / 缺 data.pkl
            raise UnsafeCheckpointError(f"{path}: refused to load: cannot be inspected safely ({exc})") from exc
        unsafe = [g for g in unsafe if g not in allowed]
        if unsafe:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it references objects that are not allowed when loading weights "
                f"({', '.join(sorted(unsafe))}); loading it could run arbitrary code"
            )
