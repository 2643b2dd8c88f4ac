"""report.py：results.json → Markdown 表 + PNG 图（训练/验证曲线、学习率、DPO 奖励，图例不压柱子）；
`ugt report` 重画；测试指标进 TensorBoard；运行结束打印报告与图的绝对路径。"""

import json
import math
import sys

import pytest
from _pipeline_fixtures import write_tiny_pipeline

from ugt_hf import report
from ugt_hf.report import main, metrics_table, training_curves, write_report


def _history(i, dpo=False, eval_epochs=0):
    """HF log_history 的样子：每 2 步一条训练日志（带 learning_rate），每个 epoch 一条验证日志，末尾一条汇总。"""
    out = []
    for s in range(2, 11, 2):
        e = {"step": s, "epoch": s / 5, "loss": 3.0 - 0.1 * s - i, "learning_rate": 1e-3 * (1 - s / 10)}
        if dpo:
            e.update({"rewards/chosen": 0.01 * s, "rewards/rejected": -0.01 * s, "rewards/margins": 0.02 * s,
                      "rewards/accuracies": 0.5 + 0.04 * s})
        out.append(e)
    for ep in range(1, eval_epochs + 1):
        out.append({"step": 5 * ep, "epoch": float(ep), "eval_loss": 2.5 - 0.2 * ep, "eval_recall@5": 0.1 * ep,
                    "eval_recall@10": 0.2 * ep, "eval_ndcg@10": 0.1 * ep, "eval_recall@20": 0.3, "eval_mrr": 0.05 * ep,
                    "eval_num_users": 500.0})
    out.append({"step": 10, "epoch": 2.0, "train_loss": 2.0, "train_runtime": 1.0})
    return out


def _fake_run(tmp_path):
    run = tmp_path / "run"
    stages = {}
    for i, name in enumerate(("stage1", "stage2", "stage3")):
        (run / name).mkdir(parents=True)
        history = _history(i, dpo=name == "stage3", eval_epochs=2 if name == "stage1" else 0)
        (run / name / "stage_summary.json").write_text(json.dumps({"log_history": history}))
        stages[name] = {"train_seconds": 10.0 + i, "eval_seconds": 1.0,
                        "test": {"recall@5": 0.01 * (i + 1), "recall@10": 0.02 * (i + 1), "ndcg@10": 0.011 * (i + 1),
                                 "mrr": 0.005}}
    stages["stage3"]["preference_accuracy"] = {"preference_accuracy": 0.61, "num_pairs": 100}
    results = {"dataset": "fake", "data_dir": "/x", "num_items": 50, "num_beams": 20, "exclude_history": False,
               "git_commit": "abc", "total_seconds": 42.0, "stages": stages,
               "popularity": {"recall@10": 0.005, "ndcg@10": 0.002},
               "transition": {"recall@10": 0.0432, "ndcg@10": 0.021},
               "published": {"TIGER": {"recall@10": 0.0648}}}
    (run / "results.json").write_text(json.dumps(results))
    return run, results


