"""L3 头交叉熵的内存 / 速度基准：朴素 F.cross_entropy vs 分块（`ugt_hf.loss_utils.chunked_cross_entropy`）。

分块路径由 `UGTConfig.loss_chunk_size` 选用（模型的 loss 与 UGTTrainer 的 NTP 都读这个字段）。
规模：B=256, T=64 -> N=16,384 行，V=16,384（L3 码本），float32，约 10% 行为 padding。

每个变体在 **独立的子进程** 中运行，峰值内存 = 前向+反向结束后的 ru_maxrss − 输入分配完后的 ru_maxrss。
为什么用 ru_maxrss：CPU 上 torch 没有 memory_stats；ru_maxrss 是内核记录的常驻内存峰值，包含分配器与
算子内部的全部临时缓冲，而 torch.profiler 只看到经 torch 分配器的张量。每个变体独占一个新进程，
基线之前的峰值（import 等）不会混入；同时记录基线时刻的当前 RSS，确认基线峰值不是某个已释放的临时量
（baseline_gap_mib ≈ 0），否则差值会低估。

变体：
  plain            输入 logits [N, V]（叶子），F.cross_entropy
  chunked          输入 logits，chunked_cross_entropy（梯度另开一份 [N, V]）
  chunked_inplace  输入 logits，chunked_cross_entropy(inplace_backward=True)（梯度写回 logits 的存储）

（融合线性层 + 交叉熵的变体已删除：UGT 的 L2/L3 logits 还要加节点向量与宽记忆项，不是单个线性层的输出。）

正确性：测完内存后，用 F.cross_entropy 按行块（reduction="sum" 再除以有效行数，内存小）算参考损失与梯度，
报告损失差与最大梯度差。

用法：python benchmarks/bench_loss.py [--rows 16384] [--vocab 16384] [--chunk-size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("plain", "chunked", "chunked_inplace")
RESULTS = Path(__file__).resolve().parent / "results" / "bench_loss.json"
IGNORE = -100
REF_BLOCK = 2048


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _make_inputs(n: int, v: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.1] = IGNORE
    # 原地 normal_ 直接写入目标张量，不产生同尺寸的临时量
    logits = torch.empty(n, v).normal_(generator=g).requires_grad_()
    return {"logits": logits, "labels": labels}


def _reference(inp_fn, n_valid: int):
    """F.cross_entropy 按行块计算的参考损失与梯度（与整体 mean 数学上相同，内存小）。"""
    import torch
    import torch.nn.functional as F

    inp = inp_fn()
    labels = inp["labels"]
    total = 0.0
    x = inp["logits"]
    grads = {"logits": torch.empty_like(x)}
    for s in range(0, x.shape[0], REF_BLOCK):
        blk = x[s:s + REF_BLOCK].detach().requires_grad_()
        loss = F.cross_entropy(blk, labels[s:s + REF_BLOCK], ignore_index=IGNORE, reduction="sum") / n_valid
        loss.backward()
        grads["logits"][s:s + REF_BLOCK] = blk.grad
        total += loss.item()
    return total, grads


def run_variant(variant: str, n: int, v: int, chunk_size: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ugt_hf.loss_utils import chunked_cross_entropy

    torch.set_num_threads(2)
    inp = _make_inputs(n, v, seed)
    labels = inp["labels"]
    n_valid = int((labels != IGNORE).sum())
    base_peak, base_rss = _maxrss_mib(), _rss_mib()

    t0 = time.perf_counter()
    if variant == "plain":
        loss = F.cross_entropy(inp["logits"], labels, ignore_index=IGNORE)
    elif variant == "chunked":
        loss = chunked_cross_entropy(inp["logits"], labels, chunk_size)
    elif variant == "chunked_inplace":
        loss = chunked_cross_entropy(inp["logits"], labels, chunk_size, inplace_backward=True)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _maxrss_mib() - base_peak

    # 正确性：与 F.cross_entropy 的参考值比较（测完内存之后做，不影响峰值）
    ours = {k: t.grad for k, t in inp.items() if k != "labels"}
    ref_loss, ref_grads = _reference(lambda: _make_inputs(n, v, seed), n_valid)
    max_grad_diff = max(float((ours[k] - ref_grads[k]).abs().max()) for k in ref_grads)
    return {
        "variant": variant,
        "loss": float(loss),
        "loss_abs_diff": abs(float(loss) - ref_loss),
        "max_grad_abs_diff": max_grad_diff,
        "fwd_bwd_seconds": seconds,
        "peak_extra_mib": peak,
        "baseline_peak_mib": base_peak,
        "baseline_gap_mib": base_peak - base_rss,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256 * 64)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=VARIANTS, help="（内部）只在本进程运行一个变体并输出 JSON")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    if args.variant:
        res = run_variant(args.variant, args.rows, args.vocab, args.chunk_size, args.seed)
        print("RESULT " + json.dumps(res))
        return 0

    results = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", variant, "--rows", str(args.rows), "--vocab", str(args.vocab),
               "--chunk-size", str(args.chunk_size), "--seed", str(args.seed)]
        env = dict(os.environ, OMP_NUM_THREADS="2")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            raise SystemExit(f"variant {variant} failed (exit code {proc.returncode})")
        results[variant] = json.loads(line[len("RESULT "):])

    print(f"N={args.rows} V={args.vocab} chunk={args.chunk_size} float32, torch threads=2")
    print(f"{'variant':<16}{'loss':>10}{'|dloss|':>11}{'max|dgrad|':>12}{'fwd+bwd s':>11}{'peak MiB':>10}"
          f"{'gap MiB':>9}")
    for r in results.values():
        print(f"{r['variant']:<16}{r['loss']:>10.5f}{r['loss_abs_diff']:>11.2e}{r['max_grad_abs_diff']:>12.2e}"
              f"{r['fwd_bwd_seconds']:>11.2f}{r['peak_extra_mib']:>10.0f}{r['baseline_gap_mib']:>9.1f}")
    ratios = {}
    for lean, plain in (("chunked", "plain"), ("chunked_inplace", "plain")):
        if lean in results and plain in results and results[plain]["peak_extra_mib"] > 0:
            ratios[f"{lean}/{plain}"] = {
                "peak_memory_ratio": results[lean]["peak_extra_mib"] / results[plain]["peak_extra_mib"],
                "time_ratio": results[lean]["fwd_bwd_seconds"] / results[plain]["fwd_bwd_seconds"],
            }
    print("ratios (same run):")
    for k, r in ratios.items():
        ok = "PASS" if r["peak_memory_ratio"] <= 0.25 else "over 1/4"
        print(f"  {k:<24} peak memory x{r['peak_memory_ratio']:.3f} ({ok})  time x{r['time_ratio']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"rows": args.rows, "vocab": args.vocab, "chunk_size": args.chunk_size,
                   "dtype": "float32", "ignored_fraction": 0.1, "threads": 2,
                   "memory_method": "ru_maxrss delta after inputs allocated, fresh subprocess per variant"},
        "results": results,
        "ratios": ratios,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
