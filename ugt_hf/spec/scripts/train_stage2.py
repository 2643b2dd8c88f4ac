"""规格的阶段 2 脚本：`python -m ugt_hf.spec.scripts.train_stage2 [--config FILE] [--key value ...]`。"""

import sys
from typing import Optional, Sequence

from ugt_hf.training.stages import main as _stage_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _stage_main(2, argv)


if __name__ == "__main__":
    sys.exit(main())
