"""ugt_hf/spec/loss.py：UnifiedLoss 的三种构造方式与参数优先级；DPOLoss 的手算值。"""


import pytest
import torch
import torch.nn.functional as F
from _loss_fixtures import L1, L2, L3, ce, hand_level, logsig, small_inputs

from ugt_hf.interfaces import GenerativeRecOutput
from ugt_hf.spec.loss import DPOLoss, UnifiedLoss


class _Cfg:
    l1_loss_weight, l2_loss_weight, l3_loss_weight = 0.7, 0.2, 0.1
    lambda_contrastive, lambda_moe_balance = 0.0, 0.5
    dpo_beta = 0.3


def test_config_keywords_and_priority():
    fn = UnifiedLoss(_Cfg())
    assert fn.ntp_loss.weights == (0.7, 0.2, 0.1) and fn.lambda_moe_balance == 0.5 and fn.dpo_loss.beta == 0.3
    assert fn.lambda_preference == 0.1  # 配置里没有的字段取规格默认
    over = UnifiedLoss.from_config(_Cfg(), l1_weight=1.0, lambda_moe_balance=0.0)  # 显式关键字优先
    assert over.ntp_loss.weights == (1.0, 0.2, 0.1) and over.lambda_moe_balance == 0.0
    assert UnifiedLoss().ntp_loss.weights == (0.5, 0.3, 0.2)


def test_old_weight_names_and_conflicts():
    class Old:
        l1_weight, l2_weight, l3_weight = 1.0, 0.0, 0.0

    assert UnifiedLoss.from_config(Old()).ntp_loss.weights == (1.0, 0.0, 0.0)

    class Both(_Cfg):
        l1_weight = 0.9  # 与 l1_loss_weight=0.7 矛盾

    with pytest.raises(ValueError, match="conflicting values"):
        UnifiedLoss(Both())
    with pytest.raises(TypeError, match="pass the weights as keywords"):
        UnifiedLoss(0.5)


def test_dpo_loss_hand_computed():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-2.0])
    loss, m = DPOLoss(beta=0.5)(pc, pr, rc, rr)
    assert loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(0.5)).item(), abs=1e-6)
    assert m["dpo_accuracy"].item() == 1.0
    with pytest.raises(ValueError, match="required unless reference_free"):
        DPOLoss()(pc, pr)


# ---- 以下从 tests/test_losses.py 移来（DPOLoss / UnifiedLoss 现在住在 ugt_hf.spec.loss）----

def test_dpo_with_reference_hand_computed():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    loss, m = DPOLoss(beta=0.5)(pc, pr, rc, rr)
    # h = β[(π_c − ref_c) − (π_r − ref_r)] = 0.5·[(0.5) − (−1)] = 0.75；0.5·[0 − 1] = −0.5
    expected = -(logsig(0.75) + logsig(-0.5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["dpo_accuracy"].item() == 0.5
    assert m["dpo_chosen_reward"].item() == pytest.approx((0.25 + 0.0) / 2)
    assert m["dpo_rejected_reward"].item() == pytest.approx((-0.5 + 0.5) / 2)
    assert m["dpo_reward_margin"].item() == pytest.approx((0.75 - 0.5) / 2)


def test_dpo_reference_free_and_missing_refs():
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    loss, m = DPOLoss(beta=0.1, reference_free=True)(pc, pr, torch.tensor([5.0]), torch.tensor([-9.0]))
    assert loss.item() == pytest.approx(-logsig(0.1 * 2.0), abs=1e-6)  # 参考值被忽略
    assert m["dpo_accuracy"].item() == 1.0
    with pytest.raises(ValueError, match="reference_free"):
        DPOLoss()(pc, pr)
    smooth, _ = DPOLoss(beta=0.1, reference_free=True, label_smoothing=0.2)(pc, pr)
    assert smooth.item() == pytest.approx(-0.8 * logsig(0.2) - 0.2 * logsig(-0.2), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# 统一损失
# ---------------------------------------------------------------------------------------------------------------------


def test_unified_formula_hand_computed():
    l1, l2, l3, lab = small_inputs()
    u = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # 对比学习需要 B=2：把 NTP 输入复制一份（损失不变）
    out = GenerativeRecOutput(l1_logits=l1.repeat(2, 1, 1), l2_logits=l2.repeat(2, 1, 1),
                              l3_logits=l3.repeat(2, 1, 1), user_repr=u, item_repr=i)
    pref = {"chosen_logps": torch.tensor([-1.0]), "rejected_logps": torch.tensor([-3.0]),
            "reference_chosen_logps": torch.tensor([-1.0]), "reference_rejected_logps": torch.tensor([-2.0])}
    fn = UnifiedLoss(lambda_contrastive=0.1, lambda_preference=0.2, lambda_moe_balance=0.01,
                     contrastive_temperature=1.0, contrastive_normalize=False, dpo_beta=1.0)
    res = fn(out, lab.repeat(2, 1, 1), aux_loss=torch.tensor(2.0), preference=pref)
    ntp = 0.5 * hand_level(L1, 0) + 0.3 * hand_level(L2, 1) + 0.2 * hand_level(L3, 2)
    con = ((ce([1.0, 0.0], 0) + ce([2.0, 3.0], 1)) / 2 + (ce([1.0, 2.0], 0) + ce([0.0, 3.0], 1)) / 2) / 2
    dpo = -logsig(1.0)
    assert res["ntp_loss"].item() == pytest.approx(ntp, abs=1e-6)
    assert res["contrastive_loss"].item() == pytest.approx(con, abs=1e-6)
    assert res["dpo_loss"].item() == pytest.approx(dpo, abs=1e-6)
    assert res["moe_balance_loss"].item() == 2.0
    assert res["total_loss"].item() == pytest.approx(ntp + 0.1 * con + 0.2 * dpo + 0.01 * 2.0, abs=1e-6)
    res["total_loss"].backward()
    assert l1.grad is not None


def test_unified_skips_zero_lambda_terms_and_from_config():
    l1, l2, l3, lab = small_inputs()

    class Cfg:
        l1_weight, l2_weight, l3_weight = 1.0, 0.0, 0.0
        lambda_contrastive, lambda_preference, lambda_moe_balance = 0.0, 0.0, 0.5
        label_smoothing = 0.0
        dpo_beta = 0.3

    fn = UnifiedLoss.from_config(Cfg())
    assert fn.dpo_loss.beta == 0.3
    out = {"l1_logits": l1, "l2_logits": l2, "l3_logits": l3,
           "user_repr": torch.randn(1, 2), "item_repr": torch.randn(1, 2), "aux_loss": torch.tensor(0.4)}
    res = fn(out, {"l1": lab[..., 0], "l2": lab[..., 1], "l3": lab[..., 2]},
             preference={"chosen_logps": torch.tensor([0.0]), "rejected_logps": torch.tensor([0.0])})
    assert "contrastive_loss" not in res and "dpo_loss" not in res
    assert res["total_loss"].item() == pytest.approx(hand_level(L1, 0) + 0.5 * 0.4, abs=1e-6)
    with pytest.raises(ValueError, match="missing required field 'l3_logits'"):
        fn({"l1_logits": l1, "l2_logits": l2}, lab)
