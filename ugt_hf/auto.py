"""把 UGT 注册到 transformers 的 Auto* 与 pipeline 注册表（`import ugt_hf` 时调用 `register()`）。

注册后 `AutoConfig/AutoModel/AutoTokenizer.from_pretrained(dir)` 与
`pipeline("generative-recommendation", model=dir)` 无需 trust_remote_code。重复调用是安全的。
AutoModel 指向带头的 `UGTForGenerativeRecommendation`（保存的 config.json 的 architectures 也是它），
与拆分骨干之前的行为相同；只要骨干时直接用 `UGTModel.from_pretrained(dir)`。
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoTokenizer

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
from ugt_hf.pipeline import register_pipeline
from ugt_hf.tokenization_ugt import UGTTokenizer

_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    AutoConfig.register(UGTConfig.model_type, UGTConfig, exist_ok=True)
    AutoModel.register(UGTConfig, UGTForGenerativeRecommendation, exist_ok=True)
    AutoTokenizer.register(UGTConfig, tokenizer_class=UGTTokenizer, exist_ok=True)
    register_pipeline()
    _REGISTERED = True


__all__ = ["register"]
