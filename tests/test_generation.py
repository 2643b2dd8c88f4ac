"""受约束束搜索：只出合法物品；足够宽的束 / 精确性证书成立时等于穷举 top-K；排除历史；任意解码位置；物品头。"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.generation import ItemCatalogue, beam_search, exhaustive_scores, exhaustive_topk, recommend
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

V = [16, 32, 64]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=V, d_model=32, num_heads=4, ffn_dim=48, num_experts=2,
                                                 num_experts_per_tok=1, dropout=0.0)).eval()
    with torch.no_grad():  # 放大输出头，让分布更尖锐（束搜索更难、更能暴露剪枝错误）
        for p in m.heads.parameters():
            p.mul_(8.0)
    return m


def random_catalogue(n, seed, vocab=V):
    g = np.random.default_rng(seed)
    # 不均匀的前缀分布：少数 L1 占多数物品
    l1 = np.minimum(g.geometric(0.3, size=4 * n) - 1, vocab[0] - 1)
    l2 = g.integers(0, vocab[1], 4 * n)
    l3 = g.integers(0, vocab[2], 4 * n)
    t = np.unique(np.stack([l1, l2, l3], 1), axis=0)
    t = t[g.permutation(len(t))[:n]]
    assert len(t) == n
    return ItemCatalogue(t, vocab)


def test_catalogue_tables_and_lookup():
    t = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 0], [3, 0, 0]])
    c = ItemCatalogue(t, [4, 4, 4])
    assert c.level1_values.tolist() == [0, 3]
    assert c.prefix2_l1.tolist() == [0, 0, 3] and c.prefix2_l2.tolist() == [1, 2, 0]
    # 二层前缀下的物品（CSR）：p2 = 0 -> 物品 0, 1；p2 = 1 -> 物品 2；p2 = 2 -> 物品 3
    assert c.children3_count.tolist() == [2, 1, 1] and c.children3_start.tolist() == [0, 2, 3]
    assert c.children3_items.tolist() == [0, 1, 2, 3]
    expect = torch.full((4, 4), -1)
    expect[0, 1], expect[0, 2], expect[3, 0] = 0, 1, 2
    assert torch.equal(c.prefix2_index(), expect)
    mask = c.prefix2_mask()  # 0 / -inf：加在分数上与 masked_fill 逐位相同
    assert mask.dtype == torch.float32 and torch.equal(mask == 0, expect >= 0)
    assert bool((mask[expect < 0] == float("-inf")).all())
    assert c.lookup(torch.tensor([[0, 2, 0], [3, 0, 0], [1, 1, 1], [9, 9, 9]])).tolist() == [2, 3, -1, -1]


@pytest.mark.parametrize(
    "triples, vocab, message",
    [
        ([[0, 1, 2], [0, 1, 2]], None, "items 0 and 1 share"),
        ([[0, 1, 5]], [2, 2, 4], "item_index 0 field l3=5"),
        ([[0, -1, 0]], None, "negative"),
    ],
)
def test_catalogue_rejects_bad_tables(triples, vocab, message):
    with pytest.raises(ValueError, match=message):
        ItemCatalogue(triples, vocab)


def test_from_parquet(tmp_path):
    path = tmp_path / "items.parquet"
    table = pa.table({"item_id": ["b", "a"], "item_index": [1, 0], "l1": [1, 0], "l2": [0, 0], "l3": [0, 1]})
    pq.write_table(table, path)
    c = ItemCatalogue.from_parquet(path)
    assert c.triples.tolist() == [[0, 0, 1], [1, 0, 0]]  # 行号 = item_index
    pq.write_table(pa.table({"item_index": [0], "l1": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet.*missing column"):
        ItemCatalogue.from_parquet(tmp_path / "bad.parquet")


def test_exhaustive_scores_match_model_item_log_probs(model):
    cat = random_catalogue(200, 1)
    states = torch.randn(4, 32)
    ex = exhaustive_scores(model, states, cat, max_elements=5000)  # 小块，覆盖分块路径
    ref = model.item_log_probs(states, cat.triples[None].expand(4, -1, -1))
    assert torch.allclose(ex, ref, atol=1e-5)
    assert (ex.exp().sum(1) <= 1 + 1e-5).all()  # 目录只是全体三元组的子集


@pytest.mark.parametrize("n_items, seed", [(50, 0), (400, 1), (2000, 2)])
def test_full_width_beam_equals_exhaustive(model, n_items, seed):
    cat = random_catalogue(n_items, seed)
    # 束宽 >= 每层合法前缀数：不剪枝，必然精确
    width = max(cat.level1_values.numel(), cat.prefix2_l1.numel())
    states = torch.randn(6, 32)
    # 第 2 层两条路都要覆盖：子节点表窄（50 个物品）时按表取，接近占满 L2 词表时在 [N, B1, V2] 上屏蔽
    assert (2 * cat.children2.shape[1] >= V[1]) == (n_items > 50)
    beam = beam_search(model, states, cat, num_beams=width, top_k=10)
    ex = exhaustive_topk(model, states, cat, top_k=10)
    assert torch.equal(beam.item_indices, ex.item_indices)
    assert torch.allclose(beam.scores, ex.scores, atol=1e-5)
    assert beam.exact.all()


@pytest.mark.parametrize("n_items, seed", [(300, 3), (2000, 4)])
def test_narrow_beam_returns_valid_items_and_certificate_is_sound(model, n_items, seed):
    cat = random_catalogue(n_items, seed)
    states = 30 * torch.randn(40, 32)  # 尖锐的分布：部分用户的证书成立
    ex_scores = exhaustive_scores(model, states, cat)
    ex = exhaustive_topk(model, states, cat, top_k=10)
    for beams in (10, 20):
        res = beam_search(model, states, cat, num_beams=beams, top_k=10)
        assert (res.item_indices >= 0).all()
        # 只出合法物品，分数就是该物品的真实 log p
        assert torch.equal(cat.lookup(res.triples), res.item_indices)
        assert torch.allclose(res.scores, ex_scores.gather(1, res.item_indices), atol=1e-5)
        assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
        # 证书成立的用户必须与穷举完全一致
        same = (res.item_indices == ex.item_indices).all(1)
        assert same[res.exact].all()
    assert res.exact.any()


def test_exclusion_and_short_catalogue(model):
    cat = random_catalogue(300, 5)
    states = torch.randn(5, 32)
    excl = [list(range(0, 300, 2))] * 5
    res = beam_search(model, states, cat, num_beams=400, top_k=10, exclude=excl)
    ex = exhaustive_topk(model, states, cat, top_k=10, exclude=excl)
    assert (res.item_indices % 2 == 1).all()
    assert torch.equal(res.item_indices, ex.item_indices)
    small = ItemCatalogue([[0, 0, 0], [0, 1, 0], [1, 0, 0]], V)
    res = beam_search(model, states, small, num_beams=10, top_k=5)
    assert (res.item_indices[:, 3:] == -1).all() and torch.isinf(res.scores[:, 3:]).all()
    assert sorted(res.item_indices[0, :3].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, states, cat, num_beams=5, top_k=10)


def test_recommend_from_batch_bos_and_arbitrary_position(model):
    cat = random_catalogue(300, 6)
    b = 3
    enc = cat.triples[torch.randint(0, 300, (b, 5))]
    dec = torch.cat([torch.zeros(b, 1, 3, dtype=torch.long), cat.triples[torch.randint(0, 300, (b, 3))]], 1)
    batch = {"encoder_semantic_ids": enc, "decoder_semantic_ids": dec}
    # 位置 2：等于直接取解码器第 2 位状态后的束搜索；与穷举一致（束够宽）
    r = recommend(model, batch, cat, top_k=5, num_beams=400, position=2)
    states = model.prediction_states(position=2, **batch)
    assert torch.equal(r.item_indices, exhaustive_topk(model, states, cat, top_k=5).item_indices)
    # BOS 位：只给编码器（评估样本约定）与显式 [BOS] 解码器结果相同
    r0 = recommend(model, {"encoder_semantic_ids": enc}, cat, top_k=5)
    r1 = recommend(model, dict(batch), cat, top_k=5, position=0)
    assert torch.equal(r0.item_indices, r1.item_indices)
    # 排除历史
    rh = recommend(model, {"encoder_semantic_ids": enc}, cat, top_k=5, num_beams=400, exclude_history=True)
    hist = cat.lookup(enc)
    for u in range(b):
        assert not set(rh.item_indices[u].tolist()) & set(hist[u].tolist())


# ---------------------------------------------------------------- 物品头（UGTConfig.num_items）
def item_head_model(cat, scoring="sum"):
    torch.manual_seed(0)
    m = UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=V, d_model=32, num_heads=4, ffn_dim=48, num_experts=2,
                                                 num_experts_per_tok=1, dropout=0.0, num_items=cat.num_items,
                                                 item_scoring=scoring)).eval()
    m.set_item_catalogue(cat.triples)
    with torch.no_grad():  # 尖锐的语义分布 + 与之不相关、同样尖锐的物品头：两项都影响排序
        for p in m.heads.parameters():
            p.mul_(8.0)
        m.item_head.out.weight.normal_(0, 1.0)
        m.item_head.out.bias.normal_(0, 2.0)
    return m


@pytest.mark.parametrize("n_items, seed", [(60, 7), (800, 8)])
def test_item_head_sum_beam_equals_exhaustive_and_certificate_is_sound(n_items, seed):
    cat = random_catalogue(n_items, seed)
    m = item_head_model(cat)
    states = torch.randn(6, 32)
    ex_scores = exhaustive_scores(m, states, cat, max_elements=5000)
    # 穷举 = 逐物品的 log p_sem + log softmax_item（与 item_log_probs 同一个打分）
    assert torch.allclose(ex_scores, m.item_log_probs(states, cat.triples[None].expand(6, -1, -1)), atol=1e-5)
    plain = m.item_head
    m.item_head = None
    sem = exhaustive_scores(m, states, cat)
    m.item_head = plain
    assert torch.allclose(ex_scores, sem + torch.log_softmax(m.item_head(states), -1), atol=1e-5)
    width = max(cat.level1_values.numel(), cat.prefix2_l1.numel())
    beam = beam_search(m, states, cat, num_beams=width, top_k=10)
    ex = exhaustive_topk(m, states, cat, top_k=10)
    assert torch.equal(beam.item_indices, ex.item_indices) and beam.exact.all()
    assert torch.allclose(beam.scores, ex.scores, atol=1e-5)
    for beams in (10, 20):  # 窄束：分数是真实分数，证书成立的用户与穷举一致
        res = beam_search(m, states, cat, num_beams=beams, top_k=10)
        assert torch.allclose(res.scores, ex_scores.gather(1, res.item_indices), atol=1e-5)
        assert (res.item_indices == ex.item_indices).all(1)[res.exact].all()


def test_item_head_only_scoring_is_dense_and_exact():
    cat = random_catalogue(300, 9)
    m = item_head_model(cat, scoring="item")
    states = torch.randn(5, 32)
    lp = torch.log_softmax(m.item_head(states), -1)
    assert torch.allclose(exhaustive_scores(m, states, cat), lp, atol=1e-6)
    excl = [list(range(0, 300, 3))] * 5
    res = beam_search(m, states, cat, num_beams=10, top_k=10, exclude=excl)
    ref = lp.masked_fill(cat.exclusion_mask(excl, 5), float("-inf")).topk(10, dim=1)
    assert torch.equal(res.item_indices, ref.indices) and res.exact.all()
    batch = {"encoder_semantic_ids": cat.triples[torch.randint(0, 300, (5, 4))]}
    r = recommend(m, batch, cat, top_k=10, num_beams=10)
    with torch.no_grad():
        top = torch.log_softmax(m.item_head(m.prediction_states(**batch)), -1).topk(10, dim=1).indices
    assert torch.equal(r.item_indices, top)


def test_item_head_rejects_a_catalogue_that_does_not_match():
    cat = random_catalogue(100, 10)
    m = item_head_model(cat)
    states = torch.randn(2, 32)
    other = ItemCatalogue(cat.triples.flip(0), V)  # 同样的物品、不同的下标顺序
    for fn in (lambda: beam_search(m, states, other, num_beams=20, top_k=5),
               lambda: exhaustive_scores(m, states, other)):
        with pytest.raises(ValueError, match="does not match the item head's catalogue"):
            fn()


def test_beam_paths_with_node_vectors_and_transition_bias_score_true_log_p():
    """第 2 层有两条路：合法 L1 不多于 2 倍束宽时所有用户共用全部 L1 前缀（稠密），否则逐行按 beam 的 L1 算。
    带哈希节点向量与宽记忆项（两者都走广播）时，两条路给出的分数都必须是该物品真实的 log p。"""
    vocab = [64, 16, 16]
    torch.manual_seed(3)
    m = UGTForGenerativeRecommendation(UGTConfig(
        vocab_sizes=vocab, d_model=32, num_heads=4, ffn_dim=48, num_experts=2, num_experts_per_tok=1, dropout=0.0,
        node_embedding_buckets=257, node_embedding_dim=8, transition_buckets=1009, transition_scale=2.0)).eval()
    with torch.no_grad():
        for p in (m.heads.node2.weight, m.heads.node3.weight, m.transition.table.weight):
            p.normal_(0, 1.0)
    g = np.random.default_rng(5)
    t = np.unique(np.stack([g.integers(0, 64, 3000), g.integers(0, 16, 3000), g.integers(0, 16, 3000)], 1), axis=0)
    cat = ItemCatalogue(t[g.permutation(len(t))[:1500]], vocab)
    assert cat.level1_values.numel() > 2 * 20  # 束宽 10、20 走逐行路径，束宽 64 走共享路径
    states, prev = 3 * torch.randn(7, 32), cat.triples[torch.randint(0, 1500, (7,))]
    prev[0] = -1  # 没有前一个物品的用户
    ex_scores = exhaustive_scores(m, states, cat, previous_items=prev)
    assert torch.allclose(ex_scores, m.item_log_probs(states, cat.triples[None].expand(7, -1, -1), prev), atol=1e-5)
    for beams in (10, 20, 64):
        res = beam_search(m, states, cat, num_beams=beams, top_k=10, previous_items=prev)
        assert torch.allclose(res.scores, ex_scores.gather(1, res.item_indices), atol=1e-5)
    width = max(cat.level1_values.numel(), cat.prefix2_l1.numel())
    beam = beam_search(m, states, cat, num_beams=width, top_k=10, previous_items=prev)
    assert torch.equal(beam.item_indices, exhaustive_topk(m, states, cat, top_k=10, previous_items=prev).item_indices)
