"""2 进程 CPU（torchrun + Gloo）上的 UGTTrainer：与单进程大批次等价、检查点只写一份、续训与不中断一致。

三次 2 进程启动（约 10 s 一次，2 核机器）：不中断的 MAX_STEPS 步；在 STOP_STEP 保存后停下；从最新检查点续训到
MAX_STEPS。单进程参照（batch 2b）在本进程内用同一个 `_ddp_worker.run()` 跑。
用 `python -m torch.distributed.run` 而不是 `accelerate launch --config_file accelerate_configs/multi_cpu.yaml`：
两者起的都是同样的 Gloo 进程组（HF TrainingArguments 读 torchrun 的环境变量），前者少一次 CLI 导入、端口可随意指定。
"""

import json
import os
import socket
import subprocess
import sys

import _ddp_worker as w
import pytest
import torch
import torch.distributed as dist

from ugt_hf.training import checkpointing as ckpt

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ddp_worker.py")
REPO = os.path.dirname(os.path.dirname(WORKER))
PER_RANK_BATCH = 2  # b；单进程参照用 2b
STOP_STEP = 4  # 第 2 个 epoch 的中间：续训要跳过本 epoch 已读过的批次
ATOL = 1e-5

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with the Gloo backend is not available in this torch build",
    ),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(result_dir, output_dir, stop_step=None, resume=False, extra=(), expect_ok=True):
    """torchrun 起 2 个进程跑 _ddp_worker；失败时把输出贴进断言信息。"""
    inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # 外层若也在分布式环境里
    env = {k: v for k, v in os.environ.items() if k not in inherited and not k.startswith("ACCELERATE_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", WORKER,
           str(result_dir), str(output_dir), str(PER_RANK_BATCH), str(stop_step) if stop_step else "-"]
    if resume:
        cmd.append("resume")
    cmd.extend(extra)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    if expect_ok:
        assert proc.returncode == 0, f"2-process run failed (rc={proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc


def _read(result_dir):
    from safetensors.torch import load_file

    out = []
    for rank in (0, 1):
        with open(os.path.join(result_dir, f"rank{rank}.json")) as f:
            summary = json.load(f)
        out.append((summary, load_file(os.path.join(result_dir, f"rank{rank}.safetensors"))))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    _launch(base / "full_res", base / "full_out")
    _launch(base / "stop_res", base / "resume_out", stop_step=STOP_STEP)
    stopped_listing = sorted(os.listdir(base / "resume_out"))
    _launch(base / "resume_res", base / "resume_out", resume=True)

    # 单进程参照：同一模型/数据/配置，batch 2b（本进程已是 1 线程，见 conftest）
    single = w.run(str(base / "single_out"), 2 * PER_RANK_BATCH)
    return {
        "base": base,
        "full": _read(base / "full_res"),
        "stopped": _read(base / "stop_res"),
        "resumed": _read(base / "resume_res"),
        "stopped_listing": stopped_listing,
        "single": (w.summarize(single), w.final_weights(single)),
    }


def _assert_weights_close(actual, expected, what):
    assert actual.keys() == expected.keys()
    worst = max(((k, (actual[k].float() - expected[k].float()).abs().max().item()) for k in expected),
                key=lambda kv: kv[1])
    assert worst[1] <= ATOL, f"{what}: largest weight difference {worst[1]:.3g} in {worst[0]}"


def test_ranks_hold_identical_replicas(runs):
    (s0, w0), (s1, w1) = runs["full"]
    assert s0["world_size"] == 2 and s1["world_size"] == 2
    assert s0["loss"] == s1["loss"]  # HF 的 loss 在日志前已跨进程汇总
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"DDP replicas diverged at {k}"


def test_two_ranks_match_one_process_with_double_batch(runs):
    """per-rank batch b × 2 rank = 单进程 batch 2b：逐步的 loss、grad_norm 与最终权重都相同（浮点容差）。

    记录的 decoder 长度各不相同：若 NTP 按 rank 求均值再由 DDP 平均（而不是按全局有效标签位置数加权），
    loss 与梯度都会偏离单进程的 token 平均。"""
    (ddp, ddp_w), _ = runs["full"]
    single, single_w = runs["single"]
    assert ddp["steps"] == single["steps"] == list(range(1, w.MAX_STEPS + 1))
    assert ddp["loss"] == pytest.approx(single["loss"], abs=ATOL)
    assert ddp["grad_norm"] == pytest.approx(single["grad_norm"], abs=ATOL)
    _assert_weights_close(ddp_w, single_w, "2 ranks × b vs 1 process × 2b")
    # 单进程参照本身有意义：训练确实改变了权重
    init = w.make_model().state_dict()
    assert max((single_w[k] - init[k]).abs().max().item() for k in init) > 1e-2


def test_one_checkpoint_per_save_step_and_no_staging_left(runs):
    base = runs["base"]
    expected = [f"checkpoint-{s}" for s in range(w.SAVE_STEPS, w.MAX_STEPS + 1, w.SAVE_STEPS)]
    assert sorted(os.listdir(base / "full_out")) == expected  # 没有 .staging-* / .trash-* 或重复目录
    assert runs["stopped_listing"] == [f"checkpoint-{s}" for s in range(w.SAVE_STEPS, STOP_STEP + 1, w.SAVE_STEPS)]
    assert sorted(os.listdir(base / "resume_out")) == expected
    for name in expected:
        folder = base / "full_out" / name
        assert ckpt.is_complete_checkpoint(str(folder))
        files = set(os.listdir(folder))
        # 两个 rank 各自的 RNG 状态都在同一个文件夹里；权重、优化器只有一份
        assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth",
                ckpt.TRAINER_STATE_FILE}.issubset(files), files
        assert ckpt.PICKLED_ARGS_FILE not in files
        with open(folder / ckpt.TRAINER_STATE_FILE) as f:
            assert json.load(f)["global_step"] == int(name.split("-")[1])


