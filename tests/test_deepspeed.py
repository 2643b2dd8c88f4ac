"""DeepSpeed ZeRO-2 / ZeRO-3：与普通（DDP 路径）训练的损失曲线在容差内一致。需要 CUDA 与 deepspeed 包，
否则整个模块以明确的原因跳过（CPU CI 上就是跳过）。"""


import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("DeepSpeed tests need CUDA (none on this machine)", allow_module_level=True)
pytest.importorskip("deepspeed", reason="deepspeed is an optional extra: pip install 'ugt-hf[deepspeed]'")

from _resume_worker import collate, make_samples  # noqa: E402

from ugt_hf.configuration_ugt import UGTConfig  # noqa: E402
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation  # noqa: E402
from ugt_hf.spec.config import TrainingConfig  # noqa: E402
from ugt_hf.training.trainer import UGTTrainer  # noqa: E402

STEPS = 12


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    # HF 的 DeepSpeed 集成要求分布式环境变量；单卡时就是 world_size = 1
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29571", "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)


def _run(tmp_path, name, **overrides):
    torch.manual_seed(0)
    model = UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=[6, 5, 7], d_model=32, num_heads=2,
                                                     num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64,
                                                     num_experts=1, num_experts_per_tok=1, dropout=0.0))
    args = TrainingConfig(output_dir=str(tmp_path / name), batch_size=4, gradient_accumulation_steps=1,
                          max_steps=STEPS, learning_rate=1e-3, warmup_steps=0, logging_steps=1, save_strategy="no",
                          eval_strategy="no", report_to="none", fp16=False, bf16=False, seed=0,
                          lambda_contrastive=0.0, dataloader_num_workers=0, **overrides)
    trainer = UGTTrainer(model=model, args=args, data_collator=collate, train_dataset=make_samples(48))
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_follows_plain_loss_curve(tmp_path, stage):
    plain = _run(tmp_path, "plain", deepspeed=False)
    zero = _run(tmp_path, f"zero{stage}", deepspeed=True, zero_stage=stage)
    assert len(plain) == len(zero) == STEPS
    for a, b in zip(plain, zero):
        assert b == pytest.approx(a, rel=2e-3, abs=2e-3)
