"""消融：阶段 1 的各个杠杆在同一数据、同一（缩短的）训练日程下各贡献多少。

    python benchmarks/ablation.py --data /tmp/q2/beauty_data --dataset beauty [--epochs 2] [--variants a,b]
每个变体 = 提交的阶段 1 配置（recipes/configs/<dataset>_stage1.yaml）改一处；训练 --epochs 轮（验证集选最佳一轮），
最佳模型再在全部验证用户上、测试集上按两种协议（允许 / 屏蔽历史物品）全目录排序。写
benchmarks/results/ablation_<dataset>.json（git commit、每个变体的改动、验证曲线、最佳验证、全部验证用户的指标、
测试指标、墙钟时间）并打印表格。变体可以另加训练参数（如 `--weight_decay 0.1`）。
"只换打分"的变体不另训练：它复用所依赖变体的最佳模型，只改 UGTConfig.item_scoring。
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ugt_hf.argparsing import load_yaml_config  # noqa: E402
from ugt_hf.data.datadir import DataDir  # noqa: E402
from ugt_hf.evaluation import evaluate_ranking  # noqa: E402
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation  # noqa: E402
from ugt_hf.report import metrics_table  # noqa: E402
from ugt_hf.training.stages import AUTO_TABLE_SIZES, auto_table_size, run_stage  # noqa: E402

CONFIGS = {"beauty": "recipes/configs/beauty_stage1.yaml", "ml-100k": "recipes/configs/ml100k_stage1.yaml"}
# 五个“转移”选项（README 的 Beauty 调优记录）：一起去掉，看物品头能否替代它们
TRANSITION_OPTIONS = ("encoder_position_mode", "item_id_buckets", "node_embedding_buckets", "node_embedding_dim",
                      "bos_context", "transition_buckets", "transition_scale")


def scale_tables(model_config: dict, data_size: dict, factor: float) -> dict:
    """三张哈希表（AUTO_TABLE_SIZES）都乘 factor：写 "auto" 的先按数据算出大小。
    看配置是否对表大小敏感——2 的幂取整让 auto 的装载率在别的数据上最多差 2 倍。"""
    out = dict(model_config)
    for field in AUTO_TABLE_SIZES:
        value = out.get(field, 0)
        if value == "auto":
            value = auto_table_size(field, data_size["num_items"], data_size["num_interactions"])
        if value:
            out[field] = max(1, int(value * factor))
    return out


# 变体：(说明, 对 model_config 的改动函数 (model_config, 数据大小), 只换打分时依赖的变体[, 追加的训练参数])
VARIANTS = {
    "committed": ("committed stage-1 config (item head, scoring = semantic log p + item log-softmax)",
                  lambda m, _: m, None),
    "no_item_head": ("without the item head (semantic-ID heads only)", lambda m, _: {**m, "num_items": 0}, None),
    "item_scoring_item": ("committed model, ranked by the item head alone (item_scoring: item)", None, "committed"),
    "no_transition_options": ("item head, without the five transition options",
                              lambda m, _: {k: v for k, v in m.items() if k not in TRANSITION_OPTIONS}, None),
    # 物品头本身就是每个物品一行的输出向量：看哈希的 L2/L3 节点输出向量在它旁边还值不值（它们占评估时间的一半）
    "no_node_embeddings": ("item head, without the hashed node output vectors (node_embedding_buckets: 0)",
                           lambda m, _: {**m, "node_embedding_buckets": 0}, None),
    # 正则化：提交的配置第 2 轮验证 loss 已在升（训练物品 CE 5.7 对验证 8.5），看更强的 dropout / 权重衰减是否换来召回
    "dropout_0.4": ("committed config with dropout 0.4 (0.25 committed)", lambda m, _: {**m, "dropout": 0.4}, None),
    "weight_decay_0.1": ("committed config with AdamW weight decay 0.1 (0.01 committed)", lambda m, _: m, None,
                         ["--weight_decay", "0.1"]),
    # 物品头（全目录 CE）是最大的单项提升：看加重它是否更好
    "item_loss_weight_2": ("committed config with item_loss_weight 2.0 (1.0 committed)",
                           lambda m, _: {**m, "item_loss_weight": 2.0}, None),
    # 表大小由数据算（auto）：减半、加倍都在噪声内，才能说换一个大一倍或小一倍的数据集时 2 的幂取整无关紧要
    "tables_half": ("committed config with the three hash tables halved (item ids, node vectors, wide memory)",
                    lambda m, d: scale_tables(m, d, 0.5), None),
    "tables_double": ("committed config with the three hash tables doubled",
                      lambda m, d: scale_tables(m, d, 2.0), None),
}


def git_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def validation_curve(log_history) -> list:
    return [{"epoch": e.get("epoch"), "recall@10": e["eval_recall@10"], "ndcg@10": e.get("eval_ndcg@10")}
            for e in log_history if "eval_recall@10" in e]


def test_metrics(model, data_dir: str, num_beams: int) -> dict:
    return {label: evaluate_ranking(model, data_dir, split="test", num_beams=num_beams, exclude_history=masked)
            for label, masked in (("allowed", False), ("masked", True))}


def full_validation(model, data_dir: str, num_beams: int) -> dict:
    """最佳模型在全部验证用户上的指标（允许协议）：训练中每轮只评 eval_max_samples 个用户，
    Recall@10 的标准误约 0.005，分不出几个百分点的差别；全部验证用户约 0.002，选配置看它而不是看测试集。"""
    return evaluate_ranking(model, data_dir, split="valid", num_beams=num_beams, exclude_history=False)


def run_variant(name: str, base_model_config: dict, args, done: dict) -> dict:
    note, change, reuse, *rest = VARIANTS[name]
    train_args = list(rest[0]) if rest else []
    t0 = time.perf_counter()
    if reuse is not None:  # 不训练：换打分方式重新评估所依赖变体的最佳模型
        if reuse not in done:
            raise SystemExit(f"variant {name} needs variant {reuse} in the same run (--variants)")
        model = UGTForGenerativeRecommendation.from_pretrained(done[reuse]["best_model_dir"]).eval()
        model.config.item_scoring = "item"
        return {"note": note, "reuses": reuse, "test": test_metrics(model, args.data, args.num_beams),
                "wall_seconds": {"evaluate": time.perf_counter() - t0}}
    data = DataDir(args.data)
    model_config = change(dict(base_model_config), {"num_items": data.catalogue().num_items,
                                                    "num_interactions": int(data.meta["num_interactions"])})
    out_dir = Path(args.work) / f"ablation_{args.dataset}_{name}"
    argv = ["--config", str(ROOT / CONFIGS[args.dataset]), "--data_dir", args.data, "--output_dir", str(out_dir),
            "--model_config", json.dumps(model_config), "--max_epochs", str(args.epochs), *train_args]
    shutil.rmtree(out_dir, ignore_errors=True)  # 同名变体的旧检查点不能混进来
    summary = run_stage(1, argv)
    train_s = time.perf_counter() - t0
    model = UGTForGenerativeRecommendation.from_pretrained(summary["best_model_dir"]).eval()
    t1 = time.perf_counter()
    curve = validation_curve(summary["log_history"])
    return {"note": note, "model_config": model_config, "train_args": train_args,
            "best_model_dir": summary["best_model_dir"],
            "validation": curve, "best_validation": max(curve, key=lambda e: e["recall@10"]) if curve else None,
            "valid_all_users": full_validation(model, args.data, args.num_beams),
            "test": test_metrics(model, args.data, args.num_beams),
            "wall_seconds": {"train": train_s, "evaluate": time.perf_counter() - t1}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by `ugt prepare`")
    p.add_argument("--dataset", choices=sorted(CONFIGS), required=True)
    p.add_argument("--epochs", type=int, default=2, help="training epochs per variant (the same for all)")
    p.add_argument("--num_beams", type=int, default=100)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--work", default="/tmp/ugt_ablation", help="checkpoints of each variant")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/ablation_<dataset>.json)")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    data, _ = load_yaml_config(ROOT / CONFIGS[args.dataset])
    base_model_config = dict(data.get("model_config") or {})
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"ablation_{args.dataset}.json"
    results = {"dataset": args.dataset, "git_commit": git_commit(), "config": CONFIGS[args.dataset],
               "epochs": args.epochs, "num_beams": args.num_beams, "data": args.data, "variants": {}}
    for name in names:
        results["variants"][name] = run_variant(name, base_model_config, args, results["variants"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")  # 每个变体后都写，中途停下也不丢已完成的
    for label in ("allowed", "masked"):
        rows = {n: v["test"][label] for n, v in results["variants"].items()}
        print(f"\n== {args.dataset} ablation, test, history {label} ({args.epochs} epochs each) ==")
        print(metrics_table(rows))
    for n, v in results["variants"].items():
        if v.get("valid_all_users"):
            a = v["valid_all_users"]
            print(f"{n}: all {a['num_users']} validation users recall@10 {a['recall@10']:.4f} "
                  f"ndcg@10 {a['ndcg@10']:.4f}")
        if v.get("best_validation"):
            b = v["best_validation"]
            print(f"{n}: best validation recall@10 {b['recall@10']:.4f} ndcg@10 {b['ndcg@10']:.4f} "
                  f"(epoch {b['epoch']})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
