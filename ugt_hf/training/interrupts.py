"""训练被信号打断的异常：单独放在不依赖 torch / transformers 的模块里，`ugt pipeline` 的入口不必为了
捕获它而在 `--help` 与配置错误时加载训练栈。"""

from __future__ import annotations

import signal
from typing import Optional


class TrainingInterrupted(RuntimeError):
    """训练被 SIGTERM/SIGINT 停下：已保存可续训的检查点，但阶段没有完成（不写 best_model/ 与 stage_summary.json）。

    exit_code = 128 + 信号编号（shell 的惯例：SIGTERM 143，SIGINT 130），命令行入口以它退出。
    """

    def __init__(self, signum: int, step: int, checkpoint: Optional[str], output_dir: str, how_to_resume: str = "",
                 finished: bool = False):
        self.signum, self.step, self.checkpoint, self.output_dir = int(signum), int(step), checkpoint, output_dir
        self.finished = finished  # 信号来得太晚（最后一步之后）：阶段已完成并保存，只是不再往下跑
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        code = f"(exit code {self.exit_code} = 128 + {name})"
        resume = f"; {how_to_resume}" if how_to_resume else ""
        if finished:
            super().__init__(f"received {name} after the last step: the stage finished and was saved in {output_dir}; "
                             f"stopping here{resume} {code}")
            return
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"stopped by {name} at step {step}: {saved}; the stage is not finished (no best_model/ "
                         f"or stage_summary.json in {output_dir}){resume} {code}")
