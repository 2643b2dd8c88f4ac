"""运行报告：results.json → report.md（指标表）+ PNG 图（各阶段损失曲线、各阶段指标）。

`ugt pipeline` 结束时调用 `write_report(run_dir)`；`ugt report RUN` 只根据运行目录里已有的 JSON 重画，
不需要模型或数据。
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

RESULTS_FILE = "results.json"
REPORT_MD = "report.md"
LOSS_PNG = "loss_curves.png"
METRICS_PNG = "metrics_per_stage.png"
# 与各阶段并列的基线：流行度；一阶转移（最近物品在训练里的后继，见 evaluation.transition_baseline）
BASELINES = ("popularity", "transition")
TABLE_KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr", "coverage@10", "gini@10")


def _fmt(v) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def metrics_table(rows: Dict[str, Dict[str, float]], keys: Sequence[str] = TABLE_KEYS,
                  reference: Optional[Dict[str, Dict[str, float]]] = None) -> str:
    """Markdown 表：每行一个模型/阶段，列为指标；reference（如论文数字）附在后面。"""
    head = "| model | " + " | ".join(keys) + " |"
    sep = "|---|" + "---|" * len(keys)
    lines = [head, sep]
    for name, m in list(rows.items()) + list((reference or {}).items()):
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def _loss_series(log_history: List[dict]):
    steps = [e["step"] for e in log_history if "loss" in e and "step" in e]
    losses = [float(e["loss"]) for e in log_history if "loss" in e and "step" in e]
    return steps, losses


def plot_run(run_dir: Path, results: dict) -> List[str]:
    """画两张图；matplotlib 用无界面后端。返回写出的文件名。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    stages = results.get("stages", {})
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 3.6), squeeze=False)
    for ax, (name, st) in zip(axes[0], stages.items()):
        summary_path = run_dir / name / "stage_summary.json"
        history = json.loads(summary_path.read_text()).get("log_history", []) if summary_path.is_file() else []
        steps, losses = _loss_series(history)
        ax.plot(steps, losses, marker=".", linewidth=1)
        ax.set_title(f"{name}: training loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / LOSS_PNG, dpi=110)
    plt.close(fig)
    written.append(LOSS_PNG)

    baselines = [b for b in BASELINES if results.get(b)]
    names = list(stages) + baselines
    metric_rows = [stages[n].get("test", {}) for n in stages] + [results[b] for b in baselines]
    keys = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "mrr"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(1, len(names))
    for i, (n, m) in enumerate(zip(names, metric_rows)):
        ax.bar([k + i * width for k in range(len(keys))], [m.get(key, 0.0) for key in keys], width, label=n)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels(keys)
    ax.set_title(f"test metrics per stage ({results.get('dataset', '')})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / METRICS_PNG, dpi=110)
    plt.close(fig)
    written.append(METRICS_PNG)
    return written


def render_markdown(results: dict) -> str:
    stages = results.get("stages", {})
    rows = {name: st.get("test", {}) for name, st in stages.items()}
    for b in BASELINES:
        if results.get(b):
            rows[b] = results[b]
    setting = "excluded" if results.get("exclude_history") else "allowed (as in TIGER)"
    lines = [
        f"# UGT-Train run report: {results.get('dataset', '?')}",
        "",
        f"- data: `{results.get('data_dir', '?')}`; split: {results.get('split', 'test')}, leave-one-out, "
        f"full-catalogue ranking ({results.get('num_items', '?')} items), constrained beam search "
        f"(beam {results.get('num_beams', '?')}); history items {setting}",
        f"- git commit: `{results.get('git_commit', '?')}`; total wall time {results.get('total_seconds', 0):.0f} s",
        "",
        "## Test metrics per stage",
        "",
        metrics_table(rows, reference=results.get("published")),
        "",
        "## Wall time per stage (s)",
        "",
        "| stage | train | evaluate |",
        "|---|---|---|",
    ]
    for name, st in stages.items():
        lines.append(f"| {name} | {st.get('train_seconds', 0):.0f} | {st.get('eval_seconds', 0):.0f} |")
    pref = {n: st["preference_accuracy"] for n, st in stages.items() if "preference_accuracy" in st}
    if pref:
        lines += ["", "## Held-out pairwise preference accuracy", "", "| stage | accuracy | pairs |", "|---|---|---|"]
        for n, p in pref.items():
            lines.append(f"| {n} | {p['preference_accuracy']:.4f} | {int(p['num_pairs'])} |")
    lines += ["", f"![loss curves]({LOSS_PNG})", "", f"![metrics per stage]({METRICS_PNG})", ""]
    return "\n".join(lines)


def write_report(run_dir) -> Dict[str, str]:
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found — is '{run_dir}' a folder written by `ugt pipeline`?")
    results = json.loads(path.read_text())
    (run_dir / REPORT_MD).write_text(render_markdown(results))
    written = plot_run(run_dir, results)
    return {"markdown": str(run_dir / REPORT_MD), **{f"plot{i}": str(run_dir / w) for i, w in enumerate(written)}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ugt report", description="redraw the report and plots of a run folder")
    parser.add_argument("run", help="run folder written by `ugt pipeline --out`")
    ns = parser.parse_args(argv)
    try:
        out = write_report(ns.run)
    except FileNotFoundError as e:
        print(f"ugt report: {e}")
        return 2
    print(Path(out["markdown"]).read_text())
    return 0
