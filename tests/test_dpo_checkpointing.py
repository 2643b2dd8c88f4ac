"""阶段 3（UGTDPOTrainer）的检查点与 UGTTrainer 共用 CheckpointingMixin（#16）：SIGTERM 保存后停止、
resume_from_checkpoint=True / "true" 只选完整检查点且逐位续上、保存中途被杀不留可选的半成品、没有 pickle、
加载前拒绝不安全的 pickle。小模型与偏好对来自 test_dpo_trainer。"""

import os
import signal

import _resume_worker as w
import pytest
import torch
from _pipeline_fixtures import pickled_files
from test_dpo_trainer import _args, _model, _pairs, _tokenizer
from transformers.trainer_utils import get_last_checkpoint as hf_get_last_checkpoint

from ugt_hf.training import checkpointing as ckpt
from ugt_hf.training.dpo_trainer import UGTDPOTrainer

# 48 对、batch 8、累积 2：每 epoch 3 步，3 个 epoch 共 9 步；save_strategy "no" 与 recipes/configs/base_dpo.yaml 相同
RUN = dict(max_epochs=3, gradient_accumulation_steps=2, logging_steps=1)
TOTAL, STOP = 9, 5  # 在第 2 个 epoch 中间停


def _trainer(tmp_path, callbacks=None, **kw):
    opts = {**RUN, **kw}
    return UGTDPOTrainer(model=_model(), args=_args(tmp_path, **opts), train_dataset=_pairs(),
                         processing_class=_tokenizer(), callbacks=callbacks)


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    trainer = _trainer(tmp_path_factory.mktemp("dpo_ref"))
    trainer.train()
    return _losses(trainer), _state(trainer)


@pytest.mark.parametrize("resume", [True, "true"])
def test_sigterm_saves_and_resume_true_continues_bit_exactly(tmp_path, reference, resume):
    ref_losses, ref_weights = reference
    trainer = _trainer(tmp_path, callbacks=[w.signal_at(STOP)])
    trainer.train()  # 不抛出、进程不被杀：保存后停止
    assert trainer.stopped_by_signal == signal.SIGTERM and trainer.state.global_step == STOP
    last = tmp_path / "out" / f"checkpoint-{STOP}"
    assert ckpt.get_last_checkpoint(str(tmp_path / "out")) == str(last)
    assert (last / "training_args.json").is_file() and not (last / "training_args.bin").exists()
    # 只有 weights_only 可加载的 HF 训练状态（优化器 / 调度器 / RNG），没有 training_args.bin 之类的 pickle
    assert {p.name for p in pickled_files(last)} <= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}

    resumed = _trainer(tmp_path)
    resumed.train(resume_from_checkpoint=resume)
    assert resumed.state.global_step == TOTAL
    assert _losses(resumed) == ref_losses
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k


def test_kill_while_saving_leaves_the_previous_checkpoint_resumable(tmp_path, reference):
    ref_losses, ref_weights = reference
    out = tmp_path / "out"
    trainer = _trainer(tmp_path, save_strategy="steps", save_steps=2)
    original = trainer._save_rng_state

    def dying(output_dir):  # 权重、优化器已写进 staging；rng / trainer_state 还没写
        if trainer.state.global_step == 4:
            raise SystemExit("killed while saving")
        return original(output_dir)

    trainer._save_rng_state = dying
    with pytest.raises(SystemExit):
        trainer.train()
    names = sorted(os.listdir(out))
    assert "checkpoint-4" not in names and any(n.startswith(ckpt.STAGING_PREFIX) for n in names), names
    assert hf_get_last_checkpoint(str(out)).endswith("checkpoint-2")

    resumed = _trainer(tmp_path, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert not any(n.startswith(ckpt.STAGING_PREFIX) for n in os.listdir(out))  # 半成品已清理
    assert _losses(resumed) == ref_losses
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k
    assert not list(out.rglob("training_args.bin"))


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unsafe_pickle_in_a_stage3_checkpoint_is_refused(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=1, save_strategy="steps", save_steps=2, max_steps=2)
    trainer.train()
    last = tmp_path / "out" / "checkpoint-2"
    torch.save(_Payload(), last / "optimizer.pt")
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"optimizer\.pt.*getcwd"):
        _trainer(tmp_path, max_epochs=1, max_steps=4).train(resume_from_checkpoint=True)
