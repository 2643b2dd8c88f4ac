"""评估速度：一个训练好的模型给某个划分的全部用户做全目录排序要多久（流水线与 quality.py 用的同一个
`evaluate_ranking`，同一 beam 宽度）。

    python benchmarks/bench_eval.py --model RUN/stage2/best_model --data DATA [--threads 1,2] [--num_beams 100]
每个线程数各跑 --repeats 次（取中位数），两种协议（允许 / 屏蔽历史物品）各一次；记录 users/s 与 Recall@10 /
NDCG@10（换实现不该改变结果，指标一并写下便于对照）。写 JSON（--out，含 git commit）并打印表格。
要比较两个提交，在另一个提交的 worktree 里用同一命令再跑一次（机器空闲时，先后紧挨着）。
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a saved model folder (e.g. RUN/stage2/best_model)")
    p.add_argument("--data", required=True, help="folder written by `ugt prepare`")
    p.add_argument("--split", default="test")
    p.add_argument("--num_beams", type=int, default=100)
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--max_samples", type=int, default=None, help="rank only the first N users (quick checks)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_eval.json"))
    args = p.parse_args(argv)

    import torch

    from ugt_hf.evaluation import evaluate_ranking
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
    from ugt_hf.workflow import git_commit

    model = UGTForGenerativeRecommendation.from_pretrained(args.model).eval()
    rows = []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        torch.set_num_threads(threads)
        for label, masked in (("allowed", False), ("masked", True)):
            runs = [evaluate_ranking(model, args.data, split=args.split, num_beams=args.num_beams,
                                     exclude_history=masked, max_samples=args.max_samples)
                    for _ in range(max(1, args.repeats))]
            seconds = statistics.median(r["eval_seconds"] for r in runs)
            users = int(runs[0]["num_users"])
            rows.append({"threads": threads, "protocol": label, "users": users, "seconds": seconds,
                         "users_per_s": users / seconds, "recall@10": runs[0]["recall@10"],
                         "ndcg@10": runs[0]["ndcg@10"], "all_seconds": [r["eval_seconds"] for r in runs]})
            print(f"threads {threads}, history {label}: {users} users in {seconds:.1f} s "
                  f"({users / seconds:.0f} users/s), recall@10 {runs[0]['recall@10']:.4f} "
                  f"ndcg@10 {runs[0]['ndcg@10']:.4f}", flush=True)
    out = {"git_commit": git_commit(ROOT), "model": args.model, "data": args.data, "split": args.split,
           "num_beams": args.num_beams, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
