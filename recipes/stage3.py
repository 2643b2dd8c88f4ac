"""阶段 3：偏好对齐（TRL DPOTrainer 之上的 UGTDPOTrainer），从阶段 2 的最佳模型开始。

用法（单进程或 accelerate 多进程，代码路径相同）：
    python recipes/stage3.py --config recipes/configs/demo_stage3.yaml [--key value ...]
    accelerate launch --config_file accelerate_configs/multi_gpu_ddp.yaml recipes/stage3.py --config ...
规格的参数名都可用：--train_data --eval_data --output_dir --batch_size --max_epochs --pretrained
--lambda_contrastive --dpo_beta --deepspeed --zero_stage，以及任意配置字段 --key value。
"""

import sys

from ugt_hf.errors import check_launch_environment, run_guarded

if __name__ == "__main__":
    # 错误配置/数据/环境故障：一行消息 + 退出码（ugt_hf/errors.py），--debug 或 UGT_DEBUG=1 显示回溯
    def _main(argv):
        from ugt_hf.training.stages import main

        check_launch_environment()
        return main(3, argv)

    sys.exit(run_guarded(_main, None, prog="stage3"))
