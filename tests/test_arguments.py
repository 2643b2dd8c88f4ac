"""arguments.py 测试：规格默认值、同义名、YAML + 命令行、错误输入、精度回退、DeepSpeed 配置、保存回读。"""

import json
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments
from trl import DPOConfig

from ugt_hf.spec.config import Stage1Config, Stage2Config, Stage3Config, TrainingConfig
from ugt_hf.training import arguments as A
from ugt_hf.training.arguments import (
    ConfigError,
    PrecisionFallbackWarning,
    build_deepspeed_config,
    parse_config,
    parse_stage_args,
    save_resolved_config,
)

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
needs_cpu_only = pytest.mark.skipif(not NO_CUDA, reason="该测试断言无 GPU 时的行为")


def make(cls=TrainingConfig, **kw):
    """构造配置；默认关掉 fp16 以免每个测试都触发回退警告。"""
    kw.setdefault("fp16", False)
    return cls(**kw)


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ 默认值 / 继承关系
def test_base_defaults_follow_spec():
    c = make()
    assert isinstance(c, TrainingArguments)
    expected = dict(
        output_dir="checkpoints", experiment_name="ugt_training", seed=42, batch_size=256,
        gradient_accumulation_steps=4, max_epochs=10, max_steps=-1, max_seq_length=1024,
        encoder_max_length=512, decoder_max_length=128, learning_rate=1e-4, weight_decay=0.01,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, warmup_steps=10000,
        min_lr_ratio=0.1, bf16=False, lambda_contrastive=0.1, lambda_preference=0.1, lambda_moe_balance=0.01,
        l1_loss_weight=0.5, l2_loss_weight=0.3, l3_loss_weight=0.2, label_smoothing=0.0,
        contrastive_temperature=0.07, num_negatives=127, dpo_beta=0.1, dpo_reference_free=False,
        pretrained_model_path=None, reference_model_path=None, train_data_path=None, eval_data_path=None,
        resume_from_checkpoint=None, logging_steps=100, save_steps=1000, eval_steps=500, save_total_limit=3,
        local_rank=-1, ddp=False, zero_stage=2, optimizer_type="adamw",
        remove_unused_columns=False, label_smoothing_factor=0.0,
    )
    for name, value in expected.items():
        assert getattr(c, name) == value, name
    # 规格名映射到 HF 名
    assert c.per_device_train_batch_size == 256 and c.per_device_eval_batch_size == 256
    assert c.num_train_epochs == 10 and c.run_name == "ugt_training"
    # 规格默认 fp16=True（字段默认值），cosine + min_lr_ratio → cosine_with_min_lr
    assert TrainingConfig.__dataclass_fields__["fp16"].default is True
    assert c.lr_scheduler_type.value == "cosine_with_min_lr"
    assert c.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert c.eval_strategy.value == "no"
    assert c.report_to == ["tensorboard"]
    for name in ("batch_size", "learning_rate", "deepspeed", "lambda_preference", "zero_stage"):
        assert TrainingConfig.__dataclass_fields__[name].metadata.get("help"), name


@pytest.mark.parametrize(
    "cls, epochs, lr, lam_c, lam_p",
    [(Stage1Config, 5, 1e-4, 0.0, 0.0), (Stage2Config, 3, 5e-5, 0.1, 0.1), (Stage3Config, 2, 1e-5, 0.1, 0.1)],
)
def test_stage_defaults(cls, epochs, lr, lam_c, lam_p):
    c = make(cls)
    assert (c.max_epochs, c.num_train_epochs, c.learning_rate) == (epochs, epochs, lr)
    assert (c.lambda_contrastive, c.lambda_preference) == (lam_c, lam_p)
    assert c.batch_size == 256 and c.dpo_beta == 0.1


