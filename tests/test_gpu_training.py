"""GPU 上的训练路径：bf16 autocast、fp16 + 动态损失缩放（溢出步被跳过、缩放系数减半）、单卡 FSDP2 跟随普通训练的
损失曲线。需要 CUDA，否则整个模块跳过（CPU CI 上就是跳过；benchmarks/gpu_check.sh 在 GPU 机器上运行它们）。

参照都是同一模型、数据、种子的 fp32 普通训练（与 tests/test_deepspeed.py 的做法相同）；混合精度只要求损失曲线在
宽松容差内一致，并检查 autocast 真的生效（线性层输出的 dtype），免得“开了但没用上”也通过。
"""

import math

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("GPU training tests need CUDA (none on this machine)", allow_module_level=True)

from _resume_worker import collate, make_samples  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from ugt_hf.configuration_ugt import UGTConfig  # noqa: E402
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation  # noqa: E402
from ugt_hf.spec.config import TrainingConfig  # noqa: E402
from ugt_hf.training.trainer import UGTTrainer  # noqa: E402

STEPS = 12
OVERFLOW_STEP = 5  # fp16 测试在这一步（从 1 数）往梯度里注入 inf


class Recorder(TrainerCallback):
    """每步结束时记下损失缩放系数；溢出步前后记下一个参数，检查那一步没有更新。"""

    def __init__(self, trainer_ref, param):
        self.trainer_ref, self.param = trainer_ref, param
        self.scales, self.before, self.after, self.next = [], None, None, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == OVERFLOW_STEP:
            self.before = self.param.detach().float().clone()

    def on_step_end(self, args, state, control, **kw):
        scaler = self.trainer_ref[0].accelerator.scaler
        self.scales.append(None if scaler is None else float(scaler.get_scale()))
        if state.global_step == OVERFLOW_STEP:
            self.after = self.param.detach().float().clone()
        if state.global_step == OVERFLOW_STEP + 1:
            self.next = self.param.detach().float().clone()


def _model():
    torch.manual_seed(0)
    return UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=[6, 5, 7], d_model=32, num_heads=2,
                                                    num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64,
                                                    num_experts=1, num_experts_per_tok=1, dropout=0.0))


def _run(tmp_path, name, overflow=False, **overrides):
    """训练 STEPS 步；返回 (每步损失, 训练器, 线性层输出 dtype 的集合, Recorder)。"""
    model = _model()
    dtypes = set()
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    args = TrainingConfig(output_dir=str(tmp_path / name), batch_size=4, gradient_accumulation_steps=1,
                          max_steps=STEPS, learning_rate=1e-2, warmup_steps=0, logging_steps=1, save_strategy="no",
                          eval_strategy="no", report_to="none", seed=0, disable_tqdm=True, lambda_contrastive=0.0,
                          deepspeed=False, dataloader_num_workers=0, **{"fp16": False, "bf16": False, **overrides})
    ref = []
    param = linear.weight
    recorder = Recorder(ref, param)
    trainer = UGTTrainer(model=model, args=args, data_collator=collate, train_dataset=make_samples(48),
                         callbacks=[recorder])
    ref.append(trainer)
    if overflow:
        calls = {"n": 0}

        def poison(grad):
            # 每个优化步 backward 一次（无梯度累积）：第 OVERFLOW_STEP 次 backward 的梯度变成 inf
            calls["n"] += 1
            return grad * math.inf if calls["n"] == OVERFLOW_STEP else grad

        param.register_hook(poison)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, trainer, dtypes, recorder


def _follows(reference, other, tol):
    assert len(reference) == len(other) == STEPS
    assert all(math.isfinite(x) for x in other)
    for a, b in zip(reference, other):
        assert b == pytest.approx(a, abs=tol, rel=tol)


@pytest.fixture(scope="module")
def fp32_curve(tmp_path_factory):
    losses, trainer, dtypes, _ = _run(tmp_path_factory.mktemp("fp32"), "fp32")
    assert str(trainer.args.device).startswith("cuda") and dtypes == {torch.float32}
    return losses


def test_bf16_autocast_follows_fp32(tmp_path, fp32_curve):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not support bf16")
    losses, trainer, dtypes, _ = _run(tmp_path, "bf16", bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16"
    assert torch.bfloat16 in dtypes  # autocast 生效
    _follows(fp32_curve, losses, tol=1e-2)  # CPU bf16 autocast 上实测最大差 0.003


def test_fp16_uses_loss_scaling_and_follows_fp32(tmp_path, fp32_curve):
    losses, trainer, dtypes, rec = _run(tmp_path, "fp16", fp16=True)
    assert trainer.accelerator.mixed_precision == "fp16"
    assert torch.float16 in dtypes
    assert trainer.accelerator.scaler is not None  # 动态损失缩放（GradScaler）
    assert all(s is not None and math.isfinite(s) and s > 0 for s in rec.scales)
    # 容差放宽：初始缩放 2^16 下头几步可能溢出被跳过，曲线整体错后一步
    _follows(fp32_curve, losses, tol=3e-2)


def test_fp16_overflow_step_is_skipped_and_scale_halves(tmp_path):
    losses, trainer, _, rec = _run(tmp_path, "fp16_overflow", overflow=True, fp16=True)
    k = OVERFLOW_STEP - 1  # rec.scales 的下标
    assert len(rec.scales) == STEPS
    # GradScaler 发现 inf：跳过这一步的优化器更新、缩放系数减半（growth_interval 远大于 STEPS，不会先增长）
    assert rec.scales[k] == pytest.approx(rec.scales[k - 1] / 2)
    assert torch.equal(rec.before, rec.after)
    # 之后照常训练：损失有限，训练没有被非有限值保护提前停下
    assert trainer.state.global_step == STEPS and all(math.isfinite(x) for x in losses)
    # 紧接着的一步必须更新：GradScaler 跳过时不调用底层 optimizer.step，非有限守卫的本步标志若没被消费，
    # 会带到下一步、把一个正常的步也跳过（每次溢出丢两步）
    assert not torch.equal(rec.after, rec.next)
    assert trainer.nonfinite_guard.total_skipped <= 1


def test_fsdp_single_gpu_follows_plain_curve(tmp_path, fp32_curve, monkeypatch):
    # HF 的 FSDP 集成经 accelerate 建进程组：单卡就是 world_size = 1
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29573", "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    losses, trainer, _, _ = _run(tmp_path, "fsdp", fsdp=True,
                                 fsdp_config={"version": 2, "reshard_after_forward": True,
                                              "auto_wrap_policy": "NO_WRAP"})
    assert trainer.is_fsdp_enabled
    _follows(fp32_curve, losses, tol=2e-3)
