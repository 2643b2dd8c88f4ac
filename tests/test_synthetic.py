"""synthetic：确定性、规模、评分分布，以及“会学习的模型”明显超过流行度基线。"""

import numpy as np
import pytest

from ugt_hf.data.artifacts import normalise
from ugt_hf.data.synthetic import SyntheticConfig, generate, generate_with_truth


def test_deterministic_and_sized():
    cfg = SyntheticConfig(num_users=50, num_items=80, events_per_user=10, num_clusters=5, seed=3)
    a, b = generate(cfg), generate(cfg)
    assert a.item.tolist() == b.item.tolist() and a.rating.tolist() == b.rating.tolist()
    c = generate(SyntheticConfig(num_users=50, num_items=80, events_per_user=10, num_clusters=5, seed=4))
    assert a.item.tolist() != c.item.tolist()
    assert len(set(a.user.tolist())) == 50
    assert 5 * 50 <= len(a) <= 15 * 50
    r = a.rating
    assert (r >= 4).mean() > 0.15 and (r <= 2).mean() > 0.15  # 既有 chosen 也有 rejected
    with pytest.raises(ValueError, match="num_clusters"):
        SyntheticConfig(num_items=5, num_clusters=6)


def test_truth_matches_the_sampled_data():
    """next_item_probs 是概率分布，每个观测到的转移概率都 > 0，且“落在第一个后继上”的频率与预测的概率在
    4 个标准误之内：隐变量描述的正是抽出这份数据的过程。"""
    cfg = SyntheticConfig(num_users=400, num_items=120, events_per_user=12, num_clusters=6, seed=1)
    inter, truth = generate_with_truth(cfg)
    assert truth.user_pref.shape == (400, 6) and truth.liked.shape == (400, 3)
    users = np.array([int(u[1:]) for u in inter.user])
    items = np.array([int(i[1:]) for i in inter.item])
    same = users[1:] == users[:-1]
    prev, nxt, who = items[:-1][same], items[1:][same], users[1:][same]
    probs = np.stack([truth.next_item_probs(a, u) for a, u in zip(prev, who)])  # [M, N]
    assert np.allclose(probs.sum(1), 1.0)
    assert (probs[np.arange(len(nxt)), nxt] > 0).all()
    first = truth.successors[prev, 0]
    predicted = probs[np.arange(len(first)), first]
    observed = (nxt == first).astype(float)
    se = np.sqrt((predicted * (1 - predicted)).sum()) / len(first)
    assert abs(observed.mean() - predicted.mean()) < 4 * se, (observed.mean(), predicted.mean(), se)
    # 评分高的簇就是用户偏好最大的 3 个簇
    assert (np.sort(truth.liked, 1) == np.sort(np.argsort(-truth.user_pref, 1)[:, :3], 1)).all()


def _recall_at_10(seqs, scorer):
    hits = 0
    for u in range(seqs.num_users):
        s = seqs.seq(u)
        hist, target = s[:-1], s[-1]
        hits += int(target in scorer(hist)[:10])
    return hits / seqs.num_users


def test_sequential_baseline_beats_popularity():
    seqs = normalise(generate(SyntheticConfig(num_users=600, num_items=300, events_per_user=15, seed=0)))
    n = seqs.num_items
    trans = np.zeros((n, n))
    pop = np.zeros(n)
    for u in range(seqs.num_users):
        s = seqs.seq(u)[:-2]  # 只用训练前缀统计
        np.add.at(trans, (s[:-1], s[1:]), 1)
        np.add.at(pop, s, 1)
    pop_rank = np.argsort(-pop, kind="stable")
    r_pop = _recall_at_10(seqs, lambda h: pop_rank)
    r_seq = _recall_at_10(seqs, lambda h: np.argsort(-(trans[h[-1]] + 1e-6 * pop), kind="stable"))
    assert r_seq > 2.0 * r_pop and r_seq - r_pop > 0.2, (r_seq, r_pop)


# ------------------------------------------------------------------------------------------- 长尾版本（规模基准用）
def test_long_tail_is_deterministic_and_long_tailed():
    from ugt_hf.data.synthetic import LongTailConfig, generate_long_tail

    cfg = LongTailConfig(num_users=3000, num_items=2000, mean_events=20, num_clusters=40, seed=1)
    a, b = generate_long_tail(cfg), generate_long_tail(cfg)
    assert a.item.tolist() == b.item.tolist() and a.timestamp.tolist() == b.timestamp.tolist()
    assert generate_long_tail(LongTailConfig(num_users=3000, num_items=2000, num_clusters=40, seed=2)).item.tolist() \
        != a.item.tolist()
    _, lengths = np.unique(a.user, return_counts=True)
    assert len(lengths) == 3000 and lengths.min() >= cfg.min_events and lengths.max() <= cfg.max_events
    assert abs(lengths.mean() - 20) < 2  # 均值如配置
    assert lengths.max() > 4 * np.median(lengths)  # 长尾：少数用户很长
    _, counts = np.unique(a.item, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[:20].sum() / counts.sum() > 0.15  # 1% 的物品占 15% 以上的交互
    # 时间戳在每个用户内递增（prepare 按时间排序，顺序结构不被打乱）
    same_user = a.user[1:] == a.user[:-1]
    assert same_user.sum() == len(a) - 3000 and (np.diff(a.timestamp)[same_user] > 0).all()
    r = a.rating
    assert (r >= 4).mean() > 0.1 and (r <= 2).mean() > 0.1


def test_long_tail_sequences_are_learnable():
    from ugt_hf.data.synthetic import LongTailConfig, generate_long_tail

    seqs = normalise(generate_long_tail(LongTailConfig(num_users=600, num_items=300, mean_events=15,
                                                       num_clusters=15, p_successor=0.6, seed=0)))
    n = seqs.num_items
    trans, pop = np.zeros((n, n)), np.zeros(n)
    for u in range(seqs.num_users):
        s = seqs.seq(u)[:-2]
        np.add.at(trans, (s[:-1], s[1:]), 1)
        np.add.at(pop, s, 1)
    pop_rank = np.argsort(-pop, kind="stable")
    r_pop = _recall_at_10(seqs, lambda h: pop_rank)
    r_seq = _recall_at_10(seqs, lambda h: np.argsort(-(trans[h[-1]] + 1e-6 * pop), kind="stable"))
    # 全局流行度本身就强（长尾），所以只要求明显高出，而不是 generate() 那样的 2 倍
    assert r_seq > 1.5 * r_pop and r_seq - r_pop > 0.2, (r_seq, r_pop)


def test_long_tail_config_checks_and_sizing():
    from ugt_hf.data.synthetic import LongTailConfig

    with pytest.raises(ValueError, match="min_events"):
        LongTailConfig(min_events=2)
    with pytest.raises(ValueError, match="num_clusters"):
        LongTailConfig(num_items=5, num_clusters=6)
    cfg = LongTailConfig.for_interactions(1_000_000, max_items=20_000)
    assert cfg.num_users == 50_000 and cfg.num_items == 20_000
    assert LongTailConfig.for_interactions(1_000_000).num_items == 62_500
