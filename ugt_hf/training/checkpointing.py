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

from ..errors import check_sharding_engine
from .callbacks import GracefulShutdownCallback

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"  # 与 transformers.trainer_utils.PREFIX_CHECKPOINT_DIR 一致
STAGING_PREFIX = ".staging-"  # 半成品目录前缀：.staging-checkpoint-N-<tag>
TRASH_PREFIX = ".trash-"  # 覆盖同名检查点时旧目录先改名到这里再删除（完整的旧副本，可恢复）
DELETING_PREFIX = ".deleting-"  # 删除检查点时先改名到这里（删到一半，不可恢复）
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


def _remove_path(path: str) -> None:
    """删除 path：目录递归删除；同名的普通文件 / 符号链接直接删除（rmtree 对它们会抛 NotADirectoryError）。"""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):  # ignore_errors 吞掉了权限之类的错误：再试一次让它抛出
            shutil.rmtree(path)


def remove_checkpoint(path: str) -> None:
    """删除一个检查点，任何时刻被杀都不会留下“看起来完整”的半截目录。

    先整体改名到 `.deleting-*`（一次 rename，正式名字立即消失，选择检查点的函数再也看不到它），
    再删完整性标志 trainer_state.json，最后递归删除；下次启动时 clean_stale_staging 删掉残留。
    """
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(os.path.normpath(path))
    doomed = os.path.join(parent, f"{DELETING_PREFIX}{name}-{os.getpid()}")
    _remove_path(doomed)
    os.rename(path, doomed)
    marker = os.path.join(doomed, TRAINER_STATE_FILE)
    if os.path.isfile(marker):
        os.remove(marker)
    _remove_path(doomed)


def _staged_copy(folder: str, name: str) -> Optional[str]:
    """name（checkpoint-N）已写完的 staging 副本：.staging-checkpoint-N*/checkpoint-N，且含完整性标志。"""
    for entry in sorted(os.listdir(folder)):
        if entry != f"{STAGING_PREFIX}{name}" and not entry.startswith(f"{STAGING_PREFIX}{name}-"):
            continue
        candidate = os.path.join(folder, entry, name)
        if os.path.isdir(candidate) and os.path.isfile(os.path.join(candidate, TRAINER_STATE_FILE)):
            return candidate
    return None


def recover_interrupted_commits(folder: str) -> List[str]:
    """commit_staging 在两次 rename 之间被杀时：正式目录不在，旧副本在 .trash-*，新副本写完在 staging 里。
    优先把新副本 rename 到位，没有完整的新副本就把旧副本改回去；返回恢复出的检查点路径。只应由主进程调用。"""
    restored: List[str] = []
    if not os.path.isdir(folder):
        return restored
    for entry in sorted(os.listdir(folder)):
        if not entry.startswith(TRASH_PREFIX):
            continue
        name = entry[len(TRASH_PREFIX):]
        final = os.path.join(folder, name)
        if _RE_CHECKPOINT.match(name) is None or os.path.lexists(final):
            continue  # 正式目录在：旧副本只是没来得及删
        trash = os.path.join(folder, entry)
        staged = _staged_copy(folder, name)
        if staged is not None:
            os.rename(staged, final)
        elif os.path.isdir(trash) and os.path.isfile(os.path.join(trash, TRAINER_STATE_FILE)):
            os.rename(trash, final)
        else:
            continue
        _fsync_dir(folder)
        restored.append(final)
        logger.warning("recovered %s from a save that was interrupted between its two renames", final)
    return restored


def clean_stale_staging(folder: str) -> List[str]:
    """训练开始时由主进程调用：先恢复两次 rename 之间被打断的替换（recover_interrupted_commits），
    再删除上次崩溃留下的半成品、回收与删除中的目录（同名的普通文件也删）；返回删掉的路径。"""
    removed: List[str] = []
    if not os.path.isdir(folder):
        return removed
    recover_interrupted_commits(folder)
    for name in sorted(os.listdir(folder)):
        if name.startswith((STAGING_PREFIX, TRASH_PREFIX, DELETING_PREFIX)):
            path = os.path.join(folder, name)
            _remove_path(path)
            removed.append(path)
    if removed:
        logger.warning("removed %d incomplete checkpoint folder(s) left by an interrupted save: %s",
                       len(removed), removed)
    return removed


