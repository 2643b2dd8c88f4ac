"""ugt_hf/spec/trainer.py：模型收到规格的批次形式；evaluate 的无前缀键；train_epoch 的续训映射；无梯度路径的损失。"""

import _resume_worker as w
import pytest
import torch

from ugt_hf.spec.dataset import DataCollator
from ugt_hf.spec.trainer import Trainer


class _Recording(w.TinyRecModel):
    """规格形式的模型：记下收到的 encoder_semantic_ids 类型，把 3 个 [B, T] 的列表堆回 [B, T, 3] 再计算。"""

    def __init__(self, dropout: float = 0.0):
        super().__init__(dropout=dropout)
        self.seen = []

    def forward(self, **kw):
        self.seen.append(type(kw["encoder_semantic_ids"]))
        return super().forward(**{k: torch.stack(v, -1) if isinstance(v, list) else v for k, v in kw.items()})


def _trainer(tmp_path, model=None, collator=w.collate, **kw):
    kw.setdefault("max_steps", 2)
    return Trainer(model=model or _Recording(), config=w.make_args(tmp_path / "out", **kw),
                   train_dataset=w.make_samples(8), eval_dataset=w.make_samples(4), data_collator=collator)


@pytest.mark.parametrize("collator", [w.collate, None], ids=["contract", "spec"])
def test_model_sees_spec_form_and_evaluate_aliases(tmp_path, collator):
    if collator is None:
        collator = DataCollator()  # 规格形式的批次（3 个 [B, T] 的列表、*_mask）
    trainer = _trainer(tmp_path, collator=collator, save_strategy="no")
    trainer.train()
    assert set(trainer.model.seen) == {list}
    metrics = trainer.evaluate()
    assert metrics["loss"] == metrics["eval_loss"]


def test_train_epoch_twice_equals_two_epoch_train(tmp_path):
    """与 tests/test_trainer.py 的同名测试相同，改用规格 Trainer（该测试随 train_epoch 迁来这里）。"""
    a = Trainer(model=_seeded(), config=w.make_args(tmp_path / "a", max_steps=-1, max_epochs=2, save_strategy="no"),
                train_dataset=w.make_samples(), data_collator=w.collate)
    a.train()
    b = Trainer(model=_seeded(), config=w.make_args(tmp_path / "b", max_steps=-1, max_epochs=2, save_strategy="no"),
                train_dataset=w.make_samples(), data_collator=w.collate)
    m1 = b.train_epoch()
    m2 = b.train_epoch()
    assert m1["epoch"] == pytest.approx(1.0) and m2["epoch"] == pytest.approx(2.0)
    for k, v in a.model.state_dict().items():
        assert torch.allclose(v, b.model.state_dict()[k], atol=1e-6), k


def _seeded():
    torch.manual_seed(0)
    return _Recording(dropout=0.1)


def test_loss_without_grad_path_trains_with_zero_grads(tmp_path, caplog):
    class Random(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, encoder_semantic_ids, decoder_semantic_ids, **kw):
            b, t = decoder_semantic_ids[0].shape
            return {f"l{k + 1}_logits": torch.randn(b, t, v) for k, v in enumerate(w.VOCAB)}

    trainer = _trainer(tmp_path, model=Random(), save_strategy="no", weight_decay=0.0)
    before = trainer.model.linear.weight.detach().clone()
    trainer.train()
    assert "does not depend on any trainable parameter" in caplog.text
    assert torch.equal(trainer.model.linear.weight, before)  # 0 梯度、无衰减：参数不变


def test_save_load_round_trip(tmp_path):
    trainer = _trainer(tmp_path, save_strategy="no")
    trainer.train()
    path = str(tmp_path / "ck")
    trainer.save_checkpoint(path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.load_checkpoint(path)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        (tmp_path / "empty").mkdir()
        trainer.load_checkpoint(str(tmp_path / "empty"))
