"""test_distributed 的共享工具与多进程入口：确定性的极小 UGT 模型、变长记录、训练配置、结果文件。

用法（由 tests/test_distributed.py 启动）：
    python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_worker.py \
        RESULT_DIR OUTPUT_DIR BATCH [STOP_STEP|-] [resume] [fsdp]

每个 rank 把 log_history 中的 loss/grad_norm 写进 RESULT_DIR/rank{r}.json、
最终权重写进 RESULT_DIR/rank{r}.safetensors；
测试进程读回比较。单进程参照（batch 2b）在测试进程内用同一个 `run()` 跑，保证模型、数据、配置完全一致。
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch

VOCAB = (6, 5, 7)  # 各层语义 ID 词表
NUM_RECORDS = 12  # 全局批次 4 时每 epoch 3 步
MAX_STEPS = 6  # 跨一个 epoch 边界
SAVE_STEPS = 2
LR = 0.1


def make_records(n: int = NUM_RECORDS, seed: int = 3) -> List[Dict[str, Any]]:
    """规格 5.1 格式的原始训练记录（交给 DataCollator 校验）。encoder 长 1–6、decoder 长 1–5 各不相同，
    所以同一全局批次里两个 rank 的有效标签位置数不同：按 rank 平均与按全局 token 平均会得到不同的梯度。"""
    g = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        te = int(torch.randint(1, 7, (1,), generator=g))
        td = int(torch.randint(1, 6, (1,), generator=g))
        enc = [torch.randint(0, v, (te,), generator=g).tolist() for v in VOCAB]
        items = [torch.randint(0, v, (td,), generator=g).tolist() for v in VOCAB]
        rec: Dict[str, Any] = {"user_id": f"u{i}"}
        for lvl in range(3):
            rec[f"encoder_l{lvl + 1}_ids"] = enc[lvl]
            rec[f"decoder_l{lvl + 1}_ids"] = [0] + items[lvl][:-1]  # [BOS, d1..d_{n-1}]
            rec[f"labels_l{lvl + 1}"] = items[lvl]  # [d1..dn]
        rec.update(
            encoder_positions=list(range(te)), encoder_token_types=[1] * te, encoder_mask=[1] * te,
            decoder_positions=list(range(td)), decoder_token_types=[0] + [1] * (td - 1), decoder_mask=[1] * td,
        )
        records.append(rec)
    return records


def make_model():
    """稠密（num_experts=1）、无 dropout 的极小 UGT：前向是输入的确定函数，与进程数无关。"""
    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

    torch.manual_seed(0)
    config = UGTConfig(
        vocab_sizes=list(VOCAB), d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ffn_dim=32,
        dropout=0.0, attention_dropout=0.0, max_position_embeddings=16, num_experts=1, num_experts_per_tok=1,
    )
    return UGTForGenerativeRecommendation(config)


def make_args(output_dir: str, batch: int, **overrides):
    """固定学习率的 SGD（带动量：续训时必须恢复优化器状态），无预热、无裁剪、无 dropout。

    λ_contrastive = λ_moe = 0：批内 InfoNCE 的负样本只来自本 rank 的批次、MoE 负载均衡也按本 rank 的路由统计，
    它们在 DDP 下本来就是“每个 rank 各算各的”，与单进程大批次的值不同（不是错误）；这里只检验 NTP 的跨设备加权。
    """
    from ugt_hf.spec.config import TrainingConfig

    kw = dict(
        output_dir=output_dir, batch_size=batch, gradient_accumulation_steps=1, max_steps=MAX_STEPS,
        optim="sgd", optim_args="momentum=0.9", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, lambda_contrastive=0.0, lambda_moe_balance=0.0,
        logging_steps=1, save_steps=SAVE_STEPS, save_total_limit=None, eval_strategy="no", report_to="none",
        fp16=False, bf16=False, deepspeed=False, use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return TrainingConfig(**kw)


def run(output_dir: str, batch: int, stop_step: Optional[int] = None, resume: bool = False, **overrides):
    """训练 MAX_STEPS 步（stop_step 给出时在该步保存后停下，模拟被抢占）；
    resume=True 从 output_dir 里最新的完整检查点续训。

    数据顺序：HF 默认的 RandomSampler 被 accelerate 换成 SeedableRandomSampler（种子 = args.seed，各 rank 相同），
    BatchSamplerShard（split_batches=False）把这个排列切成大小为 b 的批次，第 i 个批次给 rank i % 2。
    于是第 k 步两个 rank 合起来正好是排列里的第 [2bk, 2bk+2b) 个样本，即单进程 batch 2b 的第 k 个批次。
    """
    from transformers import TrainerCallback

    from ugt_hf.data.collator import DataCollator
    from ugt_hf.training.trainer import UGTTrainer

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_step is not None and state.global_step >= stop_step:
                control.should_training_stop = True

    model = make_model()
    trainer = UGTTrainer(
        model=model, args=make_args(output_dir, batch, **overrides), data_collator=DataCollator(vocab_sizes=VOCAB),
        train_dataset=make_records(), callbacks=[StopAt()], graceful_shutdown=False,
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer


def summarize(trainer) -> Dict[str, Any]:
    """log_history 里每个训练步的 loss、grad_norm 与 NTP 分量
    （HF 的 loss 已跨进程汇总，ntp_loss 是本进程的累积器）。"""
    rows = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    return {
        "steps": [int(h["step"]) for h in rows],
        "loss": [float(h["loss"]) for h in rows],
        "grad_norm": [float(h["grad_norm"]) if h.get("grad_norm") is not None else None for h in rows],
        "ntp_loss": [float(h["ntp_loss"]) if "ntp_loss" in h else None for h in rows],
        "global_step": int(trainer.state.global_step),
        "world_size": int(trainer.args.world_size),
    }


def final_weights(trainer) -> Dict[str, torch.Tensor]:
    # 绑定的权重（输出头 = 嵌入）在 state_dict 里共享存储，safetensors 不接受：逐个 clone
    return {k: v.detach().cpu().clone().contiguous() for k, v in trainer.model.state_dict().items()}


def main(argv: List[str]) -> int:
    torch.set_num_threads(1)  # 共享的 2 核机器：每进程 2 线程慢一个数量级
    result_dir, output_dir, batch = argv[0], argv[1], int(argv[2])
    stop_step = int(argv[3]) if len(argv) > 3 and argv[3] != "-" else None
    resume = "resume" in argv[4:]
    # "fsdp"：请求 FSDP2（test_fsdp_on_cpu_is_refused 检查它在 CPU 上被明确拒绝，而不是悄悄跑成 DDP）
    overrides = {"fsdp": True, "fsdp_config": {"version": 2}} if "fsdp" in argv[4:] else {}
    trainer = run(output_dir, batch, stop_step=stop_step, resume=resume, **overrides)

    from safetensors.torch import save_file

    rank = int(trainer.args.process_index)
    os.makedirs(result_dir, exist_ok=True)
    save_file(final_weights(trainer), os.path.join(result_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump(summarize(trainer), f)
    from ugt_hf.training.stages import close_process_group

    close_process_group()  # 与生产入口相同：不销毁进程组时 Gloo 偶尔在解释器收尾时 SIGABRT
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
