"""UGTTrainer 与手写 PyTorch 循环的每优化步耗时对比（同一模型、批次、数据；同一次运行中交替进行）。

    python benchmarks/bench_trainer.py [--rounds 3] [--steps 100] [--batch 64] [--device cpu|cuda]

每轮：手写循环跑 steps+1 步，UGTTrainer（logging_steps=100）跑 steps+1 步；每步结束打时间戳，
去掉第 1 步（DataLoader/accelerate 准备等一次性开销）后取平均。两者都用同一个 DataLoader 配置与 UnifiedLoss、
AdamW、梯度裁剪、余弦调度。最后用 cProfile 剖析一轮 UGTTrainer，列出 HF/accelerate/ugt_hf 自身（非模型计算）耗时。
结果写 benchmarks/results/bench_trainer.json。
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformers import TrainerCallback, TrainingArguments, get_scheduler  # noqa: E402

from ugt_hf.spec.loss import UnifiedLoss  # noqa: E402
from ugt_hf.training.trainer import UGTTrainer  # noqa: E402

VOCAB = (256, 256, 1024)


class BenchModel(nn.Module):
    """契约模型：嵌入 + 2 层 Transformer 解码器 + 三个层次头（与真实模型同类的计算）。"""

    def __init__(self, d=128, layers=2):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(v, d) for v in VOCAB)
        layer = nn.TransformerDecoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True)
        self.dec = nn.TransformerDecoder(layer, layers)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in VOCAB)

    def _embed(self, ids):  # [B, T, 3] -> [B, T, D]
        return sum(self.emb[k](ids[..., k]) for k in range(3))

    def forward(self, encoder_semantic_ids, encoder_attention_mask, decoder_semantic_ids, decoder_attention_mask,
                labels=None, **unused):
        mem = self._embed(encoder_semantic_ids)
        x = self._embed(decoder_semantic_ids)
        t = x.shape[1]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=x.device), 1)
        h = self.dec(x, mem, tgt_mask=causal, memory_key_padding_mask=encoder_attention_mask == 0)
        return {f"l{k + 1}_logits": head(h) for k, head in enumerate(self.heads)}


def make_data(n, te=32, td=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        enc = torch.stack([torch.randint(0, v, (te,), generator=g) for v in VOCAB], -1)
        items = torch.stack([torch.randint(0, v, (td,), generator=g) for v in VOCAB], -1)
        data.append({
            "encoder_semantic_ids": enc, "encoder_attention_mask": torch.ones(te, dtype=torch.long),
            "decoder_semantic_ids": torch.cat([torch.zeros(1, 3, dtype=torch.long), items[:-1]]),
            "decoder_attention_mask": torch.ones(td, dtype=torch.long), "labels": items,
        })
    return data


def collate(samples):
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def bare_loop(model, data, steps, batch, lr, device):
    """手写循环：DataLoader → forward → UnifiedLoss → backward → clip → AdamW → 调度器。返回每步结束时间戳。"""
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, collate_fn=collate, drop_last=True)
    loss_fn = UnifiedLoss(lambda_contrastive=0.0, lambda_moe_balance=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = get_scheduler("cosine", opt, num_warmup_steps=10, num_training_steps=steps)
    model.train()
    stamps, step = [], 0
    while step < steps:
        for b in loader:
            b = {k: v.to(device) for k, v in b.items()}
            loss = loss_fn(model(**b), b["labels"])["total_loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if device != "cpu":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            step += 1
            if step >= steps:
                break
    return stamps


class Stamps(TrainerCallback):
    def __init__(self, device):
        self.t, self.device = [], device

    def on_step_end(self, args, state, control, **kw):
        if self.device != "cpu":
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())


def trainer_loop(model, data, steps, batch, lr, device, out_dir):
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
        weight_decay=0.01, warmup_steps=10, lr_scheduler_type="cosine", logging_steps=100, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_drop_last=True, use_cpu=(device == "cpu"),
        optim="adamw_torch", seed=0,
    )
    cb = Stamps(device)
    trainer = UGTTrainer(model=model, args=args, data_collator=collate, train_dataset=data, callbacks=[cb],
                         loss_fn=UnifiedLoss(lambda_contrastive=0.0, lambda_moe_balance=0.0))
    trainer.train()
    return cb.t


def per_step(stamps):
    """去掉第 1 步（一次性准备），其余步的平均间隔（秒）。"""
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def per_step_median(stamps):
    """逐步间隔的中位数（秒）：共享机器上的负载尖峰会污染平均值，中位数更稳。"""
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="计时的步数（另加 1 步预热）")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch 线程数；共享的 2 核机器上 1 线程最快")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "bench_trainer.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = BenchModel().to(a.device)
    init = copy.deepcopy(base.state_dict())
    data = make_data(a.batch * 8)
    steps = a.steps + 1
    bare_t, trainer_t, bare_m, trainer_m = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):  # 交替：机器负载的漂移同时影响两者
            m = BenchModel().to(a.device)
            m.load_state_dict(init)
            st = bare_loop(m, data, steps, a.batch, 1e-3, a.device)
            bare_t.append(per_step(st))
            bare_m.append(per_step_median(st))
            m = BenchModel().to(a.device)
            m.load_state_dict(init)
            st = trainer_loop(m, data, steps, a.batch, 1e-3, a.device, tmp)
            trainer_t.append(per_step(st))
            trainer_m.append(per_step_median(st))
            print(f"round {r}: mean bare {bare_t[-1] * 1e3:.2f} / UGTTrainer {trainer_t[-1] * 1e3:.2f} ms/step; "
                  f"median step bare {bare_m[-1] * 1e3:.2f} / UGTTrainer {trainer_m[-1] * 1e3:.2f} ms")

        # 剖析一轮 UGTTrainer：非模型计算的开销落在哪里
        m = BenchModel().to(a.device)
        m.load_state_dict(init)
        prof = cProfile.Profile()
        prof.enable()
        trainer_loop(m, data, steps, a.batch, 1e-3, a.device, tmp)
        prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        if any(s in fname for s in ("transformers/trainer", "accelerate/", "ugt_hf/training/trainer",
                                    "ugt_hf/training/callbacks", "transformers/trainer_callback",
                                    "torch/utils/data")):
            rows.append({"function": f"{os.path.basename(fname)}:{line}({func})", "self_s": tt, "cum_s": ct,
                         "calls": nc})
    rows.sort(key=lambda r: -r["self_s"])
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(8)

    bare_med, tr_med = statistics.median(bare_t), statistics.median(trainer_t)
    ratio_mean = tr_med / bare_med
    bare_sm, tr_sm = statistics.median(bare_m), statistics.median(trainer_m)
    ratio = tr_sm / bare_sm
    print(f"\n{'':<14}{'mean ms/step':>16}{'median step ms':>18}   (median over {a.rounds} alternating rounds)")
    print(f"{'bare loop':<14}{bare_med * 1e3:>16.2f}{bare_sm * 1e3:>18.2f}")
    print(f"{'UGTTrainer':<14}{tr_med * 1e3:>16.2f}{tr_sm * 1e3:>18.2f}")
    print(f"ratio UGTTrainer / bare: median-step {ratio:.3f} (overhead {100 * (ratio - 1):+.1f}%, target <= +10%); "
          f"mean {ratio_mean:.3f}")
    print(f"\nprofile of one UGTTrainer run ({total:.2f} s total): top trainer/accelerate/dataloader self time")
    for r in rows[:10]:
        print(f"  {r['self_s'] * 1e3:8.1f} ms self  {r['cum_s'] * 1e3:8.1f} ms cum  {r['calls']:6d} calls  "
              f"{r['function']}")
    result = {
        "device": a.device, "threads": a.threads, "batch": a.batch, "timed_steps": a.steps, "rounds": a.rounds,
        "bare_ms_per_step": [t * 1e3 for t in bare_t], "trainer_ms_per_step": [t * 1e3 for t in trainer_t],
        "bare_median_step_ms": [t * 1e3 for t in bare_m], "trainer_median_step_ms": [t * 1e3 for t in trainer_m],
        "median_step_ratio": ratio, "mean_ratio": ratio_mean, "overhead_pct": 100 * (ratio - 1),
        "profile_total_s": total,
        "profile_top_trainer_self_time": rows[:15],
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