def test_write_report_table_and_plots(tmp_path):
    run, _ = _fake_run(tmp_path)
    out = write_report(run)
    md = (run / "report.md").read_text()
    assert "| stage3 |" in md and "| popularity |" in md and "| TIGER |" in md
    assert "| transition |" in md and "0.0432" in md
    assert "0.0600" in md  # stage3 recall@10
    assert "history items allowed" in md
    assert "| stage3 | 0.6100 | 100 |" in md
    # report.md 列出两张图（文件名 + 画的是什么）并嵌入
    assert "## Plots" in md
    for name in ("loss_curves.png", "metrics_per_stage.png"):
        assert f"- `{name}`: " in md and f"]({name})" in md
    for key in ("plot0", "plot1"):
        data = open(out[key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_training_curves_eval_per_epoch_learning_rate_and_dpo_rewards():
    curves = training_curves(_history(0, eval_epochs=2))
    assert set(curves) == {"loss", "eval ranking metrics", "learning rate"}
    # 训练损失按 epoch；汇总那条（train_loss）不混进来；验证损失每个 epoch 一点
    assert curves["loss"]["train loss"] == ([0.4, 0.8, 1.2, 1.6, 2.0], pytest.approx([2.8, 2.6, 2.4, 2.2, 2.0]))
    assert curves["loss"]["eval loss"] == ([1.0, 2.0], pytest.approx([2.3, 2.1]))
    # 排序指标只画 K=10 与 mrr（K 全画挤成一团），num_users 之类不是指标
    assert curves["eval ranking metrics"] == {"recall@10": ([1.0, 2.0], [0.2, 0.4]),
                                              "ndcg@10": ([1.0, 2.0], [0.1, 0.2]),
                                              "mrr": ([1.0, 2.0], [0.05, 0.1])}
    assert curves["learning rate"]["learning rate"][1] == pytest.approx([8e-4, 6e-4, 4e-4, 2e-4, 0.0])
    dpo = training_curves(_history(0, dpo=True))
    assert set(dpo["DPO rewards"]) == {"chosen", "rejected", "margins", "accuracies"}
    assert dpo["DPO rewards"]["margins"][1] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2])
    # 没有 K=10 时取最小的 K；NaN 的点丢掉
    hist = [{"epoch": 1.0, "eval_recall@5": 0.3, "eval_ndcg@5": float("nan"), "eval_recall@20": 0.5}]
    assert training_curves(hist) == {"eval ranking metrics": {"recall@5": ([1.0], [0.3])}}


def test_curves_figure_one_row_per_stage_with_eval_lr_and_rewards(tmp_path):
    run, results = _fake_run(tmp_path)
    fig = report.curves_figure(run, results)
    axes = [ax for ax in fig.axes if ax.get_title()]  # 不含 DPO 面板的右侧 twin 轴
    titles = [ax.get_title() for ax in axes]
    assert titles == [f"{s}: {p}" for s in ("stage1", "stage2", "stage3") for p in report.CURVE_PANELS]
    by_title = dict(zip(titles, axes))
    labels = {t: [line.get_label() for line in ax.get_lines()] for t, ax in by_title.items()}
    assert labels["stage1: loss"] == ["train loss", "eval loss"]
    assert labels["stage1: eval ranking metrics"] == ["recall@10", "ndcg@10", "mrr"]
    assert list(by_title["stage1: eval ranking metrics"].get_lines()[0].get_xdata()) == [1.0, 2.0]
    assert labels["stage2: learning rate"] == ["learning rate"]
    assert labels["stage2: eval ranking metrics"] == []  # 这一阶段没有验证：格子里写原因
    assert "eval_strategy: no" in by_title["stage2: eval ranking metrics"].texts[0].get_text()
    assert labels["stage3: DPO rewards"] == ["chosen", "rejected", "margins"]
    legend = [t.get_text() for t in by_title["stage3: DPO rewards"].get_legend().get_texts()]
    assert legend == ["chosen", "rejected", "margins", "accuracies"]  # accuracies 在右侧 y 轴，图例合在一起
    report._pyplot().close(fig)


def test_metrics_legend_sits_outside_the_bars(tmp_path):
    _, results = _fake_run(tmp_path)
    fig = report.metrics_figure(results)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert len(ax.patches) == 5 * 5  # 3 个阶段 + 2 个基线，各 5 个指标
    assert legend.x0 >= ax.get_window_extent().x1  # 在坐标区右侧外面
    assert not any(legend.overlaps(bar.get_window_extent()) for bar in ax.patches)
    assert legend.x1 <= fig.bbox.x1  # 没被裁出画布
    report._pyplot().close(fig)


def test_metrics_table_missing_values_dash():
    t = metrics_table({"a": {"recall@10": 0.5}}, keys=("recall@10", "ndcg@10"))
    assert t.splitlines()[2] == "| a | 0.5000 | - |"


