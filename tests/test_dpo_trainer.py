"""dpo_trainer.py：偏好批次、层次化物品打分与 TRL DPOTrainer 的对接、总损失公式、留出偏好准确率。"""

import random

import pytest
import torch
from _pipeline_fixtures import pickled_files

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.model_card import read_front_matter
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
from ugt_hf.spec.config import Stage3Config
from ugt_hf.tokenization_ugt import UGTTokenizer
from ugt_hf.training.checkpointing import verify_checkpoint_files
from ugt_hf.training.dpo_trainer import (
    UGTDPOTrainer,
    UGTPreferencePairCollator,
    pairwise_preference_accuracy,
    ugt_fused_forward,
)

V = (6, 5, 4)
TRIPLES = [(a, b, c) for a in range(3) for b in range(3) for c in range(2)]  # 18 个物品


def _record(uid, hist, chosen, rejected):
    seq = {
        "encoder_l1_ids": [TRIPLES[i][0] for i in hist], "encoder_l2_ids": [TRIPLES[i][1] for i in hist],
        "encoder_l3_ids": [TRIPLES[i][2] for i in hist], "encoder_positions": list(range(len(hist))),
        "encoder_token_types": [1] * len(hist), "encoder_mask": [1] * len(hist),
    }
    item = lambda i: dict(zip(("l1_id", "l2_id", "l3_id"), TRIPLES[i]))  # noqa: E731
    return {"user_id": str(uid), "user_sequence": seq, "chosen_item": item(chosen), "rejected_item": item(rejected),
            "preference_score": 1.0}


def _pairs(n=48, seed=0):
    rng = random.Random(seed)
    out = []
    for u in range(n):
        hist = [rng.randrange(len(TRIPLES)) for _ in range(rng.randint(1, 4))]
        # 可学习的偏好：chosen 总是 L1=0 的物品，rejected 总是 L1=2 的物品
        out.append(_record(u, hist, rng.randrange(0, 6), rng.randrange(12, 18)))
    return out


def _with_negatives(pairs, k=3, seed=0):
    """每条偏好记录补成 K 个负样本（第一个就是 rejected_item）；负样本都在 L1=2 的格子里（被计划压低的一类）。"""
    rng = random.Random(seed)
    item = lambda i: dict(zip(("l1_id", "l2_id", "l3_id"), TRIPLES[i]))  # noqa: E731
    out = []
    for p in pairs:
        extra = [item(rng.randrange(12, 18)) for _ in range(k - 1)]
        out.append(dict(p, rejected_items=[p["rejected_item"]] + extra))
    return out


def _rec_records(n=32, seed=0):
    """推荐数据的原始记录（统一损失的 L_ntp 用）：历史 1–4 个物品，下一个物品随机。"""
    rng = random.Random(seed)
    out = []
    for u in range(n):
        hist = [rng.randrange(len(TRIPLES)) for _ in range(rng.randint(1, 4))]
        target = TRIPLES[rng.randrange(len(TRIPLES))]
        rec = {"user_id": str(u), "encoder_positions": list(range(len(hist))),
               "encoder_token_types": [1] * len(hist), "encoder_mask": [1] * len(hist),
               "decoder_l1_ids": [0], "decoder_l2_ids": [0], "decoder_l3_ids": [0], "decoder_positions": [0],
               "decoder_token_types": [0], "decoder_mask": [1],
               "labels_l1": [target[0]], "labels_l2": [target[1]], "labels_l3": [target[2]]}
        for lvl in range(3):
            rec[f"encoder_l{lvl + 1}_ids"] = [TRIPLES[i][lvl] for i in hist]
        out.append(rec)
    return out


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = UGTConfig(vocab_sizes=list(V), d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                    ffn_dim=32, num_experts=2, num_experts_per_tok=1, dropout=0.0, **kw)
    return UGTForGenerativeRecommendation(cfg)


def _tokenizer():
    return UGTTokenizer(item_ids=list(range(len(TRIPLES))), triples=TRIPLES, vocab_sizes=V)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), batch_size=8, max_epochs=3, learning_rate=5e-3, warmup_steps=0,
                logging_steps=2, save_strategy="no", report_to="none", fp16=False, lambda_contrastive=0.0,
                lambda_preference=1.0, dpo_beta=0.5, seed=0)
    base.update(kw)
    return Stage3Config(**base)


