"""ugt_hf/errors.py：错误分类（退出码、一行消息、从回溯里找路径）、--debug / UGT_DEBUG、多 GPU 启动检查。

命令行层面的坏输入语料在 tests/faults/；这里测守卫本身，包括真实的写满（/dev/full）。
"""

import errno
import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

from ugt_hf import cli, errors

ROOT = Path(__file__).resolve().parents[1]


def _message_line(text, says):
    lines = [line for line in text.splitlines() if all(s in line for s in says)]
    assert lines, f"no line contains all of {says!r}:\n{text[-3000:]}"
    return lines[0]


def _guarded(func, argv=()):
    return errors.run_guarded(lambda a: func(), list(argv), prog="ugt test")


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_disk_full_during_torch_save_names_the_file(capsys):
    """真实的写满：torch.save 到 /dev/full 抛 `unexpected pos` 的 RuntimeError，不提磁盘也不提路径。"""
    rc = _guarded(lambda: torch.save({"w": torch.zeros(10_000)}, "/dev/full"))
    err = capsys.readouterr().err
    assert rc == errors.EXIT_ENVIRONMENT and "Traceback" not in err
    assert "/dev/full" in _message_line(err, ("/dev/full", "disk is full"))
    assert Path("/dev/full").is_char_device()  # torch.save 不替换也不删除设备文件（safetensors/pyarrow 会，勿用）


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_disk_full_during_json_write_names_the_file(capsys):
    def write():
        with open("/dev/full", "w") as f:
            json.dump({"x": "y" * 100_000}, f)
            f.flush()

    assert _guarded(write) == errors.EXIT_ENVIRONMENT
    _message_line(capsys.readouterr().err, ("/dev/full", "no space left on device"))


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                         (errno.ENOSPC, "no space left")])
def test_os_errors_name_the_path(code, words, capsys):
    def fail():
        raise OSError(code, os.strerror(code), "/runs/exp1/checkpoint-8")

    assert _guarded(fail) == errors.EXIT_ENVIRONMENT
    _message_line(capsys.readouterr().err, ("/runs/exp1/checkpoint-8", words))


def test_bare_json_and_unicode_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "meta.json"
    bad.write_bytes(b'{"a": 1,\n oops}')
    assert _guarded(lambda: json.loads(bad.read_text())) == errors.EXIT_DATA
    _message_line(capsys.readouterr().err, (str(bad), "line 2", "invalid JSON"))
    bad.write_bytes(b'{"a": "\xff"}')
    assert _guarded(lambda: json.loads(bad.read_text(encoding="utf-8"))) == errors.EXIT_DATA
    _message_line(capsys.readouterr().err, (str(bad), "not valid UTF-8", "0xff"))


def test_project_errors_keep_their_message_and_code(capsys):
    from ugt_hf.training.callbacks import TrainingDivergedError
    from ugt_hf.training.checkpointing import UnsafeCheckpointError

    for exc, code in ((TrainingDivergedError("loss was NaN for 10 consecutive steps\nlast step 12"),
                       errors.EXIT_DIVERGED),
                      (UnsafeCheckpointError("ck/optimizer.pt: refused to load"), errors.EXIT_UNSAFE_CHECKPOINT)):
        def fail(exc=exc):
            raise exc

        assert _guarded(fail) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err  # 多行消息压成一行


def test_unknown_exceptions_still_show_the_traceback():
    """程序缺陷不被吞掉：原样抛出（命令行里 Python 打印回溯、退出码 1）。"""
    with pytest.raises(KeyError):
        _guarded(lambda: {}["missing"])
    with pytest.raises(RuntimeError, match="unrelated"):
        _guarded(lambda: (_ for _ in ()).throw(RuntimeError("unrelated failure")))


def test_debug_flag_and_env_show_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    argv = ["prepare", "--source", "s3rec", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]
    assert cli.main(argv + ["--debug"]) == errors.EXIT_DATA
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("ugt prepare: error: ")
    assert cli.main(argv) == errors.EXIT_DATA and "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    assert cli.main(argv) == errors.EXIT_DATA and "Traceback" in capsys.readouterr().err


def test_multi_gpu_launch_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    """accelerate launch 给 worker 的环境（LOCAL_RANK/WORLD_SIZE，没有 ACCELERATE_USE_CPU），机器上没有 CUDA。"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(errors.LaunchEnvironmentError, "other_ranks_wait_s", 0.0)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    for rank, expect_line in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", rank)
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setattr(sys, "argv", [str(ROOT / "recipes" / "stage1.py"), "--output_dir", str(tmp_path / "r")])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(ROOT / "recipes" / "stage1.py"), run_name="__main__")
        rc = exit_info.value.code
        err = capsys.readouterr().err
        assert rc == errors.EXIT_ENVIRONMENT and "Traceback" not in err
        assert ("multi_cpu.yaml" in err) is expect_line, err  # 只有 rank 0 说话：N 个进程不重复同一行
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    errors.check_launch_environment()  # CPU 多进程配置照常放行


def test_split_debug_flag_leaves_everything_after_double_dash():
    assert errors.split_debug_flag(["a", "--debug", "b", "--", "--debug"]) == (True, ["a", "b", "--", "--debug"])
    assert errors.split_debug_flag(["a"]) == (False, ["a"])


def test_file_exists_where_a_folder_is_needed(tmp_path, capsys):
    blocker = tmp_path / "run"
    blocker.write_text("x")
    assert errors.run_guarded(lambda a: os.makedirs(blocker), [], prog="p") == errors.EXIT_ENVIRONMENT
    _message_line(capsys.readouterr().err, (str(blocker), "is a file where a folder is needed"))


def test_explicit_cause_is_followed_but_implicit_context_is_not(capsys):
    def wrapped():
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/data/x")
        except OSError as e:
            raise RuntimeError("save failed") from e

    assert errors.run_guarded(lambda a: wrapped(), [], prog="p") == errors.EXIT_ENVIRONMENT
    _message_line(capsys.readouterr().err, ("/data/x", "permission denied"))

    def bug_while_handling():
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/data/x")
        except OSError:
            return {}["bug"]  # 处理 OSError 时出的 bug：仍是 bug，不能被当成权限问题吞掉

    with pytest.raises(KeyError):
        errors.run_guarded(lambda a: bug_while_handling(), [], prog="p")
