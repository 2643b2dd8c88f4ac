"""损失测试共用的手算小例子（test_losses.py 与 test_spec_loss.py）。"""

import math

import torch

IGN = -100


def ce(z, y, eps=0.0):
    """手算一行交叉熵：(1−ε)(lse − z_y) + ε(lse − mean z)。"""
    lse = math.log(sum(math.exp(v) for v in z))
    return (1 - eps) * (lse - z[y]) + eps * (lse - sum(z) / len(z))


def logsig(x):
    return -math.log(1 + math.exp(-x))


# 小例子：B=1, T=3；第 3 个位置是 padding
L1 = [[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]]  # [1, 3, 2]
L2 = [[[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [0.0, 0.0, 0.0]]]  # [1, 3, 3]
L3 = [[[0.0, 3.0], [1.0, 1.0], [9.0, 0.0]]]  # [1, 3, 2]
LAB = [[[0, 2, 1], [0, 0, 1], [IGN, IGN, IGN]]]  # [1, 3, 3]


def small_inputs():
    return (torch.tensor(L1, requires_grad=True), torch.tensor(L2, requires_grad=True),
            torch.tensor(L3, requires_grad=True), torch.tensor(LAB))


def hand_level(logits, lab_idx, eps=0.0):
    rows = [(logits[0][t], LAB[0][t][lab_idx]) for t in range(3) if LAB[0][t][lab_idx] != IGN]
    return sum(ce(z, y, eps) for z, y in rows) / len(rows)
