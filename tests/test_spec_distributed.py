"""ugt_hf/spec/distributed.py：单进程下的 setup_distributed、DistributedTrainer 与 DeepSpeedTrainer 的明确报错。"""

import _resume_worker as w
import pytest
import torch

from ugt_hf.spec.distributed import DeepSpeedTrainer, DistributedTrainer, setup_distributed


class _ListInputTiny(w.TinyRecModel):
    """规格 Trainer 交给模型的语义 ID 是 3 个 [B, T] 的列表：堆回 [B, T, 3]。"""

    def forward(self, **kw):
        return super().forward(**{k: torch.stack(v, -1) if isinstance(v, list) else v for k, v in kw.items()})


def _args(tmp_path, **kw):
    return w.make_args(tmp_path / "out", max_steps=2, save_strategy="no", **kw)


def test_setup_distributed_single_process():
    info = setup_distributed(cpu=True)
    assert (info.rank, info.local_rank, info.world_size) == (0, 0, 1)
    assert info.device.type == "cpu"


def test_distributed_trainer_is_the_trainer_in_one_process(tmp_path, caplog):
    config = _args(tmp_path, ddp=True)
    trainer = DistributedTrainer(model=_ListInputTiny(), config=config, train_dataset=w.make_samples(8),
                                 data_collator=w.collate)
    assert "single process" in caplog.text
    trainer.train()
    assert trainer.state.global_step == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="检查的是没有 DeepSpeed 时的报错")
def test_deepspeed_trainer_refuses_without_deepspeed(tmp_path):
    with pytest.raises(RuntimeError, match="DeepSpeed is not enabled"):
        DeepSpeedTrainer(model=_ListInputTiny(), config=_args(tmp_path, deepspeed=False),
                         train_dataset=w.make_samples(8), data_collator=w.collate)
