"""坏输入语料（#16）：从外部驱动 `ugt` 与 recipes，每个坏输入一行消息、有文档的退出码、没有回溯。

大部分用例在进程内跑（`cli.main(argv)` / recipes 用 runpy 当作 __main__ 执行，捕获 stdout/stderr）：
torch 只加载一次，整套几十秒。未知异常在进程内会直接让测试失败（它们本应打印回溯），所以“没有回溯”
同样被检查到。少数用例起真正的子进程（`python -m ugt_hf.cli`、recipes），确认进程级的退出码与 stderr；
多进程启动（accelerate launch）的用例标 slow。
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from _cases import CASES, Ctx
from _tiny_artifacts import tiny_data_dir

from ugt_hf import cli, errors

ROOT = Path(__file__).resolve().parents[2]


def _run_in_process(argv, monkeypatch):
    """返回退出码；recipe:N 用 runpy 按 __main__ 执行 recipes/stageN.py（同 `python recipes/stageN.py`）。"""
    if argv[0].startswith("recipe:"):
        script = ROOT / "recipes" / f"stage{argv[0].split(':')[1]}.py"
        monkeypatch.setattr(sys, "argv", [str(script), *argv[1:]])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(script), run_name="__main__")
        return exit_info.value.code
    return cli.main(list(argv))


def _message_line(text: str, says) -> str:
    lines = [line for line in text.splitlines() if all(s in line for s in says)]
    assert lines, f"no line contains all of {says!r}:\n{text[-3000:]}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, tiny_data_dir())
    argv = case.build(ctx)
    capsys.readouterr()
    rc = _run_in_process(argv, monkeypatch)
    out, err = capsys.readouterr()
    text = out + err
    assert rc == case.code, f"exit {rc}, expected {case.code}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    line = _message_line(text, case.says)
    assert len(line) < 1000, line


def test_corpus_covers_every_area():
    counts = Counter(c.area for c in CASES)
    assert len(CASES) >= 60 and {"prepare", "data", "config", "cli", "env"} <= set(counts), counts
    assert len({c.name for c in CASES}) == len(CASES)


def test_valid_control_run_trains(tmp_path, capsys):
    """对照组：语料的基础参数本身能训练一步（坏用例的错误不是基础参数引起的）。"""
    ctx = Ctx(tmp_path, tiny_data_dir())
    assert cli.main(ctx.stage()) == 0, capsys.readouterr()
    assert (tmp_path / "run" / "best_model" / "config.json").is_file()


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_disk_full_while_saving_a_checkpoint(tmp_path, capsys, monkeypatch):
    """训练中保存检查点时磁盘写满：HF 的 torch.save 被引到 /dev/full（真实的 ENOSPC，torch 只说 "unexpected pos"）。
    一行、退出码 4、说的是磁盘满与文件，不是 inline_container.cc 的回溯。"""
    real_save = torch.save

    def save_to_full_disk(obj, f, *args, **kwargs):
        return real_save(obj, "/dev/full", *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    ctx = Ctx(tmp_path, tiny_data_dir())
    args = ctx.stage()
    i = args.index("--save_strategy")
    args[i + 1:i + 2] = ["steps", "--save_steps", "1"]
    rc = cli.main(args)
    out, err = capsys.readouterr()
    assert rc == errors.EXIT_ENVIRONMENT and "Traceback" not in out + err, (out + err)[-3000:]
    _message_line(err, ("/dev/full", "disk is full", "--output_dir"))
    assert Path("/dev/full").is_char_device()
    assert not (tmp_path / "run" / "best_model").exists()  # 没写完的运行不像是完成了


# --------------------------------------------------------------------------------------------------- 子进程
def _subprocess(args):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    full_env.pop(errors.DEBUG_ENV, None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=full_env,
                          cwd=str(ROOT))


def test_real_processes_exit_with_the_documented_codes(tmp_path):
    """真正的进程：退出码、stderr 上一行、没有回溯（进程内的用例覆盖同一条路径，这里只抽两个：每个子进程
    加载 torch 要 10 秒以上）。"""
    bad = tmp_path / "b.txt"
    bad.write_text("1 2 3\n2 4 oops\n")
    proc = _subprocess(["-m", "ugt_hf.cli", "prepare", "--source", "s3rec", "--input", str(bad), "--out",
                        str(tmp_path / "o"), "--no_progress"])
    assert proc.returncode == errors.EXIT_DATA and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"ugt prepare: error: {bad}:2: field 'item' must be an integer, "
                                                "got 'oops'"]
    model = json.dumps({"d_model": 16, "num_heads": 2, "d_modle": 8})
    proc = _subprocess([str(ROOT / "recipes" / "stage1.py"), "--data_dir", str(tiny_data_dir()), "--output_dir",
                        str(tmp_path / "r"), "--fp16", "false", "--model_config", model])
    assert proc.returncode == errors.EXIT_CONFIG and "Traceback" not in proc.stdout + proc.stderr
    _message_line(proc.stdout + proc.stderr, ("model_config.d_modle", "d_model"))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_accelerate_multi_gpu_config_without_cuda(tmp_path):
    """accelerate launch + multi_gpu_ddp.yaml（2 个进程）：worker 在训练前报一行、退出码 4。
    之后 accelerate 的启动器（torchelastic）仍会打印它自己的 ChildFailedError 摘要——那是启动器进程的输出，
    不在我们的代码里；这里断言我们的那一行先出现且只出现一次。"""
    proc = subprocess.run(
        ["accelerate", "launch", "--config_file", str(ROOT / "accelerate_configs" / "multi_gpu_ddp.yaml"),
         "--num_processes", "2", str(ROOT / "recipes" / "stage1.py"), "--output_dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT),
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("stage1: error:")]
    assert len(ours) == 1 and "multi_cpu.yaml" in ours[0], proc.stderr[-3000:]
    assert "exitcode  : 4" in proc.stderr
    assert not (tmp_path / "r").exists()
