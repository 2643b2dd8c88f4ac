"""optim.py 测试：参数分组、学习率纯函数与 HF 调度逐步一致、LAMB 手算单步与收敛、Trainer 钩子。"""

import math

import pytest
import torch
from torch import nn
from transformers import Trainer

from ugt_hf.training.optim import (
    LAMB,
    create_optimizer,
    create_scheduler,
    get_optimizer_cls_and_kwargs,
    get_param_groups,
    lr_at_step,
    resolve_scheduler,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # 共享权重：只应登记一次
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(self.norm(self.proj(self.emb(x))))


# ------------------------------------------------------------------------------------------------ 参数分组
def test_param_groups_decay_only_matrices():
    m = Tiny()
    decay, no_decay = get_param_groups(m, 0.01)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(m.emb.weight), id(m.proj.weight)}
    assert ids(no_decay["params"]) == {id(m.proj.bias), id(m.norm.weight), id(m.norm.bias)}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("kind, cls", [("adamw", torch.optim.AdamW), ("lamb", LAMB), ("LAMB", LAMB)])
def test_create_optimizer(kind, cls):
    opt = create_optimizer(Tiny(), kind, learning_rate=3e-4, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-7)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.8, 0.9) and g["eps"] == 1e-7 for g in opt.param_groups)


def test_create_optimizer_errors():
    with pytest.raises(ValueError, match="lamb"):
        create_optimizer(Tiny(), "lamp")
    with pytest.raises(ValueError, match="learning_rate"):
        create_optimizer(Tiny(), learning_rate=-1.0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        create_optimizer(frozen)


# ------------------------------------------------------------------------------------------------ 学习率
def test_lr_at_step_cosine_key_points():
    kw = dict(base_lr=1e-3, total_steps=110, warmup_steps=10, scheduler_type="cosine", min_lr_ratio=0.1)
    assert lr_at_step(0, **kw) == 0.0  # 预热起点
    assert lr_at_step(5, **kw) == pytest.approx(5e-4)  # 预热中点
    assert lr_at_step(10, **kw) == pytest.approx(1e-3)  # 预热终点 = 峰值
    assert lr_at_step(60, **kw) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # 余弦中点
    assert lr_at_step(110, **kw) == pytest.approx(1e-4)  # 终点 = 下限
    lrs = [lr_at_step(s, **kw) for s in range(10, 111)]
    assert min(lrs) == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs, lrs[1:]))  # 单调降到下限
    # min_lr_ratio=0：普通余弦，终点为 0
    assert lr_at_step(110, **{**kw, "min_lr_ratio": 0.0}) == pytest.approx(0.0, abs=1e-15)


def test_lr_at_step_linear_and_floor():
    kw = dict(base_lr=2e-3, total_steps=100, warmup_steps=0)
    assert lr_at_step(0, scheduler_type="linear", min_lr_ratio=0.0, **kw) == pytest.approx(2e-3)
    assert lr_at_step(50, scheduler_type="linear", min_lr_ratio=0.0, **kw) == pytest.approx(1e-3)
    assert lr_at_step(100, scheduler_type="linear", min_lr_ratio=0.0, **kw) == 0.0
    # 线性带下限：终点 = base * ratio，中点 = 两者平均
    assert lr_at_step(100, scheduler_type="linear", min_lr_ratio=0.25, **kw) == pytest.approx(5e-4)
    assert lr_at_step(50, scheduler_type="linear", min_lr_ratio=0.25, **kw) == pytest.approx(1.25e-3)
    assert lr_at_step(7, scheduler_type="constant_with_warmup", **{**kw, "warmup_steps": 10}) == pytest.approx(1.4e-3)


@pytest.mark.parametrize(
    "kind, ratio",
    [
        ("linear", 0.0),
        ("linear", 0.1),
        ("cosine", 0.0),
        ("cosine", 0.1),
        ("cosine_with_min_lr", 0.2),
        ("polynomial", 0.0),
        ("polynomial", 0.05),
        ("constant", 0.1),
        ("constant_with_warmup", 0.1),
    ],
)
def test_lr_at_step_matches_hf_scheduler(kind, ratio):
    """纯函数与 create_scheduler（HF get_scheduler）逐步一致，包括预热起止与最后一步。"""
    base_lr, total, warm = 1e-3, 40, 8
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = create_scheduler(opt, kind, total_steps=total, warmup_steps=warm, min_lr_ratio=ratio)
    for step in range(total + 1):
        expected = lr_at_step(step, base_lr=base_lr, total_steps=total, warmup_steps=warm,
                              scheduler_type=kind, min_lr_ratio=ratio)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), step
        opt.step()
        sched.step()


