"""转移计数先验的消融：一个训练好的模型，窗口（最近几个历史物品参与计数）× 权重，在 valid 与 test 上各算一遍。

    python benchmarks/bench_prior.py --model RUN/stage3/best_model --data DATA [--windows 0,1,2,3,4] \
        [--weights 0,0.5,1,2,3,4,5] [--num_beams 100] [--exclude_history] [--out JSON]
每个划分只跑一次束搜索（候选 = 束宽个），各组合只重排候选（evaluation.fused_metrics，流水线用的同一段代码）。
窗口 0 = 模型本身。对每个窗口按验证集 Recall@10 选权重（流水线的规则 select_prior_weight），再报告该权重下的
测试指标：测试集只用来报告，不参与选择。写 JSON（含 git commit）并打印表格。
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _floats(text: str):
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a saved model folder (e.g. RUN/stage3/best_model)")
    p.add_argument("--data", required=True, help="folder written by `ugt prepare`")
    p.add_argument("--windows", default="0,1,2,3,4", help="comma-separated windows; 0 = the model alone")
    p.add_argument("--weights", default="0,0.5,1,2,3,4,5", help="comma-separated prior weights tried on valid")
    p.add_argument("--num_beams", type=int, default=100)
    p.add_argument("--exclude_history", action="store_true", help="history items masked (eSASRec protocol)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_prior.json"))
    args = p.parse_args(argv)
    try:
        windows = [int(w) for w in args.windows.split(",") if w.strip()]
        weights = _floats(args.weights)
    except ValueError as e:
        p.error(f"--windows takes integers and --weights numbers, comma-separated ({e})")
    if any(w < 0 for w in windows) or not all(0 <= w < float("inf") for w in weights) or not weights:
        p.error("--windows and --weights must be non-negative and finite (and at least one weight)")

    import torch

    from ugt_hf.data.datadir import DataDir
    from ugt_hf.evaluation import TransitionPrior, _ranked_candidates, fused_metrics, select_prior_weight
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
    from ugt_hf.workflow import git_commit

    torch.set_num_threads(args.threads)
    data = DataDir.of(args.data)
    catalogue = data.catalogue()
    model = UGTForGenerativeRecommendation.from_pretrained(args.model).eval()
    results = {"git_commit": git_commit(ROOT), "model": args.model, "data": args.data, "num_beams": args.num_beams,
               "exclude_history": args.exclude_history, "weights": weights, "windows": {}}
    # 每个划分只跑一次束搜索；各窗口、各权重只重排这些候选
    cands = {}
    for split in ("valid", "test"):
        t0 = time.perf_counter()
        # 与 evaluate_ranking 同一束宽：至少是最大的 K（20）
        items, scores, targets = _ranked_candidates(model, data, split, catalogue, max(args.num_beams, 20),
                                                    args.exclude_history, 256, None)
        table = data.read_table(split, ["encoder_l1_ids", "encoder_l2_ids", "encoder_l3_ids"])
        cands[split] = (items, scores, targets, table)
        results[f"beam_seconds_{split}"] = time.perf_counter() - t0
    for window in windows:
        t0 = time.perf_counter()
        prior = (TransitionPrior.from_data(data, window, catalogue=catalogue) if window > 0
                 else TransitionPrior([], [], catalogue.num_items))
        grid = {}
        for split, (items, scores, targets, table) in cands.items():
            hist = prior.history(table, catalogue)
            grid[split] = fused_metrics(items, scores, targets, prior.scores(hist, items),
                                        weights if window > 0 else [0.0], catalogue,
                                        exclude_history=args.exclude_history)
        best = select_prior_weight(grid["valid"])
        results["windows"][str(window)] = {
            "chosen_weight": best, "valid": {f"{w:g}": m for w, m in grid["valid"].items()},
            "test": {f"{w:g}": m for w, m in grid["test"].items()}, "seconds": time.perf_counter() - t0}
        Path(args.out).write_text(json.dumps(results, indent=2))
    keys = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
    print(f"{'window':>6} {'weight':>6}  " + "  ".join(f"valid {k:<9}" for k in ("R@10", "N@10"))
          + "  " + "  ".join(f"test {k:<6}" for k in ("R@5", "N@5", "R@10", "N@10")))
    for window, r in results["windows"].items():
        w = f"{r['chosen_weight']:g}"
        v, t = r["valid"][w], r["test"][w]
        print(f"{window:>6} {w:>6}  {v['recall@10']:>15.4f}  {v['ndcg@10']:>15.4f}  "
              + "  ".join(f"{t[k]:>11.4f}" for k in keys))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
