"""UGT-Train：基于 Hugging Face Trainer 的生成式推荐训练扩展。

`import ugt_hf` 即把 UGT 注册到 AutoConfig / AutoModel / AutoTokenizer 与 "generative-recommendation"
pipeline（见 auto.py），之后 `AutoModel.from_pretrained(dir)`、`pipeline("generative-recommendation", ...)`
无需 remote code。没 import 时 transformers 只报 “model type `ugt` ... does not recognize this architecture”；
所以 save_pretrained / 训练器写的模型卡（README.md，见 model_card.py）开头就写明先 `import ugt_hf`。
"""

__version__ = "0.1.0"

from .auto import register  # noqa: E402

register()

from .configuration_ugt import UGTConfig  # noqa: E402
from .modeling_ugt import UGTForGenerativeRecommendation, UGTModel  # noqa: E402
from .tokenization_ugt import UGTTokenizer  # noqa: E402

__all__ = ["UGTConfig", "UGTForGenerativeRecommendation", "UGTModel", "UGTTokenizer", "register", "__version__"]
