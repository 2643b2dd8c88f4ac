"""输出目录锁：同一个输出目录同一时刻只允许一个写入者（`ugt prepare` 的产物目录、阶段 output_dir、流水线 --out）。

为什么：两个 `ugt pipeline` 写同一个 --out 时各自都成功退出，目录里却混着两次运行的检查点、结果与配置。

做法：锁文件放在目录旁边（`<父目录>/.<目录名>.ugt-lock`，而不是目录里面：`ugt prepare` 会把整个产物目录
原子替换掉），内容是持有者的 PID 与主机名。互斥靠 `fcntl.flock`：进程退出（包括 kill -9）时内核自动释放，
所以死掉的进程留下的锁文件不会挡住下一次运行（“过期锁”，接管时记一条 warning，写出原来的 PID）。
释放时删除锁文件；为避免“删掉的是别人刚锁上的文件”，加锁后核对路径仍指向同一个 inode，否则重试。
没有 fcntl 的平台（Windows）退化为 O_EXCL 创建 + PID 存活检查。
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import logging
import os
import socket
import time
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".ugt-lock"


class OutputLockedError(FileExistsError):
    """输出目录正被另一个进程使用。继承 FileExistsError：各命令行入口已把它当作一行错误处理。"""


def lock_path_for(folder: str) -> str:
    parent, name = os.path.split(os.path.abspath(os.path.normpath(folder)))
    return os.path.join(parent, f".{name}{LOCK_SUFFIX}")


def pid_alive(pid: int) -> bool:
    """pid 对应的进程是否还在（本机）。没有权限发信号也算活着。"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as e:  # pragma: no cover
        return e.errno != errno.ESRCH
    return True


def _read_owner(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _busy_message(folder: str, what: str, owner: dict) -> str:
    what = owner.get("what") or what  # 持有者是什么（另一个 ugt pipeline / ugt prepare / 阶段）
    pid, host = owner.get("pid"), owner.get("host")
    since = owner.get("since")
    who = f"PID {pid}" if pid else "another process"
    if host and host != socket.gethostname():
        who += f" on {host}"
    if since:
        who += f", since {since}"
    return (f"{folder} is in use by another {what} ({who}; lock file {lock_path_for(folder)}): wait for it to "
            "finish or choose another output folder")


class OutputLock:
    """`with OutputLock(folder, what="ugt pipeline"):` —— 拿不到锁时抛 OutputLockedError（写明目录与持有者 PID）。"""

    def __init__(self, folder: str, what: str = "run"):
        self.folder = str(folder)
        self.what = what
        self.path = lock_path_for(self.folder)
        self._fd: Optional[int] = None
        self.took_over: Optional[dict] = None  # 接管了过期锁时：原持有者的信息

    # ------------------------------------------------------------------ 加锁
    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if fcntl is None:  # pragma: no cover
            return self._acquire_exclusive_create()
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise OutputLockedError(_busy_message(self.folder, self.what, _read_owner(self.path))) from None
            # 锁住的文件可能刚被上一个持有者删掉（路径已换成新文件）：核对 inode，不同就重来
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_owner(self.path)
            if previous.get("pid") and previous.get("pid") != os.getpid():
                self.took_over = previous
                logger.warning("%s: taking over a stale lock left by PID %s (no longer running)",
                               self.folder, previous.get("pid"))
            self._write_owner(fd)
            self._fd = fd
            return self
        raise OutputLockedError(f"{self.folder}: could not acquire {self.path} (it keeps being replaced)")

    def _acquire_exclusive_create(self) -> OutputLock:  # pragma: no cover - 仅无 fcntl 的平台
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if pid_alive(int(owner.get("pid") or 0)):
                    raise OutputLockedError(_busy_message(self.folder, self.what, owner)) from None
                self.took_over = owner
                logger.warning("%s: taking over a stale lock left by PID %s", self.folder, owner.get("pid"))
                os.remove(self.path)
                continue
            self._write_owner(fd)
            self._fd = fd
            return self
        raise OutputLockedError(_busy_message(self.folder, self.what, _read_owner(self.path)))

    def _write_owner(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))

    # ------------------------------------------------------------------ 释放
    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # 先删再解锁：等锁的人拿到旧 inode 后会发现路径变了并重试
        except FileNotFoundError:
            pass
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holding_output_lock(what: str, param: str = "out"):
    """装饰器：调用期间持有参数 param（按函数签名取，位置或关键字皆可）所指输出目录的锁。"""

    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[param]
            with OutputLock(os.fspath(folder), what=what):
                return func(*args, **kwargs)

        return wrapper

    return decorate
