"""workflow.py：小合成数据上的端到端三阶段运行（每个阶段损失下降，Recall@10 超过流行度基线）。"""

import json
import os
import signal

import _resume_worker as w
import pytest
import yaml
from _pipeline_fixtures import pickled_files, write_tiny_pipeline

from ugt_hf.evaluation import select_prior_weight
from ugt_hf.locking import OutputLock
from ugt_hf.training.arguments import ConfigError
from ugt_hf.training.checkpointing import CheckpointingMixin
from ugt_hf.workflow import ensure_prepared, load_pipeline_config, main, run_pipeline


def _losses(run_dir, stage):
    summary = json.loads((run_dir / stage / "stage_summary.json").read_text())
    return [e["loss"] for e in summary["log_history"] if "loss" in e]


_HF_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth"}


def test_end_to_end_three_stages(tmp_path):
    cfg = write_tiny_pipeline(tmp_path)
    results = run_pipeline(tmp_path / "data", cfg, tmp_path / "run", log=lambda *a: None)
    run = tmp_path / "run"
    for stage in ("stage1", "stage2", "stage3"):
        losses = _losses(run, stage)
        assert len(losses) >= 2, f"{stage}: too few logged losses {losses}"
        assert losses[-1] < losses[0], f"{stage}: loss did not fall: {losses}"
        assert (run / stage / "best_model" / "model.safetensors").is_file()
    pop = results["popularity"]["recall@10"]
    for stage in ("stage1", "stage2", "stage3"):
        assert results["stages"][stage]["test"]["recall@10"] > pop, (stage, results["stages"][stage]["test"], pop)
    # 合成数据有评分：阶段 3 用评分偏好对，报告里有留出偏好准确率
    assert results["stages"]["stage3"]["preference_source"] == "ratings"
    assert 0.0 <= results["stages"]["stage3"]["preference_accuracy"]["preference_accuracy"] <= 1.0
    for name in ("results.json", "report.md", "loss_curves.png", "metrics_per_stage.png"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "popularity" in report and "stage3" in report and "history items allowed" in report
    assert "| transition |" in report and 0.0 <= results["transition"]["recall@10"] <= 1.0
    # 转移先验：权重在验证集的两个候选里选出，测试指标来自最后一个阶段的模型，报告里有这一行
    tp = results["transition_prior"]
    assert tp["window"] == 2 and tp["weight"] in (0.0, 1.0) and set(tp["validation"]) == {"0", "1"}
    assert tp["model_dir"] == results["stages"]["stage3"]["best_model_dir"]
    assert tp["weight"] == select_prior_weight({float(w): m for w, m in tp["validation"].items()})
    if tp["weight"] == 0.0:  # 选中模型本身：测试指标就是阶段 3 的
        assert tp["test"]["recall@10"] == results["stages"]["stage3"]["test"]["recall@10"]
    assert f"| stage3 + transition prior (w={tp['weight']:g}) |" in report
    # 整个运行目录（三个阶段，含阶段 3）没有 training_args.bin 之类的 pickle；只有 HF 检查点里 weights_only
    # 可加载的优化器 / 调度器 / RNG 状态
    leftovers = [p for p in pickled_files(run)
                 if not (p.parent.name.startswith("checkpoint-") and p.name in _HF_STATE_FILES)]
    assert leftovers == [], leftovers
    assert not list(run.rglob("training_args.bin"))


def test_pipeline_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nstagez: {}\n")
    with pytest.raises(ConfigError, match="stagez"):
        load_pipeline_config(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("stages: {1: a.yaml, 2: b.yaml, 3: c.yaml}\n")
    with pytest.raises(ConfigError, match="a.yaml"):
        load_pipeline_config(missing)
    two = tmp_path / "two.yaml"
    two.write_text("stages: {1: a.yaml, 2: b.yaml}\n")
    with pytest.raises(ConfigError, match="stages 1, 2 and 3"):
        load_pipeline_config(two)
    # evaluation.transition_prior：未知键、非正整数的 window、负权重都是错误，报出字段名
    cfg = write_tiny_pipeline(tmp_path)
    base = yaml.safe_load(cfg.read_text())
    for prior, match in (({"windw": 3}, "keys"), ({"window": 0}, "window"), ({"window": True}, "window"),
                         ({"weights": [1.0, -1.0]}, "weights"), ({"weights": []}, "weights"),
                         ({"weights": [float("inf")]}, "weights")):
        base["evaluation"]["transition_prior"] = prior
        cfg.write_text(yaml.safe_dump(base))
        with pytest.raises(ConfigError, match=f"transition_prior.*{match}|{match}.*transition_prior"):
            load_pipeline_config(cfg)
    # 权重在验证集上选：评估划分也是 valid、或 k_values 没有 10（按 recall@10 选）都是配置错误
    for key, value, match in (("split", "valid", "split: test"), ("k_values", [5, 20], "include 10")):
        bad_ev = yaml.safe_load(write_tiny_pipeline(tmp_path).read_text())
        bad_ev["evaluation"][key] = value
        cfg.write_text(yaml.safe_dump(bad_ev))
        with pytest.raises(ConfigError, match=match):
            load_pipeline_config(cfg)


def test_resume_pipeline_from_stage_two_needs_previous_stage(tmp_path):
    cfg = write_tiny_pipeline(tmp_path)
    with pytest.raises(ConfigError, match="stage1"):
        run_pipeline(tmp_path / "data", cfg, tmp_path / "run", stages=(2, 3), log=lambda *a: None)


def test_cli_missing_data_folder_needs_prepare_flag(tmp_path, capsys):
    """`ugt pipeline --data runs/dmeo_data`（写错）：不再悄悄准备新数据集；报出目录、相近名字与 --prepare。"""
    cfg = write_tiny_pipeline(tmp_path)
    (tmp_path / "demo_data").mkdir()
    typo, run = tmp_path / "dmeo_data", tmp_path / "run"
    assert main(["--data", str(typo), "--config", str(cfg), "--out", str(run)]) == 2
    out = capsys.readouterr().err
    assert f"--data {typo} does not exist (did you mean '{tmp_path / 'demo_data'}'?);" in out
    assert "pass --prepare true" in out and "Traceback" not in out
    assert not typo.exists() and not run.exists()
    # 已存在但没准备过的目录同样要 --prepare
    with pytest.raises(ConfigError, match="is not a prepared data folder.*--prepare true"):
        ensure_prepared(tmp_path / "demo_data", {"source": "synthetic"}, allow_prepare=False)
    # --prepare true 但流水线配置没有 prepare 段
    with pytest.raises(ConfigError, match="no prepare: section"):
        ensure_prepared(typo, None, allow_prepare=True)
    # --prepare true：按 prepare 段准备（--stages 2,3 随后因缺阶段 1 停下，准备好的数据留着）
    assert main(["--data", str(typo), "--prepare", "true", "--config", str(cfg), "--out", str(run),
                 "--stages", "2,3"]) == 2
    assert "stage1" in capsys.readouterr().err and (typo / "meta.json").is_file()


def _s3rec_file(path, seed, num_users=150, num_items=40):
    """S3-Rec 格式的小文件：用户沿一个物品环走 6-10 步。"""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, num_users + 1):
        start = int(rng.integers(num_items))
        lines.append(f"{u} " + " ".join(str((start + t) % num_items + 1) for t in range(int(rng.integers(6, 11)))))
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_prepare(cfg, **changes):
    """同一流水线配置、prepare 段改几项，写到旁边的新文件。"""
    pipe = yaml.safe_load(cfg.read_text())
    pipe["prepare"] = {**pipe["prepare"], **changes}
    path = cfg.with_name(f"pipeline_{len(list(cfg.parent.glob('pipeline_*.yaml')))}.yaml")
    path.write_text(yaml.safe_dump(pipe))
    return path


def test_cli_input_runs_the_same_config_on_another_data_set(tmp_path, capsys):
    """同一份流水线配置用在另一份同格式数据上（如别的 Amazon 类目）：--input 换掉 prepare.input，
    报告以文件名命名数据集、不并列配置里那个数据集的论文数字；不给 --input 时报出怎么办。"""
    from ugt_hf.data.prepare import prepare

    cfg = _short_pipeline(tmp_path)
    pipe = yaml.safe_load(cfg.read_text())
    pipe.update(dataset="category-a", published={"PaperX": {"recall@10": 0.5}},
                prepare={"source": "s3rec", "input": str(_s3rec_file(tmp_path / "A.txt", 0)),
                         "encoder_max_length": 20})
    cfg.write_text(yaml.safe_dump(pipe))
    other = _s3rec_file(tmp_path / "Sports.txt", 1, num_items=50)
    prepare(str(tmp_path / "sports"), source="s3rec", input=str(other), encoder_max_length=20, progress=False,
            log=lambda *a: None)
    argv = ["--data", str(tmp_path / "sports"), "--config", str(cfg), "--out", str(tmp_path / "run"), "--stages", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"it was prepared from '{other}', this run reads" in err and f"pass --input {other}" in err
    assert "other options" not in err and "Traceback" not in err
    # 输入对了、选项不同（encoder_max_length）：说哪个选项不同，不再建议 --input
    assert main([*argv, "--input", str(other), "--stages", "1", "--data", str(tmp_path / "sports"),
                 "--config", str(_with_prepare(cfg, encoder_max_length=30))]) == 2
    err = capsys.readouterr().err
    assert "other options than the config's prepare: section (encoder_max_length: 20 there, 30 here)" in err
    assert "pass --input" not in err
    # --input 只对读文件的 prepare 段有意义：合成数据的配置报错，而不是悄悄忽略它
    assert main([*argv, "--input", str(other), "--config", str(_with_prepare(cfg, source="synthetic"))]) == 2
    assert "prepare.source synthetic, which reads no input" in capsys.readouterr().err
    assert main([*argv, "--input", str(other)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == "Sports" and results["published"] is None and results["num_items"] == 50
    assert list(results["stages"]) == ["stage1"]


# ---------------------------------------------------------------- 信号、重跑续上、锁（#16）
def _short_pipeline(tmp_path):
    """write_tiny_pipeline 的配置，每个阶段只训 1 个 epoch（这里只看控制流，不看质量）。"""
    cfg = write_tiny_pipeline(tmp_path)
    for n in (1, 2, 3):
        path = tmp_path / f"stage{n}.yaml"
        stage = yaml.safe_load(path.read_text())
        stage.update(max_epochs=1, logging_steps=1)
        path.write_text(yaml.safe_dump(stage))
    return cfg


@pytest.mark.slow
def test_interrupted_stage_stops_the_pipeline_and_rerunning_continues(tmp_path, monkeypatch, capsys):
    cfg, run = _short_pipeline(tmp_path), tmp_path / "run"
    argv = ["--data", str(tmp_path / "data"), "--config", str(cfg), "--out", str(run), "--prepare", "true"]
    w.signal_stages_at(monkeypatch, 2)
    assert main(argv) == 128 + signal.SIGTERM
    printed = capsys.readouterr().err
    assert "stopped by SIGTERM at step 2" in printed and "re-run the same `ugt pipeline` command" in printed
    assert (run / "stage1" / "checkpoint-2").is_dir() and not (run / "stage1" / "best_model").exists()
    assert not (run / "stage2").exists() and not (run / "report.md").exists()  # 后面的阶段没有跑
    monkeypatch.undo()

    resumed_from = []
    original = CheckpointingMixin._load_from_checkpoint

    def spy(self, path, model=None):
        resumed_from.append(path)
        return original(self, path, model)

    monkeypatch.setattr(CheckpointingMixin, "_load_from_checkpoint", spy)
    assert main(argv) == 0  # 同一条命令
    assert resumed_from == [str(run / "stage1" / "checkpoint-2")]  # 阶段 1 从检查点续训，阶段 2、3 从头
    results = json.loads((run / "results.json").read_text())
    assert set(results["stages"]) == {"stage1", "stage2", "stage3"}
    stamps = {s: (run / s / "best_model" / "model.safetensors").stat().st_mtime_ns for s in results["stages"]}
    capsys.readouterr()

    # 再跑一次：三个阶段都已完成，跳过（不训练、不重新评估），结果不变
    def no_training(*a, **k):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("ugt_hf.workflow.run_stage", no_training)
    monkeypatch.setattr("ugt_hf.workflow.evaluate_ranking", no_training)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already finished") == 3
    again = json.loads((run / "results.json").read_text())
    assert again["stages"] == results["stages"]
    assert stamps == {s: (run / s / "best_model" / "model.safetensors").stat().st_mtime_ns for s in stamps}


def test_second_pipeline_into_the_same_out_gets_one_line(tmp_path, capsys):
    cfg, run = write_tiny_pipeline(tmp_path), tmp_path / "run"
    with OutputLock(str(run), what="ugt pipeline"):
        assert main(["--data", str(tmp_path / "data"), "--config", str(cfg), "--out", str(run)]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed == (f"ugt pipeline: error: {run} is in use by another ugt pipeline (PID {os.getpid()}, since "
                       + printed.split(", since ", 1)[1])
    assert "lock file" in printed and "\n" not in printed and not run.exists()
