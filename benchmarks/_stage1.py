"""benchmarks/gpu_check.py 与 bench_roofline.py 共用：准备 Beauty（或合成替身）数据目录、按提交的 Beauty 阶段 1
配置（recipes/configs/beauty_stage1.yaml）装配模型、数据集与 UGTTrainer。

与 ugt_hf.training.stages.run_stage 走同一批构件（build_model、DataDir.recommend_dataset、UGTTrainer），
只是去掉了评估、保存与早停：基准只关心训练步本身。
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE1_CONFIG = ROOT / "recipes" / "configs" / "beauty_stage1.yaml"
PIPELINE_CONFIG = ROOT / "recipes" / "configs" / "beauty_pipeline.yaml"
BEAUTY_REL = Path("data") / "amazon-beauty" / "Beauty.txt"
# 找不到 Beauty.txt 时的合成替身：用户数、物品数与每用户平均事件数取 Beauty 的量级（22,363 / 12,101 / 8.9）
BEAUTY_LIKE = {"num_users": 22363, "num_items": 12101, "events_per_user": 9, "num_clusters": 200}


def find_beauty(explicit: Optional[str] = None) -> Optional[Path]:
    """Beauty.txt 的位置：--beauty，环境变量 UGT_BEAUTY，仓库旁的 ../shared，仓库内的 shared/（device 机器上）。"""
    candidates = [explicit, os.environ.get("UGT_BEAUTY"), ROOT.parent / "shared" / BEAUTY_REL,
                  ROOT / "shared" / BEAUTY_REL]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if explicit:
        raise FileNotFoundError(f"--beauty {explicit}: file not found (give the path of amazon-beauty/Beauty.txt)")
    return None


def prepare_data(work: Path, beauty: Optional[Path], synthetic: Optional[Dict[str, int]] = None, log=print):
    """准备数据目录并返回 (目录, 说明, meta)。beauty 给出时按流水线配置的 prepare 段准备（与质量基准同一份数据）；
    否则用 synthetic（缺省 BEAUTY_LIKE）的合成数据。目录已是最新时 prepare 什么也不做（重复运行很快）。"""
    from ugt_hf.data.prepare import PrepareOptions, prepare

    if beauty is not None:
        spec = yaml.safe_load(PIPELINE_CONFIG.read_text())["prepare"]
        spec = {k: v for k, v in spec.items() if k != "input"}
        out, label = work / "beauty_data", f"amazon-beauty ({beauty})"
        opts = PrepareOptions(input=str(beauty), **spec)
    else:
        size = dict(BEAUTY_LIKE if synthetic is None else synthetic)
        out, label = work / "synthetic_data_{num_users}u_{num_items}i".format(**size), f"synthetic {size}"
        opts = PrepareOptions(source="synthetic", **size)
    meta = prepare(str(out), opts, progress=False, log=log)
    return out, label, meta


def stage1_args(data_dir: Path, output_dir: Path, max_steps: int, overrides: Optional[Dict[str, Any]] = None,
                argv: Sequence[str] = ()):
    """提交的阶段 1 配置 + 只训练 max_steps 步（不评估、不保存、不早停）。overrides 写进一个以提交的配置为
    base 的 YAML（这样 null 之类的值也能覆盖），argv 是额外的命令行参数。"""
    from ugt_hf.training.arguments import parse_stage_args

    output_dir.mkdir(parents=True, exist_ok=True)
    data = {"base": str(STAGE1_CONFIG), "early_stopping_patience": None, "load_best_model_at_end": False,
            "eval_strategy": "no", "save_strategy": "no", "max_steps": int(max_steps), "report_to": "none",
            "logging_steps": max(1, int(max_steps)), "disable_tqdm": True}
    data.update(overrides or {})
    path = output_dir / "bench_stage1.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return parse_stage_args(1, ["--config", str(path), "--data_dir", str(data_dir), "--output_dir", str(output_dir),
                                *argv])


def step_stamps():
    """每个优化步结束时记一个时间戳的回调（CUDA 上先同步，时间才对应计算完成）；.t 是时间戳列表。"""
    import torch
    from transformers import TrainerCallback

    class StepStamps(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())

    return StepStamps()


def samples_per_second(stamps, warmup: int, samples_per_step: int):
    """去掉前 warmup 步后的吞吐量：(计时的步数, 秒, samples/s)。warmup 步以前的时间含一次性准备。"""
    timed = stamps[warmup - 1:] if warmup else stamps
    if len(timed) < 2:
        return 0, 0.0, None
    seconds = timed[-1] - timed[0]
    steps = len(timed) - 1
    return steps, seconds, (samples_per_step * steps / seconds if seconds > 0 else None)


def build_stage1(args, callbacks=(), train_dataset=None):
    """返回 (trainer, model, train_dataset)；与 run_stage 的阶段 1 相同的模型与训练集，没有评估集。
    train_dataset 给出时用它（如 StreamingDataset）代替数据目录的 train 划分。"""
    import torch
    from transformers import set_seed

    from ugt_hf.training.stages import build_model, resolve_data
    from ugt_hf.training.trainer import UGTTrainer

    targs = args.training
    if targs.torch_num_threads:
        torch.set_num_threads(int(targs.torch_num_threads))
    set_seed(targs.seed)
    data = resolve_data(args.data)
    model = build_model(args.model, targs, data)
    train_ds = train_dataset if train_dataset is not None else data.recommend_dataset(
        "train", max_encoder_length=int(targs.encoder_max_length), max_decoder_length=int(targs.decoder_max_length))
    trainer = UGTTrainer(model=model, args=targs, train_dataset=train_ds, callbacks=list(callbacks),
                         processing_class=data.tokenizer())
    return trainer, model, train_ds