def test_collator_exact_tensors():
    batch = UGTPreferencePairCollator(vocab_sizes=V)([_record(0, [1, 2], 0, 17), _record(1, [3], 5, 12)])
    assert batch["encoder_semantic_ids"].shape == (2, 2, 3)  # 编码器每个用户一份
    expected = torch.tensor([[0, *TRIPLES[0]], [0, *TRIPLES[5]], [0, *TRIPLES[17]], [0, *TRIPLES[12]]])
    assert torch.equal(batch["input_ids"], expected)  # [chosen; rejected]
    assert torch.equal(batch["completion_mask"], torch.tensor([[0, 1, 1, 1]] * 4))
    assert torch.equal(batch["attention_mask"], torch.ones(4, 4, dtype=torch.long))
    assert torch.equal(batch["encoder_attention_mask"], torch.tensor([[1, 1], [1, 0]]))


@pytest.mark.parametrize("transition", [False, True])
def test_fused_forward_equals_hierarchical_item_score(transition):
    model = _model(transition_buckets=97 if transition else 0).eval()
    if transition:  # 宽记忆项非零时，融合前向与 score_items 必须用同一个“前一个物品”
        with torch.no_grad():
            model.transition.table.weight.normal_(0, 1.0)
    batch = UGTPreferencePairCollator(vocab_sizes=V)(_pairs(5))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    enc = {k: v for k, v in batch.items() if k.startswith("encoder_")}
    with torch.no_grad():
        out = ugt_fused_forward(model, labels, **enc)
        items = batch["input_ids"][:, 1:]
        direct = torch.cat([model.score_items(items[:5], **enc), model.score_items(items[5:], **enc)])
    assert out.log_probs.shape == (10, 3)
    torch.testing.assert_close(out.log_probs.sum(-1), direct, atol=1e-5, rtol=1e-5)
    assert (out.log_probs <= 0).all()
    if transition:
        acc = pairwise_preference_accuracy(model, _pairs(5))
        assert acc["preference_margin"] == pytest.approx(float((direct[:5] - direct[5:]).mean()), abs=1e-5)


def test_dpo_training_learns_preference_and_logs_trl_metrics(tmp_path):
    pairs = _pairs()
    model = _model()
    before = pairwise_preference_accuracy(model, pairs)["preference_accuracy"]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = UGTDPOTrainer(model=model, args=_args(tmp_path), train_dataset=pairs, processing_class=_tokenizer())
    trainer.train()
    after = pairwise_preference_accuracy(trainer.model, pairs)["preference_accuracy"]
    assert after > max(before, 0.8), (before, after)
    assert any(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items())
    logged = [e for e in trainer.state.log_history if "loss" in e]
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "ntp_loss", "dpo_loss"):
        assert key in logged[-1], key
    assert logged[-1]["rewards/margins"] > 0
    assert trainer.model.config.semantic_pad_id == 0  # 语义 padding 值是单独的字段，TRL 写 pad_token_id 不影响它


def test_total_loss_formula_and_reference_free(tmp_path):
    pairs = _pairs(8)
    model = _model()
    args = _args(tmp_path, lambda_preference=0.0, lambda_moe_balance=0.0, dpo_reference_free=True, batch_size=8)
    trainer = UGTDPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=_tokenizer())
    batch = trainer.data_collator(pairs)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        enc = {k: v for k, v in batch.items() if k.startswith("encoder_")}
        states = model.prediction_states(**enc)
        items = batch["input_ids"][:8, 1:]
        l1 = torch.log_softmax(model.level1_logits(states), -1).gather(1, items[:, :1]).squeeze(1)
        l2 = torch.log_softmax(model.level2_logits(states, items[:, 0]), -1).gather(1, items[:, 1:2]).squeeze(1)
        l3 = torch.log_softmax(model.level3_logits(states, items[:, 0], items[:, 1]), -1).gather(
            1, items[:, 2:3]).squeeze(1)
    # λ2 = λ1 = λ3 = 0：总损失 = 按层加权的 chosen NTP（0.5/0.3/0.2）
    expected = -(0.5 * l1 + 0.3 * l2 + 0.2 * l3).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    # reference-free：参考模型的 log-prob 恒为 0，rewards = β·logπ
    assert getattr(trainer.ref_model, "_ugt_reference_free", False)


