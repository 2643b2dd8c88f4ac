#!/usr/bin/env bash
# 一次性 GPU 检查（见 benchmarks/gpu_check.py 的说明）。GPU 机器上只需一条命令：
#     bash benchmarks/gpu_check.sh --out /path/gpu.json
# CPU 上检查编排本身：
#     bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu.json
# 其余选项：--beauty PATH（Beauty.txt）、--wheelhouse DIR（离线装 deepspeed）、--work DIR、--budget SECONDS。
# 退出码：0 = 没有失败的检查且在预算内；1 = 有失败（JSON 里写明是哪一项、为什么）。
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
# 用这份检出里的代码，而不是别处的可编辑安装
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true
PYTHON="${PYTHON:-python}"
# 外层硬上限：Python 自己按 8 分钟预算跳过剩下的检查；这里再多给 50 秒收尾，卡死时也会停
exec timeout -k 10 530 "$PYTHON" benchmarks/gpu_check.py "$@"
