"""命令行的统一错误出口：用户错误与环境故障 → stderr 上一行 + 有文档的退出码；程序缺陷照常打印回溯。

所有入口（`ugt <command>` 的分发、recipes/stage{1,2,3}.py）都经过 `run_guarded`。用户看到的是一行
`<prog>: error: <文件/行/字段或路径>: <原因与改法>`；回溯只在 `--debug`（从 argv 里拿掉）或 `UGT_DEBUG=1` 时打印，
排查时用。不认识的异常是我们的 bug：不吞掉，原样抛出（Python 打印回溯、退出码 1）。

退出码（README 与 `ugt --help` 同此表）：
    0  成功
    1  未预料的异常（程序缺陷，带回溯）
    2  配置 / 命令行错误（ConfigError：YAML 文件:行、字段或参数名）
    3  输入数据错误（DataValidationError / DataFormatError、非 UTF-8、非 JSON：文件与行）
    4  环境故障（磁盘满、只读或无权限、路径是文件而非目录、输出目录冲突）
    5  拒绝加载不安全的检查点（UnsafeCheckpointError）
    6  训练发散（TrainingDivergedError）
    130 Ctrl-C（KeyboardInterrupt）

本模块只依赖标准库（`ugt --help` 不加载 torch）；项目的异常类按名字识别，不导入其模块。
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_ENVIRONMENT = 4
EXIT_UNSAFE_CHECKPOINT = 5
EXIT_DIVERGED = 6
EXIT_INTERRUPTED = 130

DEBUG_FLAG = "--debug"
DEBUG_ENV = "UGT_DEBUG"

# 项目异常（按类名匹配 MRO，子类同样生效）-> 退出码
PROJECT_ERRORS = {
    "ConfigError": EXIT_CONFIG,
    "DataValidationError": EXIT_DATA,
    "DataFormatError": EXIT_DATA,
    "UnsafeCheckpointError": EXIT_UNSAFE_CHECKPOINT,
    "TrainingDivergedError": EXIT_DIVERGED,
    "LaunchEnvironmentError": EXIT_ENVIRONMENT,
}

# torch.save 写满磁盘时的 RuntimeError（PyTorchStreamWriter 只报位置不符，不说 errno）
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
# 从回溯的局部变量里找“正在读写的文件”时认的名字（按优先级）
_PATH_LOCALS = ("filename", "path", "file", "f", "fp", "where", "sink", "file_path", "filepath", "save_path",
                "meta_path", "config_path", "save_directory", "output_dir")

_debug_depth = 0  # 外层入口收到 --debug 时，内层（嵌套的 run_guarded）也打印回溯


class LaunchEnvironmentError(RuntimeError):
    """启动方式与机器不符（如多 GPU 的 accelerate 配置跑在没有 CUDA 的机器上）。每个进程都会遇到同一个错误，
    所以只由 rank 0 打印。"""

    rank_zero_only = True
    # 其余 rank 先等一会儿再退出：torchelastic 在第一个进程非 0 退出时就 SIGTERM 其余进程，rank 0 可能来不及打印
    other_ranks_wait_s = 3.0


def check_launch_environment() -> None:
    """阶段开始前检查：torchrun/accelerate 起了多个进程、不是 CPU 配置，却没有 CUDA GPU。

    此时 accelerate 的 PartialState 找不到 NCCL 设备，悄悄退成 N 个互不通信的单进程各自训练、写同一个输出目录；
    与其让它们互相覆盖或在后面崩成 N 份回溯，不如在这里给一行说明换哪个配置。
    """
    if int(os.environ.get("LOCAL_RANK", "-1")) < 0 or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"):
        return
    import torch  # 只在多进程启动时才到这里；此时训练本来就要加载 torch

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return
    raise LaunchEnvironmentError(
        f"launched as {os.environ['WORLD_SIZE']} processes for a multi-GPU run (e.g. accelerate_configs/"
        "multi_gpu_ddp.yaml, distributed_type MULTI_GPU), but this machine has no CUDA GPU: use "
        "`accelerate launch --config_file accelerate_configs/multi_cpu.yaml` (CPU, Gloo), "
        "accelerate_configs/cpu.yaml or plain `python`, or run on a GPU machine")


def check_sharding_engine(args, accelerator_state) -> None:
    """要了 FSDP 却没开成时报错。accelerate（1.15）只在 GPU 类设备的多进程运行里把 fsdp_plugin 变成
    DistributedType.FSDP；CPU（MULTI_CPU / Gloo）或单进程时它悄悄丢掉插件，跑的是 DDP 或单进程——
    用户以为参数已分片，内存却按完整副本算。"""
    if not getattr(args, "fsdp", None) or getattr(accelerator_state, "fsdp_plugin", None) is not None:
        return
    kind = getattr(getattr(accelerator_state, "distributed_type", None), "value", "unknown")
    raise LaunchEnvironmentError(
        f"fsdp is set but accelerate did not enable FSDP (distributed type {kind}): FSDP runs only on GPUs "
        "under a distributed launch (`accelerate launch --config_file accelerate_configs/fsdp.yaml`); on CPU use "
        "DDP (accelerate_configs/multi_cpu.yaml) or unset fsdp")


def debug_enabled() -> bool:
    return _debug_depth > 0 or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def split_debug_flag(argv: Sequence[str]) -> Tuple[bool, List[str]]:
    """拿掉 argv 里的 --debug（`--` 之后的不动），返回 (是否给了, 其余参数)。"""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    found = DEBUG_FLAG in argv[:end]
    return found, [a for i, a in enumerate(argv) if not (i < end and a == DEBUG_FLAG)]


def _class_names(exc: BaseException) -> List[str]:
    return [c.__name__ for c in type(exc).__mro__]


def _one_line(text: str) -> str:
    """多行消息压成一行（用户只该看到一行；细节在 --debug 的回溯里）。"""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts)


def _path_of(value) -> Optional[str]:
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        text = os.fspath(value)
        return text if text and "\n" not in text and len(text) < 4096 else None
    name = getattr(value, "name", None)  # 打开的文件对象
    if isinstance(name, str) and (hasattr(value, "read") or hasattr(value, "write")):
        return name
    return None


def path_from_traceback(exc: BaseException) -> Optional[str]:
    """异常发生时正在读写的文件：从最内层帧向外找名为 filename/path/f… 的路径或文件对象。"""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local = frame.f_locals
        for name in _PATH_LOCALS:
            if name in local:
                found = _path_of(local[name])
                if found:
                    return found
    for frame in reversed(frames):  # 其次：任何名字的 pathlib 路径，且指向一个存在的文件
        for value in frame.f_locals.values():
            if isinstance(value, os.PathLike) and os.path.isfile(value):
                return os.fspath(value)
    return None


def _os_error_message(exc: OSError) -> Optional[Tuple[int, str]]:
    path = exc.filename if exc.filename is not None else path_from_traceback(exc)
    where = f"{os.fspath(path)}: " if path is not None else ""
    other = f" -> {os.fspath(exc.filename2)}" if getattr(exc, "filename2", None) else ""
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        return EXIT_ENVIRONMENT, (f"{where}no space left on device{other}: free disk space or write to another "
                                  "folder (--output_dir / --out)")
    if code == errno.EROFS:
        return EXIT_ENVIRONMENT, (f"{where}read-only file system{other}: write to a writable folder "
                                  "(--output_dir / --out)")
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return EXIT_ENVIRONMENT, (f"{where}permission denied{other}: write to a folder you own (--output_dir / "
                                  "--out) or fix its permissions")
    if isinstance(exc, NotADirectoryError):
        return EXIT_ENVIRONMENT, (f"{where}a part of this path is a file, not a folder{other}: remove or rename "
                                  "that file")
    if isinstance(exc, IsADirectoryError):
        return EXIT_ENVIRONMENT, f"{where}is a folder, expected a file{other}"
    if isinstance(exc, FileExistsError):
        if exc.filename is None:  # 项目自己抛的（如 prepare 的 “pass --force”）：消息里已有路径与改法
            return EXIT_ENVIRONMENT, _one_line(exc)
        if os.path.isfile(exc.filename):  # makedirs 撞上同名文件：要的是目录
            return EXIT_ENVIRONMENT, (f"{where}is a file where a folder is needed{other}: remove or rename it, or "
                                      "choose another path")
        return EXIT_ENVIRONMENT, f"{where}already exists{other}"
    if isinstance(exc, FileNotFoundError):
        if exc.filename is None:  # 项目自己抛的 FileNotFoundError：消息里已有路径
            return EXIT_ENVIRONMENT, _one_line(exc)
        return EXIT_ENVIRONMENT, f"{where}no such file or folder{other}"
    if code in (errno.EMFILE, errno.ENFILE):
        return EXIT_ENVIRONMENT, f"{where}too many open files: raise the limit (ulimit -n)"
    return None


def classify(exc: BaseException) -> Optional[Tuple[int, str]]:
    """(退出码, 一行消息)；不是用户错误/环境故障（即程序缺陷）时返回 None。"""
    names = _class_names(exc)
    for name, code in PROJECT_ERRORS.items():
        if name in names:
            return code, _one_line(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted (Ctrl-C)"
    if isinstance(exc, json.JSONDecodeError):
        path = path_from_traceback(exc)
        where = f"{path}: " if path else ""
        return EXIT_DATA, (f"{where}line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); "
                           "fix or regenerate the file")
    if isinstance(exc, UnicodeDecodeError):
        path = path_from_traceback(exc)
        where = f"{path}: " if path else ""
        byte = exc.object[exc.start:exc.start + 1]
        return EXIT_DATA, (f"{where}not valid UTF-8 (byte 0x{byte.hex()} at offset {exc.start}: {exc.reason}); "
                           "re-save the file as UTF-8")
    if isinstance(exc, OSError):
        out = _os_error_message(exc)
        if out is not None:
            return out
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        path = path_from_traceback(exc)
        where = f"{path}: " if path else ""
        return EXIT_ENVIRONMENT, (f"{where}writing failed, most likely the disk is full (torch: "
                                  f"{_one_line(exc)[:120]}): free disk space or write to another folder "
                                  "(--output_dir / --out)")
    cause = exc.__cause__  # 显式 `raise X from Y`：按原因判断（只跟 __cause__，不跟隐式的 __context__）
    if cause is not None and cause is not exc:
        return classify(cause)
    return None


def run_guarded(func: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]], prog: str) -> int:
    """运行一个入口 func(argv) -> 退出码；认识的错误打印一行并返回其退出码，不认识的原样抛出。"""
    global _debug_depth
    debug, args = split_debug_flag(sys.argv[1:] if argv is None else argv)
    _debug_depth += int(debug)
    try:
        return int(func(args) or 0)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 —— 分类后要么一行退出、要么原样抛出
        verdict = classify(exc)
        if verdict is None:
            raise
        code, message = verdict
        sys.stdout.flush()
        if debug_enabled():
            traceback.print_exception(exc, file=sys.stderr)
        if getattr(exc, "rank_zero_only", False) and os.environ.get("RANK", "0") != "0":
            time.sleep(float(getattr(exc, "other_ranks_wait_s", 0.0)))
        else:
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return code
    finally:
        _debug_depth -= int(debug)


__all__ = [
    "DEBUG_ENV", "DEBUG_FLAG", "EXIT_BUG", "EXIT_CONFIG", "EXIT_DATA", "EXIT_DIVERGED", "EXIT_ENVIRONMENT",
    "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNSAFE_CHECKPOINT", "LaunchEnvironmentError", "PROJECT_ERRORS",
    "check_launch_environment", "classify", "debug_enabled",
    "path_from_traceback", "run_guarded", "split_debug_flag",
]