def test_stage3_is_dpo_config_with_spec_names():
    c = make(Stage3Config, dpo_beta=0.25)
    assert isinstance(c, DPOConfig)
    assert c.beta == 0.25
    # TRL 的 gradient_checkpointing=True / logging_steps=10 默认被我们的规格默认覆盖
    assert c.gradient_checkpointing is False and c.logging_steps == 100
    assert make(Stage3Config, beta=0.3).dpo_beta == 0.3
    with pytest.raises(ConfigError, match="dpo_beta"):
        make(Stage3Config, dpo_beta=0.2, beta=0.3)


def test_spec_constructor_and_hf_names():
    c = make(batch_size=4, max_epochs=1, logging_steps=1)
    assert (c.batch_size, c.max_epochs, c.per_device_train_batch_size, c.num_train_epochs) == (4, 1, 4, 1)
    c = make(per_device_train_batch_size=8, num_train_epochs=2, run_name="x")
    assert (c.batch_size, c.max_epochs, c.experiment_name) == (8, 2, "x")
    c = make(batch_size=8, per_device_train_batch_size=8, per_device_eval_batch_size=32)
    assert c.per_device_eval_batch_size == 32
    with pytest.raises(ConfigError, match="batch_size=4.*per_device_train_batch_size=8"):
        make(batch_size=4, per_device_train_batch_size=8)
    with pytest.raises(ConfigError, match="max_epochs"):
        make(max_epochs=2, num_train_epochs=3)


def test_scheduler_mapping():
    assert make(min_lr_ratio=0.0).lr_scheduler_type.value == "cosine"
    c = make(lr_scheduler_type="linear", min_lr_ratio=0.1, learning_rate=1e-3)
    assert c.lr_scheduler_type.value == "polynomial"
    assert c.lr_scheduler_kwargs == {"power": 1.0, "lr_end": pytest.approx(1e-4)}
    assert make(lr_scheduler_type="constant_with_warmup").lr_scheduler_kwargs is None
    with pytest.raises(ConfigError, match="lr_scheduler_type.*cosine"):
        make(lr_scheduler_type="cosin")
    with pytest.raises(ConfigError, match="min_lr_rate"):
        make(lr_scheduler_kwargs={"min_lr_rate": 0.5}, min_lr_ratio=0.1)


def test_eval_strategy_follows_eval_data():
    assert make(eval_data_path="valid.jsonl").eval_strategy.value == "steps"
    assert make(eval_data_path="valid.jsonl", eval_strategy="epoch").eval_strategy.value == "epoch"


# ------------------------------------------------------------------------------------------------ 校验
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"lambda_contrastive": -0.1}, "lambda_contrastive"),
        ({"lambda_moe_balance": -1}, "lambda_moe_balance"),
        ({"l2_loss_weight": -0.3}, "l2_loss_weight"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
        ({"dpo_beta": -0.1}, "dpo_beta"),
        ({"zero_stage": 4}, "zero_stage"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer_type": "lamp"}, "optimizer_type"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"l1_loss_weight": 0, "l2_loss_weight": 0, "l3_loss_weight": 0}, "l1_loss_weight"),
    ],
)
def test_invalid_values_raise_naming_field(kw, field):
    with pytest.raises(ConfigError) as info:
        make(**kw)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


def test_optimizer_type_suggestion():
    with pytest.raises(ConfigError, match="lamb"):
        make(optimizer_type="lamp")


def test_fp16_and_bf16_both_is_error():
    with pytest.raises(ConfigError, match="fp16.*bf16"):
        TrainingConfig(fp16=True, bf16=True)


