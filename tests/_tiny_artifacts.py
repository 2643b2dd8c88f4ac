"""小合成产物目录（模块级缓存：同一测试进程只准备一次）。"""

import functools
import tempfile
from pathlib import Path

from ugt_hf.data.prepare import prepare


@functools.lru_cache(maxsize=None)
def tiny_data_dir() -> Path:
    out = Path(tempfile.mkdtemp(prefix="ugt_tiny_")) / "data"
    prepare(str(out), source="synthetic", num_users=200, num_items=80, events_per_user=10, num_clusters=8, seed=1,
            encoder_max_length=20, progress=False, log=lambda *a: None)
    return out
