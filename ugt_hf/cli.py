"""`ugt` 命令行入口：`ugt prepare | train | evaluate | pipeline | report`。

每个子命令在自己的模块里实现 `main(argv) -> int`，这里只做分发并延迟导入，
这样 `ugt --help` 不必加载 torch/transformers。
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# 子命令 -> "模块:函数"；函数签名 main(argv: list[str]) -> int
SUBCOMMANDS = {
    "prepare": ("ugt_hf.data.prepare", "main", "raw interaction log -> semantic IDs -> artifact folder"),
    "train": ("ugt_hf.cli", "train_main", "train one stage: ugt train --stage N --config FILE [--key value ...]"),
    "evaluate": ("ugt_hf.evaluation", "main",
                 "full-catalogue ranking: ugt evaluate --model DIR --data DIR [--split test] [--json]"),
    "pipeline": ("ugt_hf.workflow", "main",
                 "[prepare with --prepare true] -> stages 1, 2, 3 -> test evaluation and report"),
    "report": ("ugt_hf.report", "main", "redraw the report and plots of a run folder: ugt report RUN"),
}


def _usage() -> str:
    lines = ["usage: ugt <command> [args]", "", "commands:"]
    for name, (_, _, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {help_text}")
    lines += ["", "Run `ugt <command> --help` for the options of a command."]
    return "\n".join(lines)


def train_main(argv: List[str]) -> int:
    """`ugt train --stage N ...`：与 recipes/stage{N}.py 相同。

    `--help` 只列 UGT 自己的字段（training.argument_fields，不加载 torch）；`--help_all` 连同 HF TrainingArguments /
    TRL DPOConfig 的全部字段（要导入它们，几秒）。"""
    if len(argv) < 2 or argv[0] != "--stage" or argv[1] not in ("1", "2", "3"):
        print("usage: ugt train --stage {1,2,3} --config FILE [--key value ...]", file=sys.stderr)
        return 2
    stage, rest = int(argv[1]), argv[2:]
    if "-h" in rest or "--help" in rest:
        from .training.argument_fields import stage_help_parser

        stage_help_parser(stage).print_help()
        return 0
    if "--help_all" in rest:
        rest = ["--help" if a == "--help_all" else a for a in rest]
    from .training.stages import main as stage_main

    return stage_main(stage, rest)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ugt: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    # 用户错误/环境故障 -> 一行 + 退出码（表见 ugt_hf/errors.py）；导入也在保护之内
    from .errors import run_guarded

    return run_guarded(lambda args: getattr(importlib.import_module(module_name), func_name)(args), rest,
                       prog=f"ugt {name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
