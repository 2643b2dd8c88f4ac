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
    "prepare": ("ugt_hf.data.prepare", "main", "原始交互日志 -> 语义 ID -> 数据产物目录"),
}


def _usage() -> str:
    lines = ["usage: ugt <command> [args]", "", "commands:"]
    for name, (_, _, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {help_text}")
    return "\n".join(lines)


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
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