def test_resumed_two_process_run_continues_identically(runs):
    (full, full_w), _ = runs["full"]
    (stopped, _), _ = runs["stopped"]
    (resumed, resumed_w), (resumed1, resumed_w1) = runs["resumed"]
    assert stopped["global_step"] == STOP_STEP
    assert stopped["loss"] == pytest.approx(full["loss"][:STOP_STEP], abs=ATOL)
    assert resumed["global_step"] == w.MAX_STEPS
    after = [(s, loss) for s, loss in zip(resumed["steps"], resumed["loss"]) if s > STOP_STEP]
    assert [s for s, _ in after] == list(range(STOP_STEP + 1, w.MAX_STEPS + 1))
    assert [loss for _, loss in after] == pytest.approx(full["loss"][STOP_STEP:], abs=ATOL)
    _assert_weights_close(resumed_w, full_w, "resumed vs uninterrupted 2-process run")
    for k in resumed_w:
        assert torch.equal(resumed_w[k], resumed_w1[k]), f"DDP replicas diverged after resume at {k}"


def test_logged_ntp_loss_is_global_under_ddp(runs):
    """只有 NTP 时 ntp_loss 应与 HF 的 loss（已汇总）相同，且两个 rank 记录的值一致。"""
    (s0, _), (s1, _) = runs["full"]
    assert s0["ntp_loss"] == pytest.approx(s0["loss"], abs=ATOL)
    assert s1["ntp_loss"] == pytest.approx(s0["ntp_loss"], abs=ATOL)


def test_fsdp_on_cpu_is_refused_not_run_as_ddp(tmp_path):
    """accelerate 1.15 在 MULTI_CPU（Gloo）下丢掉 fsdp 插件、照跑 DDP；我们在训练前报一行错，不写任何检查点。"""
    proc = _launch(tmp_path / "res", tmp_path / "out", extra=["fsdp"], expect_ok=False)
    assert proc.returncode != 0
    assert "fsdp is set but accelerate did not enable FSDP (distributed type MULTI_CPU)" in proc.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("checkpoint-*"))
