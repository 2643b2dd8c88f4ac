"""stages.py：数据目录解析、模型构建（新建/续自上一阶段）、偏好对来源、自生成偏好对。"""

import dataclasses
import json
import os
import signal

import _resume_worker as w
import pytest
import torch
import yaml
from _tiny_artifacts import tiny_data_dir

from ugt_hf.argparsing import BEST_MODEL_DIR
from ugt_hf.data.datadir import DataDir
from ugt_hf.locking import OutputLock, lock_path_for
from ugt_hf.training.arguments import (
    ConfigError,
    DataArguments,
    EvaluationArguments,
    ModelArguments,
    StageArguments,
    UGTDPOConfig,
    UGTTrainingArguments,
)
from ugt_hf.training.checkpointing import get_last_checkpoint
from ugt_hf.training.stages import (
    AUTO_TABLE_MAX,
    STAGE_SUMMARY_FILE,
    _model_config_kwargs,
    _recommend_dataset,
    auto_table_size,
    build_model,
    check_model_source,
    close_process_group,
    completed_stage,
    main,
    preference_data,
    resolve_data,
    self_generated_pairs,
)

TINY = {"d_model": 16, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1, "ffn_dim": 32,
        "num_experts": 1, "num_experts_per_tok": 1}


def _args(tmp_path, cls=UGTTrainingArguments, **kw) -> StageArguments:
    """把扁平的关键字参数按字段分给各参数类（与 parse_stage_args 的结果同形）。"""
    base = dict(output_dir=str(tmp_path / "o"), fp16=False, report_to="none", model_config=TINY,
                data_dir=str(tiny_data_dir()), encoder_max_length=20, decoder_max_length=5)
    base.update(kw)
    parts = []
    for part_cls in (cls, ModelArguments, DataArguments, EvaluationArguments):
        names = {f.name for f in dataclasses.fields(part_cls)}
        parts.append(part_cls(**{k: v for k, v in base.items() if k in names}))
    return StageArguments(*parts)


def _with_meta(folder, **changes):
    """同一目录、改过几项 meta 的 DataDir（模拟与模型不一致或没有偏好对的数据）。"""
    data = DataDir(folder)
    data._meta = dict(data.meta, **changes)
    return data


def test_model_config_forms(tmp_path):
    assert _model_config_kwargs({"d_model": 8}) == {"d_model": 8}
    assert _model_config_kwargs('{"d_model": 8}') == {"d_model": 8}
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 12}))
    assert _model_config_kwargs(str(tmp_path)) == {"d_model": 12}
    with pytest.raises(ConfigError, match="model_config"):
        _model_config_kwargs("{bad json")
    with pytest.raises(ConfigError, match="does not exist"):
        _model_config_kwargs(str(tmp_path / "nope.json"))


def test_build_model_new_and_pretrained(tmp_path):
    args = _args(tmp_path)
    data = DataDir(args.data.data_dir)
    model = build_model(args.model, args.training, data)
    assert model.config.vocab_sizes == data.meta["vocab_sizes"] and model.config.d_model == 16
    model.save_pretrained(tmp_path / "prev")
    prev = _args(tmp_path, pretrained_model_path=str(tmp_path / "prev"))
    again = build_model(prev.model, prev.training, data)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    bad_meta = _with_meta(args.data.data_dir, vocab_sizes=[v + 1 for v in data.meta["vocab_sizes"]])
    with pytest.raises(ConfigError, match="vocab_sizes"):
        build_model(prev.model, prev.training, bad_meta)


def test_auto_table_sizes_are_the_next_power_of_two_above_the_load_factor():
    # Beauty（12,101 个物品、198,502 条交互）：以前手写在配置里的 32768 / 65536 / 2^21
    assert auto_table_size("item_id_buckets", 12101, 198502) == 32768  # >= 2 × 12,101 = 24,202
    assert auto_table_size("node_embedding_buckets", 12101, 198502) == 65536  # >= 4 × 12,101 = 48,404
    assert auto_table_size("transition_buckets", 12101, 198502) == 2 ** 21  # >= 8 × 198,502 = 1,588,016
    # 正好是 2 的幂时不再翻倍；宽记忆表封顶
    assert auto_table_size("item_id_buckets", 512, 0) == 1024
    # 内存上限：百万级目录、上亿条交互
    assert auto_table_size("transition_buckets", 10, 10 ** 9) == AUTO_TABLE_MAX["transition_buckets"] == 2 ** 24
    assert auto_table_size("item_id_buckets", 10 ** 6, 0) == AUTO_TABLE_MAX["item_id_buckets"] == 2 ** 20
    assert auto_table_size("node_embedding_buckets", 10 ** 6, 0) == AUTO_TABLE_MAX["node_embedding_buckets"] == 2 ** 21


