"""规格的三阶段训练脚本 `python -m ugt_hf.spec.scripts.train_stage{1,2,3} --train_data ... --output_dir ...`。

走生产阶段入口（recipes/stage{1,2,3}.py 用的同一个 `run_stage`），只是参数用规格的配置类
Stage{1,2,3}Config 解析：规格独有的字段（`--ddp`、max_seq_length、num_negatives ...）与规格名
（--train_data --eval_data --pretrained --batch_size --max_epochs --lambda_contrastive --dpo_beta --deepspeed
--zero_stage ...）在 `--config` YAML 与命令行里都认。DDP 由启动方式决定（`torchrun --nproc_per_node=N -m ...`），
`--ddp` 只作记录。
"""

import json
from typing import Optional, Sequence

from ugt_hf.training.arguments import ConfigError
from ugt_hf.training.stages import close_process_group, run_stage

from ..config import Stage1Config, Stage2Config, Stage3Config, parse_config

__all__ = ["STAGE_CONFIGS", "main"]

STAGE_CONFIGS = {1: Stage1Config, 2: Stage2Config, 3: Stage3Config}


def main(stage: int, argv: Optional[Sequence[str]] = None) -> int:
    """与生产入口 `stages.main` 相同的约定：错误配置给一行清楚的错误并以 2 退出；成功时打印一行 JSON 摘要。"""
    try:
        config = parse_config(STAGE_CONFIGS[stage], argv)
        summary = run_stage(stage, args=config)
    except ConfigError as e:
        print(f"stage{stage}: {e}", flush=True)
        return 2
    print(json.dumps({k: summary[k] for k in ("stage", "best_model_dir", "train_seconds") if k in summary}))
    close_process_group()
    return 0
