"""locking.py：输出目录锁——第二个写入者得到一行错误（目录 + 持有者 PID），死掉的持有者留下的锁被接管。"""

import json
import os
import subprocess
import sys
import time

import pytest

from ugt_hf.locking import OutputLock, OutputLockedError, holding_output_lock, lock_path_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 子进程按文件路径加载 locking.py（它不导入包里的其他模块）：不必为一把锁 import torch / transformers
_LOAD = ("import importlib.util as u\n"
         f"s = u.spec_from_file_location('locking', {os.path.join(REPO, 'ugt_hf', 'locking.py')!r})\n"
         "m = u.module_from_spec(s); s.loader.exec_module(m); OutputLock = m.OutputLock\n")


def test_second_writer_in_another_process_gets_one_clear_error(tmp_path):
    out = tmp_path / "run"
    ready = tmp_path / "ready"
    code = (_LOAD + "import sys, pathlib\n"
            f"with OutputLock({str(out)!r}, what='ugt pipeline'):\n"
            f"    pathlib.Path({str(ready)!r}).touch()\n"
            "    sys.stdin.read()\n")  # 父进程关掉 stdin 时退出
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert holder.poll() is None and time.time() < deadline
            time.sleep(0.02)
        with pytest.raises(OutputLockedError) as info:
            OutputLock(str(out), what="ugt pipeline").acquire()
        msg = str(info.value)
        assert str(out) in msg and f"PID {holder.pid}" in msg and "\n" not in msg
        assert "choose another output folder" in msg
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with OutputLock(str(out)):  # 持有者正常退出后锁已释放
        pass
    assert not os.path.exists(lock_path_for(str(out)))


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "data"
    code = (_LOAD + "import os, signal\n"
            f"OutputLock({str(out)!r}).acquire()\nos.kill(os.getpid(), signal.SIGKILL)\n")
    dead = subprocess.run([sys.executable, "-c", code])
    assert dead.returncode == -9
    path = lock_path_for(str(out))
    assert json.loads(open(path).read())["pid"] > 0  # 锁文件还在，但持有者已死
    lock = OutputLock(str(out)).acquire()
    try:
        assert lock.took_over is not None and lock.took_over["pid"] != os.getpid()
        assert json.loads(open(path).read())["pid"] == os.getpid()
    finally:
        lock.release()


def test_same_process_second_lock_and_decorator(tmp_path):
    out = tmp_path / "o"
    calls = []

    @holding_output_lock("ugt prepare", param="out")
    def write(n, out):
        calls.append(n)
        with pytest.raises(OutputLockedError, match=f"{out} is in use by another ugt prepare \\(PID {os.getpid()}"):
            OutputLock(str(out)).acquire()
        return n

    assert write(1, out=str(out)) == 1 and write(2, str(out)) == 2
    assert calls == [1, 2] and not os.path.exists(lock_path_for(str(out)))
    assert lock_path_for(str(out)) == str(tmp_path / ".o.ugt-lock")  # 在目录旁边，不在目录里


def test_second_ugt_prepare_into_the_same_folder_gets_one_line(tmp_path, capsys):
    from ugt_hf.data.prepare import main as prepare_main
    from ugt_hf.data.prepare import prepare

    out = tmp_path / "data"
    with OutputLock(str(out), what="ugt prepare"):
        with pytest.raises(OutputLockedError, match=f"{out} is in use by another ugt prepare"):
            prepare(str(out), source="synthetic", num_users=50, num_items=30)
        # 4 = 环境错误（输出目录被占用），见 ugt_hf/errors.py 的退出码表
        assert prepare_main(["--source", "synthetic", "--out", str(out), "--no_progress", "true"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ugt prepare: error: {out} is in use by another ugt prepare (PID {os.getpid()}")
    assert "\n" not in err and not out.exists()  # 什么也没写
