"""losses.py / loss_utils.py 的测试：期望值用 math.log/exp 按公式手算（不调用 F.cross_entropy），
分块路径与朴素路径的损失和梯度逐一比较；NTP 的求和形式（ntp_loss_sums）与旧的均值形式逐位一致。"""

import math

import pytest
import torch
import torch.nn.functional as F
from _loss_fixtures import IGN, L1, L2, L3, ce, hand_level, small_inputs  # noqa: E402

from ugt_hf.loss_utils import chunked_cross_entropy, moe_aux_loss, ntp_loss, ntp_loss_sums, weighted_item_nll
from ugt_hf.spec.loss import NextTokenPredictionLoss  # 规格名：loss_utils.ntp_loss_sums 的外壳
from ugt_hf.training.losses import ContrastiveLoss, next_item_ntp_loss, softmax_dpo_loss


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [None, 1])
def test_ntp_level_weights_ignore_and_smoothing_hand_computed(eps, chunk_size):
    l1, l2, l3, lab = small_inputs()
    fn = NextTokenPredictionLoss(0.5, 0.3, 0.2, label_smoothing=eps, chunk_size=chunk_size)
    loss, m = fn(l1, l2, l3, lab[..., 0], lab[..., 1], lab[..., 2])
    e1, e2, e3 = hand_level(L1, 0, eps), hand_level(L2, 1, eps), hand_level(L3, 2, eps)
    assert loss.item() == pytest.approx(0.5 * e1 + 0.3 * e2 + 0.2 * e3, abs=1e-6)
    assert m["ntp_l1_loss"].item() == pytest.approx(e1, abs=1e-6)
    assert m["ntp_l2_loss"].item() == pytest.approx(e2, abs=1e-6)
    assert m["ntp_l3_loss"].item() == pytest.approx(e3, abs=1e-6)
    assert m["ntp_loss"].item() == pytest.approx(loss.item())
    # 准确率：L1 argmax = [0, 1] vs [0, 0] -> 1/2；L2 argmax = [2, 0] vs [2, 0] -> 1；
    # L3 argmax = [1, 0] vs [1, 1] -> 1/2
    assert m["ntp_l1_acc"].item() == pytest.approx(0.5)
    assert m["ntp_l2_acc"].item() == pytest.approx(1.0)
    assert m["ntp_l3_acc"].item() == pytest.approx(0.5)
    assert not m["ntp_loss"].requires_grad
    loss.backward()
    assert torch.all(l1.grad[0, 2] == 0)  # padding 位置没有梯度


def test_ntp_accepts_single_labels_tensor():
    l1, l2, l3, lab = small_inputs()
    fn = NextTokenPredictionLoss()
    a, _ = fn(l1, l2, l3, lab[..., 0], lab[..., 1], lab[..., 2])
    b, _ = fn(l1, l2, l3, lab)
    c, _ = fn(l1, l2, l3, labels=lab)
    assert a.item() == b.item() == c.item()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_ntp_all_labels_ignored_is_zero_with_grad(chunk_size):
    l1, l2, l3, _ = small_inputs()
    lab = torch.full((1, 3, 3), IGN)
    loss, m = NextTokenPredictionLoss(label_smoothing=0.1, chunk_size=chunk_size)(l1, l2, l3, lab)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert all(m[f"ntp_l{k}_acc"].item() == 0.0 for k in (1, 2, 3))
    loss.backward()
    assert l1.grad is not None and torch.all(l1.grad == 0)
    loss2, _ = NextTokenPredictionLoss()(l1, l2, l3, lab, num_items_in_batch=0)
    assert loss2.item() == 0.0


