"""端到端测试共用：小合成数据 + 小模型的三阶段配置（写到 tmp 目录）。"""

import zipfile
from pathlib import Path

import yaml

TINY_MODEL = {"d_model": 48, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1, "ffn_dim": 64,
              "num_experts": 2, "num_experts_per_tok": 1, "dropout": 0.0}
COMMON = {"encoder_max_length": 20, "decoder_max_length": 5, "fp16": False, "deepspeed": False,
          "gradient_accumulation_steps": 1, "report_to": "none", "logging_steps": 5, "num_beams": 10,
          "dataloader_num_workers": 0, "seed": 0, "torch_num_threads": 1}


def write_tiny_pipeline(tmp: Path, stage3_extra=None) -> Path:
    """三阶段配置 + 流水线配置；返回流水线 YAML 路径。"""
    stage1 = {**COMMON, "model_config": TINY_MODEL, "batch_size": 64, "max_epochs": 5, "learning_rate": 5e-3,
              "warmup_steps": 5, "eval_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 1,
              "load_best_model_at_end": True, "metric_for_best_model": "recall@10",
              "train_sampling_strategy": "group_by_length"}
    stage2 = {**COMMON, "batch_size": 64, "max_epochs": 2, "learning_rate": 2e-3, "warmup_steps": 2,
              "lambda_contrastive": 0.1, "eval_strategy": "no", "save_strategy": "no"}
    stage3 = {**COMMON, "batch_size": 32, "max_epochs": 3, "learning_rate": 1e-3, "warmup_steps": 2,
              "lambda_preference": 0.5, "dpo_beta": 0.1, "eval_strategy": "no", "save_strategy": "no",
              "logging_steps": 10, **(stage3_extra or {})}
    paths = {}
    for n, cfg in ((1, stage1), (2, stage2), (3, stage3)):
        paths[n] = tmp / f"stage{n}.yaml"
        paths[n].write_text(yaml.safe_dump(cfg))
    pipe = {"dataset": "tiny-synthetic",
            "prepare": {"source": "synthetic", "num_users": 500, "num_items": 300, "events_per_user": 15,
                        "num_clusters": 15, "seed": 0, "encoder_max_length": 20},
            "stages": {n: str(p) for n, p in paths.items()},
            "evaluation": {"split": "test", "k_values": [5, 10], "num_beams": 10,
                           "transition_prior": {"window": 2, "weights": [0.0, 1.0]}}}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipe))
    return path


def pickled_files(folder):
    """folder 里所有 pickle：原始 pickle（协议头 0x80 开头）或 torch.save 的 zip（内含 data.pkl）。"""
    out = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            head = f.read(1)
        if head == b"\x80":
            out.append(path)
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    out.append(path)
    return out