def test_pairwise_accuracy_counts():
    model = _model().eval()
    pairs = _pairs(6)
    res = pairwise_preference_accuracy(model, pairs)
    swapped = [dict(p, chosen_item=p["rejected_item"], rejected_item=p["chosen_item"]) for p in pairs]
    res2 = pairwise_preference_accuracy(model, swapped)
    assert res["num_pairs"] == 6
    assert res["preference_accuracy"] + res2["preference_accuracy"] == pytest.approx(1.0)
    assert res["preference_margin"] == pytest.approx(-res2["preference_margin"], abs=1e-5)


def test_requires_args_and_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="processing_class"):
        UGTDPOTrainer(model=_model(), args=_args(tmp_path), train_dataset=_pairs(4))
    with pytest.raises(ValueError, match="Stage3Config"):
        UGTDPOTrainer(model=_model(), train_dataset=_pairs(4), processing_class=_tokenizer())


def test_precomputed_reference_log_probs_match_live_reference(tmp_path):
    """ZeRO-3 友好的路径：训练前用初始策略预计算参考 log-prob（TRL 的 precompute_ref_log_probs），
    与冻结参考模型现场计算的结果一致。"""
    pairs = _pairs(16)
    model = _model()
    trainer = UGTDPOTrainer(model=model, args=_args(tmp_path, precompute_ref_log_probs=True, max_epochs=1),
                            train_dataset=pairs, processing_class=_tokenizer())
    assert trainer.ref_model is None  # 参考模型不常驻内存
    cols = trainer.train_dataset.column_names
    assert "ref_chosen_logps" in cols and "ref_rejected_logps" in cols
    batch = UGTPreferencePairCollator(vocab_sizes=V)(pairs)
    enc = {k: v for k, v in batch.items() if k.startswith("encoder_")}
    with torch.no_grad():
        items = batch["input_ids"][:, 1:]
        live_c = model.eval().score_items(items[:16], **enc)
        live_r = model.score_items(items[16:], **enc)
    torch.testing.assert_close(torch.tensor(trainer.train_dataset["ref_chosen_logps"]), live_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(trainer.train_dataset["ref_rejected_logps"]), live_r, atol=1e-5, rtol=1e-5)
    trainer.train()  # 批次里带着预计算的参考 log-prob 也能训练
    assert any("rewards/margins" in e for e in trainer.state.log_history)


def test_precomputed_reference_with_a_given_reference_model_trains(tmp_path):
    """阶段脚本给了 --reference_model_path 又开 precompute_ref_log_probs：TRL 用这个参考模型预计算；
    它在预计算最后一批（这里 16 对里的最后 6 对）留下的输出不能被当成训练步的参考（原来形状不符而崩溃）。"""
    pairs = _pairs(16)
    ref = _model().eval()
    args = _args(tmp_path, precompute_ref_log_probs=True, precompute_ref_batch_size=5, max_epochs=1, logging_steps=1)
    trainer = UGTDPOTrainer(model=_model(), ref_model=ref, args=args, train_dataset=pairs,
                            processing_class=_tokenizer())
    assert trainer.ref_model is ref and getattr(ref, "_ugt_last_fused", None) is None
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rewards/margins" in e]
    assert logs and all("logps_delta/rejected_l3" in e for e in logs)


def test_precomputed_reference_logs_the_same_level_movement_as_a_live_one(tmp_path):
    """同一个数学目标：预计算参考与现场参考的训练轨迹相同；分层移动在写日志的步上由参考模型补一次前向，
    logging_steps = 1 时每步的 logps_delta/* 与现场参考的逐项相等。"""
    def run(sub, **kw):
        args = _args(tmp_path / sub, max_epochs=2, batch_size=4, logging_steps=1, **kw)
        trainer = UGTDPOTrainer(model=_model(), ref_model=_model().eval(), args=args, train_dataset=_pairs(16),
                                processing_class=_tokenizer())
        trainer.train()
        return [e for e in trainer.state.log_history if "rewards/margins" in e]

    live, pre = run("live"), run("pre", precompute_ref_log_probs=True)
    assert len(live) == len(pre) > 1
    keys = [k for k in live[0] if k.startswith("logps_delta/")]
    assert len(keys) == 6
    for a, b in zip(live, pre):
        for k in keys + ["rewards/margins", "loss"]:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k


