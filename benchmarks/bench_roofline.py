"""一步训练离这台 CPU 的极限有多远：fp32 矩阵乘峰值（GFLOP/s）对比提交的 Beauty 阶段 1 配置一步前向+反向的
实际 FLOP/s，外加 torch.profiler 的按算子自耗时分解，看其余时间花在哪里。

    python benchmarks/bench_roofline.py                            # 提交的配置
    python benchmarks/bench_roofline.py --quick --out /tmp/r.json  # 很小的配置（测试用，几秒）
数据：--data-dir（已准备的目录），否则 Beauty（--beauty 或 ../shared/data），再否则 Beauty 量级的合成数据。

- 峰值：几个尺寸的方阵 n×n @ n×n（2n³ FLOP）取最高，另测一个模型形状的矩阵乘（[批×长度, d_model] @ [d_model, ffn]）；
  线程数与训练步相同（--threads，缺省取配置的 torch_num_threads）。
- 一步的 FLOP：torch.utils.flop_counter.FlopCounterMode 在一个真实训练批次（训练 DataLoader 的第一个批次）上数
  前向+反向（UGTTrainer.compute_loss + backward）。它只数矩阵乘/卷积/注意力类算子，逐元素运算不算 FLOP，
  所以 achieved/peak 衡量的是“矩阵乘算力的利用率”。
- 时间：前向+反向的中位数（--repeats 次），另记优化器一步（AdamW，含大嵌入表的稠密更新）的中位数。
写 JSON（--out，缺省 benchmarks/results/bench_roofline.json）并打印表格。共享机器上的数字只在同一次运行内可比。
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _stage1 as S  # noqa: E402

PEAK_SIZES = [256, 512, 1024, 2048]
QUICK_SIZES = [64, 128]
QUICK_SYNTHETIC = {"num_users": 120, "num_items": 60, "events_per_user": 8, "num_clusters": 6}
QUICK_MODEL = {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "item_id_buckets": 512, "node_embedding_buckets": 1024,
               "node_embedding_dim": 8, "transition_buckets": 4096}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
              "aten::_scaled_dot_product", "aten::scaled_dot_product")


def _time(fn, min_seconds: float, max_reps: int = 10_000) -> float:
    """fn 每次调用的平均秒数：先预热一次，再重复到总时长 ≥ min_seconds。"""
    fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or reps >= max_reps:
            return elapsed / reps


def matmul_gflops(m: int, k: int, n: int, min_seconds: float) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    return 2.0 * m * k * n / _time(lambda: torch.mm(a, b, out=out), min_seconds) / 1e9


def measure_peak(sizes: List[int], min_seconds: float, model_shape=None) -> Dict[str, Any]:
    square = {str(n): round(matmul_gflops(n, n, n, min_seconds), 2) for n in sizes}
    out: Dict[str, Any] = {"square_gflops": square, "peak_gflops": max(square.values()),
                           "peak_size": int(max(square, key=square.get))}
    if model_shape:
        m, k, n = model_shape
        out["model_shape"] = [m, k, n]
        out["model_shape_gflops"] = round(matmul_gflops(m, k, n, min_seconds), 2)
    return out


def cpu_attention_flops() -> Dict[Any, Any]:
    """FlopCounterMode 只登记了 CUDA 的 SDPA 内核；CPU 上的注意力走 _scaled_dot_product_flash_attention_for_cpu，
    不补上就少算注意力的 FLOP。公式用 torch 自己的 sdpa_flop_count / sdpa_backward_flop_count（与 CUDA 同口径）。"""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def stage1_setup(a, work: Path):
    """提交的阶段 1 配置（--quick：同一配置、缩小模型与数据）的训练器、模型与一个训练批次。"""
    overrides: Dict[str, Any] = {}
    if a.quick:
        model_config = yaml.safe_load(S.STAGE1_CONFIG.read_text())["model_config"]
        overrides["model_config"] = {**model_config, **QUICK_MODEL}
        overrides["batch_size"] = 16
        overrides["dataloader_num_workers"] = 0
    if a.batch:
        overrides["batch_size"] = a.batch
    if a.data_dir:
        data_dir, label = Path(a.data_dir), f"prepared folder {a.data_dir}"
    else:
        beauty = None if a.quick else S.find_beauty(a.beauty)
        data_dir, label, _ = S.prepare_data(work, beauty, QUICK_SYNTHETIC if a.quick else None,
                                            log=lambda *x: None)
    args = S.stage1_args(data_dir, work / "run", max_steps=1, overrides=overrides)
    trainer, model, _ = S.build_stage1(args)
    batch = next(iter(trainer.get_train_dataloader()))
    return args, trainer, model, batch, label


def profile_rows(prof, top: int) -> Dict[str, Any]:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)
    table = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 3), "self_pct": round(
        100 * e.self_cpu_time_total / total, 2), "calls": e.count} for e in rows[:top]]
    matmul = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL_OPS))
    return {"top_self_cpu": table, "total_self_ms": round(total / 1e3, 3),
            "matmul_self_pct": round(100 * matmul / total, 2)}


def run(a) -> Dict[str, Any]:
    work = Path(a.work or tempfile.mkdtemp(prefix="ugt_roofline_"))
    args, trainer, model, batch, label = stage1_setup(a, work)
    threads = a.threads or args.training.torch_num_threads or torch.get_num_threads()
    torch.set_num_threads(int(threads))
    cfg = model.config
    model.train()
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    enc_len = int(batch["encoder_semantic_ids"].shape[1])
    bsz = int(batch["encoder_semantic_ids"].shape[0])

    def fwd_bwd():
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss

    # FLOP：一个真实批次的前向+反向
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False, custom_mapping=cpu_attention_flops()) as counter:
        fwd_bwd()
    flops = int(counter.get_total_flops())
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    by_op = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))

    peak = measure_peak(QUICK_SIZES if a.quick else PEAK_SIZES, a.min_seconds,
                        model_shape=(bsz * enc_len, int(cfg.d_model), int(cfg.ffn_dim)))

    # 时间：前向+反向、优化器一步，各取 repeats 次的中位数（第一次是预热，不计）
    trainer.create_optimizer()
    opt = trainer.optimizer
    fb, st = [], []
    for i in range(a.repeats + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fwd_bwd()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i:
            fb.append(t1 - t0)
            st.append(t2 - t1)
    fb_s, step_s = statistics.median(fb), statistics.median(st)
    achieved = flops / fb_s / 1e9
    stock = compare_stock(fwd_bwd, model, a.repeats) if a.compare_stock else None

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.profile_steps):
            model.zero_grad(set_to_none=True)
            fwd_bwd()
            opt.step()
    profile_out = profile_rows(prof, a.top)

    result = {
        "benchmark": "bench_roofline", "quick": bool(a.quick), "data": label, "torch": torch.__version__,
        "threads": int(threads), "device": str(device),
        "config": str(S.STAGE1_CONFIG.relative_to(S.ROOT)), "model_overrides": QUICK_MODEL if a.quick else None,
        "batch": {"size": bsz, "encoder_length": enc_len,
                  "decoder_length": int(batch["decoder_semantic_ids"].shape[1])},
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak": peak,
        "step_flops": flops, "step_flops_by_op": by_op,
        "fwd_bwd_seconds_median": round(fb_s, 6), "fwd_bwd_seconds_all": [round(x, 6) for x in fb],
        "optimizer_step_seconds_median": round(step_s, 6),
        "achieved_gflops": round(achieved, 3),
        "achieved_over_peak": round(achieved / peak["peak_gflops"], 4),
        "achieved_over_model_shape_matmul": round(achieved / peak["model_shape_gflops"], 4),
        "profile": {"steps": a.profile_steps, "includes": "forward + backward + optimizer step", **profile_out},
        "stock_ops_comparison": stock,
        "flop_counting": "torch.utils.flop_counter.FlopCounterMode (plus the CPU SDPA kernels): matmul / attention "
                         "/ convolution FLOPs only, elementwise ops not counted",
        "git_commit": _git_commit(),
    }
    return result


@contextlib.contextmanager
def stock_ops():
    """换回 torch 自带的做法：nn.Dropout（CPU 上逐元素 bernoulli_）与整块 argmax 的准确率。"""
    from torch import nn

    from ugt_hf import loss_utils
    from ugt_hf.modeling_ugt import UGTDropout

    forward, hits = UGTDropout.forward, loss_utils._argmax_hits
    UGTDropout.forward = nn.Dropout.forward
    loss_utils._argmax_hits = lambda flat, labels: flat.argmax(dim=-1) == labels
    try:
        yield
    finally:
        UGTDropout.forward, loss_utils._argmax_hits = forward, hits


def compare_stock(fwd_bwd, model, repeats: int) -> Dict[str, Any]:
    """同一进程、同一批次，交替计时现在的前向+反向与换回 torch 自带 dropout / argmax 的前向+反向
    （交替是为了让机器的快慢波动落在两边；比的是中位数之比）。"""
    times: Dict[str, List[float]] = {"current": [], "stock": []}
    for i in range(2 * repeats + 2):
        name = "current" if i % 2 == 0 else "stock"
        with (contextlib.nullcontext() if name == "current" else stock_ops()):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fwd_bwd()
            elapsed = time.perf_counter() - t0
        if i >= 2:  # 每边第一次是预热
            times[name].append(round(elapsed, 6))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"what": "stock = torch nn.Dropout (bernoulli_ mask) and argmax accuracy; current = UGTDropout "
                    "(rand_like mask) and loss_utils._argmax_hits; interleaved, same batch",
            "current_seconds": times["current"], "stock_seconds": times["stock"],
            "current_median": round(med["current"], 6), "stock_median": round(med["stock"], 6),
            "stock_over_current": round(med["stock"] / med["current"], 4)}


def _git_commit() -> str:
    from ugt_hf.workflow import git_commit

    return git_commit(ROOT)


def print_table(r: Dict[str, Any]) -> None:
    p = r["peak"]
    print(f"\n== roofline: {r['config']}{' (quick)' if r['quick'] else ''}, data {r['data']}, "
          f"{r['threads']} torch thread(s) ==")
    print(f"{'matmul n':>10}{'GFLOP/s':>12}")
    for n, g in p["square_gflops"].items():
        print(f"{n:>10}{g:>12.1f}")
    m, k, n = p["model_shape"]
    print(f"{f'{m}x{k}x{n}':>10}{p['model_shape_gflops']:>12.1f}   (model-shaped: batch*len x d_model x ffn)")
    print(f"\nbatch {r['batch']['size']} x enc {r['batch']['encoder_length']} / dec {r['batch']['decoder_length']}, "
          f"{r['parameters']:,} parameters")
    print(f"step FLOPs (fwd+bwd)  {r['step_flops'] / 1e9:10.3f} GFLOP")
    print(f"fwd+bwd median        {r['fwd_bwd_seconds_median'] * 1e3:10.1f} ms  -> {r['achieved_gflops']:.2f} GFLOP/s")
    print(f"optimizer step median {r['optimizer_step_seconds_median'] * 1e3:10.1f} ms")
    print(f"achieved / peak       {100 * r['achieved_over_peak']:10.1f} %  "
          f"(vs model-shaped matmul {100 * r['achieved_over_model_shape_matmul']:.1f} %)")
    c = r.get("stock_ops_comparison")
    if c:
        print(f"vs stock torch ops    {c['stock_median'] * 1e3:10.1f} ms with nn.Dropout + argmax "
              f"({c['stock_over_current']:.3f}x the current {c['current_median'] * 1e3:.1f} ms; interleaved)")
    print("\nFLOPs by op:")
    for op, f in list(r["step_flops_by_op"].items())[:8]:
        print(f"  {op[:56]:<56}{f / 1e9:10.3f} GFLOP")
    pr = r["profile"]
    print(f"\nprofile over {pr['steps']} step(s) ({pr['includes']}): top ops by self CPU time; "
          f"matmul ops {pr['matmul_self_pct']:.1f}% of self time")
    print(f"  {'op':<44}{'self ms':>10}{'%':>7}{'calls':>8}")
    for row in pr["top_self_cpu"]:
        print(f"  {row['op'][:44]:<44}{row['self_ms']:>10.1f}{row['self_pct']:>7.1f}{row['calls']:>8}")


def parse(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model and data (seconds; for tests)")
    p.add_argument("--data-dir", help="an already prepared data folder (skips preparation)")
    p.add_argument("--beauty", help="path of amazon-beauty/Beauty.txt (default: ../shared/data)")
    p.add_argument("--work", help="folder for prepared data (default: a new temp folder)")
    p.add_argument("--batch", type=int, help="override the config's batch size")
    p.add_argument("--threads", type=int, help="torch threads (default: the config's torch_num_threads)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward+backward repeats (median)")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.5, help="time per matmul size")
    p.add_argument("--top", type=int, default=15, help="profile rows to keep")
    p.add_argument("--compare-stock", action="store_true",
                   help="also time fwd+bwd with torch's nn.Dropout and argmax, interleaved with the current ops")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_roofline.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.min_seconds = min(a.min_seconds, 0.05)
        a.repeats = min(a.repeats, 2)
        a.profile_steps = min(a.profile_steps, 1)
    return a


def main(argv: Optional[List[str]] = None) -> int:
    a = parse(argv)
    result = run(a)
    print_table(result)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

