"""运行报告：results.json → report.md（指标表）+ PNG 图（各阶段训练曲线、各阶段测试指标）；测试指标写进 TensorBoard。

`ugt pipeline` 结束时调用 `write_report(run_dir)`；`ugt report RUN` 只根据运行目录里已有的 JSON 重画，
不需要模型或数据。训练曲线取自各阶段 stage_summary.json 的 log_history（与 trainer_state.json 的同一份）。
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .model_card import finite_number

RESULTS_FILE = "results.json"
REPORT_MD = "report.md"
LOSS_PNG = "loss_curves.png"
METRICS_PNG = "metrics_per_stage.png"
PLOT_FILES = {
    LOSS_PNG: "per stage (one row each): training and eval loss, eval ranking metrics per epoch, learning rate, "
              "DPO rewards (stage 3)",
    METRICS_PNG: "test metrics per stage beside the baselines",
}
# 与各阶段并列的基线：流行度；一阶转移（最近物品在训练里的后继，见 evaluation.transition_baseline）
BASELINES = ("popularity", "transition")
TABLE_KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr", "coverage@10", "gini@10")
# HF 的 TensorBoardCallback 把每次训练写到 output_dir/runs/<时间_主机名>/（或环境变量指定的目录）
TENSORBOARD_ENV = "TENSORBOARD_LOGGING_DIR"
TENSORBOARD_RUNS = "runs"
# 训练曲线的面板（图的列）：面板名 → 取哪些 log_history 键
CURVE_PANELS = ("loss", "eval ranking metrics", "learning rate", "DPO rewards")
DPO_REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")
DPO_ACCURACY_KEY = "rewards/accuracies"
# 某阶段没有某面板的数据时格子里写的原因（其余面板写通用的一句）
NOT_LOGGED = {"eval ranking metrics": "no evaluation during training\n(eval_strategy: no)",
              "DPO rewards": "no DPO rewards logged\n(only the DPO stage logs them)"}

Series = Tuple[List[float], List[float]]


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


def _series(log_history: Sequence[dict], key: str) -> Series:
    """key 的 (epoch, 值)；HF 的训练结束汇总（train_loss 那条）不带 loss 键，不会混进来。"""
    xs, ys = [], []
    for e in log_history:
        v = finite_number(e.get(key))
        x = finite_number(e.get("epoch", e.get("step")))
        if v is not None and x is not None:
            xs.append(x)
            ys.append(v)
    return xs, ys


def _ranking_keys(log_history: Sequence[dict]) -> List[str]:
    """要画的验证排序指标：K=10 的 recall/ndcg（没有 10 时取最小的 K）与 mrr；K 全画会挤成一团。"""
    keys = {k for e in log_history for k in e if k.startswith(("eval_recall@", "eval_ndcg@"))}
    ks = sorted({int(k.rsplit("@", 1)[1]) for k in keys if k.rsplit("@", 1)[1].isdigit()})
    k = (10 if 10 in ks else ks[0]) if ks else None
    chosen = [key for key in (f"eval_recall@{k}", f"eval_ndcg@{k}") if key in keys]
    return chosen + (["eval_mrr"] if any("eval_mrr" in e for e in log_history) else [])


DPO_LOG_KEYS = ("loss", "dpo_loss", "ntp_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies")


def dpo_curve(log_history: Sequence[dict]) -> List[dict]:
    """阶段 3 每个日志步的 DPO 曲线：损失各项、TRL 的 rewards/* 与每层 log-prob 相对参考模型的移动。"""
    return [{"step": e.get("step"), "epoch": e.get("epoch"),
             **{k: v for k, v in e.items() if k in DPO_LOG_KEYS or k.startswith("logps_delta/")}}
            for e in log_history if "rewards/margins" in e]


def training_curves(log_history: Sequence[dict]) -> Dict[str, Dict[str, Series]]:
    """一个阶段的曲线：{面板: {曲线名: (epoch 列表, 值列表)}}；没有数据的曲线与面板不出现。

    面板：loss（训练 + 验证损失）、eval ranking metrics（每个 epoch 的验证排序指标）、learning rate、
    DPO rewards（阶段 3 的 rewards/chosen、rejected、margins 与 accuracies；TRL 的键名）。
    """
    wanted = {
        "loss": {"train loss": "loss", "eval loss": "eval_loss"},
        "eval ranking metrics": {k[len("eval_"):]: k for k in _ranking_keys(log_history)},
        "learning rate": {"learning rate": "learning_rate"},
        "DPO rewards": {k.split("/", 1)[1]: k for k in (*DPO_REWARD_KEYS, DPO_ACCURACY_KEY)},
    }
    out: Dict[str, Dict[str, Series]] = {}
    for panel, curves in wanted.items():
        got = {label: _series(log_history, key) for label, key in curves.items()}
        got = {label: s for label, s in got.items() if s[0]}
        if got:
            out[panel] = got
    return out


def _stage_history(run_dir: Path, name: str) -> List[dict]:
    summary_path = run_dir / name / "stage_summary.json"
    return json.loads(summary_path.read_text()).get("log_history", []) if summary_path.is_file() else []


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # 无界面后端：服务器上没有显示器
    import matplotlib.pyplot as plt

    return plt


def curves_figure(run_dir: Path, results: dict):
    """训练曲线图：每个阶段一行，每个面板一列（只保留至少一个阶段有数据的面板）；返回 matplotlib Figure。"""
    plt = _pyplot()
    stages = list(results.get("stages", {})) or ["(no stage)"]
    curves = {name: training_curves(_stage_history(run_dir, name)) for name in stages}
    panels = [p for p in CURVE_PANELS if any(p in c for c in curves.values())] or ["loss"]
    fig, axes = plt.subplots(len(stages), len(panels), figsize=(4.4 * len(panels), 2.9 * len(stages)),
                             squeeze=False)
    for row, name in zip(axes, stages):
        for ax, panel in zip(row, panels):
            ax.set_title(f"{name}: {panel}", fontsize=10)
            series = curves[name].get(panel)
            if not series:
                ax.text(0.5, 0.5, NOT_LOGGED.get(panel, "not logged in this stage"), ha="center", va="center",
                        transform=ax.transAxes, color="gray", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            twin = None
            for label, (xs, ys) in series.items():
                few = len(xs) <= 30  # 每个 epoch 一个点的验证指标画出点，密的训练日志只画线
                target = ax
                if panel == "DPO rewards" and label == DPO_ACCURACY_KEY.split("/", 1)[1]:
                    twin = twin or ax.twinx()  # accuracies 在 [0, 1]，奖励值小得多：右侧单独的 y 轴
                    twin.set_ylabel("accuracy", fontsize=8)
                    target = twin
                target.plot(xs, ys, marker="o" if few else None, markersize=3, linewidth=1.2, label=label,
                            linestyle="--" if target is twin else "-", color=None if target is ax else "tab:gray")
            if panel == "learning rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            handles, labels = ax.get_legend_handles_labels()
            if twin is not None:
                h2, l2 = twin.get_legend_handles_labels()
                handles, labels = handles + h2, labels + l2
            ax.legend(handles, labels, fontsize=7, loc="best", framealpha=0.8)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def metrics_figure(results: dict):
    """各阶段与基线的测试指标柱状图；图例放在坐标区右侧外面，不压住柱子。返回 matplotlib Figure。"""
    plt = _pyplot()
    stages = results.get("stages", {})
    baselines = [b for b in BASELINES if results.get(b)]
    names = list(stages) + baselines
    metric_rows = [stages[n].get("test", {}) for n in stages] + [results[b] for b in baselines]
    keys = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "mrr"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(1, len(names))
    for i, (n, m) in enumerate(zip(names, metric_rows)):
        ax.bar([k + i * width for k in range(len(keys))], [m.get(key, 0.0) for key in keys], width, label=n)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels(keys)
    ax.set_title(f"test metrics per stage ({results.get('dataset', '')})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()  # tight_layout 把坐标区收窄，给外面的图例留出位置
    return fig


def plot_run(run_dir: Path, results: dict) -> List[str]:
    """画两张图（见 PLOT_FILES）；返回写出的文件名。"""
    plt = _pyplot()
    written = []
    for filename, fig in ((LOSS_PNG, curves_figure(run_dir, results)), (METRICS_PNG, metrics_figure(results))):
        fig.savefig(run_dir / filename, dpi=110)
        plt.close(fig)
        written.append(filename)
    return written


def prior_row(results: dict) -> Dict[str, dict]:
    """有转移先验（evaluation.transition_prior）时的一行：{"<阶段> + transition prior (w=…)": 测试指标}。"""
    tp = results.get("transition_prior")
    if not tp or "test" not in tp:
        return {}
    stage = next((n for n, st in results.get("stages", {}).items() if st.get("best_model_dir") == tp.get("model_dir")),
                 "model")
    return {f"{stage} + transition prior (w={tp['weight']:g})": tp["test"]}


def render_markdown(results: dict) -> str:
    stages = results.get("stages", {})
    rows = {name: st.get("test", {}) for name, st in stages.items()}
    rows.update(prior_row(results))
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
    lines += ["", "## Plots", ""]
    lines += [f"- `{name}`: {what}" for name, what in PLOT_FILES.items()]
    lines += ["", f"![training curves]({LOSS_PNG})", "", f"![test metrics per stage]({METRICS_PNG})", ""]
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


def report_locations(run_dir) -> List[str]:
    """运行结束时打印的几行：report.md 与 PNG 的绝对路径，有 TensorBoard 日志时再给出查看命令。"""
    run_dir = Path(run_dir).resolve()
    lines = [f"report: {run_dir / REPORT_MD}"]
    lines += [f"plot:   {run_dir / name}" for name in PLOT_FILES if (run_dir / name).is_file()]
    if any(run_dir.glob(f"*/{TENSORBOARD_RUNS}/*/events.out.tfevents.*")):
        lines.append(f"TensorBoard: tensorboard --logdir {run_dir}")
    return lines


def tensorboard_run_dir(stage_dir) -> Optional[Path]:
    """这个阶段训练时 HF 的 TensorBoardCallback 写的目录：环境变量 TENSORBOARD_LOGGING_DIR，
    否则 stage_dir/runs/ 下最新的、有事件文件的子目录（续训会留下多个）；没用 TensorBoard（report_to none）时 None。"""
    env = os.environ.get(TENSORBOARD_ENV)
    if env:
        return Path(os.path.expanduser(env))
    runs = [p for p in (Path(stage_dir) / TENSORBOARD_RUNS).glob("*") if p.is_dir()
            and any(p.glob("events.out.tfevents.*"))]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def log_test_metrics(stage_dir, metrics: Mapping[str, float], log_history: Sequence[dict] = (),
                     prefix: str = "test") -> Optional[Path]:
    """把一个阶段的最终测试指标写进它训练时的 TensorBoard run（标签 `test/recall@10` 等，与 HF 的
    `train/…`、`eval/…` 并列），步数取训练的最后一步，曲线与测试点对得上。

    这个阶段没用 TensorBoard 时什么都不写，返回 None（用户关掉了 report_to，不替他新建日志）。
    """
    log_dir = tensorboard_run_dir(stage_dir)
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # 延迟导入：只画报告时不需要 torch / tensorboard

    step = max((int(e["step"]) for e in log_history if finite_number(e.get("step")) is not None), default=0)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for key, value in metrics.items():
            v = finite_number(value)
            if v is not None:
                writer.add_scalar(f"{prefix}/{key}", v, step)
    finally:
        writer.close()
    return log_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ugt report", description="Redraw report.md and the PNG plots of a run "
                                                                    "folder from its JSON files")
    parser.add_argument("run", help="run folder written by `ugt pipeline --out`")
    ns = parser.parse_args(argv)
    try:
        out = write_report(ns.run)
    except FileNotFoundError as e:
        print(f"ugt report: {e}", file=sys.stderr)
        return 2
    print(Path(out["markdown"]).read_text())
    print("\n".join(report_locations(ns.run)))
    return 0