# ------------------------------------------------------------------------------------------------ 精度
@needs_cpu_only
def test_explicit_fp16_falls_back_with_exactly_one_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = TrainingConfig(batch_size=4, max_epochs=1, logging_steps=1, fp16=True)
    ours = [w for w in caught if issubclass(w.category, PrecisionFallbackWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert c.fp16 is False and c.mixed_precision == "no"
    assert "fp16: false" in str(ours[0].message)  # 说明用户能做什么
    # 警告指向调用者（本文件），而不是库内部
    assert ours[0].filename == __file__
    # YAML 里显式写了 fp16: true 也算显式要求
    path = write(tmp_path, "fp16: true\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_config(TrainingConfig, [], yaml_file=path)
    assert len([w for w in caught if issubclass(w.category, PrecisionFallbackWarning)]) == 1


@needs_cpu_only
def test_default_fp16_resolves_to_fp32_silently():
    """规格默认 fp16=True：CPU 上每次运行都警告、而用户无事可做，所以默认值静默退回 fp32。"""
    for build in (lambda: TrainingConfig(batch_size=4), lambda: make(), lambda: parse_stage_args(1, []).training):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c = build()
        assert not [w for w in caught if issubclass(w.category, PrecisionFallbackWarning)]
        assert c.fp16 is False


@needs_cpu_only
def test_pin_memory_off_without_accelerator_unless_asked():
    assert TrainingConfig(batch_size=4).dataloader_pin_memory is False
    assert parse_stage_args(1, []).training.dataloader_pin_memory is False
    # 显式要求时照办（用户自己的选择，torch 的警告由此而来）
    assert TrainingConfig(batch_size=4, dataloader_pin_memory=True).dataloader_pin_memory is True


@needs_cpu_only
def test_bf16_on_cpu_uses_cpu_autocast():
    c = TrainingConfig(fp16=False, bf16=True)
    assert c.bf16 is True and c.use_cpu is True and c.mixed_precision == "bf16"


# ------------------------------------------------------------------------------------------------ DeepSpeed
def test_deepspeed_auto_without_cuda_or_package_is_plain(monkeypatch):
    monkeypatch.setattr(A, "_deepspeed_available", lambda: False)
    assert make().deepspeed is None
    assert make(deepspeed="false").deepspeed is None
    assert make(deepspeed=False).deepspeed is None


@needs_cpu_only
def test_deepspeed_explicit_without_cuda_is_clear_error(tmp_path):
    for value in (True, "true"):
        with pytest.raises(ConfigError, match="CUDA") as info:
            make(deepspeed=value)
        assert info.value.field == "deepspeed"
    ds = write(tmp_path, '{"zero_optimization": {"stage": 3}}', "ds.json")
    with pytest.raises(ConfigError, match="CUDA"):
        make(deepspeed=str(ds))


def test_deepspeed_explicit_without_package_says_pip_install(monkeypatch):
    monkeypatch.setattr(A, "_cuda_available", lambda: True)
    monkeypatch.setattr(A, "_deepspeed_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'ugt-hf\[deepspeed\]'"):
        A.UGTTrainingArguments._resolve_deepspeed(types.SimpleNamespace(deepspeed=True, zero_stage=2))


def test_deepspeed_missing_or_bad_json_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make(deepspeed=str(tmp_path / "nope.json"))
    bad = write(tmp_path, '{"zero_optimization": {"stage": 3,}}', "bad.json")
    with pytest.raises(ConfigError, match=r"bad\.json.*line 1"):
        make(deepspeed=str(bad))


def test_build_deepspeed_config_and_user_merge(tmp_path):
    args = types.SimpleNamespace(zero_stage=3, deepspeed=True)
    cfg = build_deepspeed_config(args)
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert cfg[key] == "auto"
    assert cfg["fp16"]["enabled"] == "auto" and cfg["bf16"]["enabled"] == "auto"
    assert "optimizer" not in cfg and "scheduler" not in cfg  # HF Trainer 建优化器（LAMB 也可用）

    user = write(
        tmp_path,
        json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}, "overlap_comm": False},
                    "steps_per_print": 50}),
        "ds.json",
    )
    merged = build_deepspeed_config(types.SimpleNamespace(zero_stage=2, deepspeed=str(user)))
    zero = merged["zero_optimization"]
    assert zero["stage"] == 2 and zero["contiguous_gradients"] is True  # 生成的键保留
    assert zero["overlap_comm"] is False and zero["offload_optimizer"] == {"device": "cpu"}  # 用户键覆盖/新增
    assert merged["steps_per_print"] == 50 and merged["gradient_clipping"] == "auto"
    # 合并是幂等的：对已合并的字典再合并结果不变
    assert build_deepspeed_config(types.SimpleNamespace(zero_stage=2, deepspeed=merged)) == merged
    with pytest.raises(ConfigError, match="zero_stage"):
        build_deepspeed_config(types.SimpleNamespace(zero_stage=5, deepspeed=True))


