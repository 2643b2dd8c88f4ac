"""`ugt pipeline`：需要时先 `ugt prepare`，再依次跑阶段 1→2→3，最后在测试集上评估每个阶段并写报告。

流水线配置（YAML）：
    dataset: beauty                      # 报告里的名字
    prepare: {source: s3rec, input: ...} # 数据目录尚未准备时用这些参数准备（同 `ugt prepare` 的选项）；
                                         # 命令行还须给 --prepare true（写错的 --data 不会悄悄新建数据集）
    stages:                              # 每个阶段的配置文件（与 recipes/stage{n}.py 用的是同一批文件）
      1: recipes/configs/beauty_stage1.yaml
      2: recipes/configs/beauty_stage2.yaml
      3: recipes/configs/beauty_stage3.yaml
    evaluation: {split: test, k_values: [5, 10, 20], num_beams: 20, exclude_history: false}
    published: {TIGER: {recall@5: ..., ...}}   # 可选：报告里并列的论文数字
每个阶段从上一阶段的 best_model 开始；阶段的 data_dir / output_dir / pretrained 由流水线给出。
退出码：0 完成；2 配置错误或 --out 正被另一个进程使用；128 + N 被信号 N 停下（SIGTERM 143、SIGINT 130），
被打断的阶段已保存检查点，重跑同一命令从那里继续，已完成的阶段跳过。
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .argparsing import BEST_MODEL_DIR, ConfigError, arg, close_hint, load_yaml_config, parse_args
from .data.prepare import prepare
from .evaluation import (
    TransitionPrior,
    evaluate_ranking,
    evaluate_with_prior,
    popularity_baseline,
    select_prior_weight,
    transition_baseline,
)
from .locking import OutputLockedError, holding_output_lock
from .report import REPORT_MD, RESULTS_FILE, log_test_metrics, report_locations, write_report
from .training.interrupts import TrainingInterrupted

# torch、模型、数据目录与训练阶段在函数里导入：`ugt pipeline --help` 与配置错误不必加载它们（冷启动 5–8 s）

PIPELINE_KEYS = {"dataset", "prepare", "stages", "evaluation", "published"}
EVAL_KEYS = {"split", "k_values", "num_beams", "exclude_history", "batch_size", "transition_prior"}
# evaluation.transition_prior 的键：最近几个历史物品参与计数、验证集上试的权重（0 = 只用模型）
PRIOR_KEYS = {"window", "weights"}
DEFAULT_PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)


def git_commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_pipeline_config(path) -> Dict[str, Any]:
    """读取并校验流水线配置；阶段配置路径相对配置文件所在目录或当前目录解析。"""
    raw, origin = load_yaml_config(path)

    def where(key):
        source, line = origin.get(key, (str(path), None))
        return {"field": key, "source": source, "line": line}

    for key in raw:
        if key not in PIPELINE_KEYS:
            raise ConfigError(f"unknown pipeline config key '{key}' (valid: {sorted(PIPELINE_KEYS)})", **where(key))
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict) or sorted(int(k) for k in stages) != [1, 2, 3]:
        raise ConfigError("stages must give config files for stages 1, 2 and 3", **where("stages"))
    resolved = {}
    for k, v in stages.items():
        p = Path(v)
        if not p.is_absolute() and not p.exists():
            p = Path(path).parent / Path(v).name
        if not p.is_file():
            raise ConfigError(f"config file {v} of stage {k} does not exist", **where("stages"))
        resolved[int(k)] = str(p)
    raw["stages"] = resolved
    ev = raw.get("evaluation") or {}
    bad = set(ev) - EVAL_KEYS
    if bad:
        raise ConfigError(f"unknown keys under evaluation: {sorted(bad)} (valid: {sorted(EVAL_KEYS)})",
                          **where("evaluation"))
    prior = ev.get("transition_prior")
    if prior is not None:
        if not isinstance(prior, dict) or set(prior) - PRIOR_KEYS:
            raise ConfigError(f"evaluation.transition_prior must be a mapping with keys {sorted(PRIOR_KEYS)} "
                              f"(e.g. {{window: 3}}), got {prior!r}", **where("evaluation"))
        window, weights = prior.get("window", 3), prior.get("weights", list(DEFAULT_PRIOR_WEIGHTS))
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"evaluation.transition_prior.window must be an integer >= 1, got {window!r}",
                              **where("evaluation"))
        if (not isinstance(weights, list) or not weights
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                           for w in weights)):
            raise ConfigError("evaluation.transition_prior.weights must be a non-empty list of finite numbers "
                              f">= 0, got {weights!r}", **where("evaluation"))
        # 权重在验证集上选：评估划分本身是 valid 时，选与报告用的是同一批用户
        if ev.get("split", "test") != "test":
            raise ConfigError("evaluation.transition_prior chooses its weight on the valid split, so it needs "
                              f"evaluation.split: test (got {ev.get('split')!r})", **where("evaluation"))
        if 10 not in list(ev.get("k_values", [5, 10, 20])):
            raise ConfigError("evaluation.transition_prior chooses its weight by recall@10: k_values must "
                              f"include 10 (got {ev.get('k_values')!r})", **where("evaluation"))
        ev["transition_prior"] = {"window": window, "weights": [float(w) for w in weights]}
    raw["evaluation"] = ev
    return raw


def ensure_prepared(data_dir: Path, prepare_opts: Optional[dict], log=print, allow_prepare: bool = True) -> dict:
    """数据目录已有 meta.json 就直接用（有 prepare 段时交给 prepare 核对，重复运行是 no-op）；否则按 prepare 段准备，
    但只在 allow_prepare 时：`ugt pipeline` 要求显式 --prepare true，写错的 --data 才不会悄悄准备出一个新数据集。"""
    import torch

    from .data.datadir import DataDir

    data = DataDir(data_dir)
    prepared = data.meta_path.is_file()
    if prepared and not prepare_opts:
        return data.meta
    if not prepared and not allow_prepare:
        state = ("is not a prepared data folder (no meta.json)" if Path(data_dir).is_dir()
                 else "does not exist" + close_hint(data_dir))
        raise ConfigError(f"--data {data_dir} {state}; to prepare a new data set there from the config's prepare: "
                          "section, pass --prepare true", field="data")
    if not prepare_opts:
        raise ConfigError(f"{data_dir} is not a prepared data folder and the pipeline config has no prepare: "
                          "section (add one, or pass --data a folder written by `ugt prepare`)", field="prepare")
    threads = torch.get_num_threads()
    try:
        return prepare(str(data_dir), **dict(prepare_opts), log=log)
    except FileExistsError as e:
        if isinstance(e, OutputLockedError) or not prepared:
            raise
        raise ConfigError(_prepared_differently(data, prepare_opts), field="data") from None
    finally:
        torch.set_num_threads(threads)  # prepare 为 k-means 固定成 1 线程；训练要恢复


def _prepared_differently(data, prepare_opts: dict) -> str:
    """已准备好的 --data 目录与这次的 prepare 选项不一致时的报错：说清是输入不同还是选项不同、各自怎么办。
    `ugt pipeline` 没有 --force（覆盖一个数据集不该是流水线的副作用）。"""
    from .data.prepare import PrepareOptions, input_checksum

    opts = PrepareOptions(**dict(prepare_opts))
    meta = data.meta
    recorded = meta.get("options") or {}
    content = opts.content_options()
    options = [f"{k}: {recorded.get(k)!r} there, {content.get(k)!r} here" for k in sorted(set(recorded) | set(content))
               if recorded.get(k) != content.get(k)]
    parts = []
    if meta.get("input_checksum") != input_checksum(opts)["sha256"]:
        parts.append(f"it was prepared from {meta.get('input')!r}, this run reads {opts.input!r} (the config's "
                     f"prepare.input or --input); to run this config on that data pass --input {meta.get('input')}")
    if options:
        parts.append("it was prepared with other options than the config's prepare: section (" + "; ".join(options)
                     + "); prepare a new --data folder with --prepare true")
    return f"--data {data.path}: " + ". Also ".join(parts or ["it was prepared from other inputs/options"])


@holding_output_lock("ugt pipeline", param="run_dir")  # 同一 run_dir 同一时刻只允许一个流水线
def run_pipeline(data_dir, config_path, run_dir, stages: Sequence[int] = (1, 2, 3),
                 extra_args: Sequence[str] = (), log=print,
                 prepare_overrides: Optional[dict] = None, allow_prepare: bool = True,
                 resume: bool = False, dataset: Optional[str] = None) -> Dict[str, Any]:
    """prepare_overrides：覆盖配置 prepare 段的选项（如 benchmarks/quality.py 换成共享数据的绝对路径）。
    allow_prepare：data_dir 尚未准备时是否按 prepare 段准备；Python 调用方（测试、benchmarks）给的是算出来的路径，
    默认允许；命令行默认不允许（见 PipelineArguments.prepare）。
    resume：接着上次做——已完成的阶段（best_model/ 与 stage_summary.json 都在）跳过，被打断的阶段从最后一个
    完整检查点续训；False（Python 调用的默认，benchmarks 要重新计时）时每个阶段都从头训练。命令行默认 True。
    dataset：报告里的数据集名，给出时覆盖配置的 dataset，并去掉配置的 published 行（那些是配置那个数据集上的
    论文数字；`--input` 把同一配置用在别的数据上时不该并列）。
    某个阶段被 SIGTERM/SIGINT 停下时抛 TrainingInterrupted，后面的阶段不跑；run_dir 被另一个进程使用时抛
    OutputLockedError。"""
    t_start = time.perf_counter()
    cfg = load_pipeline_config(config_path)  # 先于重模块的导入：配置写错时一秒内报错
    from .data.datadir import DataDir
    from .modeling_ugt import UGTForGenerativeRecommendation
    from .training.stages import completed_stage, run_stage

    data_dir, run_dir = Path(data_dir), Path(run_dir)
    prepare_opts = {**(cfg.get("prepare") or {}), **(prepare_overrides or {})} or None
    ensure_prepared(data_dir, prepare_opts, log=log, allow_prepare=allow_prepare)
    run_dir.mkdir(parents=True, exist_ok=True)  # 数据有误时不留下空的运行目录
    ev = {"split": "test", "k_values": [5, 10, 20], "num_beams": 20, "exclude_history": False, "batch_size": 256,
          **cfg["evaluation"]}
    catalogue = DataDir(data_dir).catalogue()
    results: Dict[str, Any] = {
        "dataset": dataset or cfg.get("dataset", data_dir.name), "data_dir": str(data_dir), "config": str(config_path),
        "git_commit": git_commit(Path(__file__).resolve().parent), "split": ev["split"],
        "num_items": catalogue.num_items, "num_beams": ev["num_beams"], "exclude_history": ev["exclude_history"],
        "stage_configs": cfg["stages"], "published": None if dataset else cfg.get("published"), "stages": {},
    }
    results["popularity"] = popularity_baseline(data_dir, ev["split"], ev["k_values"], ev["exclude_history"])
    results["transition"] = transition_baseline(data_dir, ev["split"], ev["k_values"], ev["exclude_history"])
    # 从中间阶段续跑（--stages 2,3）时，用运行目录里上一阶段已有的最佳模型
    earlier = run_dir / f"stage{min(stages) - 1}" / BEST_MODEL_DIR
    previous = str(earlier) if min(stages) > 1 and earlier.is_dir() else None
    if min(stages) > 1 and previous is None:
        raise ConfigError(f"--stages starts at {min(stages)} but {earlier} does not exist", field="stages")
    earlier_results = _read_results(run_dir) if resume else {}
    for n in stages:
        name = f"stage{n}"
        out = run_dir / name
        done = completed_stage(out) if resume else None
        if done is not None:
            summary = done
            log(f"[pipeline] {name}: already finished ({out / BEST_MODEL_DIR}), skipped")
        else:
            argv = ["--config", cfg["stages"][n], "--data_dir", str(data_dir), "--output_dir", str(out)]
            if previous is not None:
                argv += ["--pretrained", previous]
                if n == 3:
                    argv += ["--reference_model_path", previous]
            if resume:
                argv += ["--resume_from_checkpoint", "auto"]  # 有完整检查点就从它续训（被打断的阶段），否则从头
            argv += list(extra_args)
            log(f"[pipeline] {name}: {' '.join(argv)}")
            try:
                summary = run_stage(n, argv)
            except TrainingInterrupted as e:  # 后面的阶段不跑；提示的续跑方式换成流水线的
                raise TrainingInterrupted(e.signum, e.step, e.checkpoint, e.output_dir, finished=e.finished,
                                          how_to_resume="re-run the same `ugt pipeline` command to continue "
                                                        "from there") from None
        best = summary["best_model_dir"]
        reuse = earlier_results.get("stages", {}).get(name) if done is not None else None
        if reuse and reuse.get("best_model_dir") == best and "test" in reuse:
            test, eval_seconds = reuse["test"], reuse.get("eval_seconds")  # 已完成阶段的测试结果不再重算
        else:
            model = UGTForGenerativeRecommendation.from_pretrained(best).eval()
            t0 = time.perf_counter()
            test = evaluate_ranking(model, data_dir, split=ev["split"], k_values=ev["k_values"],
                                    num_beams=ev["num_beams"], exclude_history=ev["exclude_history"],
                                    batch_size=ev["batch_size"], catalogue=catalogue)
            eval_seconds = time.perf_counter() - t0
        entry = {"train_seconds": summary["train_seconds"], "eval_seconds": eval_seconds,
                 "best_model_dir": best, "test": test}
        log_test_metrics(run_dir / name, test, summary.get("log_history", ()))  # test/recall@10 ... 进 TensorBoard
        for key in ("preference_source", "num_preference_pairs"):
            if key in summary:
                entry[key] = summary[key]
        if "preference_before" in summary:
            results["stages"].setdefault("stage2", {})["preference_accuracy"] = summary["preference_before"]
            entry["preference_accuracy"] = summary["preference_after"]
        results["stages"][name] = {**results["stages"].get(name, {}), **entry}
        log(f"[pipeline] {name} test: " + ", ".join(f"{k}={test[k]:.4f}" for k in ("recall@10", "ndcg@10", "mrr")))
        previous = best
        results["total_seconds"] = time.perf_counter() - t_start
        (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    if ev.get("transition_prior") and previous is not None:
        last = results["stages"][f"stage{max(stages)}"]
        results["transition_prior"] = _evaluate_with_prior(previous, data_dir, ev, catalogue, log,
                                                           last_test=last.get("test"))
        results["total_seconds"] = time.perf_counter() - t_start
        (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    write_report(run_dir)
    return results


def _evaluate_with_prior(model_dir: str, data_dir: Path, ev: dict, catalogue, log,
                         last_test: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """最后一个阶段的模型 + 转移计数先验（evaluation.TransitionPrior）：权重在验证集上选（select_prior_weight），
    再在评估划分上测。"""
    from .modeling_ugt import UGTForGenerativeRecommendation

    t0 = time.perf_counter()
    spec = ev["transition_prior"]
    prior = TransitionPrior.from_data(data_dir, spec["window"], catalogue=catalogue)
    model = UGTForGenerativeRecommendation.from_pretrained(model_dir).eval()
    common = dict(k_values=ev["k_values"], num_beams=ev["num_beams"], exclude_history=ev["exclude_history"],
                  batch_size=ev["batch_size"], catalogue=catalogue)
    grid = evaluate_with_prior(model, data_dir, prior, spec["weights"], split="valid", **common)
    weight = select_prior_weight(grid)
    if weight == 0.0 and last_test is not None:  # 权重 0 = 模型本身：阶段的测试指标就是它，不再跑一遍束搜索
        test = {**last_test, "prior_weight": 0.0}
    else:
        test = evaluate_with_prior(model, data_dir, prior, [weight], split=ev["split"], **common)[weight]
    log(f"[pipeline] transition prior (window {spec['window']}): weight {weight:g} chosen on valid "
        f"(recall@10 {grid[weight]['recall@10']:.4f} vs {grid[min(grid)]['recall@10']:.4f} at weight "
        f"{min(grid):g}); {ev['split']}: recall@10={test['recall@10']:.4f}, ndcg@10={test['ndcg@10']:.4f}")
    return {"model_dir": model_dir, "window": spec["window"], "weight": weight,
            "validation": {f"{w:g}": m for w, m in grid.items()}, "test": test,
            "seconds": time.perf_counter() - t0}


def _read_results(run_dir: Path) -> Dict[str, Any]:
    try:
        data = json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class PipelineArguments:
    """`ugt pipeline` 的命令行；其余 `--key value` 原样转给每个阶段（覆盖阶段配置）。"""

    data: str = arg(dataclasses.MISSING, "data artifact directory written by `ugt prepare` (see --prepare)")
    config: str = arg(dataclasses.MISSING, "pipeline YAML (see recipes/configs/*_pipeline.yaml)")
    out: str = arg(dataclasses.MISSING, "run directory: stage checkpoints, results.json, report.md, PNG plots")
    stages: str = arg("1,2,3", "stages to run, comma-separated")
    resume: bool = arg(True, "re-running the same command continues: stages whose best_model/ and "
                             "stage_summary.json exist are skipped, an interrupted stage resumes from its last "
                             "complete checkpoint; false trains every stage from scratch")
    prepare: bool = arg(False, "if --data is not a prepared data folder yet, prepare it there from the config's "
                               "prepare: section (without this flag a missing --data folder is an error)")
    input: Optional[str] = arg(None, "use this input file/folder instead of the config's prepare.input: the same "
                                     "committed config on another data set in the same format (e.g. another Amazon "
                                     "category in S3-Rec format); the report names the data set after the file and "
                                     "leaves out the config's published rows")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        ns, extra = parse_args([PipelineArguments], argv, prog="ugt pipeline", config_flag=False,
                               allow_remaining=True)
        stages = [int(s) for s in ns.stages.split(",")]
        other = {}
        if ns.input:
            source = (load_pipeline_config(ns.config).get("prepare") or {}).get("source")
            if source in (None, "synthetic"):
                what = "no prepare: section" if source is None else "prepare.source synthetic, which reads no input"
                raise ConfigError(f"--input replaces the config's prepare.input, but {ns.config} has {what}; use a "
                                  "pipeline config whose prepare: section reads a file (e.g. "
                                  "recipes/configs/beauty_pipeline.yaml)", field="input")
            other = {"prepare_overrides": {"input": ns.input}, "dataset": Path(ns.input).stem}
        run_pipeline(ns.data, ns.config, ns.out, stages=stages, extra_args=extra, allow_prepare=ns.prepare,
                     resume=ns.resume, **other)
    except ConfigError as e:
        print(f"ugt pipeline: {e}", file=sys.stderr)
        return 2
    except OutputLockedError as e:
        print(f"ugt pipeline: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"ugt pipeline: {e}", flush=True, file=sys.stderr)
        return e.exit_code  # 128 + 信号编号
    except KeyboardInterrupt:  # 训练循环之外（数据准备、评估）按下 Ctrl-C：没有半个阶段需要保存
        print("ugt pipeline: interrupted (SIGINT); re-run the same command to continue", flush=True, file=sys.stderr)
        return 130
    print((Path(ns.out) / REPORT_MD).read_text())
    print("\n".join(report_locations(ns.out)))
    from .training.stages import close_process_group

    close_process_group()  # 在 accelerate launch / torchrun 下多进程跑时（见该函数）
    return 0