def test_build_model_resolves_auto_table_sizes_from_the_data(tmp_path, caplog):
    cfg = dict(TINY, item_id_buckets="auto", node_embedding_buckets="auto", transition_buckets="auto",
               transition_layout="block")
    data = DataDir(tiny_data_dir())
    n, m = data.catalogue().num_items, data.meta["num_interactions"]
    with caplog.at_level("INFO", logger="ugt_hf.training.stages"):
        model = build_model(_args(tmp_path, model_config=cfg).model, _args(tmp_path).training, data)
    assert model.config.item_id_buckets == 1 << (2 * n - 1).bit_length()
    assert model.config.node_embedding_buckets == 1 << (4 * n - 1).bit_length()
    assert model.config.transition_buckets == 1 << (8 * m - 1).bit_length()
    assert "model_config.transition_buckets: auto -> " in caplog.text
    # block 布局一块装一个节点的全部子节点：极小的数据上 auto 也至少给一块（否则 UGTConfig 拒绝）
    tiny = build_model(_args(tmp_path, model_config=cfg).model, _args(tmp_path).training,
                       _with_meta(data.path, num_interactions=1))
    assert tiny.config.transition_buckets == 1 << (max(data.meta["vocab_sizes"]) - 1).bit_length()
    model.save_pretrained(tmp_path / "m")  # 解析后的整数进 config.json，下一阶段照原样加载
    assert json.loads((tmp_path / "m" / "config.json").read_text())["item_id_buckets"] == model.config.item_id_buckets
    # 旧产物的 meta 没有交互数：指明文件与字段
    with pytest.raises(ConfigError, match="num_interactions.*meta.json"):
        build_model(_args(tmp_path, model_config=cfg).model, _args(tmp_path).training,
                    _with_meta(data.path, num_interactions=None))
    # 别的字符串：指明字段，并说明 "auto" 由谁解析
    with pytest.raises(ConfigError, match="model_config.item_id_buckets.*'auto' is resolved by training.stages"):
        build_model(_args(tmp_path, model_config=dict(TINY, item_id_buckets="many")).model,
                    _args(tmp_path).training, data)