def test_report_cli(tmp_path, capsys):
    run, _ = _fake_run(tmp_path)
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "Test metrics per stage" in out
    assert f"report: {run.resolve() / 'report.md'}" in out and f"{run.resolve() / 'loss_curves.png'}" in out
    assert "TensorBoard" not in out  # 没有事件文件时不提 tensorboard
    assert main([str(tmp_path / "nope")]) == 2


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_test_metrics_joins_the_stage_tensorboard_run(tmp_path, monkeypatch):
    monkeypatch.delenv(report.TENSORBOARD_ENV, raising=False)
    stage = tmp_path / "stage1"
    stage.mkdir()
    # 没用 TensorBoard（report_to none）：不替用户新建日志
    assert report.log_test_metrics(stage, {"recall@10": 0.5}) is None and not (stage / "runs").exists()
    from torch.utils.tensorboard import SummaryWriter

    old, new = stage / "runs" / "Jan01_00-00-00_host", stage / "runs" / "Jan02_00-00-00_host"
    for d in (old, new):  # 续训留下两个 run：写进最新的那个
        w = SummaryWriter(str(d))
        w.add_scalar("train/loss", 1.0, 1)
        w.close()
    import os

    os.utime(old, (1, 1))
    got = report.log_test_metrics(stage, {"recall@10": 0.5, "mrr": 0.25, "odd": "x", "bad": math.nan},
                                  [{"step": 4, "loss": 1.0}, {"step": 12, "train_loss": 1.0}, {"epoch": 3.0}])
    assert got == new
    scalars = _scalars(new)
    assert scalars["test/recall@10"] == [(12, 0.5)] and scalars["test/mrr"] == [(12, 0.25)]
    assert "test/odd" not in scalars and "test/bad" not in scalars and "train/loss" in scalars
    assert "test/recall@10" not in _scalars(old)
    # HF 的 TENSORBOARD_LOGGING_DIR 优先
    monkeypatch.setenv(report.TENSORBOARD_ENV, str(tmp_path / "tb"))
    assert report.log_test_metrics(stage, {"recall@10": 0.75}) == tmp_path / "tb"
    assert _scalars(tmp_path / "tb")["test/recall@10"] == [(0, 0.75)]


def test_pipeline_logs_test_metrics_to_tensorboard_and_prints_paths(tmp_path, capsys, monkeypatch):
    """一个阶段、6 步的小流水线（`ugt pipeline` 的 main）：测试指标进了阶段 1 的 TensorBoard run，
    步数是训练的最后一步；输出最后是 report.md 与 PNG 的绝对路径。"""
    from ugt_hf.workflow import main as pipeline_main

    monkeypatch.delenv(report.TENSORBOARD_ENV, raising=False)
    cfg = write_tiny_pipeline(tmp_path)
    run = tmp_path / "run"
    rc = pipeline_main(["--data", str(tmp_path / "data"), "--prepare", "true", "--config", str(cfg),
                        "--out", str(run), "--stages", "1", "--max_steps", "6", "--report_to", "tensorboard"])
    assert rc == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    results = json.loads((run / "results.json").read_text())
    test = results["stages"]["stage1"]["test"]
    last_step = max(e["step"] for e in json.loads((run / "stage1" / "stage_summary.json").read_text())["log_history"])
    (tb,) = list((run / "stage1" / "runs").iterdir())
    scalars = _scalars(tb)
    for key in ("recall@10", "ndcg@10", "mrr"):
        assert scalars[f"test/{key}"] == [(last_step, pytest.approx(test[key], rel=1e-6))]
    assert "train/loss" in scalars  # 与 HF 写的训练曲线在同一个 run
    root = run.resolve()
    assert out[-4:] == [f"report: {root / 'report.md'}", f"plot:   {root / 'loss_curves.png'}",
                        f"plot:   {root / 'metrics_per_stage.png'}", f"TensorBoard: tensorboard --logdir {root}"]
    assert "| stage1 |" in "\n".join(out)  # 路径之前是指标表


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
