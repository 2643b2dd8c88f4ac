"""callbacks：非有限守卫的计数逻辑、信号回调只设标志并在步末请求保存+停止。"""

import os
import signal

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from ugt_hf.training.callbacks import GracefulShutdownCallback, NonFiniteGuard


def test_guard_counts_consecutive_and_resets():
    g = NonFiniteGuard(max_consecutive=2)
    g.observe_loss(torch.tensor(1.0))
    g.observe_grad_norm(torch.tensor(0.5))
    assert not g.step_is_bad()
    g.observe_loss(torch.tensor(float("nan")))
    assert g.step_is_bad() and g.consecutive == 1 and not g.exhausted
    g.observe_grad_norm(float("inf"))
    assert g.step_is_bad() and g.exhausted and g.total_skipped == 2
    g.observe_loss(torch.tensor(2.0))
    assert not g.step_is_bad() and g.consecutive == 0 and g.total_skipped == 2
    with pytest.raises(ValueError):
        NonFiniteGuard(0)


def test_signal_sets_flag_then_step_end_requests_save_and_stop(tmp_path):
    cb = GracefulShutdownCallback()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    before = signal.getsignal(signal.SIGTERM)
    cb.on_train_begin(args, state, control)
    try:
        cb.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)  # 处理函数只记标志，进程继续
        assert cb.received == signal.SIGTERM
        cb.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and cb.stopped_by_signal == signal.SIGTERM
    finally:
        cb.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGTERM) is before  # 训练结束后恢复原处理函数


def test_training_interrupted_carries_128_plus_signal_and_says_what_was_kept():
    from ugt_hf.training.callbacks import TrainingInterrupted

    e = TrainingInterrupted(signal.SIGTERM, 11, "/r/stage1/checkpoint-11", "/r/stage1", how_to_resume="re-run it")
    assert e.exit_code == 143 and TrainingInterrupted(signal.SIGINT, 1, None, "/o").exit_code == 130
    msg = str(e)
    assert msg.startswith("stopped by SIGTERM at step 11: checkpoint /r/stage1/checkpoint-11 saved;")
    assert "no best_model/ or stage_summary.json in /r/stage1" in msg and "re-run it" in msg and "\n" not in msg
