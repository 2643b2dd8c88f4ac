"""UGTTrainer：规格示例、梯度累积不变性、续训（SIGTERM / SIGKILL 子进程）、恶意 pickle、非有限跳过、评估排序。"""

import os
import pickle
import signal
import subprocess
import sys
import time

import _resume_worker as w
import pytest
import torch
from torch import nn
from transformers import EarlyStoppingCallback
from transformers.trainer_utils import get_last_checkpoint as hf_get_last_checkpoint

from ugt_hf.training import checkpointing as ckpt
from ugt_hf.training.callbacks import TrainingDivergedError
from ugt_hf.training.checkpointing import UnsafeCheckpointError
from ugt_hf.training.trainer import UGTTrainer

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_resume_worker.py")
REPO = os.path.dirname(os.path.dirname(WORKER))


def _losses(log_history):
    return [(h["step"], h["loss"]) for h in log_history if "loss" in h]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """不中断地训练 MAX_STEPS 步（与子进程相同：单线程），记下每步损失与最终权重。"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = w.make_trainer(tmp_path_factory.mktemp("reference"))
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return _losses(trainer.state.log_history), {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _resume_in_process(out_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = w.make_trainer(out_dir)
        trainer.train(resume_from_checkpoint=True)
    finally:
        torch.set_num_threads(threads)
    return trainer


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------- 前向不重复算损失
def test_builtin_loss_asks_the_model_not_to_compute_its_own(tmp_path):
    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

    torch.manual_seed(0)
    model = UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=[8, 8, 8], d_model=16, num_heads=2, ffn_dim=32,
                                                     num_encoder_layers=1, num_decoder_layers=1, num_experts=1,
                                                     num_experts_per_tok=1)).eval()  # eval：无 dropout
    seen = []
    model.register_forward_hook(lambda mod, args, kwargs, out: seen.append((kwargs.get("return_loss"), out.loss)),
                                with_kwargs=True)
    args = w.make_args(tmp_path / "a", batch_size=2, max_steps=1, save_strategy="no", lambda_moe_balance=0.0,
                       lambda_contrastive=0.0)
    trainer = UGTTrainer(model=model, args=args, data_collator=w.collate, train_dataset=w.make_samples(4))
    g = torch.Generator().manual_seed(0)
    batch = {"encoder_semantic_ids": torch.randint(1, 8, (2, 4, 3), generator=g),
             "decoder_semantic_ids": torch.randint(1, 8, (2, 2, 3), generator=g),
             "labels": torch.randint(1, 8, (2, 2, 3), generator=g)}
    loss = trainer.compute_loss(model, batch)
    assert seen == [(False, None)]
    # 与模型自己算的 NTP 相同（MoE 与对比项系数为 0：总损失就是 NTP）
    assert loss.item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)
    # 自定义 loss_fn 可能读 outputs.loss：不改 forward 的参数
    seen.clear()
    custom = UGTTrainer(model=model, args=args, data_collator=w.collate, train_dataset=w.make_samples(4),
                        loss_fn=lambda outputs, labels, **kw: {"total_loss": outputs.loss,
                                                                "ntp_loss": outputs.loss})
    custom.compute_loss(model, batch)
    assert seen[0][0] is None and seen[0][1] is not None
    # forward 没有 return_loss 参数的模型（interfaces 契约只要求 logits）照常调用
    assert UGTTrainer(model=w.TinyRecModel(), args=args, data_collator=w.collate,
                      train_dataset=w.make_samples(4))._model_takes_return_loss() is False


# ---------------------------------------------------------------- 梯度累积
def _one_sgd_step(tmp_path, name, batch, accum, samples):
    torch.manual_seed(0)
    model = w.TinyRecModel(dropout=0.0, aux=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    args = w.make_args(tmp_path / name, batch_size=batch, gradient_accumulation_steps=accum, max_steps=1,
                       optim="sgd", learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0,
                       lr_scheduler_type="constant", save_strategy="no", lambda_moe_balance=0.0)
    trainer = UGTTrainer(model=model, args=args, data_collator=w.collate, train_dataset=samples)
    trainer.train()
    return init, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_accumulation_invariant(tmp_path):
    """batch 8 × 累积 1 与 batch 2 × 累积 4：一步之后参数相同（SGD、不裁剪，缩放错误无处隐藏）。"""
    samples = w.make_samples(8, seed=3, min_len=1, max_len=6)
    lengths = [s["labels"].shape[0] for s in samples]
    assert len(set(lengths)) > 2  # 序列长度不同，num_items 才有意义
    init, big = _one_sgd_step(tmp_path, "b8", 8, 1, samples)
    _, small = _one_sgd_step(tmp_path, "b2", 2, 4, samples)
    for k in big:
        assert torch.allclose(big[k], small[k], atol=1e-6, rtol=1e-5), k

    # 对照：手算的 token 平均梯度步与 trainer 一致；按 micro-batch 平均再除以 4（常见错误）则明显不同
    model = w.TinyRecModel(dropout=0.0, aux=False)
    model.load_state_dict(init)
    loss_fn = UGTTrainer.__new__(UGTTrainer)  # 只为拿到默认的 UnifiedLoss 配置
    from ugt_hf.spec.loss import UnifiedLoss

    loss_fn = UnifiedLoss(lambda_contrastive=0.0, lambda_moe_balance=0.0)

    def grads(chunks, per_chunk_mean):
        model.zero_grad()
        n_total = sum(int((c["labels"][..., 0] != -100).sum()) for c in chunks)
        for c in chunks:
            out = model(**c)
            ntp = loss_fn(out, c["labels"])["total_loss"]
            n = int((c["labels"][..., 0] != -100).sum())
            (ntp / len(chunks) if per_chunk_mean else ntp * n / n_total).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    # 与 trainer 相同的顺序：RandomSampler(seed=0) 下的前 8 个样本——顺序不影响求和，整批即可
    full = [w.collate(samples)]
    g_ref = grads(full, per_chunk_mean=False)
    for k, p in model.named_parameters():
        assert torch.allclose(init[k] - 0.5 * g_ref[k], big[k], atol=1e-6), k
    order = torch.randperm(8, generator=torch.Generator().manual_seed(5)).tolist()
    chunks = [w.collate([samples[i] for i in order[j:j + 2]]) for j in range(0, 8, 2)]
    g_naive = grads(chunks, per_chunk_mean=True)
    assert max((g_naive[k] - g_ref[k]).abs().max().item() for k in g_ref) > 1e-4


# ---------------------------------------------------------------- 续训
SIGTERM_STOP = 5  # 不是保存步：该检查点只可能来自信号处理
SIGKILL_STEP = 4  # 在保存 checkpoint-4 的中途被杀


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    """两个子进程同时启动（各自要 import transformers，并行省一半时间）：一个等 SIGTERM，一个保存时 SIGKILL 自己。"""
    term_dir, kill_dir = tmp_path_factory.mktemp("sigterm"), tmp_path_factory.mktemp("sigkill")
    term = subprocess.Popen([sys.executable, WORKER, "sigterm", str(term_dir), str(SIGTERM_STOP)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill = subprocess.Popen([sys.executable, WORKER, "sigkill", str(kill_dir), str(SIGKILL_STEP)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not (term_dir / "ready").exists():
            assert term.poll() is None, term.stdout.read()
            assert time.time() < deadline, "worker never reached the stop step"
            time.sleep(0.05)
        term.send_signal(signal.SIGTERM)  # 真正的外部信号
        term_out, _ = term.communicate(timeout=180)
        kill_out, _ = kill.communicate(timeout=180)
    finally:
        for p in (term, kill):
            if p.poll() is None:
                p.kill()
    return {"sigterm": (term_dir, term.returncode, term_out), "sigkill": (kill_dir, kill.returncode, kill_out)}


def test_resume_after_sigterm_matches_uninterrupted_run(worker_runs, reference_run):
    ref_losses, ref_weights = reference_run
    out, returncode, output = worker_runs["sigterm"]
    assert returncode == 0, output  # 干净退出
    assert f"STOPPED_BY_SIGNAL={int(signal.SIGTERM)} STEP={SIGTERM_STOP}" in output, output
    assert ckpt.get_last_checkpoint(str(out)) == str(out / f"checkpoint-{SIGTERM_STOP}")

    trainer = _resume_in_process(out)
    assert trainer.state.global_step == w.MAX_STEPS
    assert _losses(trainer.state.log_history) == ref_losses  # 每一步的损失逐位相同
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k


def test_sigkill_while_saving_leaves_previous_checkpoint_resumable(worker_runs, reference_run):
    ref_losses, ref_weights = reference_run
    out, returncode, output = worker_runs["sigkill"]
    assert returncode == -signal.SIGKILL, output
    names = sorted(os.listdir(out))
    assert f"checkpoint-{SIGKILL_STEP}" not in names  # 写到一半的检查点没有以正式名字出现
    assert any(n.startswith(ckpt.STAGING_PREFIX) for n in names), names  # 半成品确实存在
    assert hf_get_last_checkpoint(str(out)).endswith("checkpoint-2")  # HF 自己的选择也不会选中半成品
    assert ckpt.get_last_checkpoint(str(out)) == str(out / "checkpoint-2")

    trainer = _resume_in_process(out)  # resume_from_checkpoint=True
    assert not any(n.startswith(ckpt.STAGING_PREFIX) for n in os.listdir(out))  # 半成品已清理
    assert _losses(trainer.state.log_history) == ref_losses
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k


# ---------------------------------------------------------------- 不安全的 pickle
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    trainer = w.make_trainer(out, max_steps=2, save_steps=2)
    trainer.train()
    return out / "checkpoint-2"


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng_state.pth", "scheduler.pt", "pytorch_model.bin", "raw"])
def test_malicious_pickle_in_checkpoint_is_refused(tmp_path, small_checkpoint, victim):
    import shutil

    path = tmp_path / "checkpoint-2"
    shutil.copytree(small_checkpoint, path)
    marker = str(tmp_path / "PWNED")
    if victim == "raw":  # 非 zip 的原始 pickle
        with open(path / "optimizer.pt", "wb") as f:
            pickle.dump(_Payload(marker), f)
    else:
        if victim == "pytorch_model.bin":
            os.remove(path / "model.safetensors")
        torch.save(_Payload(marker), path / victim)
    # 载荷是真的：不设 weights_only 时加载会执行它（只在 tmp_path 建一个空目录，随后删掉）
    probe = path / (victim if victim != "raw" else "optimizer.pt")
    with open(probe, "rb") as f:
        torch.load(f, weights_only=False) if victim != "raw" else pickle.load(f)
    assert os.path.isdir(marker)
    os.rmdir(marker)

    fresh = w.make_trainer(tmp_path, max_steps=4, save_steps=2)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        fresh.train(resume_from_checkpoint=str(path))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        fresh._load_from_checkpoint(str(path))
    assert not os.path.exists(marker)


def test_pickled_training_args_are_never_written_nor_loaded(tmp_path):
    trainer = w.make_trainer(tmp_path / "run", max_steps=2, save_steps=2)
    trainer.train()
    path = tmp_path / "run" / "checkpoint-2"
    assert not (path / "training_args.bin").exists()
    assert (path / "training_args.json").exists()
    marker = str(tmp_path / "PWNED")
    torch.save(_Payload(marker), path / "training_args.bin")  # HF 的文件名；我们从不加载它
    fresh = w.make_trainer(tmp_path / "run", max_steps=3, save_steps=100)
    fresh.train(resume_from_checkpoint=str(path))
    assert fresh.state.global_step == 3
    assert not os.path.exists(marker)


def test_saves_write_a_model_card_with_what_the_trainer_knows(tmp_path):
    """save_model（检查点也经过 `_save`）写 README.md：最近一次 / 最佳那步的验证指标、最佳指标、run 名、目标函数、
    数据集（目录名 + meta.json 的规模，不写绝对路径）；create_model_card（push_to_hub 用）写 output_dir。"""
    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.generation import ItemCatalogue
    from ugt_hf.model_card import read_front_matter
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

    data = tmp_path / "beauty_prepared"
    data.mkdir()
    (data / "meta.json").write_text('{"source": "amazon", "num_users": 12, "num_items": 34}')

    class _Data(list):
        data_path = str(data / "train.parquet")

    cfg = UGTConfig(vocab_sizes=[4, 4, 4], d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                    ffn_dim=32, num_experts=1, num_experts_per_tok=1)
    args = w.make_args(tmp_path / "out", metric_for_best_model="recall@10", lambda_contrastive=0.1,
                       run_name="stage2-run")
    codes = torch.tensor([[a, b, c] for a in range(4) for b in range(4) for c in range(2)])  # 32 个物品
    trainer = UGTTrainer(model=UGTForGenerativeRecommendation(cfg), args=args, train_dataset=_Data(),
                         catalogue=ItemCatalogue(codes, [4, 4, 4]), k_values=(10,))
    trainer.state.log_history = [
        {"loss": 3.0, "step": 2},
        {"eval_loss": 2.5, "eval_recall@10": 0.4, "eval_runtime": 0.1, "epoch": 1.0, "step": 2},
        {"eval_loss": 2.4, "eval_recall@10": 0.3, "eval_runtime": 0.1, "epoch": 2.0, "step": 4},
    ]
    trainer.state.global_step, trainer.state.epoch = 4, 2.0
    trainer.state.best_metric, trainer.state.best_global_step = 0.4, 2
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    result = read_front_matter(card)["model-index"][0]["results"][0]
    assert result["metrics"] == [{"type": "loss", "name": "loss", "value": 2.4},
                                 {"type": "recall@10", "name": "recall@10", "value": 0.3}]  # 最近一次评估
    assert result["dataset"] == {"name": "beauty_prepared", "type": "beauty_prepared", "split": "validation"}
    assert "runtime" not in card and str(tmp_path) not in card
    assert "- best validation: eval_recall@10 = 0.4000 at step 2" in card
    assert "- run name: stage2-run" in card and "InfoNCE (lambda_contrastive=0.1)" in card
    assert "- num_items: 34" in card and "- source: amazon" in card
    assert "import ugt_hf" in card and not (tmp_path / "saved" / "training_args.bin").exists()
    assert "ranked over the full catalogue (32 items)" in card and "beam width 10, top-10" in card
    # 结束时加载了最佳模型：之后保存的卡取最佳那一步的指标
    trainer._card_best_loaded = True
    trainer.create_model_card(model_name="owner/ugt-beauty", tags=["extra-tag"])
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    front = read_front_matter(card)
    assert front["model-index"][0]["name"] == "owner/ugt-beauty" and "extra-tag" in front["tags"]
    assert {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}["recall@10"] == 0.4
    assert 'AutoModel.from_pretrained("owner/ugt-beauty")' in card


# ---------------------------------------------------------------- 非有限
class _NaNAtCalls(nn.Module):
    """包装 TinyRecModel：第 bad_calls 次 forward 时 logits 变 NaN。"""

    def __init__(self, bad_calls):
        super().__init__()
        self.inner = w.TinyRecModel(dropout=0.0)
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def forward(self, **kw):
        self.calls += 1
        out = self.inner(**kw)
        if self.calls in self.bad_calls:
            out["l1_logits"] = out["l1_logits"] * float("nan")
        return out


def test_nonfinite_step_is_skipped_without_touching_parameters_or_optimizer(tmp_path):
    torch.manual_seed(0)
    model = _NaNAtCalls(bad_calls={3})
    snapshots = {}
    from transformers import TrainerCallback

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            snapshots[state.global_step] = (
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                {k: [t.clone() for t in s.values() if torch.is_tensor(t)]
                 for k, s in enumerate(optimizer.state.values())},
            )

    trainer = UGTTrainer(model=model, args=w.make_args(tmp_path, max_steps=5, save_strategy="no"),
                         data_collator=w.collate, train_dataset=w.make_samples(), callbacks=[Snap()])
    trainer.train()
    p2, o2 = snapshots[2]
    p3, o3 = snapshots[3]
    for k in p2:
        assert torch.equal(p2[k], p3[k]), k  # 第 3 步被跳过：参数不变
    for k in o2:
        assert all(torch.equal(a, b) for a, b in zip(o2[k], o3[k]))  # Adam 状态（含 step）也不变
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert not all(torch.equal(p3[k], snapshots[4][0][k]) for k in p3)  # 之后照常更新
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["nonfinite_skipped"] for h in logs] == [0, 0, 1, 1, 1]
    assert trainer.nonfinite_guard.total_skipped == 1


def test_training_stops_after_n_consecutive_nonfinite_steps(tmp_path):
    torch.manual_seed(0)
    model = _NaNAtCalls(bad_calls=set(range(3, 100)))
    trainer = UGTTrainer(model=model, args=w.make_args(tmp_path, max_steps=50, save_strategy="no"),
                         data_collator=w.collate, train_dataset=w.make_samples(), max_consecutive_nonfinite=4)
    with pytest.raises(TrainingDivergedError, match="4 consecutive optimizer steps had a non-finite"):
        trainer.train()
    assert trainer.state.global_step == 6  # 2 个正常步 + 4 个被跳过的步，然后停止
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


# ---------------------------------------------------------------- 评估
def _score_ranker(catalogue_codes):
    """测试用全目录排序器：log p(l1)+log p(l2)+log p(l3)（BOS 位置），取 top-K。"""

    def ranker(model, batch, k=50):
        out = model(**{k2: v for k2, v in batch.items() if k2 != "labels"})
        lp = [torch.log_softmax(out[f"l{i + 1}_logits"][:, 0], -1) for i in range(3)]  # [B, Vi]
        scores = sum(lp[i][:, catalogue_codes[:, i]] for i in range(3))  # [B, N]
        return scores.topk(k, dim=-1).indices

    return ranker


def test_evaluation_ranks_catalogue_and_tracks_best_model(tmp_path):
    codes = torch.tensor([[a, b, c] for a in range(w.VOCAB[0]) for b in range(w.VOCAB[1]) for c in range(w.VOCAB[2])])
    eval_samples = w.make_samples(12, seed=7, eval_format=True)
    args = w.make_args(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_steps=2,
                       save_total_limit=1, metric_for_best_model="recall@50", greater_is_better=True,
                       load_best_model_at_end=True, per_device_eval_batch_size=5)
    torch.manual_seed(0)
    trainer = UGTTrainer(model=w.TinyRecModel(), args=args, data_collator=w.collate, train_dataset=w.make_samples(),
                         eval_dataset=eval_samples, ranker=_score_ranker(codes), item_codes=codes,
                         k_values=(10, 50), callbacks=[EarlyStoppingCallback(early_stopping_patience=2)])
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals
    for key in ("eval_loss", "eval_recall@10", "eval_ndcg@10", "eval_mrr", "eval_ntp_l1_loss"):
        assert key in evals[0], sorted(evals[0])
    assert any(k.startswith("eval_coverage") for k in evals[0]) and any(k.startswith("eval_gini") for k in evals[0])

    # 与直接计算的指标一致（排序器 + 目标映射 + compute_metrics 的整条链）
    m = trainer.evaluate()
    model = trainer.model.eval()
    batch = w.collate(eval_samples)
    with torch.no_grad():
        top = _score_ranker(codes)(model, batch)
    target = [codes.tolist().index(t) for t in batch["labels"][:, 0].tolist()]
    hits = sum(target[i] in top[i].tolist() for i in range(len(target)))
    assert m["eval_recall@50"] == pytest.approx(hits / len(target))
    assert 0 < hits < len(target)  # 指标不是平凡的 0 或 1

    # 最佳检查点在轮转中保留，并在结束时加载
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.isdir(best)
    assert ckpt.is_complete_checkpoint(best)
    assert max(e["eval_recall@50"] for e in evals) == trainer.state.best_metric


def test_contrastive_and_moe_are_logged_and_lamb_is_used(tmp_path):
    torch.manual_seed(0)
    model = w.TinyRecModel(reprs=True)
    args = w.make_args(tmp_path, max_steps=2, save_strategy="no", lambda_contrastive=0.1, optimizer_type="lamb",
                       gradient_accumulation_steps=2, batch_size=2)
    trainer = UGTTrainer(model=model, args=args, data_collator=w.collate, train_dataset=w.make_samples())
    trainer.train()
    assert type(trainer.optimizer.optimizer).__name__ == "LAMB"
    log = [h for h in trainer.state.log_history if "loss" in h][0]
    for key in ("contrastive_loss", "moe_balance_loss", "ntp_loss", "ntp_l2_acc"):
        assert key in log
    expected = log["ntp_loss"] + 0.1 * log["contrastive_loss"] + 0.01 * log["moe_balance_loss"]
    assert log["loss"] == pytest.approx(expected, rel=1e-5)  # 分量的平均口径与 HF 的 loss 一致


def test_early_stopping_patience_stops_when_the_metric_stalls(tmp_path):
    """early_stopping_patience 装上 HF 的 EarlyStoppingCallback：指标不再上升时提前停，最佳一轮仍被取回。"""
    codes = torch.tensor([[a, b, c] for a in range(w.VOCAB[0]) for b in range(w.VOCAB[1]) for c in range(w.VOCAB[2])])
    eval_samples = w.make_samples(12, seed=7, eval_format=True)
    args = w.make_args(tmp_path, max_steps=12, eval_strategy="steps", eval_steps=2, save_steps=2,
                       save_total_limit=1, metric_for_best_model="recall@10", greater_is_better=True,
                       load_best_model_at_end=True, per_device_eval_batch_size=12, early_stopping_patience=1)

    def constant_ranker(model, batch, k=10):  # 与模型无关的固定排序：指标永远持平
        return torch.arange(k).expand(batch["labels"].shape[0], k)

    torch.manual_seed(0)
    trainer = UGTTrainer(model=w.TinyRecModel(), args=args, data_collator=w.collate, train_dataset=w.make_samples(),
                         eval_dataset=eval_samples, ranker=constant_ranker, item_codes=codes, k_values=(10,))
    stoppers = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert [c.early_stopping_patience for c in stoppers] == [1]
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_recall@10" in h]
    assert len(evals) == 2 and trainer.state.global_step == 4  # 第 2 次评估没有提升 -> 停，而不是训满 12 步
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")


def test_early_stopping_patience_needs_the_best_model_settings(tmp_path):
    from ugt_hf.argparsing import ConfigError

    with pytest.raises(ConfigError, match="early_stopping_patience"):
        w.make_args(tmp_path, early_stopping_patience=1)
    with pytest.raises(ConfigError, match="positive integer"):
        w.make_args(tmp_path, eval_strategy="steps", save_strategy="steps", metric_for_best_model="recall@10",
                    load_best_model_at_end=True, early_stopping_patience=0)


# ---------------------------------------------------------------- 续训：长度分组采样、已完成的运行、信号与轮转（#16）
GROUPED = dict(train_sampling_strategy="group_by_length", max_steps=15)  # 每 epoch 6 步：第 3 个 epoch 中间结束


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def grouped_reference(tmp_path_factory):
    trainer = w.make_trainer(tmp_path_factory.mktemp("grouped_ref"), **GROUPED)
    trainer.train()
    return _losses(trainer.state.log_history), _weights(trainer)


def test_length_grouped_sampler_order_depends_only_on_seed_and_epoch():
    from ugt_hf.training.trainer import EpochSeededLengthGroupedSampler

    lengths = [1 + (i * 7) % 5 for i in range(40)]
    a, b = (EpochSeededLengthGroupedSampler(4, lengths, seed=3) for _ in range(2))
    torch.manual_seed(123)  # 全局 RNG 不影响顺序（HF 的版本用全局 RNG）
    first = list(a)
    b.set_epoch(1)
    torch.manual_seed(0)
    second = list(b)
    b.set_epoch(0)
    assert list(b) == first and second != first and sorted(second) == list(range(40))


@pytest.mark.parametrize("stop", [9, 13])  # 第 2 个 epoch 中间；第 3 个 epoch 第 1 步
def test_group_by_length_resume_is_bit_exact_in_later_epochs(tmp_path, grouped_reference, stop):
    ref_losses, ref_weights = grouped_reference
    trainer = w.make_trainer(tmp_path, callbacks=[w.signal_at(stop)], **GROUPED)
    trainer.train()
    assert trainer.stopped_by_signal == signal.SIGTERM and trainer.state.global_step == stop
    assert ckpt.get_last_checkpoint(str(tmp_path)) == str(tmp_path / f"checkpoint-{stop}")
    resumed = w.make_trainer(tmp_path, **GROUPED)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == GROUPED["max_steps"]
    assert _losses(resumed.state.log_history) == ref_losses  # 每一步的损失逐位相同
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k


def test_resuming_a_finished_run_is_a_no_op(tmp_path):
    trainer = w.make_trainer(tmp_path)
    trainer.train()
    before, names = _weights(trainer), sorted(os.listdir(tmp_path))
    again = w.make_trainer(tmp_path)
    again.train(resume_from_checkpoint=True)
    assert again.resumed_finished_run and again.state.global_step == w.MAX_STEPS
    assert sorted(os.listdir(tmp_path)) == names  # 没有 checkpoint-9 / -10
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_signal_stop_keeps_its_checkpoint_with_save_total_limit_one(tmp_path):
    """save_total_limit=1 + load_best_model_at_end：HF 收尾时删掉最佳以外的检查点——被信号停下时那正是续训点。"""
    trainer = UGTTrainer(
        model=w.TinyRecModel(), data_collator=w.collate, train_dataset=w.make_samples(),
        eval_dataset=w.make_samples(8, seed=5), callbacks=[w.signal_at(5)],
        args=w.make_args(tmp_path, eval_strategy="steps", eval_steps=2, save_total_limit=1,
                         load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False))
    trainer.train()
    assert trainer.stopped_by_signal == signal.SIGTERM
    assert trainer.state.best_model_checkpoint != str(tmp_path / "checkpoint-5")
    assert ckpt.get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-5")
    # 正常结束时 HF 的规则照旧：只留最佳的那个
    finished = UGTTrainer(
        model=w.TinyRecModel(), data_collator=w.collate, train_dataset=w.make_samples(),
        eval_dataset=w.make_samples(8, seed=5),
        args=w.make_args(tmp_path, eval_strategy="steps", eval_steps=2, save_total_limit=1,
                         load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False))
    finished.train(resume_from_checkpoint=True)
    assert ckpt.list_checkpoints(str(tmp_path)) == [finished.state.best_model_checkpoint]


def test_stray_file_named_like_a_staging_folder_does_not_break_saving(tmp_path):
    from transformers import TrainerCallback

    class Litter(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                (tmp_path / ".staging-checkpoint-2").write_text("stray")

    trainer = w.make_trainer(tmp_path, callbacks=[Litter()], max_steps=2)
    trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


@pytest.mark.parametrize("stop,evaluated", [(3, False), (6, True)])  # epoch 中间 / 恰好在 epoch 末（每 epoch 6 步）
def test_signal_mid_epoch_adds_no_extra_epoch_end_evaluation(tmp_path, stop, evaluated):
    trainer = UGTTrainer(
        model=w.TinyRecModel(), data_collator=w.collate, train_dataset=w.make_samples(),
        eval_dataset=w.make_samples(8, seed=5), callbacks=[w.signal_at(stop)],
        args=w.make_args(tmp_path, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                         metric_for_best_model="loss", greater_is_better=False))
    trainer.train()
    assert trainer.stopped_by_signal == signal.SIGTERM and trainer.state.global_step == stop
    evals = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    assert evals == ([stop] if evaluated else [])
    assert ckpt.get_last_checkpoint(str(tmp_path)) == str(tmp_path / f"checkpoint-{stop}")


def test_a_step_skipped_by_the_loss_scaler_does_not_skip_the_next_healthy_step(tmp_path):
    """fp16 的 GradScaler 发现 inf 时根本不调底层 optimizer.step：守卫的标志没人读。这里在 CPU 上模仿它
    （包在 HF 调用的优化器外面，梯度非有限就直接返回）；第 5 步的梯度被注入 inf。只有第 5 步不更新，
    第 6 步照常更新（修复前第 6 步也被跳过，日志里多一条误导的 non-finite 警告）。"""
    import math

    from transformers import TrainerCallback

    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
    from ugt_hf.spec.config import TrainingConfig

    torch.manual_seed(0)
    model = UGTForGenerativeRecommendation(UGTConfig(
        vocab_sizes=[6, 5, 7], d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64,
        num_experts=1, num_experts_per_tok=1, dropout=0.0))
    weight = next(m for m in model.modules() if isinstance(m, nn.Linear)).weight
    snapshots = {}

    class ScalerLike(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            original = optimizer.step

            def step(*a, **k):
                if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in model.parameters()):
                    return None  # GradScaler：found_inf -> 不调用底层 step
                return original(*a, **k)

            optimizer.step = step

        def on_step_end(self, args, state, control, **kwargs):
            snapshots[state.global_step] = weight.detach().clone()

    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] == 5 else grad

    weight.register_hook(poison)
    args = TrainingConfig(output_dir=str(tmp_path), batch_size=4, gradient_accumulation_steps=1, fp16=False,
                          max_steps=8, learning_rate=1e-2, warmup_steps=0,
                          logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=0,
                          disable_tqdm=True, lambda_contrastive=0.0, deepspeed=False, dataloader_num_workers=0,
                          use_cpu=True)
    trainer = UGTTrainer(model=model, args=args, data_collator=w.collate, train_dataset=w.make_samples(48),
                         callbacks=[ScalerLike()])
    trainer.train()
    unchanged = [s for s in range(2, 9) if torch.equal(snapshots[s - 1], snapshots[s])]
    assert unchanged == [5]
    assert trainer.nonfinite_guard.total_skipped == 1
