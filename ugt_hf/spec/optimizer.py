"""规格 11.4 的优化器：`create_optimizer`、`AdamW`、`LAMB`（实现在 `ugt_hf.training.optim`，这里只导出规格的名字）。"""

from torch.optim import AdamW

from ugt_hf.training.optim import LAMB, create_optimizer

__all__ = ["AdamW", "LAMB", "create_optimizer"]
