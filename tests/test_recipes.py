"""recipes/stage{1,2,3}.py：规格文档里的脚本参数照原样解析；坏参数给一行清楚的错误、退出码 2。"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ugt_hf.spec.config import Stage1Config, Stage2Config, Stage3Config
from ugt_hf.training.arguments import ConfigError, load_yaml_config, parse_config, parse_stage_args

ROOT = Path(__file__).resolve().parents[1]


def test_stage1_flags_from_spec(tmp_path):
    # 规格 2.3 节的阶段 1 命令
    args = parse_config(Stage1Config, ["--train_data", "data/pretrain/train.jsonl", "--eval_data",
                                       "data/pretrain/eval.jsonl", "--output_dir", str(tmp_path / "s1"),
                                       "--batch_size", "256", "--max_epochs", "5", "--fp16", "false"])
    assert args.train_data_path == "data/pretrain/train.jsonl" and args.eval_data_path == "data/pretrain/eval.jsonl"
    assert args.per_device_train_batch_size == 256 and args.num_train_epochs == 5


def test_stage2_and_stage3_flags_from_spec(tmp_path):
    a2 = parse_config(Stage2Config, ["--pretrained", "checkpoints/stage1/best_model", "--train_data", "t.jsonl",
                                     "--output_dir", str(tmp_path / "s2"), "--lambda_contrastive", "0.1",
                                     "--fp16", "false"])
    assert a2.pretrained_model_path == "checkpoints/stage1/best_model" and a2.lambda_contrastive == 0.1
    a3 = parse_config(Stage3Config, ["--pretrained", "checkpoints/stage2/best_model", "--train_data", "p.jsonl",
                                     "--output_dir", str(tmp_path / "s3"), "--dpo_beta", "0.2", "--fp16", "false"])
    assert a3.dpo_beta == 0.2 and a3.beta == 0.2


def test_config_file_plus_overrides_and_deepspeed_flags(tmp_path):
    cfg = tmp_path / "stage1.yaml"
    cfg.write_text(yaml.safe_dump({"batch_size": 32, "max_epochs": 2, "fp16": False, "zero_stage": 3}))
    args = parse_config(Stage1Config, ["--config", str(cfg), "--max_epochs", "4", "--output_dir", str(tmp_path)])
    assert args.per_device_train_batch_size == 32 and args.num_train_epochs == 4
    # 规格的 --deepspeed --zero_stage：没有 CUDA/DeepSpeed 时是一条清楚的错误，而不是静默忽略
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="deepspeed|CUDA"):
            parse_config(Stage1Config, ["--config", str(cfg), "--deepspeed", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_recipe_script_rejects_unknown_flag(stage, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / f"stage{stage}.py"), "--batch_sise", "8",
                           "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # 指出错误的键并给出最接近的合法名；错误只有一行，在 stderr 上（stdout 留给结果）
    lines = [ln for ln in proc.stderr.splitlines() if "batch_sise" in ln]
    assert len(lines) == 1 and "batch_size" in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "batch_sise" not in proc.stdout


def test_committed_configs_parse():
    for path in sorted((ROOT / "recipes" / "configs").glob("*_stage[123].yaml")):
        stage = int(path.stem[-1])
        cls = {1: Stage1Config, 2: Stage2Config, 3: Stage3Config}[stage]
        args = parse_config(cls, ["--config", str(path), "--output_dir", "/tmp/ugt_cfg_check"])
        assert args.fp16 is False, path  # CPU 配置：不依赖 fp16 回退
        stage_args = parse_stage_args(stage, ["--config", str(path), "--output_dir", "/tmp/ugt_cfg_check"])
        assert stage_args.training.fp16 is False and stage_args.training.batch_size == args.batch_size, path


def test_yaml_base_include(tmp_path):
    """`base:` 相对包含它的文件解析、可链式、本文件覆盖基础；循环与缺失文件是带位置的 ConfigError。"""
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("batch_size: 8\nlearning_rate: 1.0e-3\nfp16: false\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nper_device_train_batch_size: 16\nseed: 3\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\nseed: 4\n")
    args = parse_stage_args(1, ["--config", str(tmp_path / "sub" / "leaf.yaml")])
    assert (args.training.batch_size, args.training.learning_rate, args.training.seed) == (16, 1e-3, 4)
    _, origin = load_yaml_config(tmp_path / "sub" / "leaf.yaml")
    assert origin["learning_rate"] == (str(tmp_path / "sub" / "../root.yaml"), 2)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_yaml_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("seed: 1\nbase: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml") as info:
        load_yaml_config(tmp_path / "c.yaml")
    assert info.value.line == 2
    (tmp_path / "bad.yaml").write_text("base: root.yaml\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_size") as info:
        parse_stage_args(1, ["--config", str(tmp_path / "bad.yaml")])
    assert f"{tmp_path / 'bad.yaml'}:2" in str(info.value)
