"""合成数据（make demo）上“知道答案”的上限：用生成器的真实参数排序与判断偏好，看模型与基线离这份数据的天花板多远。

    python benchmarks/demo_oracle.py --data runs/demo_data [--results runs/demo/results.json] [--out JSON]

数据目录必须是 `ugt prepare --source synthetic` 写的（从 meta.json 的选项重新生成同一份数据与它的隐变量，
输入校验和对不上就报错）。算四样东西：
- 测试集排序（全目录、允许历史物品，与流水线同一协议）：按真实的 P(下一个物品 | 最后一个历史物品, 用户偏好)
  排序——“真实参数 + 真实用户偏好”是这份数据上任何模型的上限（贝叶斯最优）；“真实参数、不知道用户偏好”
  是只看最后一个物品能做到的最好（一阶转移计数表逼近的就是它）；
- 留出偏好对（preference_test）上的成对准确率，三种打分：真实的下一物品分布（= 一个完美的下一物品模型会得到的
  偏好准确率）；历史里与候选同簇的物品数（只看物品序列、但知道真实的簇）；历史里与候选同簇物品的平均评分
  （看得到用户给历史物品的评分）。
给了 `--results`（流水线的 results.json）时把同一次运行的模型与基线的行并列打印。写 JSON（含 git commit）。
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K_VALUES = (5, 10, 20)


def _world(data_dir: Path):
    """meta.json 的选项 -> (交互表, SyntheticTruth)；校验和必须与数据目录一致（同一份数据）。"""
    from ugt_hf.data.datadir import read_meta
    from ugt_hf.data.prepare import PrepareOptions, _synthetic_config
    from ugt_hf.data.synthetic import generate_with_truth

    meta = read_meta(data_dir)
    if meta.get("source") != "synthetic":
        raise SystemExit(f"error: {data_dir} was prepared from --source {meta.get('source')}, not synthetic")
    names = {f.name for f in dataclasses.fields(PrepareOptions)}
    opts = PrepareOptions(**{k: v for k, v in meta["options"].items() if k in names})
    config = _synthetic_config(opts)
    if config.checksum() != meta["input_checksum"]:
        raise SystemExit(f"error: {data_dir}/meta.json input_checksum does not match its synthetic options")
    return generate_with_truth(config)


def _item_index(data_dir: Path):
    """(l1, l2, l3) -> 生成器的物品下标（item_id 是 i{n}）。"""
    import pyarrow.parquet as pq

    rows = pq.read_table(data_dir / "items.parquet", columns=["item_id", "l1", "l2", "l3"]).to_pylist()
    return {(r["l1"], r["l2"], r["l3"]): int(r["item_id"][1:]) for r in rows}


def _history(rec, index):
    return [index[t] for t in zip(rec["encoder_l1_ids"], rec["encoder_l2_ids"], rec["encoder_l3_ids"])]


def ranking_ceilings(data_dir: Path, truth, index, split: str = "test"):
    """按真实下一物品分布排序的测试指标：知道 / 不知道用户偏好。"""
    import pyarrow.parquet as pq

    from ugt_hf.metrics import ndcg_at_k, recall_at_k

    recs = pq.read_table(data_dir / f"{split}.parquet").to_pylist()
    uniform = np.full(truth.user_pref.shape[1], 1.0 / truth.user_pref.shape[1])
    no_pref = dataclasses.replace(truth, user_pref=np.tile(uniform, (truth.user_pref.shape[0], 1)))
    out = {}
    for name, world in (("true parameters + user preference", truth), ("true parameters, no user preference",
                                                                       no_pref)):
        preds, gt = [], []
        for r in recs:
            prev = _history(r, index)[-1]
            p = world.next_item_probs(prev, int(r["user_id"][1:]))  # [N]
            preds.append(np.argsort(-p, kind="stable")[: max(K_VALUES)])
            gt.append(index[(r["labels_l1"][0], r["labels_l2"][0], r["labels_l3"][0])])
        preds, gt = np.asarray(preds), np.asarray(gt)
        out[name] = {f"{m}@{k}": f(preds, gt, k) for k in K_VALUES
                     for m, f in (("recall", recall_at_k), ("ndcg", ndcg_at_k))}
    return out, len(recs)


def preference_ceilings(data_dir: Path, inter, truth, index):
    """留出偏好对上三种打分的成对准确率（平局算 0.5；pairwise_preference_accuracy 只数严格大于，
    平局算 0）。"""
    import pyarrow.parquet as pq

    from ugt_hf.data.schema import ITEM_TRIPLE_FIELDS

    recs = pq.read_table(data_dir / "preference_test.parquet").to_pylist()
    # 每个用户按时间排好的 (物品, 评分)：偏好对的历史是它的一段，用来找回历史物品的评分
    events = defaultdict(list)
    for u, i, t, r in zip(inter.user, inter.item, inter.timestamp, inter.rating):
        events[u].append((int(t), int(i[1:]), float(r)))
    scores = {"true next-item distribution (a perfect next-item model)": [],
              "same-cluster history items (items only, true clusters)": [],
              "mean rating of same-cluster history items (sees the ratings)": []}
    for rec in recs:
        u = rec["user_id"]
        hist = _history(rec["user_sequence"], index)
        chosen = index[tuple(rec["chosen_item"][k] for k in ITEM_TRIPLE_FIELDS)]
        rejected = index[tuple(rec["rejected_item"][k] for k in ITEM_TRIPLE_FIELDS)]
        p = truth.next_item_probs(hist[-1], int(u[1:]))
        seq = sorted(events[u])
        items = [e[1] for e in seq]
        end = next(e for e in range(len(hist), len(items) + 1) if items[e - len(hist):e] == hist)
        rated = [(truth.cluster_of[i], r) for _, i, r in seq[end - len(hist):end]]

        def count(item):
            return sum(c == truth.cluster_of[item] for c, _ in rated)

        def mean_rating(item):
            rs = [r for c, r in rated if c == truth.cluster_of[item]]
            return float(np.mean(rs)) if rs else 3.0  # 没见过这个簇：中性

        for name, f in zip(scores, (lambda i: p[i], count, mean_rating)):
            a, b = f(chosen), f(rejected)
            scores[name].append(1.0 if a > b else 0.5 if a == b else 0.0)
    return {k: float(np.mean(v)) for k, v in scores.items()}, len(recs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by `ugt prepare --source synthetic`")
    p.add_argument("--results", default=None, help="results.json of a `ugt pipeline` run on the same data")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_oracle.json"))
    args = p.parse_args(argv)
    from ugt_hf.workflow import git_commit

    data_dir = Path(args.data)
    inter, truth = _world(data_dir)
    index = _item_index(data_dir)
    ranking, n_test = ranking_ceilings(data_dir, truth, index)
    preference, n_pairs = preference_ceilings(data_dir, inter, truth, index)
    out = {"git_commit": git_commit(ROOT), "data": str(data_dir), "protocol": "test split, full catalogue, "
           "history items allowed", "test_users": n_test, "ranking": ranking, "preference_pairs": n_pairs,
           "preference_accuracy": preference}
    rows = dict(ranking)
    if args.results:
        res = json.loads(Path(args.results).read_text())
        out["results"] = str(args.results)
        for name, entry in res.get("stages", {}).items():
            rows[f"{name} (model)"] = entry["test"]
        for name in ("transition", "popularity"):
            if name in res:
                rows[f"{name} baseline"] = res[name]
        out["pipeline_rows"] = {k: v for k, v in rows.items() if k not in ranking}
        out["pipeline_preference_accuracy"] = {
            name: entry["preference_accuracy"]["preference_accuracy"]
            for name, entry in res.get("stages", {}).items() if "preference_accuracy" in entry}
    print(f"ranking, {n_test} test users (full catalogue, history allowed)")
    print(f"| {'ranker':<42} | R@5 | N@5 | R@10 | N@10 | R@20 |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name:<42} | {m['recall@5']:.4f} | {m['ndcg@5']:.4f} | {m['recall@10']:.4f} | "
              f"{m['ndcg@10']:.4f} | {m['recall@20']:.4f} |")
    print(f"\nheld-out preference accuracy, {n_pairs} pairs")
    for name, v in {**preference, **{f"{k} (model)": v for k, v in
                                     out.get("pipeline_preference_accuracy", {}).items()}}.items():
        print(f"| {name:<62} | {v:.4f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