def test_deepspeed_used_when_cuda_and_package_present(monkeypatch):
    """模拟有 GPU 且装了 deepspeed：auto 生成配置（不真正调用 HF 的 DeepSpeed 集成）。"""
    monkeypatch.setattr(A, "_cuda_available", lambda: True)
    monkeypatch.setattr(A, "_deepspeed_available", lambda: True)
    obj = types.SimpleNamespace(deepspeed="auto", zero_stage=1)
    A.UGTTrainingArguments._resolve_deepspeed(obj)
    assert obj.deepspeed["zero_optimization"]["stage"] == 1


# ------------------------------------------------------------------------------------------------ parse_config
def test_parse_yaml_and_cli_precedence(tmp_path):
    path = write(
        tmp_path,
        "batch_size: 32\nmax_epochs: 4\nlearning_rate: 1e-3\nfp16: false\nwarmup_steps: 5\n"
        "train_data: data/train.jsonl\nlambda_contrastive: 0.2\n",
    )
    c = parse_config(Stage2Config, ["--config", str(path), "--batch_size", "8", "--learning_rate", "2e-4",
                                    "--pretrained", "ckpt/stage1", "--eval_data", "v.jsonl"])
    assert c.batch_size == 8 and c.per_device_train_batch_size == 8  # 命令行覆盖 YAML
    assert c.learning_rate == 2e-4  # 命令行覆盖
    assert c.max_epochs == 4 and c.num_train_epochs == 4  # 来自 YAML
    assert c.warmup_steps == 5 and c.lambda_contrastive == 0.2
    assert c.train_data_path == "data/train.jsonl" and c.pretrained_model_path == "ckpt/stage1"
    assert c.eval_data_path == "v.jsonl" and c.eval_strategy.value == "steps"
    # HF 名在命令行也覆盖 YAML 里的规格名
    c = parse_config(Stage2Config, ["--config", str(path), "--per_device_train_batch_size", "16"])
    assert c.batch_size == 16
    # yaml_file 参数与 --config 等价
    assert parse_config(Stage2Config, [], yaml_file=path).batch_size == 32


def test_parse_cli_only_and_bare_flags():
    c = parse_config(Stage1Config, ["--fp16", "false", "--max_epochs", "2", "--experiment_name", "e1",
                                    "--train_data", "t.jsonl", "--dpo_reference_free"])
    assert c.max_epochs == 2 and c.run_name == "e1" and c.dpo_reference_free is True
    assert c.learning_rate == 1e-4  # Stage1 默认
    c = parse_config(Stage1Config, ["--no_fp16", "--deepspeed", "false"])
    assert c.fp16 is False and c.deepspeed is None


@needs_cpu_only
def test_bare_deepspeed_flag_means_true():
    with pytest.raises(ConfigError, match="CUDA"):
        parse_config(TrainingConfig, ["--no_fp16", "--deepspeed"])


def test_spec_example_yaml_parses():
    path = REPO / "recipes" / "configs" / "example_stage1.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionFallbackWarning)
        c = parse_config(Stage1Config, ["--config", str(path), "--fp16", "false"])
    assert c.experiment_name == "ugt_stage1_pretrain" and c.output_dir == "checkpoints/stage1"
    assert (c.batch_size, c.max_epochs, c.learning_rate, c.warmup_steps) == (256, 5, 1e-4, 10000)


# 错误输入语料：每条都要 ConfigError，且消息里有来源与字段
def test_unknown_yaml_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "fp16: false\nbatch_szie: 8\n")
    with pytest.raises(ConfigError) as info:
        parse_config(TrainingConfig, [], yaml_file=path)
    msg = str(info.value)
    assert str(path) in msg and ":2" in msg and "batch_szie" in msg and "'batch_size'" in msg


