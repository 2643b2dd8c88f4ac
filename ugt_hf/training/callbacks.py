"""训练回调与守卫：信号安全退出、非有限损失/梯度跳过更新。

HF Trainer 的不足：
- 收到 SIGTERM（集群抢占、`kill`）时进程直接结束，上次保存之后的训练全部丢失；SIGINT 抛 KeyboardInterrupt，
  同样不保存。`GracefulShutdownCallback` 只记下信号，在当前优化步结束后令 Trainer 保存并停止（走 HF 自己的
  `control.should_save` / `should_training_stop`），进程正常返回。
- 损失或梯度范数为 NaN/Inf 时 HF 仍调用 `optimizer.step()`，一步就把参数与 Adam 动量全部污染成 NaN
  （`logging_nan_inf_filter` 只是不把它记进日志）。`NonFiniteGuard` 在这一步完全跳过更新（参数与优化器状态
  都不变），计数并记日志；连续 N 次后停止训练并给出清楚的错误。
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Dict, Optional, Sequence

import torch
from transformers import TrainerCallback

from .interrupts import TrainingInterrupted  # noqa: F401  （历史位置；定义在不依赖 torch 的模块里）

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONSECUTIVE_NONFINITE = 10


class TrainingDivergedError(RuntimeError):
    """连续 N 个优化步的损失或梯度范数非有限，训练已停止。"""


# ---------------------------------------------------------------- 信号
class GracefulShutdownCallback(TrainerCallback):
    """SIGTERM/SIGINT：完成当前优化步 → 保存检查点 → 停止训练，`train()` 正常返回。

    第二次 SIGINT 恢复默认行为（立即 KeyboardInterrupt），给确实想马上退出的人留条路。
    多进程时各 rank 的标志做一次 all_reduce(max)，否则只有收到信号的 rank 去保存会在 barrier 上死锁。
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: Optional[int] = None  # 收到的信号编号
        self.stopped_by_signal: Optional[int] = None  # 因信号停止训练时记录
        self._previous: Dict[int, object] = {}

    # 信号处理函数只设标志：在处理函数里保存检查点不安全（可能正处于 optimizer.step 的中间）
    def _handler(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = signum
        logger.warning(
            "received %s: finishing the current step, then saving a checkpoint and stopping",
            signal.Signals(signum).name,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        self.received = None
        self.stopped_by_signal = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("GracefulShutdownCallback: not in the main thread, signal handlers not installed")
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _restore(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def _any_rank_received(self) -> bool:
        flag = self.received is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            t = torch.tensor([1 if flag else 0], device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_received():
            self.stopped_by_signal = self.received if self.received is not None else signal.SIGTERM
            control.should_log = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """HF 停止训练时跳出 epoch 循环后仍调用 on_epoch_end：eval/save_strategy=epoch 会在 epoch 中间再评估一次、
        再存一次同一步（大验证集上能拖过抢占的宽限期，还把这次额外的评估写进续训点，续训后的最佳模型选择与
        不中断的运行不同）。信号停在 epoch 中间时取消这两样；恰好停在 epoch 末时照常（那是正常的 epoch 末评估）。"""
        if self.stopped_by_signal is not None and state.epoch is not None:
            if abs(state.epoch - round(state.epoch)) > 1e-6:
                control.should_evaluate = False
                control.should_save = False
        return control


# ---------------------------------------------------------------- 非有限守卫
class NonFiniteGuardStepEnd(TrainerCallback):
    """每个优化步结束时让 NonFiniteGuard 清掉没被读的标志（见 NonFiniteGuard.end_step）。"""

    def __init__(self, guard: "NonFiniteGuard"):
        self.guard = guard

    def on_step_end(self, args, state, control, **kwargs):
        if self.guard.end_step():
            logger.info("step %d: optimizer update skipped by the fp16 loss scaler (non-finite gradients)",
                        state.global_step)


class NonFiniteGuard:
    """记录每个优化步的损失与梯度范数是否有限，决定是否跳过 `optimizer.step()`。

    用法（UGTTrainer 内部）：
        training_step 之后      guard.observe_loss(loss)         # 张量累积，不同步
        _get_grad_norm 之后     guard.observe_grad_norm(norm)
        optimizer.step 包装里   if guard.step_is_bad(): 跳过
    每个优化步只做一次设备同步（读一个布尔值）。
    """

    def __init__(self, max_consecutive: int = DEFAULT_MAX_CONSECUTIVE_NONFINITE):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.consecutive = 0
        self.total_skipped = 0
        self._bad: Optional[torch.Tensor] = None  # 当前优化步内是否出现过非有限值（0 维布尔张量）
        self.last_grad_norm: Optional[float] = None
        self.diverged_message: Optional[str] = None

    def observe_loss(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad = bad if self._bad is None else (self._bad | bad)

    def observe_grad_norm(self, grad_norm) -> None:
        if grad_norm is None:
            return
        if torch.is_tensor(grad_norm):
            bad = ~torch.isfinite(grad_norm.detach()).all()
        else:
            bad = torch.tensor(not (float(grad_norm) == float(grad_norm) and abs(float(grad_norm)) != float("inf")))
            self.last_grad_norm = float(grad_norm)
        if self._bad is not None and self._bad.device != bad.device:
            bad = bad.to(self._bad.device)
        self._bad = bad if self._bad is None else (self._bad | bad)

    def step_is_bad(self) -> bool:
        """读出并清空本步的标志；更新连续计数。返回 True 表示应跳过这一步的更新。"""
        bad = bool(self._bad.item()) if self._bad is not None else False
        self._bad = None
        if bad:
            self.consecutive += 1
            self.total_skipped += 1
        else:
            self.consecutive = 0
        return bad

    def end_step(self) -> bool:
        """优化步结束时调用：标志还没被读（fp16 的 GradScaler 发现 inf 后根本没调底层 step，守卫没机会读）时
        在这里读出并清空，这一步记为跳过。否则它会留到下一步，把一个健康的步也跳过（每次溢出丢两步）。"""
        if self._bad is None:
            return False
        return self.step_is_bad()

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.max_consecutive

    def state_dict(self) -> Dict[str, int]:
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped}

    def load_state_dict(self, d: Dict[str, int]) -> None:
        self.consecutive = int(d.get("consecutive", 0))
        self.total_skipped = int(d.get("total_skipped", 0))
