"""`ugt prepare` 基准：Beauty（s3rec）与 ML-100K 的耗时、峰值内存、计数核对与 L1 共现比。

    python benchmarks/bench_prepare.py [--out_root /tmp/bench_prepare] [--only beauty|ml-100k] [--balanced]

每个数据集在独立子进程里准备（ru_maxrss 是进程峰值，不能在同一进程里分开测），强制重新生成（--force）。
结果：打印表格并写 benchmarks/results/bench_prepare.json。
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ugt_hf.data.datadir import DataDir  # noqa: E402

DATA = os.environ.get("UGT_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))

CASES = {
    "beauty": dict(source="s3rec", input=os.path.join(DATA, "amazon-beauty", "Beauty.txt"),
                   expect=(22363, 12101, 198502)),
    "ml-100k": dict(source="ml-100k", input=os.path.join(DATA, "ml-100k"), expect=(943, 1682, 100000)),
}

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from ugt_hf.data.prepare import prepare
t = time.perf_counter()
meta = prepare({out!r}, force=True, progress=False, log=lambda *a: None, **{kw!r})
wall = time.perf_counter() - t
print(json.dumps({{"wall_s": wall, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_case(name: str, out_root: str, balanced: bool) -> dict:
    case = CASES[name]
    out = os.path.join(out_root, name)
    kw = {"source": case["source"], "input": case["input"], "balanced": balanced}
    code = _CHILD.format(root=ROOT, out=out, kw=kw)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed for {name}:\n{proc.stderr}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    data = DataDir(out)
    meta = data.meta
    got = (meta["num_users"], meta["num_items"], meta["num_interactions"])
    items = pq.read_table(data.items_path)
    triples = set(zip(*(items.column(c).to_pylist() for c in ("l1", "l2", "l3"))))
    return {
        "dataset": name,
        "counts": list(got),
        "expected_counts": list(case["expect"]),
        "counts_match": got == case["expect"],
        "unique_triples": len(triples) == items.num_rows,
        "prepare_wall_s": round(child["wall_s"], 2),
        "process_wall_s": round(time.perf_counter() - t, 2),
        "peak_rss_mb": round(child["maxrss_mb"], 1),
        "stage_timings_s": meta["timings"],
        "vocab_sizes": meta["vocab_sizes"],
        "codebook_utilisation": meta["codebook_utilisation"],
        "collisions": meta["collisions"],
        "splits": meta["splits"],
        "l1_cooccurrence_ratio": round(meta["l1_cooccurrence"]["full_sequences"]["ratio"], 2),
        "l1_cooccurrence_ratio_train_prefixes": round(meta["l1_cooccurrence"]["training_prefixes"]["ratio"], 2),
        "balanced": balanced,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out_root", default="/tmp/bench_prepare")
    p.add_argument("--only", choices=sorted(CASES), default=None)
    p.add_argument("--balanced", action="store_true")
    args = p.parse_args()
    names = [args.only] if args.only else list(CASES)
    rows = [run_case(n, args.out_root, args.balanced) for n in names]
    hdr = f"{'dataset':<9} {'users/items/inter':<24} {'match':<6} {'uniq':<5} {'time s':>7} {'rss MB':>7} " \
          f"{'V1/V2/V3':<13} {'coll.before':>11} {'L1 cooc ratio':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['dataset']:<9} {'/'.join(f'{c:,}' for c in r['counts']):<24} {str(r['counts_match']):<6} "
              f"{str(r['unique_triples']):<5} {r['prepare_wall_s']:>7.1f} {r['peak_rss_mb']:>7.0f} "
              f"{'/'.join(map(str, r['vocab_sizes'])):<13} {r['collisions']['items_colliding_before']:>11} "
              f"{r['l1_cooccurrence_ratio']:>12.1f}x")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    res = {"benchmark": "bench_prepare", "cpu_count": os.cpu_count(), "torch_threads": 2, "results": rows}
    with open(os.path.join(ROOT, "benchmarks", "results", "bench_prepare.json"), "w") as f:
        json.dump(res, f, indent=2)
    ok = all(r["counts_match"] and r["unique_triples"] for r in rows)
    beauty = [r for r in rows if r["dataset"] == "beauty"]
    if beauty and beauty[0]["l1_cooccurrence_ratio"] < 3.0:
        ok = False
        print("FAIL: Beauty L1 co-occurrence ratio below 3x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