def test_wrong_type_in_yaml(tmp_path):
    path = write(tmp_path, "fp16: false\nlearning_rate: abc\n")
    with pytest.raises(ConfigError) as info:
        parse_config(TrainingConfig, [], yaml_file=path)
    msg = str(info.value)
    assert str(path) in msg and ":2" in msg and "learning_rate" in msg and "float" in msg and "abc" in msg
    path = write(tmp_path, "batch_size: [1, 2]\n", "b.yaml")
    with pytest.raises(ConfigError, match="batch_size.*int"):
        parse_config(TrainingConfig, [], yaml_file=path)
    path = write(tmp_path, "fp16: maybe\n", "c.yaml")
    with pytest.raises(ConfigError, match="fp16.*bool"):
        parse_config(TrainingConfig, [], yaml_file=path)


def test_bad_yaml_syntax_names_line(tmp_path):
    path = write(tmp_path, "fp16: false\nbatch_size: 8\nlearning_rate: [1e-4\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        parse_config(TrainingConfig, [], yaml_file=path)
    assert str(path) in str(info.value) and "YAML" in str(info.value)
    assert info.value.line is not None and info.value.line >= 3


def test_yaml_not_a_mapping_or_empty(tmp_path):
    for text in ("- batch_size\n- 8\n", "just a string\n", ""):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError, match="mapping") as info:
            parse_config(TrainingConfig, [], yaml_file=path)
        assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        parse_config(TrainingConfig, ["--config", str(missing)])
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError, match="--config"):
        parse_config(TrainingConfig, ["--config"])


def test_duplicate_yaml_key(tmp_path):
    path = write(tmp_path, "batch_size: 8\nfp16: false\nbatch_size: 16\n")
    with pytest.raises(ConfigError, match="duplicate key") as info:
        parse_config(TrainingConfig, [], yaml_file=path)
    assert info.value.line == 3


def test_conflicting_names_in_yaml(tmp_path):
    path = write(tmp_path, "batch_size: 8\nper_device_train_batch_size: 16\n")
    with pytest.raises(ConfigError, match="per_device_train_batch_size") as info:
        parse_config(TrainingConfig, [], yaml_file=path)
    assert str(path) in str(info.value)


def test_invalid_values_from_yaml_name_file_and_line(tmp_path):
    cases = {
        "learning_rate: -0.001\n": ("learning_rate", 2),
        "lambda_preference: -0.5\n": ("lambda_preference", 2),
        "contrastive_temperature: 0\n": ("contrastive_temperature", 2),
        "zero_stage: 7\n": ("zero_stage", 2),
    }
    for text, (field, line) in cases.items():
        path = write(tmp_path, "fp16: false\n" + text)
        with pytest.raises(ConfigError) as info:
            parse_config(TrainingConfig, [], yaml_file=path)
        assert info.value.field == field and info.value.line == line
        assert f"{path}:{line}" in str(info.value)


def test_fp16_bf16_from_yaml_names_file(tmp_path):
    path = write(tmp_path, "fp16: true\nbf16: true\n")
    with pytest.raises(ConfigError, match="fp16.*bf16") as info:
        parse_config(TrainingConfig, [], yaml_file=path)
    assert str(path) in str(info.value)


def test_cli_errors_raise_instead_of_exit():
    with pytest.raises(ConfigError) as info:
        parse_config(TrainingConfig, ["--bacth_size", "8"])
    msg = str(info.value)
    assert "command line" in msg and "--bacth_size" in msg and "'batch_size'" in msg
    with pytest.raises(ConfigError, match="command line.*learning_rate.*abc"):
        parse_config(TrainingConfig, ["--learning_rate", "abc"])
    with pytest.raises(ConfigError, match="command line.*learning_rate"):
        parse_config(TrainingConfig, ["--no_fp16", "--learning_rate", "-1"])
    with pytest.raises(ConfigError, match="command line"):
        parse_config(TrainingConfig, ["--batch", "8"])  # 不接受前缀缩写
    with pytest.raises(ConfigError, match="positional"):
        parse_config(TrainingConfig, ["stray"])


