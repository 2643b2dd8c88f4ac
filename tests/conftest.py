"""测试公共设置：固定线程数与随机种子，保证 2 核 CI 上可复现且不过载。"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

# 共享的 2 核机器上 2 个 torch 线程互相等待，小算子慢一个数量级（实测 1.1 s vs 0.012 s 一步）：测试固定 1 线程
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
