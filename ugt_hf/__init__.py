"""UGT-Train：基于 Hugging Face Trainer 的生成式推荐训练扩展。

`import ugt_hf` 即把 UGT 注册到 AutoConfig / AutoModel / AutoTokenizer 与 "generative-recommendation"
pipeline（见 auto.py），之后 `AutoModel.from_pretrained(dir)`、`pipeline("generative-recommendation", ...)`
无需 remote code。没 import 时 transformers 只报 “model type `ugt` ... does not recognize this architecture”；
所以 save_pretrained / 训练器写的模型卡（README.md，见 model_card.py）开头就写明先 `import ugt_hf`。

本包的导入是惰性的（PEP 562）：`import ugt_hf` 本身不加载 torch / transformers（`ugt --help` 因此不到 1 s），
`ugt_hf.UGTConfig` 等名字在第一次访问时才导入；注册发生在 transformers 导入之时（见 auto.py）。
"""

from ._lazy import lazy_getattr
from .auto import activate, register

__version__ = "0.1.0"

# 再导出的名字 -> 所在子模块（第一次访问时导入）
_LAZY = {
    "UGTConfig": "configuration_ugt",
    "UGTForGenerativeRecommendation": "modeling_ugt",
    "UGTModel": "modeling_ugt",
    "UGTTokenizer": "tokenization_ugt",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["UGTConfig", "UGTForGenerativeRecommendation", "UGTModel", "UGTTokenizer", "register", "__version__"]

activate()