# ------------------------------------------------------------------------------------------------ 保存 / 回读
@pytest.mark.parametrize("cls", [Stage1Config, Stage3Config])
def test_save_resolved_config_round_trip(tmp_path, cls):
    original = parse_config(
        cls,
        ["--fp16", "false", "--batch_size", "8", "--max_epochs", "2", "--lr_scheduler_type", "linear",
         "--train_data", "t.jsonl", "--eval_data", "v.jsonl", "--experiment_name", "rt", "--optimizer_type", "lamb",
         "--output_dir", str(tmp_path / "out")],
    )
    path = save_resolved_config(original, tmp_path / "saved")
    assert path.name == "ugt_config.yaml" and path.with_suffix(".json").is_file()
    reloaded = parse_config(cls, ["--config", str(path)])
    assert type(reloaded) is cls
    assert A.resolved_config_dict(reloaded) == A.resolved_config_dict(original)
    assert reloaded.lr_scheduler_type.value == "polynomial" and reloaded.batch_size == 8
    payload = json.loads(path.with_suffix(".json").read_text())
    # 规格名只是别名：只以 HF 名保存一次
    assert payload["config_class"] == cls.__name__ and payload["config"]["per_device_train_batch_size"] == 8
    assert "batch_size" not in payload["config"] and "max_epochs" not in payload["config"]


# ------------------------------------------------------------------------------------------------ 解析器
def test_standalone_hf_argparser_builds_the_same_options_as_transformers():
    """argparsing 在 transformers 未导入时按文件加载 hf_argparser.py：生成的选项必须与 transformers 的类完全相同。"""
    from transformers import HfArgumentParser

    from ugt_hf import argparsing

    saved = sys.modules.pop("transformers.hf_argparser")  # 模拟 transformers 尚未导入
    try:
        standalone = argparsing._hf_argument_parser()
    finally:
        sys.modules["transformers.hf_argparser"] = saved
    assert standalone is not HfArgumentParser and standalone.__module__ == "ugt_hf._hf_argparser"

    def options(cls):
        return [(a.option_strings, a.dest, a.nargs, a.choices, a.help)
                for a in cls((A.UGTTrainingArguments, A.ModelArguments))._actions]

    assert options(standalone) == options(HfArgumentParser)


def test_stage_help_lists_ugt_fields_with_stage_defaults():
    from ugt_hf.training.argument_fields import stage_help_parser

    text = stage_help_parser(1).format_help()
    assert "--help_all" in text and "TrainingArguments" in text
    assert "(default: 5)" in text  # num_train_epochs 按阶段 1 的默认值显示，而不是字段默认值 10
    assert "--beta" in stage_help_parser(3).format_help() and "--beta" not in text


# ------------------------------------------------------------------------------------------------ 警告噪音
@needs_cpu_only
def test_default_cpu_stage1_run_emits_no_warning(tmp_path):
    """CPU 上按默认值（fp16、dataloader_pin_memory 都不写）跑一个小阶段 1：没有用户无事可做的警告
    （fp16 回退、每个 DataLoader 一次的 pin_memory 警告）。"""
    import yaml
    from _pipeline_fixtures import TINY_MODEL
    from _tiny_artifacts import tiny_data_dir

    from ugt_hf.training.stages import run_stage

    cfg = {"model_config": TINY_MODEL, "batch_size": 64, "max_epochs": 1, "learning_rate": 5e-3, "warmup_steps": 2,
           "encoder_max_length": 20, "decoder_max_length": 5, "eval_strategy": "epoch", "save_strategy": "epoch",
           "logging_steps": 2, "num_beams": 5, "torch_num_threads": 1, "report_to": "none", "disable_tqdm": True}
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_stage(1, ["--config", str(tmp_path / "s1.yaml"), "--data_dir", str(tiny_data_dir()),
                                "--output_dir", str(tmp_path / "out")])
    assert Path(summary["best_model_dir"]).is_dir()
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert shown == []
