"""测试公共设置：固定线程数与随机种子，保证 2 核 CI 上可复现且不过载。"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

# 测试会同时起子进程（续训、2 进程 DDP）；2 核机器上每个进程再开 2 个线程会超额订阅、慢一个数量级：固定 1 线程
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
