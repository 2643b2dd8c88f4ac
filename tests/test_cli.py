"""cli.py：分发与用法信息；各子命令的 --help 不加载 torch、每个选项都有帮助文本；面向用户的文字是英文。

帮助的耗时在 benchmarks/bench_cli.py（计时不进单元测试）；这里断言的是耗时的原因：帮助路径上没有 torch /
transformers / pyarrow。
"""

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ugt_hf import cli

REPO = Path(__file__).resolve().parents[1]
HELP_COMMANDS = [["--help"], ["prepare", "--help"], ["train", "--stage", "1", "--help"],
                 ["train", "--stage", "2", "--help"], ["train", "--stage", "3", "--help"], ["evaluate", "--help"],
                 ["pipeline", "--help"], ["report", "--help"]]
HEAVY = ("torch", "transformers", "pyarrow", "datasets", "trl")
# 与 console script `ugt`（pyproject.toml 的 ugt_hf.cli:main）相同的入口，外加一行：加载了哪些重模块
_PROBE = ("import sys\nfrom ugt_hf.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
          "except SystemExit as e:\n    rc = e.code\n"
          f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(rc or 0)\n")
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_unknown_command(capsys):
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_help_runs_without_loading_torch(argv):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", out.stdout.splitlines()[-1]


class _Captured(Exception):
    pass


def _parser_of(argv, monkeypatch) -> argparse.ArgumentParser:
    """cli.main(argv) 里建出的 argparse 解析器（在它解析或打印帮助时截住）。"""
    seen = []

    def grab(self, *args, **kwargs):
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", grab)
    with pytest.raises(_Captured):
        cli.main(argv)
    return seen[0]


@pytest.mark.parametrize("argv", HELP_COMMANDS[1:], ids=" ".join)
def test_every_flag_has_english_help(argv, monkeypatch):
    parser = _parser_of(argv, monkeypatch)
    actions = [a for a in parser._actions if a.dest != "help"]
    assert actions
    missing = [a.option_strings or [a.dest] for a in actions if not (a.help or "").strip()
               or a.help == argparse.SUPPRESS]
    assert missing == []
    text = parser.format_help()
    assert not CJK.search(text), [line for line in text.splitlines() if CJK.search(line)]


def test_train_help_all_lists_every_hf_field(capsys):
    """--help_all 走完整的解析器（HF TrainingArguments 的全部字段，几秒）。"""
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--stage", "1", "--help_all"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--dataloader_num_workers" in out and "--lambda_contrastive" in out


# ------------------------------------------------------------------------------------------------ 英文
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}
_MESSAGE_CALLS = {"print", "warn", "_warn_at_caller", "log", "arg", "add_argument", "ArgumentParser"}


def _user_facing_strings(tree):
    """异常、warnings、print / log、logger.* 与参数帮助里的字符串字面量（含 f-string 的片段）。"""
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            if name in _MESSAGE_CALLS or (name in _LOG_METHODS and owner in ("logger", "logging", "warnings")):
                target = node
        if target is not None:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub


def test_user_facing_text_is_english():
    """帮助、错误、警告与日志用英文（docstring 与注释照规格用中文，不在检查之列）。"""
    bad = set()
    for path in sorted((REPO / "ugt_hf").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bad.update(f"{path.relative_to(REPO)}:{s.lineno}: {s.value[:60]!r}"
                   for s in _user_facing_strings(tree) if CJK.search(s.value))
    assert sorted(bad) == []


def test_the_english_check_sees_messages():
    """上面的检查能抓到中文消息（否则它永远通过）。"""
    code = 'raise ValueError(f"配置 {x} 不存在")\nlogger.warning("注意")\nx = arg(1, "帮助")\n"""文档"""\n'
    found = [s.value for s in _user_facing_strings(ast.parse(code)) if CJK.search(s.value)]
    assert found == ["配置 ", " 不存在", "注意", "帮助"]
