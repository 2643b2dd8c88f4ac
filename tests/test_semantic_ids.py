"""semantic_ids：PPMI 只用给定序列、k-means 确定性、码本上限规则、冲突消解唯一、L1 共现比。"""

import numpy as np
import pytest
import torch

from ugt_hf.data.semantic_ids import (
    balanced_assign,
    collaborative_embeddings,
    cooccurrence_ppmi,
    effective_codebook_sizes,
    kmeans,
    l1_cooccurrence_ratio,
    nearest_centroids,
    randomized_svd,
    resolve_collisions,
    rq_kmeans,
)


def test_ppmi_uses_only_given_sequences():
    m = cooccurrence_ppmi([np.array([0, 1, 2]), np.array([0, 1])], num_items=4, window=2).to_dense()
    assert torch.equal(m > 0, (m > 0).T)  # 共现对称；上下文平滑使数值不完全对称
    assert m[0, 1] > 0 and m[3].abs().sum() == 0 and m.diagonal().abs().sum() == 0


def test_ppmi_equals_dense_formula():
    rng = np.random.default_rng(1)
    seqs = [rng.choice(12, rng.integers(2, 9)) for _ in range(40)]  # 含重复物品（自共现要丢掉）
    n, window, alpha = 12, 3, 0.75
    w = np.zeros((n, n))
    for s in seqs:
        for i in range(len(s)):
            for j in range(i + 1, min(len(s), i + window + 1)):
                if s[i] != s[j]:
                    w[s[i], s[j]] += 1.0 / (j - i)
                    w[s[j], s[i]] += 1.0 / (j - i)
    total, row = w.sum(), w.sum(1)
    ctx = row**alpha / (row**alpha).sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(w / total) - np.log(row[:, None] / total) - np.log(ctx[None, :])
    want = np.where((w > 0) & (pmi > 0), pmi, 0.0)
    got = cooccurrence_ppmi(seqs, n, window=window, alpha=alpha).to_dense().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_collaborative_embeddings_cluster_and_cold_items():
    rng = np.random.default_rng(0)
    # 两组物品 0..9 与 10..19，用户只在组内交互；物品 20 从未出现（冷启动）
    seqs = [rng.choice(10, 6) + 10 * (u % 2) for u in range(200)]
    emb, cold = collaborative_embeddings(seqs, 21, dim=8, window=3, seed=0)
    assert cold == 1 and emb.shape == (21, 8)
    assert torch.allclose(emb.norm(dim=1), torch.ones(21), atol=1e-5)
    sim = emb[:20] @ emb[:20].T
    within = (sim[:10, :10].mean() + sim[10:, 10:].mean()) / 2
    assert within > sim[:10, 10:].mean() + 0.5
    emb2, _ = collaborative_embeddings(seqs, 21, dim=8, window=3, seed=0)
    assert torch.equal(emb, emb2)


def test_randomized_svd_matches_svd_lowrank_and_exact():
    rng = np.random.default_rng(0)
    seqs = [rng.choice(40, 8) + 40 * (u % 3) for u in range(300)]
    m = cooccurrence_ppmi(seqs, 120, window=3)
    torch.manual_seed(5)
    u, s = randomized_svd(m, q=6, niter=6)
    torch.manual_seed(5)
    u_ref, s_ref, _ = torch.svd_lowrank(m.to_sparse_coo(), q=6, niter=6)  # 同一算法与随机投影，只是 COO 乘法
    assert torch.allclose(s, s_ref, rtol=1e-5) and torch.allclose((u * u_ref).sum(0).abs(), torch.ones(6), atol=1e-4)
    exact = torch.linalg.svdvals(m.to_dense())[:3]  # 前几个奇异值与精确 SVD 一致
    assert torch.allclose(s[:3], exact, rtol=1e-3)


def test_kmeans_deterministic_and_balanced():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(90, 2, generator=g) * 0.1, torch.randn(10, 2, generator=g) * 0.1 + 5])
    c1, a1 = kmeans(x, 2, seed=1)
    c2, a2 = kmeans(x, 2, seed=1)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    assert sorted(torch.bincount(a1).tolist()) == [10, 90]
    _, ab = kmeans(x, 2, seed=1, balanced=True)
    assert torch.bincount(ab).tolist() == [50, 50]
    out = balanced_assign(torch.tensor([[0.0, 1.0], [0.0, 5.0], [0.0, 0.1]]), capacity=2)
    assert out.tolist() == [0, 0, 1]  # 最“急”的点（次近距离差最大）先选


def test_codebook_cap_rule():
    assert effective_codebook_sizes(12101, [1024, 4096, 16384]) == [128, 128, 128]
    assert effective_codebook_sizes(1682, [1024, 4096, 16384]) == [64, 64, 64]
    assert effective_codebook_sizes(5, [1024, 2, 3]) == [4, 2, 3]
    with pytest.raises(ValueError):
        effective_codebook_sizes(10, [1, 2])


def test_resolve_collisions_unique_nearest_free():
    l1 = np.array([0, 0, 0, 1])
    l2 = np.array([0, 0, 0, 0])
    # 一维残差，质心在 0 与 1：平方距离 物品0 (.01, .81)、物品1 (.09, .49)、物品2 (4, 9)、物品3 (0, 1)
    residual = torch.tensor([[0.1], [0.3], [-2.0], [0.0]])
    centroids = torch.tensor([[0.0], [1.0]])
    l3, v3 = resolve_collisions(l1, l2, residual, centroids, max_v3=10)
    # 单元 (0,0)：物品 0 最近 -> 0；物品 1 的 0 被占 -> 1；物品 2 两个质心都被占 -> 编号 2（超出质心数）
    assert l3.tolist() == [0, 1, 2, 0] and v3 == 3
    with pytest.raises(ValueError, match="raise the third"):
        resolve_collisions(l1, l2, residual, centroids, max_v3=2)