def test_ntp_batch_of_one_position():
    z1, z2, z3 = [[[1.0, -1.0]]], [[[0.0, 0.0, 2.0]]], [[[3.0, 1.0]]]
    lab = torch.tensor([[[1, 0, 0]]])
    loss, m = NextTokenPredictionLoss()(torch.tensor(z1), torch.tensor(z2), torch.tensor(z3), lab)
    expected = 0.5 * ce(z1[0][0], 1) + 0.3 * ce(z2[0][0], 0) + 0.2 * ce(z3[0][0], 0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["ntp_l1_acc"].item() == 0.0 and m["ntp_l3_acc"].item() == 1.0


def test_ntp_num_items_in_batch_two_halves_equal_full_batch():
    torch.manual_seed(1)
    b, t, v = 4, 5, 7
    logits = [torch.randn(b, t, v, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    lab = torch.randint(0, v, (b, t, 3))
    lab[0, 2:] = IGN  # 两个半批的有效标签数不同：前半 3+5，后半 5+5
    lab[1, 3:] = IGN
    fn = NextTokenPredictionLoss()
    full, _ = fn(*logits, lab)
    g_full = torch.autograd.grad(full, logits)
    n = lab.ne(IGN).sum()  # HF Trainer 的口径：[B, T, 3] 上三层合计
    halves = sum(fn(*[lg[s] for lg in logits], lab[s], num_items_in_batch=n)[0] for s in (slice(0, 2), slice(2, 4)))
    g_half = torch.autograd.grad(halves, logits)
    assert halves.item() == pytest.approx(full.item(), abs=1e-12)
    for a, c in zip(g_full, g_half):
        assert torch.allclose(a, c, atol=1e-12)
    # 反例：不给 num_items_in_batch 时两个半批的均值之和不等于全批（说明这个测试能失败）
    naive = sum(fn(*[lg[s] for lg in logits], lab[s])[0] for s in (slice(0, 2), slice(2, 4))) / 2
    assert abs(naive.item() - full.item()) > 1e-4


def test_ntp_sums_compose_to_the_mean_bit_for_bit_and_to_exact_accumulation():
    """sum / N：N = 本批位置数时与均值形式逐位相同；N = 全批位置数时两个半批之和 = 全批均值。"""
    torch.manual_seed(1)
    b, t, v = 4, 5, 7
    logits = [torch.randn(b, t, v, requires_grad=True) for _ in range(3)]
    lab = torch.randint(0, v, (b, t, 3))
    lab[0, 2:] = IGN
    lab[1, 3:] = IGN
    mean, metrics = NextTokenPredictionLoss(0.5, 0.3, 0.2)(*logits, lab)
    sums = ntp_loss_sums(*logits, lab, level_weights=(0.5, 0.3, 0.2))
    n = (lab[..., 0] != IGN).sum()
    assert int(sums.num_valid) == int(n) == 15
    assert torch.equal(sums.weighted(n.float()), mean)
    assert torch.equal(sums.weighted(), mean) and torch.equal(ntp_loss(*logits, lab), mean)
    assert torch.equal(sums.metrics()["ntp_l2_loss"], metrics["ntp_l2_loss"])
    halves = [ntp_loss_sums(*[lg[s] for lg in logits], lab[s]) for s in (slice(0, 2), slice(2, 4))]
    total = sum(h.weighted(n.float()) for h in halves)
    assert total.item() == pytest.approx(mean.item(), rel=1e-6)


def test_moe_aux_and_weighted_item_nll():
    class Cfg:
        router_aux_loss_coef, router_z_loss_coef = 2.0, 0.5

    assert moe_aux_loss(None, None, Cfg()) is None
    assert moe_aux_loss(torch.tensor(1.5), torch.tensor(4.0), Cfg()).item() == pytest.approx(2.0 * 1.5 + 0.5 * 4.0)
    lp = torch.tensor([[-1.0, -2.0, -3.0], [0.0, -1.0, 0.0]])
    assert weighted_item_nll(lp).tolist() == pytest.approx([0.5 + 0.6 + 0.6, 0.3])


def test_ntp_bad_labels_raise_clear_error():
    l1, l2, l3, lab = small_inputs()
    lab = lab.clone()
    lab[0, 0, 0] = 7  # V1 = 2
    with pytest.raises(ValueError, match="l1 labels: label 7 at row 0"):
        NextTokenPredictionLoss()(l1, l2, l3, lab)
    with pytest.raises(ValueError, match="chunked_cross_entropy: label 7"):
        NextTokenPredictionLoss(chunk_size=2)(l1, l2, l3, lab)
    with pytest.raises(ValueError, match=r"labels must be \[B, T, 3\]"):
        NextTokenPredictionLoss()(l1, l2, l3, lab[..., :2])


# ---------------------------------------------------------------------------------------------------------------------
# 分块交叉熵 vs 朴素路径
# ---------------------------------------------------------------------------------------------------------------------


def _random_case(n=37, v=29, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = IGN  # 忽略若干行
    return (torch.randn(n, v, generator=g, dtype=torch.float64), labels,
            torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64),
            torch.randn(v, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [1, 8, 1000])
def test_chunked_cross_entropy_matches_plain(eps, reduction, chunk_size):
    x, y, *_ = _random_case()
    x1 = x.clone().requires_grad_()
    ref = F.cross_entropy(x1, y, ignore_index=IGN, label_smoothing=eps, reduction=reduction)
    (g_ref,) = torch.autograd.grad(ref, x1)
    x2 = x.clone().requires_grad_()
    out = chunked_cross_entropy(x2, y, chunk_size, label_smoothing=eps, reduction=reduction)
    (g,) = torch.autograd.grad(out * 3.0, x2)  # 非 1 的上游梯度
    assert abs(out.item() - ref.item()) < 1e-5
    assert torch.allclose(g, 3.0 * g_ref, atol=1e-10)


def test_chunked_cross_entropy_float32_and_inplace_backward():
    x, y, *_ = _random_case(n=64, v=300)
    x = x.float()
    a = x.clone().requires_grad_()
    ref = F.cross_entropy(a, y, label_smoothing=0.1)
    ref.backward()
    # inplace_backward：logits 是中间结果（来自乘法），梯度写回它的存储
    leaf = x.clone().requires_grad_()
    mid = leaf * 1.0
    out = chunked_cross_entropy(mid, y, 16, label_smoothing=0.1, inplace_backward=True)
    out.backward()
    assert abs(out.item() - ref.item()) < 1e-5
    assert torch.allclose(leaf.grad, a.grad, atol=1e-6)


def test_gradcheck_tiny():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 3, IGN, 2, 1])
    assert torch.autograd.gradcheck(lambda t: chunked_cross_entropy(t, y, 2, label_smoothing=0.1), (x,))


def test_lean_paths_all_ignored_are_zero():
    x = torch.randn(4, 6, requires_grad=True)
    y = torch.full((4,), IGN)
    out = chunked_cross_entropy(x, y, 2)
    out.backward()
    assert out.item() == 0.0 and torch.all(x.grad == 0)


# ---------------------------------------------------------------------------------------------------------------------
# 对比学习、DPO
# ---------------------------------------------------------------------------------------------------------------------


def test_infonce_2x2_hand_computed():
    # 未归一化、τ = 1：sim = U·Iᵀ = [[1, 0], [2, 3]]
    u = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, m = ContrastiveLoss(temperature=1.0, normalize=False)(u, i)
    # u2i：行 [1, 0] 目标 0，行 [2, 3] 目标 1；i2u：列 [1, 2] 目标 0，列 [0, 3] 目标 1
    u2i = (ce([1.0, 0.0], 0) + ce([2.0, 3.0], 1)) / 2
    i2u = (ce([1.0, 2.0], 0) + ce([0.0, 3.0], 1)) / 2
    assert loss.item() == pytest.approx((u2i + i2u) / 2, abs=1e-6)
    assert m["contrastive_u2i_acc"].item() == 1.0  # 两行的 argmax 都在对角线
    assert m["contrastive_i2u_acc"].item() == 0.5  # 第 0 列的 argmax 是用户 1


def test_infonce_temperature_and_normalize():
    u = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    i = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    loss, _ = ContrastiveLoss(temperature=0.5, normalize=True)(u, i)
    r = 1 / math.sqrt(2)
    sim = [[r / 0.5, 0.0], [r / 0.5, 1.0 / 0.5]]  # 归一化后的余弦 / τ
    u2i = (ce(sim[0], 0) + ce(sim[1], 1)) / 2
    i2u = (ce([sim[0][0], sim[1][0]], 0) + ce([sim[0][1], sim[1][1]], 1)) / 2
    assert loss.item() == pytest.approx((u2i + i2u) / 2, abs=1e-6)


def test_infonce_masks_duplicate_items():
    u = torch.tensor([[1.0, 0.0], [2.0, 3.0], [0.0, 1.0]])
    i = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 用户 0 和 1 的目标是同一物品 7
    loss, _ = ContrastiveLoss(temperature=1.0, normalize=False)(u, i, item_ids=torch.tensor([7, 7, 9]))
    # sim = [[1, 1, 0], [2, 2, 3], [0, 0, 1]]；(0,1) 与 (1,0) 被屏蔽
    u2i = (ce([1.0, 0.0], 0) + ce([2.0, 3.0], 0) + ce([0.0, 0.0, 1.0], 2)) / 3
    i2u = (ce([1.0, 0.0], 0) + ce([2.0, 0.0], 0) + ce([0.0, 3.0, 1.0], 2)) / 3
    assert loss.item() == pytest.approx((u2i + i2u) / 2, abs=1e-6)
    unmasked, _ = ContrastiveLoss(temperature=1.0, normalize=False)(u, i)
    assert abs(unmasked.item() - loss.item()) > 1e-3


def test_infonce_batch_of_one():
    loss, m = ContrastiveLoss()(torch.randn(1, 4, requires_grad=True), torch.randn(1, 4))
    assert loss.item() == 0.0
    assert m["contrastive_u2i_acc"].item() == 1.0 and m["contrastive_i2u_acc"].item() == 1.0


def test_ntp_sums_item_head_term_hand_computed_and_off_is_unchanged():
    l1, l2, l3, lab = small_inputs()
    item_logits = torch.tensor([[[0.0, 1.0, 2.0, 0.5], [3.0, 0.0, 0.0, 1.0], [7.0, 7.0, 7.0, 7.0]]],
                               requires_grad=True)  # [1, 3, N=4]
    item_labels = torch.tensor([[1, 0, IGN]])
    off = ntp_loss_sums(l1, l2, l3, lab)
    on = ntp_loss_sums(l1, l2, l3, lab, item_logits=item_logits, item_labels=item_labels, item_weight=0.5)
    e_item = (ce([0.0, 1.0, 2.0, 0.5], 1) + ce([3.0, 0.0, 0.0, 1.0], 0)) / 2
    assert on.item_loss().item() == pytest.approx(e_item, abs=1e-6)
    assert on.weighted().item() == pytest.approx(off.weighted().item() + 0.5 * e_item, abs=1e-6)
    n = torch.tensor(5.0)  # 梯度累积：同一个除数 N
    assert on.weighted(n).item() == pytest.approx(off.weighted(n).item() + 0.5 * 2 * e_item / 5, abs=1e-6)
    m = on.metrics()
    assert m["ntp_item_loss"].item() == pytest.approx(e_item, abs=1e-6)
    assert m["ntp_item_acc"].item() == pytest.approx(0.5)  # argmax [2, 0] vs 标签 [1, 0]
    assert off.item_sum is None and "ntp_item_loss" not in off.metrics()
    assert torch.equal(ntp_loss(l1, l2, l3, lab), off.weighted())
    chunked = ntp_loss_sums(l1, l2, l3, lab, item_logits=item_logits, item_labels=item_labels, item_weight=0.5,
                            chunk_size=1)
    assert chunked.weighted().item() == pytest.approx(on.weighted().item(), abs=1e-6)
    on.weighted().backward()
    assert torch.all(item_logits.grad[0, 2] == 0)  # padding 位置没有梯度
    with pytest.raises(ValueError, match="ignore_index exactly where labels are"):
        ntp_loss_sums(l1, l2, l3, lab, item_logits=item_logits, item_labels=torch.tensor([[1, IGN, IGN]]))
    with pytest.raises(ValueError, match="given together"):
        ntp_loss_sums(l1, l2, l3, lab, item_logits=item_logits)


def test_softmax_dpo_one_positive_three_negatives_hand_computed():
    # r_c = 0.5，三个负样本 r = 0.2 / -0.3 / 0.9：L = log(1 + Σ_j e^{r_j − r_c})（= −log σ(−log Σ e^{r_j − r_c})）
    chosen = torch.tensor([0.5])
    rejected = torch.tensor([[0.2], [-0.3], [0.9]])
    expected = math.log(1 + math.exp(-0.3) + math.exp(-0.8) + math.exp(0.4))
    assert softmax_dpo_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    # K = 1 就是 DPO 的 sigmoid 损失
    c, r = torch.tensor([0.3, -1.0]), torch.tensor([[0.1, 0.4]])
    assert softmax_dpo_loss(c, r).item() == pytest.approx(float(-F.logsigmoid(c - r[0]).mean()), abs=1e-6)
    with pytest.raises(ValueError, match=r"\[K, B\]"):
        softmax_dpo_loss(c, torch.zeros(3))


def test_next_item_ntp_loss_is_the_stage_1_objective():
    *logits, lab = small_inputs()
    out = {"l1_logits": logits[0], "l2_logits": logits[1], "l3_logits": logits[2]}
    loss, comps = next_item_ntp_loss(out, lab, (0.5, 0.3, 0.2))
    expected = ntp_loss_sums(*logits, lab, level_weights=(0.5, 0.3, 0.2)).weighted()
    assert torch.equal(loss, expected)
    assert comps["ntp_loss"].item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="l2_logits"):
        next_item_ntp_loss({"l1_logits": logits[0]}, lab)


def test_argmax_hits_equals_argmax_with_ties_and_ignored_labels():
    # 整数值 logits 造出大量并列：并列时 argmax 取第一个下标，_argmax_hits 必须逐项相同；-100 的标签永远不算命中
    from ugt_hf.loss_utils import _argmax_hits

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n, v = int(torch.randint(1, 40, (), generator=g)), int(torch.randint(1, 9, (), generator=g))
        x = torch.randint(-2, 3, (n, v), generator=g).float()
        lab = torch.randint(0, v, (n,), generator=g)
        lab[torch.rand(n, generator=g) < 0.2] = IGN
        assert torch.equal(_argmax_hits(x, lab), x.argmax(-1) == lab)
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    assert _argmax_hits(x, torch.tensor([1, 1, IGN])).tolist() == [False, True, False]