def test_dpo_saves_hold_no_pickle_and_a_model_card(tmp_path):
    """阶段 3 也不写 pickle：HF `_save` 的 training_args.bin 在检查点与最终保存里都没有，改成 training_args.json；
    最终保存一个 pickle 都没有，检查点里只有 HF 的优化器/调度器/RNG 状态（weights_only 可加载的 zip）。"""
    args = _args(tmp_path, max_epochs=2, save_strategy="steps", save_steps=1, logging_steps=1,
                 eval_strategy="steps", eval_steps=1, run_name="dpo_card_test")
    trainer = UGTDPOTrainer(model=_model(), args=args, train_dataset=_pairs(16), eval_dataset=_pairs(8, seed=1),
                            processing_class=_tokenizer())
    trainer.train()
    out, final = tmp_path / "out", tmp_path / "final"
    trainer.save_model(str(final))
    assert not list(out.rglob("training_args.bin")) and not list(final.rglob("training_args.bin"))
    assert pickled_files(final) == []
    assert (final / "training_args.json").is_file() and (final / "model.safetensors").is_file()
    ckpts = sorted(out.glob("checkpoint-*"))
    assert ckpts
    for c in ckpts:
        assert (c / "training_args.json").is_file() and (c / "README.md").is_file()
        assert {p.name for p in pickled_files(c)} <= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
        verify_checkpoint_files(str(c))
    card = (final / "README.md").read_text(encoding="utf-8")
    front = read_front_matter(card)
    assert front["library_name"] == "ugt-hf" and "semantic-ids" in front["tags"]
    assert "import ugt_hf" in card and "dpo_card_test" in card
    assert "DPO (TRL, loss_type=" in card and "beta=0.5" in card
    assert "last training log rewards/accuracies" in card  # TRL 记录的最近一次 rewards/*
    assert "| rewards/margins |" in card  # 验证时的 eval_rewards/* 进指标表


def test_collator_stacks_k_negatives_after_the_chosen_rows():
    pairs = _with_negatives([_record(0, [1, 2], 0, 17), _record(1, [3], 5, 12)], k=3)
    batch = UGTPreferencePairCollator(vocab_sizes=V)(pairs)
    rows = [TRIPLES[0], TRIPLES[5], TRIPLES[17], TRIPLES[12]]  # chosen ×2，第一个负样本 ×2
    for j in (1, 2):  # 其余负样本按序号一组一组排在后面：[chosen; rej_1; rej_2; rej_3]
        rows += [tuple(pairs[b]["rejected_items"][j][f"l{k}_id"] for k in (1, 2, 3)) for b in (0, 1)]
    assert torch.equal(batch["input_ids"], torch.tensor([[0, *r] for r in rows]))
    assert batch["encoder_semantic_ids"].shape[0] == 2
    bad = [pairs[0], dict(pairs[1], rejected_items=pairs[1]["rejected_items"][:2])]
    with pytest.raises(ValueError, match="same number of negatives"):
        UGTPreferencePairCollator(vocab_sizes=V)(bad)


def test_softmax_dpo_does_not_push_down_a_prefix_shared_with_every_negative(tmp_path):
    """chosen (0,1,0) 与三个负样本都在 L1=0 的格子里：S-DPO 只依赖 r_j − r_c，共享的 L1 项逐位相消，
    L1 logits（同一用户状态，各行相同）收到的梯度之和为 0，即共享前缀既不被压低也不被抬高；
    换成 L1 不同的负样本时不为 0（检查本身能失败）。"""
    model = _model()
    args = _args(tmp_path, preference_negatives=3, dpo_reference_free=True)
    grads = []

    def keep_grad(module, inputs, out):  # 返回 None：不替换前向输出
        out.register_hook(grads.append)

    model.heads.out1.register_forward_hook(keep_grad)

    item = lambda t: dict(zip(("l1_id", "l2_id", "l3_id"), t))  # noqa: E731

    def record(negatives):
        return dict(_record(0, [3, 4], 2, 0), chosen_item=item((0, 1, 0)), rejected_item=item(negatives[0]),
                    rejected_items=[item(t) for t in negatives])

    trainer = UGTDPOTrainer(model=model, args=args, train_dataset=[record([(0, 0, 0)] * 3)],
                            processing_class=_tokenizer())

    def l1_grad(negatives):
        rec = record(negatives)
        grads.clear()
        trainer._softmax_dpo_loss(trainer.model, trainer.data_collator([rec])).backward()
        (g,) = grads  # [4, V1]：chosen 与三个负样本各一行
        return g.sum(0).abs().max().item()

    assert l1_grad([(0, 2, 1), (0, 0, 1), (0, 1, 1)]) < 1e-7
    assert l1_grad([(2, 2, 1), (1, 0, 1), (0, 1, 1)]) > 1e-4