def test_resolve_collisions_equals_dense_rule():
    # 稠密参考实现：全部 [N, K3] 距离、单元内按到最近质心的距离处理、每个物品取最近的空闲质心
    g = torch.Generator().manual_seed(3)
    n, k3 = 400, 8
    residual, centroids = torch.randn(n, 4, generator=g), torch.randn(k3, 4, generator=g)
    l1 = torch.randint(0, 3, (n,), generator=g).numpy()
    l2 = torch.randint(0, 4, (n,), generator=g).numpy()
    dist = ((residual[:, None, :] - centroids[None]) ** 2).sum(-1).numpy()
    want = np.empty(n, dtype=np.int64)
    for cell in set(zip(l1.tolist(), l2.tolist())):
        members = [i for i in range(n) if (l1[i], l2[i]) == cell]
        used, extra = set(), k3
        for i in sorted(members, key=lambda i: (dist[i].min(), i)):
            free = [c for c in np.argsort(dist[i], kind="stable").tolist() if c not in used]
            want[i] = free[0] if free else extra
            extra += 0 if free else 1
            used.add(int(want[i]))
    l3, v3 = resolve_collisions(l1, l2, residual, centroids, max_v3=n)
    assert np.array_equal(l3, want) and v3 == max(k3, max(np.bincount(l1 * 4 + l2)))


def test_nearest_centroids_equals_dense_argmin():
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(5000, 16, generator=g), torch.randn(64, 16, generator=g)
    dist, idx = nearest_centroids(x, c)
    ref = ((x[:, None, :] - c[None]) ** 2).sum(-1)  # [N, K]
    assert torch.equal(idx, ref.argmin(1)) and idx.dtype == torch.long
    assert torch.allclose(dist, ref.min(1).values, atol=1e-4)
    # 线程数只切分查询点：结果逐位相同（prepare 用全部核搜索，torch 仍是 1 线程）
    for threads in (1, 2):
        d_t, i_t = nearest_centroids(x, c, threads=threads)
        assert torch.equal(d_t, dist) and torch.equal(i_t, idx)


def test_kmeans_subsamples_large_inputs_and_assigns_all():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres[torch.arange(3000) % 3] + torch.randn(3000, 2, generator=g) * 0.1
    # 每个质心最多 50 个训练点 -> 只用 150 个点训练，仍要给全部 3000 个点分配、找回三个簇
    cent, assign = kmeans(x, 3, seed=0, max_points_per_centroid=50)
    assert assign.shape == (3000,)
    assert sorted(torch.bincount(assign).tolist()) == [1000, 1000, 1000]
    assert torch.cdist(centres, cent).min(1).values.max() < 0.1
    cent2, assign2 = kmeans(x, 3, seed=0, max_points_per_centroid=50)
    assert torch.equal(cent, cent2) and torch.equal(assign, assign2)
    full, _ = kmeans(x, 3, seed=0)  # 3000 <= 256·3：不抽样，质心是全部点的簇均值
    assert not torch.equal(full, cent)


def test_rq_kmeans_unique_triples_and_stats():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 8, generator=g)
    emb[:50] = emb[0]  # 50 个完全相同的嵌入必然冲突
    sid = rq_kmeans(emb, [1024, 4096, 16384], seed=0)
    assert len({tuple(r) for r in sid.codes.tolist()}) == 300
    assert sid.collisions["items_colliding_before"] >= 50 and sid.collisions["items_colliding_after"] == 0
    assert sid.kmeans_sizes == [32, 32, 32] and sid.vocab_sizes[2] >= 50
    for lvl in range(3):
        assert sid.codes[:, lvl].max() < sid.vocab_sizes[lvl]
    assert 0 < sid.utilisation["l1"] <= 1
    again = rq_kmeans(emb, [1024, 4096, 16384], seed=0)
    assert np.array_equal(sid.codes, again.codes)


def test_l1_cooccurrence_ratio_exact():
    l1 = np.array([0, 0, 1, 1])
    # 每个用户只看同一簇 -> 同 L1 对共现率 = 1（每对都在 1 个用户里），随机对 = 2/6
    r = l1_cooccurrence_ratio([np.array([0, 1]), np.array([2, 3])], l1)
    assert r["same_l1_rate"] == pytest.approx(1.0) and r["random_rate"] == pytest.approx(2 / 6)
    assert r["ratio"] == pytest.approx(3.0)


def test_l1_cooccurrence_ratio_equals_per_user_loop():
    """整体去重的实现与逐用户的定义逐位相同（重复消费、空序列、只有一个物品的序列）。"""
    rng = np.random.default_rng(3)
    l1 = rng.integers(0, 7, size=40)
    seqs = [rng.integers(0, 40, size=int(n)) for n in rng.integers(0, 30, size=60)] + [np.zeros(0, np.int64),
                                                                                         np.array([5, 5, 5])]
    same = rand = 0.0
    for s in seqs:
        u = np.unique(s)
        rand += len(u) * (len(u) - 1) / 2
        cnt = np.bincount(l1[u], minlength=7)
        same += float((cnt * (cnt - 1) / 2).sum())
    m = np.bincount(l1, minlength=7)
    same_rate, rand_rate = same / float((m * (m - 1) / 2).sum()), rand / (40 * 39 / 2)
    r = l1_cooccurrence_ratio(seqs, l1)
    assert r == {"ratio": same_rate / rand_rate, "same_l1_rate": same_rate, "random_rate": rand_rate}
