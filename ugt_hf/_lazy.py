"""包的惰性再导出（PEP 562）：三个包（ugt_hf、ugt_hf.data、ugt_hf.training）共用的模块级 `__getattr__`。

再导出的名字第一次被访问时才导入所在子模块，`ugt <命令> --help` 因此不加载 torch / transformers / pyarrow。
"""

import importlib
from typing import Callable, Dict, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str], namespace: Dict[str, object]) -> Callable[[str], object]:
    """exports：名字 -> 子模块（相对 package）；取到的对象写回 namespace（包的 globals），之后不再经过这里。"""

    def __getattr__(name: str) -> object:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