def rotate_checkpoints(folder: str, save_total_limit: Optional[int], best_model_checkpoint: Optional[str] = None
                       ) -> List[str]:
    """与 transformers.trainer_utils.rotate_checkpoints 相同的保留规则（最新的与最佳的总是保留，
    其余按步数从旧到新删到 save_total_limit 个），但只数完整检查点，并经 remove_checkpoint 删除
    （HF 用 rmtree 原地删）。返回删掉的路径。"""
    if save_total_limit is None or save_total_limit <= 0:
        return []
    checkpoints = list_checkpoints(folder)
    if len(checkpoints) <= save_total_limit:
        return []
    protected = {os.path.normpath(checkpoints[-1])}
    if best_model_checkpoint:
        protected.add(os.path.normpath(best_model_checkpoint))
    keep = max(save_total_limit, len(protected))
    remaining, removed = len(checkpoints), []
    for path in checkpoints:
        if remaining <= keep:
            break
        if os.path.normpath(path) not in protected:
            remove_checkpoint(path)
            removed.append(path)
            remaining -= 1
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
    新目录 rename 到位后再删旧的。任一时刻至少有一份完整副本：两次 rename 之间被杀时旧副本在 .trash-*、
    新副本在 staging 里，下次启动由 recover_interrupted_commits 放回正式名字（clean_stale_staging 先调用它）。
    """
    if fsync:
        _fsync_tree(staging)
    parent = os.path.dirname(os.path.normpath(final_dir))
    trash = None
    if os.path.lexists(final_dir):
        trash = os.path.join(parent, TRASH_PREFIX + os.path.basename(os.path.normpath(final_dir)))
        _remove_path(trash)  # 上次留下的旧副本：正式目录还在，它不是唯一的完整副本
        os.rename(final_dir, trash)
    os.rename(staging, final_dir)
    if fsync:
        _fsync_dir(parent)
    if trash is not None:
        _remove_path(trash)


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


# ---------------------------------------------------------------- 训练器混入
def resolve_resume_point(value, output_dir: str) -> Optional[str]:
    """resume_from_checkpoint 的取值 -> 检查点路径或 None（从头训练）。

    True / "true" / "latest"：output_dir 里最新的完整检查点，没有就报错；"auto"：有就续训、没有就从头开始
    （`ugt pipeline` 重跑同一命令时用）；False / None / "false" / "no"：从头训练；其他字符串：检查点路径。
    """
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "latest"):
            value = True
        elif low in ("false", "no", "none", ""):
            value = None
        elif low == "auto":
            return get_last_checkpoint(output_dir)
    if value is True:
        found = get_last_checkpoint(output_dir)
        if found is None:
            raise ValueError(f"resume_from_checkpoint=true: no complete checkpoint found in output directory "
                             f"{output_dir} (use 'auto' to start from scratch when there is none)")
        return found
    if value is None or value is False:
        return None
    path = str(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"resume_from_checkpoint: folder not found: {path}")
    if not os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
        raise ValueError(f"resume_from_checkpoint: {path} is not a complete checkpoint (missing {TRAINER_STATE_FILE})")
    return path


class CheckpointingMixin:
    """两个训练器（UGTTrainer 与基于 TRL 的 UGTDPOTrainer）共用的检查点加固，放在 MRO 里 HF/TRL 训练器之前：
    `class UGTTrainer(CheckpointingMixin, Trainer)`。

    - 保存：HF 自己的 `Trainer._save_checkpoint` 写进 staging 目录，去掉 pickle 版 training_args.bin、写 JSON，
      再原子 rename；轮转只数完整检查点、删除时先改名（见 remove_checkpoint）。绕过 TRL 的 `_save_checkpoint`
      （它往 output_dir 写 TRL 自己的模型卡）。
    - 续训：resume_from_checkpoint=True 只选完整检查点；加载前静态拒绝不安全的 pickle；开始前恢复/清理半成品；
      已完成的运行再续训是空操作（HF 会多训一步再停，并覆盖之后的产物），`resumed_finished_run` 为 True。
    - 信号：安装 GracefulShutdownCallback（SIGTERM/SIGINT 保存后停止），`stopped_by_signal` 给出信号编号；
      被信号停下时不加载最佳模型、不删除任何检查点（HF 在 save_total_limit=1 时会删掉刚写的续训点）。
    子类实现 `_write_card(folder, force=False, **kw)` 在每次保存时写模型卡。
    """

    def __init__(self, *args, graceful_shutdown: bool = True, **kwargs):
        callbacks = list(kwargs.pop("callbacks", None) or [])
        self.shutdown_callback: Optional[GracefulShutdownCallback] = None
        if graceful_shutdown:
            found = next((c for c in callbacks if isinstance(c, GracefulShutdownCallback)), None)
            if found is None:
                found = GracefulShutdownCallback()
                callbacks.append(found)
            self.shutdown_callback = found
        self.resumed_finished_run = False
        self._staging_run_dir: Optional[str] = None
        super().__init__(*args, callbacks=callbacks, **kwargs)
        # 两个训练器都经过这里：accelerate 悄悄丢掉 FSDP 时（CPU、单进程）在训练前就报错
        check_sharding_engine(self.args, self.accelerator.state)

    @property
    def stopped_by_signal(self) -> Optional[int]:
        """上一次 train() 因 SIGTERM/SIGINT 停止时为信号编号，否则 None。"""
        return self.shutdown_callback.stopped_by_signal if self.shutdown_callback is not None else None

    # ------------------------------------------------------------------ 训练入口
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """resume_from_checkpoint 为 None 时取 args.resume_from_checkpoint；取值见 resolve_resume_point。"""
        if resume_from_checkpoint is None:
            resume_from_checkpoint = getattr(self.args, "resume_from_checkpoint", None)
        if self.args.should_save:
            clean_stale_staging(self.args.output_dir)  # 先恢复被打断的替换，再选续训点
        self.accelerator.wait_for_everyone()
        resume = resolve_resume_point(resume_from_checkpoint, self.args.output_dir)
        if resume is not None:
            verify_checkpoint_files(resume)
        self.resumed_finished_run = False
        return super().train(resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                             **kwargs)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        """续训点已到 max_steps：返回“所有 epoch 都已训完”，训练循环一步也不跑（HF 会再训一步才停）。"""
        epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                                     resume_from_checkpoint, trial)
        if resume_from_checkpoint is not None and max_steps > 0 and self.state.global_step >= max_steps:
            self.resumed_finished_run = True
            logger.warning("%s already reached max_steps (%d): nothing left to train", resume_from_checkpoint,
                           max_steps)
            return num_train_epochs, 0
        return epochs, steps

    def _finalize_training(self, trial, num_train_samples, start_time):
        """HF 的收尾（指标、on_train_end），但最佳模型的加载与 save_total_limit=1 时的删除由这里做：
        删除走 remove_checkpoint；被信号停下时两样都不做（那个检查点是续训点，不能删）。"""
        best = self.state.best_model_checkpoint
        interrupted = self.stopped_by_signal is not None
        if best is not None and self.args.load_best_model_at_end and not interrupted:
            self._load_best_model()
        self.state.best_model_checkpoint = None  # 让 HF 跳过它自己的加载与 rmtree
        try:
            output = super()._finalize_training(trial, num_train_samples, start_time)
        finally:
            self.state.best_model_checkpoint = best
        if best is not None and not interrupted and self.args.should_save and self.args.save_total_limit == 1:
            for path in list_checkpoints(self._get_output_dir(trial)):
                if os.path.normpath(path) != os.path.normpath(best):
                    remove_checkpoint(path)
        return output

    # ------------------------------------------------------------------ 保存
    def _save_checkpoint(self, model, trial) -> None:
        """HF 的 `_save_checkpoint` 原样执行，只是写进 staging 目录（见 `_write_checkpoint`），再原子 rename；
        最佳检查点的路径指向最终目录；轮转在 rename 之后按步数进行（rename 会改变 mtime）。"""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

        run_dir = self._get_output_dir(trial=trial)
        final_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if (
            self.args.save_strategy in [SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST]
            and self.state.best_global_step
        ):
            best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            # 最佳就是本步时目录还在 staging 里；rename 之后它就存在
            if self.state.best_global_step == self.state.global_step or os.path.exists(best_dir):
                self.state.best_model_checkpoint = best_dir
        self._write_checkpoint(final_dir, model=model, trial=trial)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)

    def _get_output_dir(self, trial) -> str:
        """写检查点期间（`_write_checkpoint`）HF 的 run 目录换成 staging 目录，其余时候不变。"""
        if getattr(self, "_staging_run_dir", None) is not None:
            return self._staging_run_dir
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """staging 目录马上要被 rename：推送等 `_write_checkpoint` 提交之后、对最终目录进行。"""
        if getattr(self, "_staging_run_dir", None) is not None:
            return None
        return super()._push_from_checkpoint(checkpoint_folder)

    def _write_checkpoint(self, final_dir: str, model=None, trial=None) -> None:
        """在 final_dir 原子地写一个完整检查点（所有 rank 都要调用；只有主进程提交 rename）。

        调用 HF 的 `Trainer._save_checkpoint`（权重、优化器、调度器、scaler、RNG、回调状态、trainer_state.json），
        run 目录临时指向 `.staging-<name>`，于是它写出 `.staging-<name>/checkpoint-N`；之后去掉 pickle 版
        training_args.bin、写 training_args.json、按最终路径重写 trainer_state.json（它的存在就是“完整”的标志，
        见 is_complete_checkpoint），最后整体 rename 成 final_dir。被杀在中途时只留下 staging。
        """
        from transformers import Trainer
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        staging_root = staging_dir_for(final_dir)
        if self.args.should_save:
            _remove_path(staging_root)  # 上次留下的半成品（或同名的普通文件）
        self.accelerator.wait_for_everyone()

        best_before = self.state.best_model_checkpoint
        self._staging_run_dir = staging_root
        try:
            Trainer._save_checkpoint(self, self.model_wrapped if model is None else model, trial)
        finally:
            self._staging_run_dir = None
        staged = os.path.join(staging_root, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        # HF 在 staging 里找最佳检查点时可能把它指向 staging 路径；换回调用方给定的最终路径
        self.state.best_model_checkpoint = best_before
        if self.args.should_save:
            drop_pickled_args(staged)
            write_args_json(self.args, staged)
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_FILE))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            commit_staging(staged, final_dir, fsync=getattr(self.args, "checkpoint_fsync", True))
            _remove_path(staging_root)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final_dir)

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """HF 的 `_save` 末尾会 torch.save(args)（pickle）；删掉它并写 JSON，再写模型卡。
        `save_model()` 单独调用时同样生效；检查点也经过这里。"""
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            drop_pickled_args(output_dir)
            write_args_json(self.args, output_dir)
            self._write_card(output_dir)

    def _write_card(self, folder: str, force: bool = False, **kwargs) -> None:
        """子类覆写：把模型卡写进 folder。"""

    # ------------------------------------------------------------------ 加载
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        verify_checkpoint_files(resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self.state.best_model_checkpoint is not None:
            verify_checkpoint_files(self.state.best_model_checkpoint)
        super()._load_best_model()
        self._card_best_loaded = True  # 之后保存的是最佳检查点：卡片取那一步的验证指标