def test_softmax_dpo_with_three_negatives_learns_a_planted_preference_on_held_out_pairs(tmp_path):
    """计划的偏好（chosen 在 L1=0、负样本在 L1=2）：S-DPO（K=3）加推荐数据上的 NTP 训练后，
    留出偏好对（另一个种子）的成对准确率远高于随机，推荐数据上的 NTP 损失不变坏（≤ 2%）。"""
    train, held = _with_negatives(_pairs(48, seed=0)), _pairs(48, seed=7)
    rec = _rec_records(64)
    model = _model()
    ntp_before = _ntp_on(model, rec)
    before = pairwise_preference_accuracy(model, held)["preference_accuracy"]
    args = _args(tmp_path, preference_negatives=3, max_epochs=4)
    trainer = UGTDPOTrainer(model=model, args=args, train_dataset=train, processing_class=_tokenizer(),
                            ntp_dataset=rec)
    trainer.train()
    after = pairwise_preference_accuracy(trainer.model, held)["preference_accuracy"]
    assert after > max(before + 0.2, 0.8), (before, after)
    assert _ntp_on(trainer.model, rec) <= 1.02 * ntp_before
    logged = [e for e in trainer.state.log_history if "loss" in e][-1]
    for key in ("rewards/accuracies", "rewards/margins", "ntp_loss", "dpo_loss", "logps_delta/rejected_l1"):
        assert key in logged, key
    assert logged["logps_delta/rejected_l1"] < 0  # 被压低的是负样本的 L1 格子


def _ntp_on(model, records):
    from ugt_hf.data.collator import DataCollator
    from ugt_hf.interfaces import MODEL_INPUT_KEYS
    from ugt_hf.training.losses import next_item_ntp_loss

    batch = DataCollator()(records)
    model.eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS})
        return next_item_ntp_loss(out, batch["labels"])[0].item()


def test_unified_loss_uses_next_item_ntp_on_recommendation_data(tmp_path):
    """λ2 = 0 时训练损失就是推荐数据批次上的 next-item NTP（与阶段 1/2 同一个函数），批次由
    (seed, global_step, micro-batch 序号) 决定：同一位置重抽得到同一批。"""
    from ugt_hf.training.losses import level_weights_from, next_item_ntp_loss

    rec = _rec_records(40)
    model = _model()
    args = _args(tmp_path, lambda_preference=0.0, lambda_moe_balance=0.0, ntp_batch_size=16, dpo_reference_free=True)
    trainer = UGTDPOTrainer(model=model, args=args, train_dataset=_pairs(8), processing_class=_tokenizer(),
                            ntp_dataset=rec)
    model.train()
    torch.manual_seed(0)
    first = trainer._next_ntp_batch()
    trainer._ntp_draw = (-1, 0)
    again = trainer._next_ntp_batch()
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert first["labels"].shape[0] == 16
    assert not torch.equal(first["labels"], trainer._next_ntp_batch()["labels"])  # 同一步的第二个 micro-batch
    trainer._ntp_draw = (-1, 0)
    model.eval()  # 关掉 dropout 以便逐位比较；训练态标志单独设
    model.training = True
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(_pairs(8)))
        expected, _ = next_item_ntp_loss(model(**first), first["labels"], level_weights_from(args))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_stalled_preference_term_warns_once_at_mid_stage(caplog):
    from transformers import TrainerControl, TrainerState

    from ugt_hf.training.dpo_trainer import PreferenceStallCallback

    def run(margins, accuracies):
        cb, state = PreferenceStallCallback(), TrainerState(max_steps=10)
        caplog.clear()
        for step in range(1, 11):
            state.global_step = step
            logs = {"rewards/margins": margins, "rewards/accuracies": accuracies}
            cb.on_log(None, state, TrainerControl(), logs=logs)
            cb.on_step_end(None, state, TrainerControl())
        return [r.getMessage() for r in caplog.records if "has not moved" in r.getMessage()]

    with caplog.at_level("WARNING", logger="ugt_hf.training.dpo_trainer"):
        stalled = run(1e-4, 0.50)
        moving = run(0.3, 0.71)
    assert len(stalled) == 1 and "step 5 of 10" in stalled[0] and "lambda_preference" in stalled[0]
    assert moving == []
