"""阶段 3 在同一进程里跑在完整的阶段 2 之后会不会变慢（`ugt pipeline` 在一个进程里依次跑各阶段）。

    python benchmarks/stage3_in_process.py --data DIR --stage1 RUN/stage1/best_model --stage2 RUN/stage2/best_model \
        --dataset ml-100k
交替测三次，抵消机器在几分钟里的快慢漂移：(a) 新进程只跑阶段 3；(b) 新进程先跑完整的阶段 2
（提交的配置，从 --stage1 出发）再跑阶段 3；(c) 再一次只跑阶段 3。阶段 3 都从 --stage2 出发、以它为参考模型，
配置是提交的 recipes/configs/<dataset>_stage3.yaml。
每次记 HF 的 train_runtime 与阶段摘要的 train_seconds；写 benchmarks/results/stage3_in_process_<dataset>.json。
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"beauty": "beauty", "ml-100k": "ml100k", "demo": "demo"}


def _child(spec: dict) -> dict:
    from ugt_hf.training.stages import run_stage

    cfg = ROOT / "recipes" / "configs"
    out, result = Path(spec["work"]), {}
    common = ["--data_dir", spec["data"], "--disable_tqdm", "true", "--report_to", "none"]
    if spec["with_stage2"]:
        s2 = run_stage(2, ["--config", str(cfg / f"{spec['prefix']}_stage2.yaml"), *common,
                           "--output_dir", str(out / "stage2"), "--pretrained", spec["stage1"]])
        result["stage2_train_runtime"] = s2["train_metrics"]["train_runtime"]
    s3 = run_stage(3, ["--config", str(cfg / f"{spec['prefix']}_stage3.yaml"), *common,
                       "--output_dir", str(out / "stage3"), "--pretrained", spec["stage2"],
                       "--reference_model_path", spec["stage2"]])
    result.update(stage3_train_runtime=s3["train_metrics"]["train_runtime"], stage3_train_seconds=s3["train_seconds"])
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--stage1", required=True, help="stage-1 best_model (start of the full stage 2)")
    p.add_argument("--stage2", required=True, help="stage-2 best_model (start and reference of stage 3)")
    p.add_argument("--dataset", choices=sorted(CONFIGS), required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        spec = json.loads(Path(a._child).read_text())
        Path(spec["result"]).write_text(json.dumps(_child(spec)))
        return 0
    from ugt_hf.workflow import git_commit

    runs = []
    for label, with_stage2 in (("alone", False), ("after_full_stage2", True), ("alone_again", False)):
        with tempfile.TemporaryDirectory() as tmp:
            spec = {"data": a.data, "stage1": a.stage1, "stage2": a.stage2, "prefix": CONFIGS[a.dataset],
                    "with_stage2": with_stage2, "work": str(Path(tmp) / "run"), "result": str(Path(tmp) / "r.json")}
            Path(tmp, "spec.json").write_text(json.dumps(spec))
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--data", a.data, "--stage1", a.stage1,
                            "--stage2", a.stage2, "--dataset", a.dataset, "--_child", str(Path(tmp, "spec.json"))],
                           check=True, cwd=ROOT, capture_output=True)
            row = {"run": label, **json.loads(Path(spec["result"]).read_text())}
        runs.append(row)
        print(f"{label:<18} stage-3 train_runtime {row['stage3_train_runtime']:.1f} s"
              + (f" (stage 2 before it: {row['stage2_train_runtime']:.1f} s)" if with_stage2 else ""), flush=True)
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"stage3_in_process_{a.dataset}.json"
    out.write_text(json.dumps({"dataset": a.dataset, "git_commit": git_commit(ROOT), "data": a.data,
                               "stage1": a.stage1, "stage2": a.stage2, "runs": runs}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
