"""质量基准：用提交的配置在 ../shared/data 的 Amazon Beauty 与 MovieLens-100K 上跑完整流水线。

    python benchmarks/quality.py --dataset beauty      # 或 ml-100k / all
    python benchmarks/quality.py --dataset beauty --input Sports.txt   # 同一份 Beauty 配置，别的 S3-Rec 格式类目
写 benchmarks/results/<dataset>.json：git commit、配置、每阶段墙钟时间、两种协议（允许 / 屏蔽历史物品）下每阶段的测试
指标与两条基线、每阶段的验证曲线，以及同台实测的 SASRec-CE（benchmarks/peer_sasrec.py，同一数据目录、同一指标代码）
与它的墙钟时间；把表格与配置里的已发表数字并列打印。数据产物与检查点写到 --work（默认 /tmp），不进仓库。

流水线本身只按配置的协议评估（它的墙钟时间就是预算要看的数字）；另一种协议在流水线结束后对每阶段的最佳模型补评，
时间单独记在 extra_protocol_seconds。
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

from ugt_hf.argparsing import ConfigError  # noqa: E402
from ugt_hf.evaluation import (  # noqa: E402
    TransitionPrior,
    evaluate_ranking,
    evaluate_with_prior,
    popularity_baseline,
    transition_baseline,
)
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation  # noqa: E402
from ugt_hf.report import dpo_curve as report_dpo_curve  # noqa: E402
from ugt_hf.report import metrics_table, prior_row  # noqa: E402
from ugt_hf.workflow import run_pipeline  # noqa: E402

DATASETS = {
    "beauty": {"config": "recipes/configs/beauty_pipeline.yaml", "input": "amazon-beauty/Beauty.txt"},
    "ml-100k": {"config": "recipes/configs/ml100k_pipeline.yaml", "input": "ml-100k", "ratings": "ml-100k/u.data"},
}
# 按测试目标的评分分组（有评分的数据）：阶段 3 拿评分做偏好对，它该少推荐用户会打低分的物品；
# 总的 Recall@10 把“看了但打 1 星”也算命中，只看它分不清“对齐了偏好”与“排序变差了”
RATING_GROUPS = (("liked (>= 4)", 4.0, 5.0), ("neutral (3)", 3.0, 3.0), ("disliked (<= 2)", 1.0, 2.0))
PROTOCOLS = {"allowed": False, "masked": True}
# 同台 SASRec-CE 的设置：SASRec 论文给稀疏 Amazon 数据用的 dropout 0.5；验证 NDCG@10 连续 5 轮不升即停
PEER_ARGS = ["--dropout", "0.5", "--patience", "5"]


def _peer_module():
    spec = importlib.util.spec_from_file_location("peer_sasrec", ROOT / "benchmarks" / "peer_sasrec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def validation_curve(stage_dir: Path) -> dict:
    """阶段的验证曲线（训练中每次评估的 recall@10 / ndcg@10）与最佳一次。"""
    path = stage_dir / "stage_summary.json"
    history = json.loads(path.read_text()).get("log_history", []) if path.is_file() else []
    evals = [{"epoch": e.get("epoch"), "step": e.get("step"), "recall@10": e["eval_recall@10"],
              "ndcg@10": e.get("eval_ndcg@10")} for e in history if "eval_recall@10" in e]
    best = max(evals, key=lambda e: e["recall@10"]) if evals else None
    return {"per_evaluation": evals, "best": best}


def dpo_curve(stage_dir: Path) -> list:
    """阶段 3 每个日志步的 DPO 曲线（report.dpo_curve），从 stage_summary.json 读出。"""
    path = stage_dir / "stage_summary.json"
    return report_dpo_curve(json.loads(path.read_text()).get("log_history", []) if path.is_file() else [])


def read_ml100k_ratings(path: Path) -> dict:
    """u.data：user \\t item \\t rating \\t ts；ML-100K 里每个 (用户, 物品) 只评一次。"""
    ratings = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            user, item, rating, _ = line.rstrip("\n").split("\t")
            ratings[(user, item)] = float(rating)
    return ratings


def rating_breakdown(hits_at_rank, target_ratings, k_values=(10,)) -> dict:
    """按目标评分分组的 Recall@K / NDCG@K。hits_at_rank：[N] 目标在排序里的名次（0 起；不在前 max(K) 里为 -1）；
    target_ratings：[N] 目标物品的评分。"""
    import numpy as np

    rank = np.asarray(hits_at_rank)
    ratings = np.asarray(target_ratings, dtype=np.float64)
    out = {}
    for label, lo, hi in RATING_GROUPS:
        mask = (ratings >= lo) & (ratings <= hi)
        row = {"num_users": int(mask.sum())}
        r = rank[mask]
        for k in k_values:
            hit = (r >= 0) & (r < k)
            row[f"recall@{k}"] = float(hit.mean()) if len(r) else float("nan")
            gain = 1.0 / np.log2(np.maximum(r, 0) + 2.0)  # 不在榜上（-1）的行由 hit 屏蔽
            row[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean()) if len(r) else float("nan")
        out[label] = row
    return out


class TargetRatings:
    """一个划分（valid/test）上每个样本目标物品的评分查找，读一次评分文件、物品表与用户列，之后对任意模型
    （内存里的也行）给出按目标评分分组的指标。只对有评分文件的数据集（DATASETS 里有 "ratings"）。"""

    def __init__(self, name: str, shared: Path, data_dir: Path, split: str):
        import pyarrow.parquet as pq

        from ugt_hf.data.datadir import DataDir

        self.ratings = read_ml100k_ratings(shared / DATASETS[name]["ratings"])
        data = DataDir.of(data_dir)
        self.catalogue = data.catalogue()
        items = pq.read_table(data_dir / "items.parquet", columns=["item_id", "item_index"]).to_pydict()
        self.item_id = dict(zip(items["item_index"], items["item_id"]))
        self.users = pq.read_table(data_dir / f"{split}.parquet", columns=["user_id"]).column(0).to_pylist()
        self.dataset = data.recommend_dataset(split)

    def breakdown(self, model, num_beams: int, masked: bool) -> dict:
        import numpy as np

        from ugt_hf.evaluation import rank_dataset

        preds, targets = rank_dataset(model, self.dataset, self.catalogue, top_k=10, num_beams=num_beams,
                                      exclude_history=masked)
        preds, targets = np.asarray(preds), np.asarray(targets)
        match = preds == targets[:, None]  # [N, 10]
        rank = np.where(match.any(1), match.argmax(1), -1)
        target_rating = [self.ratings[(u, self.item_id[int(t)])] for u, t in zip(self.users, targets.tolist())]
        return rating_breakdown(rank, target_rating)


def target_ratings_breakdown(name: str, shared: Path, data_dir: Path, results: dict, split: str, num_beams: int,
                             masked: bool) -> dict:
    """每个阶段的最佳模型在测试集上按目标评分分组的指标。"""
    lookup = TargetRatings(name, shared, data_dir, split)
    return {stage: lookup.breakdown(UGTForGenerativeRecommendation.from_pretrained(v["best_model_dir"]).eval(),
                                    num_beams, masked)
            for stage, v in results["stages"].items()}


def load_peer(path: Path, name: str) -> dict:
    """复用 peer_sasrec.py 写出的 JSON（它不依赖本仓库的模型代码：同一数据、同一指标代码、同一种子，重跑结果相同），
    省掉二十多分钟；数据集不符或缺字段时报错，不悄悄混用。"""
    peer = json.loads(path.read_text())
    for key in ("dataset", "git_commit", "config", "best_epoch", "epochs_run", "wall_seconds", "valid", "test"):
        if key not in peer:
            raise SystemExit(f"{path}: missing field '{key}' (write it with benchmarks/peer_sasrec.py)")
    if peer["dataset"] != name:
        raise SystemExit(f"{path}: field 'dataset' is {peer['dataset']!r}, expected {name!r}")
    return peer


def run(name: str, shared: Path, work: Path, stages, peer: bool, peer_json: Path = None,
        other_input: Path = None) -> dict:
    """other_input：用 name 的提交配置（不改）跑另一份同格式的数据（如别的 Amazon 类目）；结果以文件名命名，
    不并列 name 那个数据集的论文数字，也不做按评分分组（评分文件是 name 的）。"""
    spec = DATASETS[name]
    config_name = name
    if other_input is not None:
        name = Path(other_input).stem.lower()
    data_dir, run_dir = work / f"{name}_data", work / f"{name}_run"
    t0 = time.perf_counter()
    try:
        results = run_pipeline(data_dir, ROOT / spec["config"], run_dir, stages=stages,
                               prepare_overrides={"input": str(other_input or shared / spec["input"])},
                               dataset=name if other_input is not None else None)
    except ConfigError as e:  # 多半是 --work 里留着用旧 prepare 选项准备的目录
        raise SystemExit(f"quality.py: {e}\n(the data folder is {data_dir}: delete it or pass another --work to "
                         "prepare it again)") from None
    pipeline_seconds = time.perf_counter() - t0
    ev_masked = bool(results["exclude_history"])
    num_beams, split = results["num_beams"], results["split"]
    protocols = {}
    t1 = time.perf_counter()
    for label, masked in PROTOCOLS.items():
        if masked == ev_masked:  # 流水线已经按这个协议评估过
            rows = {k: v["test"] for k, v in results["stages"].items()}
            rows["popularity"], rows["transition"] = results["popularity"], results["transition"]
        else:
            rows = {}
            for k, v in results["stages"].items():
                model = UGTForGenerativeRecommendation.from_pretrained(v["best_model_dir"]).eval()
                rows[k] = evaluate_ranking(model, data_dir, split=split, num_beams=num_beams, exclude_history=masked)
            rows["popularity"] = popularity_baseline(data_dir, split, exclude_history=masked)
            rows["transition"] = transition_baseline(data_dir, split, exclude_history=masked)
        tp = results.get("transition_prior")
        if tp:  # 最后一个阶段 + 转移先验：权重是流水线在验证集上选的，另一种协议沿用同一个权重
            (name_row,) = prior_row(results)
            if masked == ev_masked:
                rows[name_row] = tp["test"]
            else:
                model = UGTForGenerativeRecommendation.from_pretrained(tp["model_dir"]).eval()
                prior = TransitionPrior.from_data(data_dir, tp["window"])
                rows[name_row] = evaluate_with_prior(model, data_dir, prior, [tp["weight"]], split=split,
                                                     num_beams=num_beams, exclude_history=masked)[tp["weight"]]
        protocols[label] = rows
    by_rating = None
    if "ratings" in spec and other_input is None:
        by_rating = target_ratings_breakdown(name, shared, data_dir, results, split, num_beams, ev_masked)
    extra_seconds = time.perf_counter() - t1
    peer_out = None
    if peer_json is not None:
        peer_out = load_peer(peer_json, name)
    elif peer:
        module = _peer_module()
        peer_out = module.run(module.parse(["--data", str(data_dir), "--dataset", name, *PEER_ARGS]))
    if peer_out is not None:
        for label in PROTOCOLS:
            protocols[label]["SASRec-CE (measured)"] = peer_out["test"][f"history_{label}"]
    out = {
        "dataset": name, "git_commit": results["git_commit"], "config": spec["config"],
        "input": str(other_input) if other_input is not None else spec["input"], "configs_of": config_name,
        "stage_configs": {k: str(Path(v).relative_to(ROOT)) if str(v).startswith(str(ROOT)) else v
                          for k, v in results["stage_configs"].items()},
        "protocol": f"leave-one-out, {split} split, full-catalogue ranking, "
                    f"constrained beam search (beam {num_beams}); "
                    "'allowed' = history items may be recommended (TIGER), 'masked' = the user's history items are "
                    "excluded (eSASRec)",
        "pipeline_protocol": "masked" if ev_masked else "allowed",
        "wall_seconds_total": pipeline_seconds,
        "wall_seconds_per_stage": {k: {"train": v["train_seconds"], "evaluate": v["eval_seconds"]}
                                   for k, v in results["stages"].items()},
        "extra_protocol_seconds": extra_seconds,
        "metrics": protocols,
        "validation": {k: validation_curve(run_dir / k) for k in results["stages"]},
        "preference_accuracy": {k: v["preference_accuracy"] for k, v in results["stages"].items()
                                if "preference_accuracy" in v},
        "by_target_rating": by_rating,
        "dpo_curves": {k: dpo_curve(run_dir / k) for k in results["stages"] if dpo_curve(run_dir / k)},
        "peer_sasrec": None if peer_out is None else {
            "git_commit": peer_out.get("git_commit"), "reused_from": None if peer_json is None else str(peer_json),
            "config": peer_out["config"], "best_epoch": peer_out["best_epoch"], "epochs_run": peer_out["epochs_run"],
            "wall_seconds": peer_out["wall_seconds"], "valid": peer_out["valid"], "test": peer_out["test"]},
        "published": results.get("published"),
        "transition_prior": None if not results.get("transition_prior") else {
            k: results["transition_prior"][k] for k in ("window", "weight", "validation", "seconds")},
    }
    for label, rows in protocols.items():
        print(f"\n== {name}: test, history {label} ==")
        print(metrics_table(rows, reference=out["published"] if label == "allowed" else None))
    for k, v in out["validation"].items():
        if v["best"]:
            print(f"{k}: best validation recall@10 {v['best']['recall@10']:.4f} ndcg@10 {v['best']['ndcg@10']:.4f} "
                  f"(epoch {v['best']['epoch']})")
    for k, v in out["wall_seconds_per_stage"].items():
        print(f"{k}: train {v['train']:.0f}s, evaluate {v['evaluate']:.0f}s")
    for k, v in out["preference_accuracy"].items():
        print(f"{k}: held-out preference accuracy {v['preference_accuracy']:.4f} ({int(v['num_pairs'])} pairs)")
    for k, groups in (by_rating or {}).items():
        print(f"{k}: test recall@10 / ndcg@10 by the target's rating: " + "; ".join(
            f"{g} {r['recall@10']:.4f} / {r['ndcg@10']:.4f} (n={r['num_users']})" for g, r in groups.items()))
    print(f"pipeline wall time {pipeline_seconds:.0f}s; other protocol {extra_seconds:.0f}s"
          + (f"; SASRec-CE {peer_out['wall_seconds']['total']:.0f}s" if peer_out else ""))
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(out, indent=2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default="/tmp/ugt_quality")
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--no_peer", action="store_true", help="skip the measured SASRec-CE peer")
    parser.add_argument("--peer_json", default=None,
                        help="reuse a SASRec-CE result written by benchmarks/peer_sasrec.py (e.g. "
                             "benchmarks/results/peer_sasrec_beauty.json) instead of training it again; "
                             "only with a single --dataset")
    parser.add_argument("--input", default=None,
                        help="run --dataset's committed configs, unchanged, on this other file/folder of the same "
                             "format (e.g. another Amazon category in S3-Rec format); writes "
                             "benchmarks/results/<file name>.json without the published rows")
    ns = parser.parse_args()
    if ns.peer_json and ns.dataset == "all":
        parser.error("--peer_json belongs to one data set: pass --dataset beauty or --dataset ml-100k")
    if ns.input and ns.dataset == "all":
        parser.error("--input needs the configs of one data set: pass --dataset beauty (S3-Rec format) or ml-100k")
    if ns.input and not Path(ns.input).exists():
        parser.error(f"--input {ns.input}: no such file or folder")
    if ns.input and Path(ns.input).stem.lower() in DATASETS:
        parser.error(f"--input {ns.input}: results are named after the file, and '{Path(ns.input).stem.lower()}' "
                     "would overwrite a committed data set's JSON; rename or link the file under another name")
    stages = [int(s) for s in ns.stages.split(",")]
    names = list(DATASETS) if ns.dataset == "all" else [ns.dataset]
    for name in names:
        run(name, Path(ns.shared), Path(ns.work), stages, peer=not ns.no_peer,
            peer_json=Path(ns.peer_json) if ns.peer_json else None,
            other_input=Path(ns.input).resolve() if ns.input else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