def test_close_process_group_destroys_an_initialised_group_and_is_a_no_op_otherwise(tmp_path):
    import torch.distributed as dist

    close_process_group()  # 单进程：没有进程组，什么也不做
    if not dist.is_gloo_available():
        pytest.skip("torch without Gloo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()


def test_resolve_data_errors(tmp_path):
    with pytest.raises(ConfigError, match="data_dir"):
        resolve_data(_args(tmp_path, data_dir=None).data)
    with pytest.raises(ConfigError, match="ugt prepare"):
        resolve_data(_args(tmp_path, data_dir=str(tmp_path)).data)
    args = _args(tmp_path, data_dir=None, train_data_path=str(DataDir(tiny_data_dir()).split_path("train")))
    assert str(resolve_data(args.data)) == str(tiny_data_dir())


def test_preference_sources(tmp_path):
    d = tiny_data_dir()
    data = DataDir(d)
    cat = data.catalogue()
    model = build_model(_args(tmp_path).model, _args(tmp_path).training, data)
    train, held, source = preference_data(_args(tmp_path, UGTDPOConfig), model, data, cat)
    assert source == "ratings" and len(train) == data.meta["splits"]["preference_train"] and held is not None
    train, held, source = preference_data(_args(tmp_path, UGTDPOConfig, preference_source="self",
                                                max_preference_pairs=40), model, data, cat)
    assert source == "self" and len(train) + len(held) <= 40 and len(held) >= 1
    with pytest.raises(ConfigError, match="preference_source"):
        preference_data(_args(tmp_path, UGTDPOConfig, preference_source="magic"), model, data, cat)
    no_pairs = _with_meta(d, splits=dict(data.meta["splits"], preference_train=0))
    with pytest.raises(ConfigError, match="preference_train = 0"):
        preference_data(_args(tmp_path, UGTDPOConfig, preference_source="ratings"), model, no_pairs, cat)


def test_self_generated_pairs_reject_model_candidates(tmp_path):
    d = tiny_data_dir()
    data = DataDir(d)
    cat = data.catalogue()
    args = _args(tmp_path)
    model = build_model(args.model, args.training, data)
    ds = _recommend_dataset(data, "train", args.training)
    pairs = self_generated_pairs(model, ds, cat, max_pairs=30, num_beams=10)
    assert 0 < len(pairs) <= 30
    valid = {tuple(t) for t in cat.triples.tolist()}
    for p in pairs:
        c = tuple(p["chosen_item"][k] for k in ("l1_id", "l2_id", "l3_id"))
        r = tuple(p["rejected_item"][k] for k in ("l1_id", "l2_id", "l3_id"))
        assert c != r and r in valid and c in valid
        assert len(p["user_sequence"]["encoder_l1_ids"]) >= 1


def test_stage_two_and_three_need_pretrained_or_from_scratch(tmp_path):
    """阶段 2/3 不给 --pretrained 不再悄悄从头训练：报错指出 --pretrained 与 from_scratch；阶段 1 不受影响。"""
    check_model_source(1, ModelArguments())
    for stage in (2, 3):
        with pytest.raises(ConfigError, match=r"--pretrained.*from_scratch: true") as err:
            check_model_source(stage, ModelArguments())
        assert err.value.field == "pretrained_model_path" and f"stage{stage - 1}/best_model" in str(err.value)
        check_model_source(stage, ModelArguments(from_scratch=True))
    with pytest.raises(ConfigError, match="contradicts"):
        check_model_source(2, ModelArguments(from_scratch=True, pretrained_model_path=str(tmp_path)))
    # 命令行入口：一行错误、退出码 2，不开始训练、不写输出目录
    out = tmp_path / "s2"
    assert main(2, ["--data_dir", str(tiny_data_dir()), "--output_dir", str(out), "--fp16", "false"]) == 2
    assert not out.exists()


def test_missing_local_model_folder_is_named_with_close_names(tmp_path):
    """写错的本地模型目录：说目录不存在并给出相近名字，而不是 Hub 的 "Repo id must be in the form …"。"""
    model = build_model(_args(tmp_path).model, _args(tmp_path).training, DataDir(tiny_data_dir()))
    model.save_pretrained(tmp_path / "run" / "stage1" / "best_model")
    good = str(tmp_path / "run" / "stage1" / "best_model")
    check_model_source(2, ModelArguments(pretrained_model_path=good))
    with pytest.raises(ConfigError, match=r"--pretrained: model folder .*best_mode does not exist \(did you mean "
                                          r"'.*stage1/best_model'") as err:
        check_model_source(2, ModelArguments(pretrained_model_path=good[:-1]))
    assert err.value.field == "pretrained_model_path"
    # 阶段目录本身不是模型：提示其中的 best_model
    with pytest.raises(ConfigError, match=r"without config.json.*stage1/best_model"):
        check_model_source(2, ModelArguments(pretrained_model_path=str(tmp_path / "run" / "stage1")))
    with pytest.raises(ConfigError, match=r"--reference_model_path: model folder .* does not exist") as err:
        check_model_source(3, ModelArguments(pretrained_model_path=good,
                                             reference_model_path=str(tmp_path / "run" / "stage2" / "best_model")))
    assert err.value.field == "reference_model_path"


# ---------------------------------------------------------------- 信号、续训、已完成、锁（#16）
def _stage1_argv(tmp_path, out, **extra):
    cfg = {"model_config": TINY, "batch_size": 8, "max_steps": 6, "save_strategy": "steps", "save_steps": 100,
           "eval_strategy": "no", "logging_steps": 1, "encoder_max_length": 20, "decoder_max_length": 5,
           "fp16": False, "report_to": "none", "dataloader_num_workers": 0, "torch_num_threads": 1, "seed": 0,
           **extra}
    path = tmp_path / "stage1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["--config", str(path), "--data_dir", str(tiny_data_dir()), "--output_dir", str(out)]


def test_signal_stop_exits_128_plus_signal_then_resume_then_finished_run_is_a_no_op(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s1"
    argv = _stage1_argv(tmp_path, out)
    w.signal_stages_at(monkeypatch, 3, signal.SIGINT)
    assert main(1, argv) == 128 + signal.SIGINT
    printed = capsys.readouterr().err
    assert f"stopped by SIGINT at step 3: checkpoint {out / 'checkpoint-3'} saved" in printed
    assert "--resume_from_checkpoint auto" in printed and "Traceback" not in printed
    assert (out / "checkpoint-3").is_dir() and not (out / BEST_MODEL_DIR).exists()
    assert not (out / STAGE_SUMMARY_FILE).exists() and completed_stage(out) is None
    assert not os.path.exists(lock_path_for(str(out)))  # 锁已释放
    monkeypatch.undo()

    assert main(1, argv + ["--resume_from_checkpoint", "auto"]) == 0
    summary = json.loads((out / STAGE_SUMMARY_FILE).read_text())
    steps = [e["step"] for e in summary["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # 前 3 步来自检查点，后 3 步是续训
    assert completed_stage(out) == summary
    best = out / BEST_MODEL_DIR / "model.safetensors"
    stamp, names = best.stat().st_mtime_ns, sorted(os.listdir(out))

    # 已完成的运行再续训：不多训一步，不覆盖 best_model，摘要不变
    assert main(1, argv + ["--resume_from_checkpoint", "auto"]) == 0
    assert best.stat().st_mtime_ns == stamp and sorted(os.listdir(out)) == names
    assert json.loads((out / STAGE_SUMMARY_FILE).read_text()) == summary

    # 从头重训又被打断：旧的摘要先删掉，目录不再像是完成的
    w.signal_stages_at(monkeypatch, 2)
    assert main(1, argv + ["--resume_from_checkpoint", "false"]) == 128 + signal.SIGTERM
    assert completed_stage(out) is None and not (out / STAGE_SUMMARY_FILE).exists()


def test_second_writer_into_a_stage_output_dir_gets_one_line(tmp_path, capsys):
    out = tmp_path / "s1"
    with OutputLock(str(out), what="ugt pipeline"):
        assert main(1, _stage1_argv(tmp_path, out)) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith(f"stage1: error: {out} is in use by another ugt pipeline (PID {os.getpid()}")
    assert "\n" not in printed and not out.exists()


@pytest.mark.slow
def test_recipe_process_stopped_by_an_external_sigterm_exits_143(tmp_path):
    """真实的外部信号：recipes/stage1.py 子进程在训练中收到 SIGTERM，以 143 退出，检查点可续训。"""
    import subprocess
    import sys
    import time

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "s1"
    argv = _stage1_argv(tmp_path, out, max_steps=400, disable_tqdm=True)
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(repo, "recipes", "stage1.py"), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 240
        for line in proc.stdout:  # HF 每个日志步打印一行 {'loss': ...}：训练已经开始
            lines.append(line)
            if "'loss'" in line:
                break
            assert time.time() < deadline, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 143, output
    assert "stopped by SIGTERM at step" in output and "Traceback" not in output
    last = get_last_checkpoint(str(out))
    assert last is not None and not (out / BEST_MODEL_DIR).exists() and not (out / STAGE_SUMMARY_FILE).exists()


def test_signal_after_the_last_step_finishes_the_stage_then_stops(tmp_path, monkeypatch, capsys):
    """信号在最后一步之后、训练收尾时到达：阶段照常完成（best_model + 摘要），但以 128+信号 退出，流水线不再往下跑。"""
    from ugt_hf.training.callbacks import GracefulShutdownCallback

    original = GracefulShutdownCallback.on_train_end

    def late(self, args, state, control, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # 处理函数还在：只记标志
        return original(self, args, state, control, **kw)

    monkeypatch.setattr(GracefulShutdownCallback, "on_train_end", late)
    out = tmp_path / "s1"
    assert main(1, _stage1_argv(tmp_path, out)) == 143
    assert "received SIGTERM after the last step: the stage finished" in capsys.readouterr().err
    assert completed_stage(out) is not None  # 重跑流水线时这个阶段被跳过


def test_stage3_stopped_by_a_signal_saves_and_resumes(tmp_path, monkeypatch, capsys):
    """阶段 3 与阶段 1–2 走同一条路径：信号 -> 检查点（无 pickle 参数）-> 143；续训到完成。"""
    out = tmp_path / "s3"
    argv = _stage1_argv(tmp_path, out, from_scratch=True, batch_size=4, gradient_accumulation_steps=1)
    w.signal_stages_at(monkeypatch, 2)
    assert main(3, argv) == 143
    assert "stopped by SIGTERM at step 2" in capsys.readouterr().err
    last = out / "checkpoint-2"
    assert get_last_checkpoint(str(out)) == str(last) and not (last / "training_args.bin").exists()
    assert not (out / BEST_MODEL_DIR).exists()
    monkeypatch.undo()
    assert main(3, argv + ["--resume_from_checkpoint", "true"]) == 0
    summary = completed_stage(out)
    assert summary is not None and [e["step"] for e in summary["log_history"] if "loss" in e][:2] == [1, 2]
