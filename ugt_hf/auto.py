"""把 UGT 注册到 transformers 的 Auto* 与 pipeline 注册表。

注册后 `AutoConfig/AutoModel/AutoTokenizer.from_pretrained(dir)` 与
`pipeline("generative-recommendation", model=dir)` 无需 trust_remote_code。重复调用是安全的。
AutoModel 指向带头的 `UGTForGenerativeRecommendation`（保存的 config.json 的 architectures 也是它），
与拆分骨干之前的行为相同；只要骨干时直接用 `UGTModel.from_pretrained(dir)`。

何时注册：Auto* 注册表存的是类对象，注册就得导入模型类（torch + transformers，冷启动 5–8 s），而 `ugt --help`、
`ugt prepare` 的参数错误用不到它。所以 `import ugt_hf` 不再立即导入它们，而是：
  * transformers 已导入 → 立即注册（与以前相同）；
  * 否则装一个一次性的导入钩子：transformers 导入完成后注册。用户代码要用 AutoModel / pipeline 必然先导入
    transformers，因此 `import ugt_hf` 仍足以让 `AutoModel.from_pretrained(dir)` 工作。
钩子的难点是时机：transformers 常常是在某个 ugt_hf 模块执行到一半时被导入的（如 configuration_ugt 顶部的
`from transformers import PretrainedConfig`），此刻注册会撞上只初始化了一半的模块。所以钩子数着正在执行的
ugt_hf 子模块与 transformers 的层数，回到 0（最外层的导入结束）才注册；注册完即卸下钩子。
"""

from __future__ import annotations

import importlib.abc
import sys
import threading

_TRIGGER = "transformers"
_PREFIX = "ugt_hf."
_lock = threading.RLock()
_state = "pending"  # pending | running | done
_depth = 0  # 正在 exec_module 的 ugt_hf 子模块与 transformers 的层数


def _register_now() -> None:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
    from ugt_hf.pipeline import register_pipeline
    from ugt_hf.tokenization_ugt import UGTTokenizer

    AutoConfig.register(UGTConfig.model_type, UGTConfig, exist_ok=True)
    AutoModel.register(UGTConfig, UGTForGenerativeRecommendation, exist_ok=True)
    AutoTokenizer.register(UGTConfig, tokenizer_class=UGTTokenizer, exist_ok=True)
    register_pipeline()


def register() -> None:
    """立即注册（导入 torch 与 transformers）；幂等，注册过程中的重入调用直接返回。"""
    global _state
    with _lock:
        if _state != "pending":
            return
        _state = "running"
        try:
            _register_now()
        except BaseException:
            _state = "pending"
            raise
        _state = "done"
        _uninstall()


def is_registered() -> bool:
    return _state == "done"


class _CountingLoader(importlib.abc.Loader):
    """包一层真正的 loader：执行前把模块的 __loader__ / __spec__.loader 还原成原 loader（导入后的模块与平常
    无异），执行期间计层数，最外层结束且 transformers 已在 sys.modules 时注册。"""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_code / get_source / get_resource_reader …（runpy、inspect 用）
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _depth
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        with _lock:
            _depth += 1
        try:
            self.loader.exec_module(module)
        finally:
            with _lock:
                _depth -= 1
                outermost = _depth == 0
        if outermost and _TRIGGER in sys.modules:
            register()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """只认 transformers 与 ugt_hf 的子模块：交给其余 finder 找到 spec，再换上 _CountingLoader。"""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TRIGGER and not fullname.startswith(_PREFIX):
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CountingLoader(spec.loader)
                return spec
        return None


_FINDER = _RegisterAfterImport()


def _uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def activate() -> None:
    """`import ugt_hf` 时调用：transformers 已导入则立即注册，否则装上钩子（见模块说明）。"""
    if _TRIGGER in sys.modules:
        register()
    elif _state == "pending" and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)  # 排在 editable 安装与 pytest 的 finder 之前


__all__ = ["activate", "is_registered", "register"]
