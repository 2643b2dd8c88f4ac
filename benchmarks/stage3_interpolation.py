"""阶段 3 的权重插值：θ(α) = θ_2 + α·(θ_3 − θ_2)，α 从 0（阶段 2）到 1（阶段 3）。

    python benchmarks/stage3_interpolation.py --data DIR --stage2 RUN/stage2/best_model \
        --stage3 RUN/stage3/best_model --dataset ml-100k [--alphas 0,0.25,0.5,0.75,1]
问的是：偏好准确率与下一物品召回之间的取舍，沿两端之间的直线（WiSE-FT 式的权重插值）是不是比两端更好——
若中间某个 α 保住了阶段 2 的召回、又拿到了大部分偏好提升，“验证集上选 α”就是一个不另加训练的阶段 3 组件。
每个 α：验证与测试的 Recall@10 / NDCG@10（流水线的评估协议），留出偏好准确率（有评分偏好对时），
有评分文件的数据集（ml-100k）再按测试目标的评分分组（quality.py 的 rating_breakdown）。
写 benchmarks/results/stage3_interpolation_<dataset>.json（git commit、两端模型、每个 α 的指标）。
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interpolate(start: dict, end: dict, alpha: float) -> dict:
    """浮点张量按 α 线性插值；整数缓冲（计数等）取终点的值。"""
    return {k: start[k] + alpha * (end[k] - start[k]) if start[k].is_floating_point() else end[k] for k in start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by `ugt prepare`")
    p.add_argument("--stage2", required=True, help="stage-2 best_model folder (alpha = 0)")
    p.add_argument("--stage3", required=True, help="stage-3 best_model folder trained from --stage2 (alpha = 1)")
    p.add_argument("--dataset", choices=["beauty", "ml-100k", "demo"], required=True)
    p.add_argument("--alphas", default="0,0.1,0.2,0.3,0.5,0.75,1")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=None, help="default benchmarks/results/stage3_interpolation_<dataset>.json")
    args = p.parse_args(argv)

    from stage3_sweep import evaluation_protocol

    from ugt_hf.data.datadir import DataDir
    from ugt_hf.evaluation import evaluate_ranking
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
    from ugt_hf.training.dpo_trainer import pairwise_preference_accuracy
    from ugt_hf.workflow import git_commit

    quality = _quality()
    ev = evaluation_protocol(args.dataset)
    data = DataDir.of(args.data)
    catalogue = data.catalogue()
    start = UGTForGenerativeRecommendation.from_pretrained(args.stage2).state_dict()
    end = UGTForGenerativeRecommendation.from_pretrained(args.stage3).state_dict()
    model = UGTForGenerativeRecommendation.from_pretrained(args.stage2).eval()
    held = None
    if data.num_records("preference_test") > 0:
        held = data.preference_dataset("preference_test")
    by_rating = None
    if args.dataset in quality.DATASETS and "ratings" in quality.DATASETS[args.dataset]:
        by_rating = quality.TargetRatings(args.dataset, Path(args.shared), Path(args.data), ev["split"])
    rows = []
    for alpha in [float(a) for a in args.alphas.split(",") if a.strip()]:
        t0 = time.perf_counter()
        model.load_state_dict(interpolate(start, end, alpha))
        row = {"alpha": alpha}
        for split in ("valid", "test"):
            m = evaluate_ranking(model, args.data, split=split, k_values=ev["k_values"], num_beams=ev["num_beams"],
                                 exclude_history=ev["exclude_history"], catalogue=catalogue)
            row[split] = {k: m[k] for k in ("recall@10", "ndcg@10", "recall@5", "ndcg@5")}
        if held is not None:
            row["preference_accuracy"] = pairwise_preference_accuracy(model, held)["preference_accuracy"]
        if by_rating is not None:
            row["test_by_target_rating"] = by_rating.breakdown(model, ev["num_beams"], ev["exclude_history"])
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        pref = row.get("preference_accuracy", float("nan"))
        print(f"alpha {alpha:.2f}: valid R@10 {row['valid']['recall@10']:.4f} N@10 {row['valid']['ndcg@10']:.4f} | "
              f"test R@10 {row['test']['recall@10']:.4f} N@10 {row['test']['ndcg@10']:.4f} | "
              f"held-out preference accuracy {pref:.4f}", flush=True)
        for g, r in row.get("test_by_target_rating", {}).items():
            print(f"    test target {g}: R@10 {r['recall@10']:.4f} N@10 {r['ndcg@10']:.4f} (n={r['num_users']})")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"stage3_interpolation_{args.dataset}.json"
    out.write_text(json.dumps({"dataset": args.dataset, "git_commit": git_commit(ROOT), "data": args.data,
                               "stage2": args.stage2, "stage3": args.stage3, "protocol": ev, "alphas": rows},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
