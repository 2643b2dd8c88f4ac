"""规模基准（骨架）：长尾合成日志在几个规模上的准备、训练与评估代价，以及它们随规模增长的指数。

    python benchmarks/bench_scale.py --sizes 1e5,1e6                 # 每个规模约 n 条交互
    python benchmarks/bench_scale.py --sizes 2000,4000 --quick       # 很小的模型（测试用）

每个规模 n（ugt_hf.data.synthetic.LongTailConfig.for_interactions(n)：全局 Zipf 流行度、对数正态序列长度）：
1. generate：生成交互并写成 Parquet（不计入 prepare）；
2. prepare：`ugt prepare --source parquet` 的墙钟时间与各阶段（读取、嵌入、RQ-KMeans、样本、写出）的时间与峰值 RSS
   （子进程内每 20 ms 采样 RSS，按 prepare 记录的阶段时长切分时间窗）；
3. shard：把 train 划分按行组流式切成 --shards 个 Parquet 分片（单独的子进程：切分的内存不算进训练）；
4. train：StreamingDataset 流式读取这些分片，按提交的 Beauty 阶段 1 配置训练
   --train-steps 步（去掉预热步）的 samples/s 与峰值 RSS；
5. evaluate：未训练模型（只看速度）在 --eval-users 个测试用户上的全目录 beam search 排序，users/s 与峰值 RSS。
每个阶段一个子进程，峰值 RSS 互不干扰（--in-process 只给测试用：RSS 只增不减，各阶段的峰值不再独立）。
写 JSON（--out）与对数-对数 PNG（--png）；两个以上规模时给出每项代价对规模的拟合指数（log-log 斜率）。
共享机器上的时间只在同一次运行内可比。
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PHASES = ("generate", "prepare", "shard", "train", "evaluate")
QUICK_MODEL = {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "item_id_buckets": 512, "node_embedding_buckets": 1024,
               "node_embedding_dim": 8, "transition_buckets": 4096}
PREPARE_PHASE_ORDER = ("checksum_s", "read_s", "normalise_s", "embedding_s", "rq_kmeans_s", "samples_s", "write_s")


# ---------------------------------------------------------------------------------------------------------- RSS
def _rss_mib() -> float:
    """当前进程的常驻内存（MiB），读 /proc（Linux）；别的系统退回 ru_maxrss。"""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2 ** 20
    except OSError:
        return peak_rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux 上单位是 KiB


class RssSampler:
    """后台线程每 interval 秒记一次 (时刻, RSS)；window_peak 给出某个时间窗内的峰值。"""

    def __init__(self, interval: float = 0.02):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), _rss_mib()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), _rss_mib()))

    def window_peak(self, start: float, end: float) -> Optional[float]:
        """窗内样本的最大值；窗比采样间隔还短时，取紧挨着它的前后两个样本（RSS 在两次采样之间变化不大）。"""
        inside = [r for t, r in self.samples if start <= t <= end]
        if not inside:
            before = [r for t, r in self.samples if t < start][-1:]
            after = [r for t, r in self.samples if t > end][:1]
            inside = before + after
        return round(max(inside), 1) if inside else None


def phase_windows(start: float, timings: Dict[str, float]) -> Dict[str, tuple]:
    """prepare 的各阶段依次执行：从开始时刻按记录的时长累加，得到每个阶段的时间窗。"""
    out, t = {}, start
    for key in PREPARE_PHASE_ORDER:
        if key in timings:
            out[key[:-2]] = (t, t + float(timings[key]))
            t += float(timings[key])
    return out


def growth_exponent(sizes: Sequence[float], values: Sequence[Optional[float]]) -> Optional[float]:
    """log(值) 对 log(规模) 的最小二乘斜率；有效点少于 2 个时为 None。1 = 线性，~1.1 ≈ n log n（这个范围内）。"""
    pts = [(float(n), float(v)) for n, v in zip(sizes, values) if v is not None and v > 0]
    if len(pts) < 2 or len({n for n, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


# ---------------------------------------------------------------------------------------------------------- 阶段
def phase_generate(spec: Dict[str, Any]) -> Dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ugt_hf.data.synthetic import LongTailConfig, generate_long_tail

    cfg = LongTailConfig.for_interactions(int(spec["size"]), max_items=int(spec["max_items"]), seed=spec["seed"])
    t0 = time.perf_counter()
    log = generate_long_tail(cfg)
    t1 = time.perf_counter()
    path = Path(spec["dir"]) / "log.parquet"
    pq.write_table(pa.table({"user_id": log.user.astype(str), "item_id": log.item.astype(str),
                             "timestamp": log.timestamp, "rating": log.rating}), path)
    lengths = np.bincount(np.unique(log.user, return_inverse=True)[1])
    return {"interactions": len(log), "users": cfg.num_users, "items": cfg.num_items,
            "items_used": int(len(np.unique(log.item))), "config": cfg.__dict__,
            "sequence_length": {"median": float(np.median(lengths)), "p99": float(np.percentile(lengths, 99)),
                                "max": int(lengths.max())},
            "generate_s": round(t1 - t0, 3), "write_s": round(time.perf_counter() - t1, 3), "input": str(path)}


def phase_prepare(spec: Dict[str, Any]) -> Dict[str, Any]:
    from ugt_hf.data.prepare import PrepareOptions, prepare

    opts = PrepareOptions(source="parquet", input=str(Path(spec["dir"]) / "log.parquet"), time_col="timestamp",
                          rating_col="rating", codebook_sizes=list(spec["codebook_sizes"]), seed=spec["seed"])
    out = Path(spec["dir"]) / "data"
    with RssSampler() as rss:
        t0 = time.perf_counter()
        meta = prepare(str(out), opts, force=True, progress=False, log=lambda *a: None)
        t1 = time.perf_counter()
    timings = meta.get("timings", {})
    phases = {name: {"seconds": round(b - a, 3), "peak_rss_mib": rss.window_peak(a, b)}
              for name, (a, b) in phase_windows(t0, timings).items()}
    return {"wall_s": round(t1 - t0, 3), "phases": phases, "peak_rss_mib_sampled": rss.window_peak(t0, t1),
            "vocab_sizes": meta.get("vocab_sizes"), "splits": meta.get("splits"),
            "collisions": meta.get("collisions"), "data_dir": str(out)}


def _shard(train_parquet: Path, out_dir: Path, shards: int) -> List[str]:
    """按行组流式切分（不把整张 train 表读进内存：切分是训练前的一次性准备，不该算进训练的峰值 RSS）。"""
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    src = pq.ParquetFile(train_parquet)
    bounds = np.linspace(0, src.metadata.num_rows, shards + 1).astype(int)
    paths = [str(out_dir / f"train-{i:05d}.parquet") for i in range(shards)]
    batches, pending = src.iter_batches(batch_size=65536), None
    for i, path in enumerate(paths):
        need = int(bounds[i + 1] - bounds[i])
        with pq.ParquetWriter(path, src.schema_arrow) as writer:  # 一行也不写时是一个空表（每个分片文件都在）
            while need > 0:
                if pending is None or pending.num_rows == 0:
                    pending = next(batches)
                take = min(need, pending.num_rows)
                writer.write_batch(pending.slice(0, take))
                pending, need = pending.slice(take), need - take
    return paths


def phase_shard(spec: Dict[str, Any]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    data_dir = Path(spec["dir"]) / "data"
    paths = _shard(data_dir / "train.parquet", Path(spec["dir"]) / "train_shards", int(spec["shards"]))
    return {"shards": paths, "seconds": round(time.perf_counter() - t0, 3)}


def _stage1(spec: Dict[str, Any], data_dir: Path, run_dir: Path, max_steps: int):
    import _stage1 as S
    import yaml

    overrides: Dict[str, Any] = {"batch_size": int(spec["batch"]), "dataloader_num_workers": 0}
    if spec["quick"]:
        model_config = yaml.safe_load(S.STAGE1_CONFIG.read_text())["model_config"]
        overrides["model_config"] = {**model_config, **QUICK_MODEL}
    return S, S.stage1_args(data_dir, run_dir, max_steps=max_steps, overrides=overrides)


def phase_train(spec: Dict[str, Any]) -> Dict[str, Any]:
    from ugt_hf.data.datadir import DataDir
    from ugt_hf.data.datasets import StreamingDataset

    data_dir = Path(spec["dir"]) / "data"
    data = DataDir(data_dir)
    shards = sorted(str(p) for p in (Path(spec["dir"]) / "train_shards").glob("train-*.parquet"))
    warmup, steps = int(spec["warmup"]), int(spec["train_steps"])
    S, args = _stage1(spec, data_dir, Path(spec["dir"]) / "run", warmup + steps)
    t = args.training
    stream = StreamingDataset(shards, shuffle=True, seed=t.seed, vocab_sizes=data.vocab_sizes,
                              max_encoder_length=int(t.encoder_max_length),
                              max_decoder_length=int(t.decoder_max_length), pad_token_id=data.pad_token_id)
    stamps = S.step_stamps()
    trainer, model, _ = S.build_stage1(args, callbacks=[stamps], train_dataset=stream)
    rss_before = _rss_mib()
    trainer.train()
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size
    timed, seconds, rate = S.samples_per_second(stamps.t, warmup, per_step)
    return {"dataset": repr(stream), "batch": per_step, "warmup_steps": warmup, "timed_steps": timed,
            "timed_seconds": round(seconds, 3), "samples_per_s": None if rate is None else round(rate, 2),
            "parameters": sum(p.numel() for p in model.parameters()), "rss_before_train_mib": round(rss_before, 1)}


def phase_evaluate(spec: Dict[str, Any]) -> Dict[str, Any]:
    from ugt_hf.evaluation import evaluate_ranking
    from ugt_hf.training.stages import build_model, resolve_data

    data_dir = Path(spec["dir"]) / "data"
    _, args = _stage1(spec, data_dir, Path(spec["dir"]) / "eval_run", 1)
    model = build_model(args.model, args.training, resolve_data(args.data)).eval()
    beams = int(spec["num_beams"] or args.evaluation.num_beams)
    metrics = evaluate_ranking(model, data_dir, split="test", num_beams=beams, max_samples=int(spec["eval_users"]))
    users = min(int(spec["eval_users"]), int(json.loads((data_dir / "meta.json").read_text())["splits"]["test"]))
    return {"num_beams": beams, "users": users, "eval_seconds": round(metrics["eval_seconds"], 3),
            "users_per_s": round(users / metrics["eval_seconds"], 2) if metrics["eval_seconds"] > 0 else None}


PHASE_FUNCS = {"generate": phase_generate, "prepare": phase_prepare, "shard": phase_shard, "train": phase_train,
               "evaluate": phase_evaluate}


def run_phase(name: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    out = PHASE_FUNCS[name](spec)
    out["process_wall_s"] = round(time.perf_counter() - t0, 3)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return out


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = run_phase(spec["phase"], spec)
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


def launch(name: str, spec: Dict[str, Any], in_process: bool, timeout: float) -> Dict[str, Any]:
    if in_process:
        return run_phase(name, spec)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "phase": name, "result": str(result_path)}))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if proc.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"phase {name} at size {spec['size']} failed (rc={proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
        return json.loads(result_path.read_text())


# ---------------------------------------------------------------------------------------------------------- 汇总
def summarise(results: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    sizes = [r["generate"]["interactions"] for r in results]
    series = {
        "prepare_wall_s": [r["prepare"]["wall_s"] for r in results],
        "prepare_peak_rss_mib": [r["prepare"]["peak_rss_mib"] for r in results],
    }
    if all("train" in r for r in results):  # --prepare-only 时没有训练与评估
        series.update({
            "train_peak_rss_mib": [r["train"]["peak_rss_mib"] for r in results],
            "train_samples_per_s": [r["train"]["samples_per_s"] for r in results],
            "eval_users_per_s": [r["evaluate"]["users_per_s"] for r in results],
        })
    for phase in results[0]["prepare"]["phases"]:
        series[f"prepare_{phase}_s"] = [r["prepare"]["phases"].get(phase, {}).get("seconds") for r in results]
    return {k: growth_exponent(sizes, v) for k, v in series.items()}


def plot(results: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["generate"]["interactions"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(sizes, [r["prepare"]["wall_s"] for r in results], "o-", label="prepare (total)", lw=2)
    for phase in results[0]["prepare"]["phases"]:
        ys = [r["prepare"]["phases"].get(phase, {}).get("seconds") for r in results]
        if any(y for y in ys):  # 对数轴画不了 0：全为 0 的阶段（如校验和）不画
            ax1.plot(sizes, [y if y else np.nan for y in ys], ".--", label=f"prepare: {phase}")
    ax1.set(xscale="log", yscale="log", xlabel="interactions", ylabel="seconds", title="preparation time")
    ax1.legend(fontsize=7)
    for key, label in (("prepare", "prepare"), ("train", "train (streaming)"), ("evaluate", "evaluate")):
        if all(key in r for r in results):
            ax2.plot(sizes, [r[key]["peak_rss_mib"] for r in results], "o-", label=label)
    ax2.set(xscale="log", yscale="log", xlabel="interactions", ylabel="peak RSS (MiB)", title="peak memory")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(results: List[Dict[str, Any]], exponents: Dict[str, Optional[float]]) -> None:
    print(f"\n{'interactions':>13}{'items':>11}{'prepare s':>11}{'prep RSS':>10}{'train/s':>10}{'train RSS':>11}"
          f"{'eval users/s':>14}")
    for r in results:
        g, p = r["generate"], r["prepare"]
        t, e = r.get("train", {}), r.get("evaluate", {})  # --prepare-only：训练与评估列留空
        train = f"{t['samples_per_s'] or 0:>10.1f}{t['peak_rss_mib']:>11.0f}" if t else f"{'-':>10}{'-':>11}"
        ev = f"{e['users_per_s'] or 0:>14.1f}" if e else f"{'-':>14}"
        print(f"{g['interactions']:>13,}{g['items']:>11,}{p['wall_s']:>11.1f}{p['peak_rss_mib']:>10.0f}{train}{ev}")
    print("\nprepare phases (seconds / peak RSS MiB):")
    for r in results:
        parts = ", ".join(f"{k} {v['seconds']:.2f}s/{v['peak_rss_mib'] or 0:.0f}"
                          for k, v in r["prepare"]["phases"].items())
        print(f"  {r['generate']['interactions']:>11,}: {parts}")
    fitted = {k: v for k, v in exponents.items() if v is not None}
    if fitted:
        print("\ngrowth exponents (log-log slope against interactions): "
              + ", ".join(f"{k} {v:.2f}" for k, v in fitted.items()))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e5,1e6", help="comma-separated interaction counts, e.g. 1e5,1e6,5e6")
    p.add_argument("--max-items", type=float, default=1e6, help="catalogue cap (items = interactions / 16)")
    p.add_argument("--codebook-sizes", default="1024,4096,16384", help="semantic ID codebooks (the spec's sizes)")
    p.add_argument("--shards", type=int, default=8, help="Parquet shards for streaming training")
    p.add_argument("--train-steps", type=int, default=20, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-users", type=int, default=500)
    p.add_argument("--num-beams", type=int, help="beam width (default: the config's num_beams)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each phase")
    p.add_argument("--quick", action="store_true", help="tiny model (for tests)")
    p.add_argument("--in-process", action="store_true", help="run phases in this process (tests; RSS not per phase)")
    p.add_argument("--prepare-only", action="store_true",
                   help="only generate and prepare (no training or evaluation), e.g. for the largest size")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per phase subprocess")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="folder for logs and prepared data (default: a new temp folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_scale.json"))
    p.add_argument("--png", help="log-log plot (default: next to --out, .png)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    if a._child:
        return _child(a._child)
    sizes = [int(float(s)) for s in a.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 100:
        raise SystemExit(f"--sizes {a.sizes!r}: give interaction counts >= 100, e.g. --sizes 1e5,1e6")
    work = Path(a.work or tempfile.mkdtemp(prefix="ugt_scale_"))
    results = []
    for n in sorted(sizes):
        d = work / f"n{n}"
        d.mkdir(parents=True, exist_ok=True)
        spec = {"size": n, "dir": str(d), "max_items": int(a.max_items), "seed": a.seed,
                "codebook_sizes": [int(x) for x in a.codebook_sizes.split(",")], "shards": a.shards,
                "train_steps": a.train_steps, "warmup": a.warmup, "batch": a.batch, "eval_users": a.eval_users,
                "num_beams": a.num_beams, "threads": a.threads, "quick": a.quick}
        row = {"size": n}
        for phase in PHASES[:2] if a.prepare_only else PHASES:
            row[phase] = launch(phase, spec, a.in_process, a.timeout)
            print(f"[bench_scale] n={n:,} {phase}: {row[phase]['process_wall_s']:.1f}s, "
                  f"peak RSS {row[phase]['peak_rss_mib']:.0f} MiB", flush=True)
        results.append(row)
    exponents = summarise(results)
    print_table(results, exponents)
    out = Path(a.out)
    png = Path(a.png) if a.png else out.with_suffix(".png")
    plot(results, png)
    report = {"benchmark": "bench_scale", "git_commit": _git_commit(), "sizes": sizes, "threads": a.threads,
              "quick": a.quick, "in_process": a.in_process, "options": {k: v for k, v in vars(a).items()
                                                                        if k not in ("_child",)},
              "results": results, "growth_exponents": exponents, "plot": str(png)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out} and {png}")
    return 0


def _git_commit() -> str:
    from ugt_hf.workflow import git_commit

    return git_commit(ROOT)


if __name__ == "__main__":
    sys.exit(main())
