"""test_trainer 的共享工具与子进程入口：满足模型输出契约的小模型、变长数据、collator、训练配置。

子进程用法（SIGTERM / SIGKILL 测试）：
    python tests/_resume_worker.py sigterm OUT_DIR STOP_STEP   # 到 STOP_STEP 后写 ready 文件并等待父进程的 SIGTERM
    python tests/_resume_worker.py sigkill OUT_DIR KILL_STEP   # 保存 KILL_STEP 的检查点写到一半时 SIGKILL 自己
进程内：signal_at(step) 是给训练器的回调；signal_stages_at(monkeypatch, step) 用于 run_stage / ugt pipeline。
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
from torch import nn

VOCAB = (6, 5, 7)  # 各层词表
PAD = 0
MAX_STEPS = 8
BATCH = 4
NUM_SAMPLES = 24  # 每 epoch 6 步：MAX_STEPS=8 跨过一个 epoch 边界


class TinyRecModel(nn.Module):
    """满足 GenerativeRecOutput 契约的极小编码-解码模型（dropout 让续训测试也检查 RNG 恢复）。"""

    def __init__(self, d: int = 16, dropout: float = 0.1, aux: bool = True, reprs: bool = False):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(v, d) for v in VOCAB)
        self.mix = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in VOCAB)
        self.aux, self.reprs = aux, reprs

    def _embed(self, ids):  # ids [B, T, 3] -> [B, T, D]
        return sum(self.emb[level](ids[..., level]) for level in range(3))

    def forward(self, encoder_semantic_ids, encoder_attention_mask, decoder_semantic_ids, decoder_attention_mask,
                labels=None, **unused):
        enc = self._embed(encoder_semantic_ids)  # [B, Te, D]
        m = encoder_attention_mask.unsqueeze(-1).float()
        user = (enc * m).sum(1) / m.sum(1).clamp(min=1.0)  # [B, D]
        h = torch.tanh(self.mix(self.drop(self._embed(decoder_semantic_ids) + user[:, None])))  # [B, Td, D]
        out = {f"l{k + 1}_logits": head(h) for k, head in enumerate(self.heads)}
        if self.aux:
            out["aux_loss"] = (h ** 2).mean()
        if self.reprs:
            out["user_repr"] = user
            out["item_repr"] = h[:, 0]
        return out


def make_samples(n: int = NUM_SAMPLES, seed: int = 1, min_len: int = 1, max_len: int = 6, eval_format=False):
    """变长样本（已是模型输入格式，单样本无 batch 维）。eval_format=True 时 decoder = [BOS]、labels 1 个位置。"""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        te = int(torch.randint(2, 7, (1,), generator=g))
        td = 1 if eval_format else int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        enc = torch.stack([torch.randint(0, v, (te,), generator=g) for v in VOCAB], -1)  # [Te, 3]
        items = torch.stack([torch.randint(0, v, (td,), generator=g) for v in VOCAB], -1)  # [Td, 3]
        dec = torch.cat([torch.full((1, 3), PAD), items[:-1]], 0)  # [BOS, d1..d_{n-1}]
        out.append({
            "encoder_semantic_ids": enc, "encoder_attention_mask": torch.ones(te, dtype=torch.long),
            "encoder_positions": torch.arange(te), "encoder_token_types": torch.ones(te, dtype=torch.long),
            "decoder_semantic_ids": dec, "decoder_attention_mask": torch.ones(td, dtype=torch.long),
            "decoder_positions": torch.arange(td),
            "decoder_token_types": torch.cat([torch.zeros(1, dtype=torch.long), torch.ones(td - 1, dtype=torch.long)]),
            "labels": items,
        })
    return out


def collate(samples):
    """动态 padding：ids 用 PAD，labels 用 -100，mask 用 0。"""
    batch = {}
    for key in samples[0]:
        t = max(s[key].shape[0] for s in samples)
        fill = -100 if key == "labels" else PAD
        rows = []
        for s in samples:
            x = s[key]
            pad = torch.full((t - x.shape[0],) + tuple(x.shape[1:]), fill, dtype=x.dtype)
            rows.append(torch.cat([x, pad], 0))
        batch[key] = torch.stack(rows)
    return batch


def make_args(output_dir, **overrides):
    from ugt_hf.spec.config import TrainingConfig

    kw = dict(
        output_dir=str(output_dir), batch_size=BATCH, gradient_accumulation_steps=1, max_steps=MAX_STEPS,
        learning_rate=5e-2, warmup_steps=2, lr_scheduler_type="cosine", weight_decay=0.01, max_grad_norm=1.0,
        logging_steps=1, save_steps=2, save_total_limit=None, eval_strategy="no", report_to="none", fp16=False,
        seed=0, disable_tqdm=True, use_cpu=True, lambda_contrastive=0.0, lambda_moe_balance=0.01,
        dataloader_num_workers=0, optim="adamw_torch",
    )
    kw.update(overrides)
    return TrainingConfig(**kw)


class LengthedSamples(list):
    """带 lengths() 的样本列表（同 RecommendDataset）：train_sampling_strategy=group_by_length 时按它分组。"""

    def lengths(self):
        return [int(s["encoder_semantic_ids"].shape[0]) for s in self]


def make_trainer(output_dir, callbacks=None, **overrides):
    """train_sampling_strategy="group_by_length" 时训练集的 lengths() 走 UGTTrainer 的长度分组采样器。"""
    from ugt_hf.training.trainer import UGTTrainer

    torch.manual_seed(0)
    model = TinyRecModel()
    return UGTTrainer(model=model, args=make_args(output_dir, **overrides), data_collator=collate,
                      train_dataset=LengthedSamples(make_samples()), callbacks=callbacks)


def signal_at(step: int, signum: int = signal.SIGTERM):
    """在 global_step == step 的步末给本进程发一个真实信号（GracefulShutdownCallback 排在它后面，同一步就停）。"""
    from transformers import TrainerCallback

    class SignalAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                os.kill(os.getpid(), signum)

    return SignalAt()


def main(argv):
    mode, out_dir, step = argv[0], argv[1], int(argv[2])
    torch.set_num_threads(1)
    from transformers import TrainerCallback

    if mode == "sigterm":
        class WaitForSignal(TrainerCallback):
            """到 STOP_STEP 时告诉父进程，然后等父进程发来的 SIGTERM（真实的外部信号）。"""

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == step:
                    open(os.path.join(out_dir, "ready"), "w").close()
                    deadline = time.time() + 60
                    while trainer.shutdown_callback.received is None and time.time() < deadline:
                        time.sleep(0.01)

        trainer = make_trainer(out_dir, callbacks=[WaitForSignal()])
        trainer.train()
        print(f"STOPPED_BY_SIGNAL={trainer.stopped_by_signal} STEP={trainer.state.global_step}", flush=True)
        return 0

    if mode == "sigkill":
        trainer = make_trainer(out_dir)
        original = trainer._save_rng_state

        def dying_save_rng_state(output_dir):
            # 权重与优化器已写进 staging，rng/trainer_state 还没写：此刻被杀就是“保存到一半”
            if trainer.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(output_dir)

        trainer._save_rng_state = dying_save_rng_state
        trainer.train()
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))


def signal_stages_at(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """让 run_stage / ugt pipeline 里训练器的第 step 步末收到一个真实信号（包装 GracefulShutdownCallback 本身，
    因为阶段内部自己构造训练器、无法传回调）。monkeypatch.undo() 恢复。"""
    from ugt_hf.training.callbacks import GracefulShutdownCallback

    original = GracefulShutdownCallback.on_step_end

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == step:
            os.kill(os.getpid(), signum)
        return original(self, args, state, control, **kw)

    monkeypatch.setattr(GracefulShutdownCallback, "on_step_end", on_step_end)
