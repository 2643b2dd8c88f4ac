"""测试共用：按文件路径加载 benchmarks/ 下的脚本（它们不是包，不能直接 import）。"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """加载 benchmarks/<name>.py，返回模块对象。"""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