def test_resolve_scheduler_and_errors():
    assert resolve_scheduler("cosine", 0.1) == ("cosine_with_min_lr", {"min_lr_rate": 0.1})
    assert resolve_scheduler("cosine", 0.0) == ("cosine", {})
    assert resolve_scheduler("linear", 0.0, 1e-3) == ("linear", {})
    assert resolve_scheduler("constant_with_warmup", 0.1) == ("constant_with_warmup", {})
    with pytest.raises(ValueError, match="cosine"):
        resolve_scheduler("cosinus", 0.1)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        resolve_scheduler("cosine", 1.5)
    with pytest.raises(ValueError, match="contradicts"):
        resolve_scheduler("cosine_with_min_lr", 0.1, scheduler_kwargs={"min_lr_rate": 0.3})
    with pytest.raises(ValueError, match="total_steps"):
        create_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=0)


# ------------------------------------------------------------------------------------------------ LAMB
def _lamb_reference(w, g, lr, b1, b2, eps, wd, steps_grads):
    """纯 Python 的 Algorithm 2，用来与实现对照（多步）。"""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    for t, g in enumerate(steps_grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        mh = [mi / (1 - b1**t) for mi in m]
        vh = [vi / (1 - b2**t) for vi in v]
        r = [a / (math.sqrt(b) + eps) + wd * wi for a, b, wi in zip(mh, vh, w)]
        wn = math.sqrt(sum(x * x for x in w))
        rn = math.sqrt(sum(x * x for x in r))
        trust = wn / rn if wn > 0 and rn > 0 else 1.0
        w = [wi - lr * trust * ri for wi, ri in zip(w, r)]
    return w


def test_lamb_single_step_hand_computed():
    # w = [1, -2], g = [0.5, 0.5], λ = 0.1, 首步 m̂ = g, v̂ = g² ⇒ m̂/(√v̂+ε) ≈ [1, 1]
    # r = [1 + 0.1, 1 - 0.2] = [1.1, 0.8]；‖w‖ = √5，‖r‖ = √1.85；w' = w - lr·(√5/√1.85)·r
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = LAMB([w], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.1)
    w.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    opt.step()
    trust = math.sqrt(5.0) / math.sqrt(1.85)
    expected = [1.0 - 0.1 * trust * 1.1, -2.0 - 0.1 * trust * 0.8]
    assert w.detach().tolist() == pytest.approx(expected, rel=1e-6)
    assert opt.state[w]["step"] == 1


def test_lamb_multi_step_matches_reference_with_eps():
    torch.manual_seed(0)
    w0 = [0.3, -1.2, 0.7]
    grads = [[0.1, -0.4, 0.2], [0.3, 0.1, -0.5], [-0.2, 0.2, 0.05]]
    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LAMB([w], lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.02)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    ref = _lamb_reference(w0, None, 0.05, 0.8, 0.95, 1e-3, 0.02, grads)
    assert w.detach().tolist() == pytest.approx(ref, rel=1e-9)


def test_lamb_trust_ratio_is_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LAMB([w], lr=0.1, eps=0.0, weight_decay=0.0)
    w.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    # ‖w‖=0 ⇒ trust=1，更新 = lr·sign(g)
    assert w.detach().tolist() == pytest.approx([-0.1, 0.1, -0.1])


def test_lamb_decreases_quadratic_and_respects_group_decay():
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    w = nn.Parameter(torch.randn(8, 8))
    b = nn.Parameter(torch.zeros(8))
    opt = LAMB([{"params": [w], "weight_decay": 0.0}, {"params": [b], "weight_decay": 0.0}], lr=0.05)
    loss0 = None
    for _ in range(200):
        opt.zero_grad()
        loss = ((w - target) ** 2).sum() + (b - 1.0).pow(2).sum()
        loss0 = loss.item() if loss0 is None else loss0
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * loss0
    # state_dict 可存可读（Trainer 的检查点要用）
    opt2 = LAMB([{"params": [w], "weight_decay": 0.0}, {"params": [b], "weight_decay": 0.0}], lr=0.05)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[w]["step"] == 200


def test_lamb_rejects_bad_hparams():
    p = [nn.Parameter(torch.zeros(1))]
    for kw in ({"lr": -1}, {"betas": (1.0, 0.9)}, {"eps": -1}, {"weight_decay": -0.1}):
        with pytest.raises(ValueError, match="LAMB"):
            LAMB(p, **kw)


# ------------------------------------------------------------------------------------------------ Trainer 钩子
class _HookTrainer(Trainer):
    """示范 UGTTrainer 该怎么接：覆盖静态方法 get_optimizer_cls_and_kwargs。"""

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        return get_optimizer_cls_and_kwargs(args, model)


@pytest.mark.parametrize("kind, cls", [("lamb", LAMB), ("adamw", torch.optim.AdamW)])
def test_trainer_hook_builds_configured_optimizer(tmp_path, kind, cls):
    from ugt_hf.spec.config import TrainingConfig

    args = TrainingConfig(output_dir=str(tmp_path), fp16=False, optimizer_type=kind, learning_rate=2e-3,
                          weight_decay=0.05, report_to="none", warmup_steps=0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = _HookTrainer(model=model, args=args).create_optimizer()
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == 2e-3
    # HF 自己分组：Linear 权重衰减，偏置与 LayerNorm 不衰减
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert decay == {id(model[0].weight)}
