"""规格的阶段 3 脚本：`python -m ugt_hf.spec.scripts.train_stage3 [--config FILE] [--key value ...]`，
参数按 Stage3Config；以及规格 8.4 从这里导入的 `DPOTrainer(model, config, reference_model, train_dataset, ...)`。"""

import sys
from typing import Any, Optional, Sequence

from torch import nn

from ugt_hf.training.dpo_trainer import UGTDPOTrainer

from . import main as _spec_main

__all__ = ["DPOTrainer", "main"]


class DPOTrainer(UGTDPOTrainer):
    """规格 8.4 的 DPO 训练器：`config` 是 Stage3Config，`reference_model` 是冻结的参考模型；
    其余关键字参数（train_dataset、eval_dataset、processing_class 即 UGTTokenizer ...）交给 UGTDPOTrainer（TRL）。
    train() 返回 HF 的 TrainOutput。"""

    def __init__(self, model: nn.Module, config: Any = None, reference_model: Optional[nn.Module] = None,
                 **kwargs: Any):
        if config is None:
            config = kwargs.pop("args", None)
        super().__init__(model=model, ref_model=reference_model, args=config, **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _spec_main(3, argv)


if __name__ == "__main__":
    sys.exit(main())
