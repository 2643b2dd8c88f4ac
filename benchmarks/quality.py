"""质量基准：用提交的配置在 ../shared/data 的 Amazon Beauty 与 MovieLens-100K 上跑完整流水线。

    python benchmarks/quality.py --dataset beauty      # 或 ml-100k / all
写 benchmarks/results/<dataset>.json（git commit、配置、每阶段墙钟时间与指标，键如 "recall@10"），
并把表格与 ../shared/data/README.md 的已发表数字并列打印。数据产物与检查点写到 --work（默认 /tmp），不进仓库。
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ugt_hf.report import metrics_table  # noqa: E402
from ugt_hf.workflow import run_pipeline  # noqa: E402

DATASETS = {
    "beauty": {"config": "recipes/configs/beauty_pipeline.yaml", "input": "amazon-beauty/Beauty.txt"},
    "ml-100k": {"config": "recipes/configs/ml100k_pipeline.yaml", "input": "ml-100k"},
}


def run(name: str, shared: Path, work: Path, stages) -> dict:
    spec = DATASETS[name]
    t0 = time.perf_counter()
    results = run_pipeline(work / f"{name}_data", ROOT / spec["config"], work / f"{name}_run", stages=stages,
                           prepare_overrides={"input": str(shared / spec["input"])})
    out = {
        "dataset": name, "git_commit": results["git_commit"], "config": spec["config"],
        "stage_configs": {k: str(Path(v).relative_to(ROOT)) if str(v).startswith(str(ROOT)) else v
                          for k, v in results["stage_configs"].items()},
        "protocol": "leave-one-out, test split, full-catalogue ranking, constrained beam search "
                    f"(beam {results['num_beams']}), history items "
                    + ("excluded" if results["exclude_history"] else "allowed"),
        "wall_seconds_total": time.perf_counter() - t0,
        "wall_seconds_per_stage": {k: {"train": v["train_seconds"], "evaluate": v["eval_seconds"]}
                                   for k, v in results["stages"].items()},
        "metrics_per_stage": {k: v["test"] for k, v in results["stages"].items()},
        "popularity": results["popularity"],
        "transition": results.get("transition"),
        "preference_accuracy": {k: v["preference_accuracy"] for k, v in results["stages"].items()
                                if "preference_accuracy" in v},
        "published": results.get("published"),
    }
    rows = dict(out["metrics_per_stage"], popularity=out["popularity"])
    if out["transition"]:
        rows["transition"] = out["transition"]
    print(f"\n== {name} ({out['protocol']}) ==")
    print(metrics_table(rows, reference=out["published"]))
    for k, v in out["wall_seconds_per_stage"].items():
        print(f"{k}: train {v['train']:.0f}s, evaluate {v['evaluate']:.0f}s")
    for k, v in out["preference_accuracy"].items():
        print(f"{k}: held-out preference accuracy {v['preference_accuracy']:.4f} ({int(v['num_pairs'])} pairs)")
    print(f"total wall time {out['wall_seconds_total']:.0f}s")
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
    ns = parser.parse_args()
    stages = [int(s) for s in ns.stages.split(",")]
    names = list(DATASETS) if ns.dataset == "all" else [ns.dataset]
    for name in names:
        run(name, Path(ns.shared), Path(ns.work), stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
