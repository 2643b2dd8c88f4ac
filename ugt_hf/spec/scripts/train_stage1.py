"""规格的阶段 1 脚本：`python -m ugt_hf.spec.scripts.train_stage1 [--config FILE] [--key value ...]`，
参数按 Stage1Config 解析。"""

import sys
from typing import Optional, Sequence

from . import main as _spec_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _spec_main(1, argv)


if __name__ == "__main__":
    sys.exit(main())
