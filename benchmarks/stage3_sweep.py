"""阶段 3 的对照：从同一个阶段 2 模型出发，只改阶段 3 的几处设置，看偏好准确率与下一物品召回各怎么动。

    python benchmarks/stage3_sweep.py --data DIR --stage2 RUN/stage2/best_model --dataset ml-100k \
        [--variants committed,ntp_only,...] [--set lambda_preference=0.3 ...]
每个变体 = 提交的阶段 3 配置（recipes/configs/<dataset>_stage3.yaml）加几个 --key value；参考模型都是这个阶段 2 模型。
测试集全目录排序（协议同 quality.py 的 pipeline 协议），留出偏好准确率（有评分偏好对时），DPO 曲线。
写 benchmarks/results/stage3_sweep_<dataset>.json（git commit、阶段 2 基线、每个变体的改动、指标、墙钟时间）。
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ugt_hf.report import dpo_curve  # noqa: E402
from ugt_hf.workflow import git_commit  # noqa: E402

CONFIGS = {"beauty": "recipes/configs/beauty_stage3.yaml", "ml-100k": "recipes/configs/ml100k_stage3.yaml",
           "demo": "recipes/configs/demo_stage3.yaml"}
PIPELINES = {"beauty": "recipes/configs/beauty_pipeline.yaml", "ml-100k": "recipes/configs/ml100k_pipeline.yaml",
             "demo": "recipes/configs/demo_pipeline.yaml"}
# 变体：名字 -> (说明, 追加的 --key value)
VARIANTS = {
    "committed": ("committed stage-3 config", []),
    "ntp_only": ("lambda_preference 0: only the unified loss's next-item NTP (continued training)",
                 ["--lambda_preference", "0.0"]),
    "dpo_light": ("lambda_preference 0.3, beta 1.0", ["--lambda_preference", "0.3", "--dpo_beta", "1.0"]),
    "dpo_heavy": ("lambda_preference 5.0, beta 0.5", ["--lambda_preference", "5.0", "--dpo_beta", "0.5"]),
    "two_epochs": ("committed config with max_epochs 2 (half the stage-3 wall time)", ["--max_epochs", "2"]),
    "ipo": ("committed config with TRL's loss_type ipo (squared loss towards a bounded margin)",
            ["--loss_type", "ipo"]),
    "lr_1e-4": ("committed config with learning_rate 1e-4", ["--learning_rate", "1e-4"]),
    "ntp_only_lr_1e-4": ("lambda_preference 0 and learning_rate 1e-4",
                         ["--lambda_preference", "0.0", "--learning_rate", "1e-4"]),
    # 留出准确率只看绝对 log p 的次序：无参考的 hinge 在一对已经以 1/β 的间隔排对之后梯度为 0，不再推开它
    "hinge_rf": ("reference-free hinge (TRL loss_type hinge, dpo_reference_free): relu(1 - beta*(log p_c - log p_r))",
                 ["--loss_type", "hinge", "--dpo_reference_free", "true", "--dpo_beta", "1.0"]),
    "hinge_ref": ("hinge against the frozen reference, beta 1.0", ["--loss_type", "hinge", "--dpo_beta", "1.0"]),
    # 同一个数学目标：ml100k_stage3.yaml 训练前用冻结的参考模型预计算参考 log-prob（TRL 的
    # precompute_ref_log_probs）；这个变体改回每步现场算，比的是时间
    "live_reference": ("committed config with precompute_ref_log_probs false (a reference forward every step)",
                       ["--precompute_ref_log_probs", "false"]),
    "sdpo_k4": ("self-generated pairs with 4 negatives per prompt (softmax-DPO), lambda_preference 1.0",
                ["--preference_negatives", "4", "--lambda_preference", "1.0"]),
}
def evaluation_protocol(dataset: str) -> dict:
    from ugt_hf.workflow import load_pipeline_config

    ev = load_pipeline_config(ROOT / PIPELINES[dataset])["evaluation"]
    return {"split": ev.get("split", "test"), "k_values": list(ev.get("k_values", [5, 10, 20])),
            "num_beams": int(ev.get("num_beams", 20)), "exclude_history": bool(ev.get("exclude_history", False))}


def test_metrics(model_dir: str, data: str, ev: dict) -> dict:
    from ugt_hf.evaluation import evaluate_ranking
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

    model = UGTForGenerativeRecommendation.from_pretrained(model_dir).eval()
    return evaluate_ranking(model, data, split=ev["split"], k_values=ev["k_values"], num_beams=ev["num_beams"],
                            exclude_history=ev["exclude_history"])


def run_variant(name: str, extra, args, ev: dict) -> dict:
    from ugt_hf.training.stages import run_stage

    out = Path(args.work) / name
    shutil.rmtree(out, ignore_errors=True)  # 每次从头训练、重新计时
    argv = ["--config", str(ROOT / CONFIGS[args.dataset]), "--data_dir", args.data, "--output_dir", str(out),
            "--pretrained", args.stage2, "--reference_model_path", args.stage2, *extra, *args.set_args]
    t0 = time.perf_counter()
    summary = run_stage(3, argv)
    train_wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    test = test_metrics(summary["best_model_dir"], args.data, ev)
    curve = dpo_curve(summary.get("log_history", []))
    return {"overrides": list(extra) + list(args.set_args), "description": VARIANTS.get(name, ("",))[0],
            "preference_source": summary.get("preference_source"),
            "num_preference_pairs": summary.get("num_preference_pairs"),
            "preference_before": summary.get("preference_before"), "preference_after": summary.get("preference_after"),
            "train_seconds": summary["train_seconds"], "stage_wall_seconds": train_wall,
            "eval_seconds": time.perf_counter() - t1, "test": test, "dpo_curve": curve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by `ugt prepare`")
    p.add_argument("--stage2", required=True, help="stage-2 best_model folder (start and reference of every variant)")
    p.add_argument("--dataset", choices=sorted(CONFIGS), required=True)
    p.add_argument("--variants", default="committed,ntp_only", help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--set", dest="set_args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra stage-3 overrides for every variant, e.g. torch_num_threads=2")
    p.add_argument("--work", default="/tmp/ugt_stage3_sweep", help="output folders of the variants")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/stage3_sweep_<dataset>.json)")
    args = p.parse_args(argv)
    args.set_args = [x for kv in args.set_args for x in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    ev = evaluation_protocol(args.dataset)
    results = {"dataset": args.dataset, "git_commit": git_commit(ROOT), "data": args.data, "stage2": args.stage2,
               "config": CONFIGS[args.dataset], "protocol": ev,
               "stage2_test": test_metrics(args.stage2, args.data, ev), "variants": {}}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"stage3_sweep_{args.dataset}.json"
    for name in names:
        results["variants"][name] = run_variant(name, VARIANTS[name][1], args, ev)
        out.write_text(json.dumps(results, indent=2))  # 每个变体后写一次：中途停下也留下已完成的
    base = results["stage2_test"]
    print(f"{'variant':<12} {'R@10':>7} {'N@10':>7} {'vs stage 2':>12} {'pref acc':>10} {'train s':>8}")
    print(f"{'stage 2':<12} {base['recall@10']:>7.4f} {base['ndcg@10']:>7.4f} {'':>12} {'':>10} {'':>8}")
    for name, r in results["variants"].items():
        t = r["test"]
        pref = r["preference_after"]["preference_accuracy"] if r.get("preference_after") else float("nan")
        rel = f"{t['recall@10'] / base['recall@10']:.3f}/{t['ndcg@10'] / base['ndcg@10']:.3f}"
        print(f"{name:<12} {t['recall@10']:>7.4f} {t['ndcg@10']:>7.4f} {rel:>12} {pref:>10.4f} "
              f"{r['train_seconds']:>8.0f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
