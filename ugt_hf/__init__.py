"""UGT-Train：基于 Hugging Face Trainer 的生成式推荐训练扩展。"""

__version__ = "0.1.0"
