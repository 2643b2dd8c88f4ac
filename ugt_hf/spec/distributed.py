"""规格第 9 节的分布式名字：`setup_distributed`、`DistributedTrainer`、`DeepSpeedTrainer`。

不自建分布式层：进程组、设备放置、DDP 包装与 DeepSpeed 引擎都由 Accelerate（经 HF Trainer）完成，
启动方式决定一切（`torchrun` / `accelerate launch` / `deepspeed`），代码路径与单进程相同。
这里只把规格的名字接到这些机制上，并在前提不满足时给出明确的错误。
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from accelerate import PartialState

from .trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["DeepSpeedTrainer", "DistributedInfo", "DistributedTrainer", "setup_distributed"]

DEEPSPEED_INSTALL_HINT = "pip install 'ugt-hf[deepspeed]'"


class DistributedInfo(NamedTuple):
    rank: int
    local_rank: int
    world_size: int
    device: torch.device


def setup_distributed(**kwargs: Any) -> DistributedInfo:
    """初始化（或取得已初始化的）分布式状态：Accelerate 的 `PartialState` 读取启动器设置的环境变量
    （RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR），必要时建立进程组；单进程启动时 world_size = 1。

    kwargs 交给 `PartialState`（如 cpu=True、backend="gloo"）。
    """
    state = PartialState(**kwargs)
    return DistributedInfo(state.process_index, state.local_process_index, state.num_processes, state.device)


class DistributedTrainer(Trainer):
    """DDP 训练器（规格 9.2）。DDP 由启动方式开启：`torchrun --nproc_per_node=N ...` 或 `accelerate launch`，
    HF Trainer 经 Accelerate 包装模型、切分数据、同步梯度；单进程启动时与 `Trainer` 完全相同。"""

    def __init__(self, model=None, config: Any = None, train_dataset=None, eval_dataset=None, **kwargs: Any):
        super().__init__(model=model, config=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         **kwargs)
        if getattr(config, "ddp", False) and self.args.world_size <= 1:
            logger.warning("ddp=True but this run has a single process: launch with `torchrun --nproc_per_node=N` "
                           "or `accelerate launch` to train on several devices")


class DeepSpeedTrainer(Trainer):
    """DeepSpeed 训练器（规格 9.3）：config.deepspeed 开启（需要 CUDA 与 deepspeed 包）时，HF Trainer 经 Accelerate
    建立 DeepSpeed 引擎（ZeRO 阶段取 config.zero_stage）；没有开启时报错，而不是悄悄按普通 DDP 训练。"""

    def __init__(self, model=None, config: Any = None, train_dataset=None, eval_dataset=None, **kwargs: Any):
        super().__init__(model=model, config=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         **kwargs)
        if not self.is_deepspeed_enabled:
            raise RuntimeError(
                "DeepSpeedTrainer: DeepSpeed is not enabled for this config (config.deepspeed resolved to off). "
                "Set deepspeed=True on a machine with a CUDA GPU and the deepspeed package "
                f"({DEEPSPEED_INSTALL_HINT}), and launch with `deepspeed` or `accelerate launch`"
            )
