"""CPU 线程数对训练步时间的影响：同一个 UGT 训练步（Beauty 规模配置）在 1 与 2 个 torch 线程下各自计时。

    python benchmarks/bench_threads.py
每个线程数在独立子进程里跑（torch 线程池只能在进程开始时可靠设置），打印表格并写
benchmarks/results/bench_threads.json。CPU 配置里的 torch_num_threads 就是按这个结果选的。
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_threads.json"


def worker(threads: int, steps: int, seq_len: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
    from ugt_hf.spec.loss import NextTokenPredictionLoss

    torch.manual_seed(0)
    cfg = UGTConfig(vocab_sizes=[128, 128, 128], d_model=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=1,
                    ffn_dim=256, num_experts=4, num_experts_per_tok=2, dropout=0.2, max_position_embeddings=64)
    model = UGTForGenerativeRecommendation(cfg)
    loss_fn = NextTokenPredictionLoss()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    b = 256
    batch = dict(encoder_semantic_ids=torch.randint(0, 128, (b, seq_len, 3)),
                 encoder_attention_mask=torch.ones(b, seq_len, dtype=torch.long),
                 decoder_semantic_ids=torch.randint(0, 128, (b, 5, 3)),
                 decoder_attention_mask=torch.ones(b, 5, dtype=torch.long))
    labels = torch.randint(0, 128, (b, 5, 3))
    times = []
    for _ in range(steps + 1):  # 第 1 步是预热
        t0 = time.perf_counter()
        out = model(**batch, labels=labels)
        loss, _ = loss_fn(out.l1_logits, out.l2_logits, out.l3_logits, labels)
        opt.zero_grad()
        (loss + 0.01 * out.aux_loss).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return {"threads": threads, "seq_len": seq_len, "batch": b, "median_step_s": times[len(times) // 2],
            "best_step_s": times[0]}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    rows = []
    for seq_len in (5, 50):
        for threads in (1, 2):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run([sys.executable, __file__, "--worker", str(threads), "6", str(seq_len)],
                                 capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'history len':>11} {'threads':>7} {'median step s':>14} {'best step s':>12}")
    for r in rows:
        print(f"{r['seq_len']:>11} {r['threads']:>7} {r['median_step_s']:>14.3f} {r['best_step_s']:>12.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": rows}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
