"""UGT 模型：形状、无泄漏、padding 不变性、MoE 辅助损失、打分一致性、保存/加载、骨干与头的拆分、物品头。"""

import hashlib
import math

import pytest
import torch
from torch import nn
from transformers import AutoModel

from ugt_hf.auto import register
from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.interfaces import IGNORE_INDEX, check_model_output
from ugt_hf.loss_utils import ntp_loss
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation, UGTModel, load_balancing_loss

V = [8, 12, 16]


def tiny(**kw):
    args = dict(vocab_sizes=V, d_model=32, num_heads=4, ffn_dim=48, num_encoder_layers=2, num_decoder_layers=2,
                num_experts=4, num_experts_per_tok=2, dropout=0.0, max_position_embeddings=32)
    args.update(kw)
    return UGTForGenerativeRecommendation(UGTConfig(**args)).eval()


def rand_ids(b, t, gen=None):
    return torch.stack([torch.randint(0, v, (b, t), generator=gen) for v in V], -1)


def batch(b=3, te=6, td=4):
    return dict(encoder_semantic_ids=rand_ids(b, te), decoder_semantic_ids=rand_ids(b, td), labels=rand_ids(b, td))


def test_shapes_and_contract():
    m = tiny()
    x = batch()
    out = m(**x)
    check_model_output(out, 3, 4)
    assert out.l1_logits.shape == (3, 4, V[0]) and out.l2_logits.shape == (3, 4, V[1])
    assert out.l3_logits.shape == (3, 4, V[2])
    assert out.user_repr.shape == (3, 32) and out.item_repr.shape == (3, 32)
    assert out.loss.ndim == 0 and out.aux_loss.ndim == 0
    # 规格的列表形式输入与 [B, T, 3] 等价
    out2 = m(encoder_semantic_ids=list(x["encoder_semantic_ids"].unbind(-1)),
             decoder_semantic_ids=list(x["decoder_semantic_ids"].unbind(-1)), labels=list(x["labels"].unbind(-1)))
    assert torch.allclose(out.l3_logits, out2.l3_logits)
    # 无 labels（推理）：仍给出三层 logits，默认解码器 = [BOS]
    out3 = m(encoder_semantic_ids=x["encoder_semantic_ids"])
    check_model_output(out3, 3, 1)
    assert out3.loss is None and out3.item_repr is None


def test_no_leakage_from_later_decoder_positions():
    m = tiny()
    x = batch(td=5)
    base = m(**x)
    y = {k: v.clone() for k, v in x.items()}
    y["decoder_semantic_ids"][:, 3] = (y["decoder_semantic_ids"][:, 3] + 1) % torch.tensor(V)
    y["labels"][:, 3:] = (y["labels"][:, 3:] + 1) % torch.tensor(V)
    out = m(**y)
    for name in ("l1_logits", "l2_logits", "l3_logits"):
        a, b = getattr(base, name), getattr(out, name)
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6), name
        assert not torch.allclose(a[:, 3:], b[:, 3:]), name  # 后面的位置确实变了（测试能失败）


def test_encoder_padding_invariance_right_and_left():
    m = tiny()
    x = batch(te=5)
    base = m(**x)
    b = 3
    pad = torch.zeros(b, 3, 3, dtype=torch.long) + 5  # padding 位的 id 任意
    right = dict(x, encoder_semantic_ids=torch.cat([x["encoder_semantic_ids"], pad], 1),
                 encoder_attention_mask=torch.cat([torch.ones(b, 5), torch.zeros(b, 3)], 1).long(),
                 encoder_token_types=torch.cat([torch.ones(b, 5), torch.zeros(b, 3)], 1).long())
    out = m(**right)
    assert torch.allclose(base.l3_logits, out.l3_logits, atol=1e-5)
    assert torch.allclose(base.user_repr, out.user_repr, atol=1e-5)
    left = dict(x, encoder_semantic_ids=torch.cat([pad, x["encoder_semantic_ids"]], 1),
                encoder_attention_mask=torch.cat([torch.zeros(b, 3), torch.ones(b, 5)], 1).long(),
                encoder_token_types=torch.cat([torch.zeros(b, 3), torch.ones(b, 5)], 1).long(),
                encoder_positions=torch.cat([torch.zeros(b, 3), torch.arange(5).expand(b, 5)], 1).long())
    out = m(**left)
    assert torch.allclose(base.l3_logits, out.l3_logits, atol=1e-5)


def test_decoder_padding_invariance_and_aux_ignores_padding():
    m = tiny()
    x = batch(td=4)
    base = m(**x)
    b = 3
    ids = torch.cat([x["decoder_semantic_ids"], torch.full((b, 2, 3), 3)], 1)
    labels = torch.cat([x["labels"], torch.full((b, 2, 3), IGNORE_INDEX)], 1)
    mask = torch.cat([torch.ones(b, 4), torch.zeros(b, 2)], 1).long()
    types = mask.clone()
    types[:, 0] = 0
    out = m(encoder_semantic_ids=x["encoder_semantic_ids"], decoder_semantic_ids=ids, decoder_attention_mask=mask,
            decoder_token_types=types, labels=labels)
    assert torch.allclose(base.l2_logits, out.l2_logits[:, :4], atol=1e-5)
    assert torch.allclose(base.loss, out.loss, atol=1e-5)
    assert torch.allclose(base.aux_loss, out.aux_loss, atol=1e-5)
    assert torch.allclose(base.item_repr, out.item_repr, atol=1e-6)  # 目标 = 最后一个有效 label


def test_special_positions_ignore_ids():
    m = tiny()
    x = batch()
    base = m(**x)
    y = dict(x, decoder_semantic_ids=x["decoder_semantic_ids"].clone())
    y["decoder_semantic_ids"][:, 0] = torch.tensor([7, 11, 15])  # BOS 位（token_type 0）的 id 不影响结果
    assert torch.allclose(base.l1_logits, m(**y).l1_logits)


def test_load_balancing_loss_values():
    e, n = 4, 64
    uniform = torch.full((n, e), 1.0 / e)
    balanced = torch.arange(n).remainder(e).unsqueeze(1)
    assert load_balancing_loss(uniform, balanced, e).item() == pytest.approx(1.0)
    collapsed_p = torch.zeros(n, e)
    collapsed_p[:, 0] = 1.0
    assert load_balancing_loss(collapsed_p, torch.zeros(n, 1, dtype=torch.long), e).item() == pytest.approx(e)
    top2 = torch.tensor([[0, 1]]).expand(n, 2)
    p = torch.tensor([[0.6, 0.4, 0.0, 0.0]]).expand(n, e)
    assert load_balancing_loss(p, top2, e).item() == pytest.approx(e * 0.5)


class FixedRouter(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1).clone()


@pytest.mark.parametrize("k", [1, 2])
def test_model_aux_loss_uniform_is_minimal_collapsed_is_larger(k):
    m = tiny(num_experts=4, num_experts_per_tok=k)
    x = batch()
    for layer in m.decoder_layers:
        nn.init.zeros_(layer.ffn.router.weight)  # 均匀路由
    uniform = m(**x).aux_loss.item()
    assert uniform == pytest.approx(1.0, abs=1e-5)  # 均匀路由时取到最小值 1
    for layer in m.decoder_layers:
        layer.ffn.router = FixedRouter(torch.tensor([[10.0, 0.0, 0.0, 0.0]]))
    collapsed = m(**x).aux_loss.item()
    assert collapsed > uniform + 0.9


def test_dense_model_has_no_aux_loss_and_z_loss_adds():
    assert tiny(num_experts=1, num_experts_per_tok=1)(**batch()).aux_loss is None
    torch.manual_seed(0)
    a = tiny(router_z_loss_coef=0.0)
    torch.manual_seed(0)
    b = tiny(router_z_loss_coef=0.5)
    x = batch()
    oa, ob = a(**x), b(**x)
    assert ob.aux_loss.item() == pytest.approx(oa.aux_loss.item() + 0.5 * ob.router_z_loss.item(), rel=1e-5)


def test_score_items_matches_teacher_forced_forward():
    m = tiny()
    x = batch(b=2, td=1)
    items = rand_ids(2, 3)  # [B, M=3, 3]
    scores = m.score_items(items, encoder_semantic_ids=x["encoder_semantic_ids"])
    for j in range(3):
        out = m(encoder_semantic_ids=x["encoder_semantic_ids"], labels=items[:, j : j + 1])
        ref = sum(
            torch.log_softmax(getattr(out, f"l{i + 1}_logits")[:, 0], -1).gather(1, items[:, j, i : i + 1]).squeeze(1)
            for i in range(3)
        )
        assert torch.allclose(scores[:, j], ref, atol=1e-5)
    # [B, 3] 输入 -> [B]
    assert m.score_items(items[:, 0], encoder_semantic_ids=x["encoder_semantic_ids"]).shape == (2,)


def test_target_item_ids_and_bad_inputs():
    m = tiny()
    x = batch()
    last = x["labels"][:, -1]
    assert torch.allclose(m(**x).item_repr, m(**dict(x, target_item_ids=last)).item_repr)
    bad = x["encoder_semantic_ids"].clone()
    bad[0, 0, 2] = V[2]
    with pytest.raises(ValueError, match=r"encoder_semantic_ids\[\.\.\., 2\] \(L3\)"):
        m(**dict(x, encoder_semantic_ids=bad))
    with pytest.raises(ValueError, match="labels"):
        m(**dict(x, labels=x["labels"][:, :2]))
    with pytest.raises(ValueError, match=r"target_item_ids\[\.\.\., 0\] \(L1\) contains id"):
        m(**dict(x, target_item_ids=last.clamp(min=0) + torch.tensor([V[0], 0, 0])))
    with pytest.raises(ValueError, match="encoder_semantic_ids: sequence length is 0"):
        m(**dict(x, encoder_semantic_ids=x["encoder_semantic_ids"][:, :0], encoder_positions=None,
                 encoder_token_types=None, encoder_attention_mask=None))


def test_training_reduces_loss_and_router_gets_gradient():
    torch.manual_seed(0)
    m = tiny(num_experts_per_tok=1).train()
    x = batch(b=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(12):
        out = m(**x)
        loss = out.loss + 0.01 * out.aux_loss
        opt.zero_grad()
        loss.backward()
        assert m.decoder_layers[0].ffn.router.weight.grad.abs().sum() > 0
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first


def test_tied_weights_and_save_load_roundtrip(tmp_path):
    register()
    m = tiny()
    assert m.heads.out2.weight is m.embeddings.l2.weight
    assert "UGTDecoderLayer" in m._no_split_modules
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, UGTForGenerativeRecommendation)
    assert loaded.heads.out3.weight is loaded.embeddings.l3.weight
    x = batch()
    a, b = m(**x), loaded(**x)
    for name in ("l1_logits", "l2_logits", "l3_logits", "aux_loss", "user_repr", "item_repr", "loss"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_untied_heads_save_load(tmp_path):
    m = tiny(tie_word_embeddings=False)
    assert m.heads.out1.weight is not m.embeddings.l1.weight
    m.save_pretrained(tmp_path)
    loaded = UGTForGenerativeRecommendation.from_pretrained(tmp_path).eval()
    x = batch()
    assert torch.equal(m(**x).l3_logits, loaded(**x).l3_logits)


def test_recency_positions_hand_computed():
    from ugt_hf.modeling_ugt import recency_positions

    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.tensor([[2, 1, 0, 0, 0], [0, 0, 2, 1, 0], [0, 0, 0, 0, 0]])
    assert torch.equal(recency_positions(mask), expected)


def test_recency_mode_ignores_given_positions_and_matches_explicit_recency():
    torch.manual_seed(0)
    rec = tiny(encoder_position_mode="recency")
    ab = tiny()
    ab.load_state_dict(rec.state_dict())
    x = batch(te=5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    x = dict(x, encoder_attention_mask=mask, encoder_token_types=mask.clone())
    out = rec(**x)
    # 传入任意 encoder_positions 都不影响 recency 模式的结果
    shuffled = rec(**dict(x, encoder_positions=torch.randint(0, 30, (3, 5))))
    assert torch.equal(out.l3_logits, shuffled.l3_logits)
    # 与 absolute 模式下显式给出“最近 = 0”的位置完全一致
    explicit = torch.tensor([[4, 3, 2, 1, 0], [2, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert torch.allclose(out.l3_logits, ab(**dict(x, encoder_positions=explicit)).l3_logits, atol=1e-6)
    # 而 absolute 模式下默认位置（从开头数）结果不同：该选项确实改变了模型
    assert not torch.allclose(out.l3_logits, ab(**x).l3_logits)


def test_item_id_buckets_hash_and_roundtrip(tmp_path):
    from ugt_hf.modeling_ugt import item_hash

    # 规格最大词表下的极端三元组也在桶范围内（没有 int64 溢出成负数）
    extreme = torch.tensor([[1023, 4095, 16383], [0, 0, 0], [1023, 0, 16383]])
    h = item_hash(extreme, 65536)
    assert bool((h >= 0).all()) and bool((h < 65536).all())
    # 同一格子里相邻的 l3 落到不同的桶
    cell = torch.tensor([[5, 7, k] for k in range(16)])
    assert len(set(item_hash(cell, 4096).tolist())) == 16
    m = tiny(item_id_buckets=64)
    assert m.embeddings.item_id.weight.shape == (64, 32)
    x = batch()
    out = m(**x)
    out["loss"].backward()
    assert m.embeddings.item_id.weight.grad.abs().sum() > 0
    m.save_pretrained(tmp_path)
    loaded = UGTForGenerativeRecommendation.from_pretrained(tmp_path).eval()
    assert loaded.config.item_id_buckets == 64
    assert torch.equal(m.eval()(**x).l3_logits, loaded(**x).l3_logits)
    with pytest.raises(ValueError, match="item_id_buckets"):
        UGTConfig(vocab_sizes=V, item_id_buckets=-1)
    with pytest.raises(ValueError, match="encoder_position_mode"):
        UGTConfig(vocab_sizes=V, encoder_position_mode="reverse")


def test_node_embeddings_chunking_scoring_and_gradients():
    torch.manual_seed(0)
    m = tiny(node_embedding_buckets=97, node_embedding_dim=8)
    heads = m.heads
    assert heads.node2.weight.shape == (97, 8) and heads.node3.weight.shape == (97, 8)
    with torch.no_grad():  # 初始化很小；放大后节点项对 logits 的影响才明显，下面的“确实改变”断言才有意义
        heads.node2.weight.normal_(0, 1.0)
        heads.node3.weight.normal_(0, 1.0)
    q, prefix = torch.randn(5, 7, 8), torch.randint(0, 8, (5, 7, 2))
    whole = heads.node_scores(q, prefix, heads.node3, V[2])
    chunked = heads.node_scores(q, prefix, heads.node3, V[2], max_elements=V[2] * 8 * 3)  # 每块 3 行
    assert whole.shape == (5, 7, V[2]) and torch.allclose(whole, chunked, atol=1e-6)
    # 手算一个元素：query · E[hash(l1, l2, k)]
    from ugt_hf.modeling_ugt import item_hash

    k = 5
    idx = item_hash(torch.tensor([prefix[2, 3, 0], prefix[2, 3, 1], k]), 97)
    assert torch.allclose(whole[2, 3, k], q[2, 3] @ heads.node3.weight[idx], atol=1e-6)
    # 带节点项时，teacher forcing 的损失与 item_log_probs 打分一致
    x = batch(b=4, te=5, td=1)
    out = m(**x)
    states = m.prediction_states(encoder_semantic_ids=x["encoder_semantic_ids"],
                                 decoder_semantic_ids=x["decoder_semantic_ids"])
    lp = m.item_log_probs(states, x["labels"][:, 0])
    tf = sum(torch.log_softmax(lg[:, 0], -1).gather(1, x["labels"][:, 0, i : i + 1]).squeeze(1)
             for i, lg in enumerate((out.l1_logits, out.l2_logits, out.l3_logits)))  # [B]
    assert torch.allclose(tf, lp, atol=1e-5)
    # 节点项确实参与：清零后 l2/l3 logits 改变
    with torch.no_grad():
        saved = heads.node2.weight.clone()
        heads.node2.weight.zero_()
    assert not torch.allclose(m(**x).l2_logits, out.l2_logits)
    with torch.no_grad():
        heads.node2.weight.copy_(saved)
    m.train()
    m(**x).loss.backward()
    assert heads.node2.weight.grad.abs().sum() > 0 and heads.node_proj3.weight.grad.abs().sum() > 0


def test_bos_context_last_item_uses_last_valid_position_and_padding_invariant():
    torch.manual_seed(0)
    m = tiny(bos_context="last_item", encoder_position_mode="recency")
    plain = tiny(encoder_position_mode="recency")
    plain.load_state_dict(m.state_dict())
    x = batch(te=5)
    base = m(**x)
    assert not torch.allclose(base.l1_logits, plain(**x).l1_logits)  # 选项确实改变了 BOS 的输入
    b = 3
    pad = torch.full((b, 3, 3), 5)
    right = dict(x, encoder_semantic_ids=torch.cat([x["encoder_semantic_ids"], pad], 1),
                 encoder_attention_mask=torch.cat([torch.ones(b, 5), torch.zeros(b, 3)], 1).long(),
                 encoder_token_types=torch.cat([torch.ones(b, 5), torch.zeros(b, 3)], 1).long())
    # 右侧 padding 时取的是最后一个“有效”位置，而不是第 T-1 位
    assert torch.allclose(base.l3_logits, m(**right).l3_logits, atol=1e-5)
    with pytest.raises(ValueError, match="bos_context"):
        UGTConfig(vocab_sizes=V, bos_context="first")


def test_transition_hash_hand_computed_and_level_salt():
    from ugt_hf.modeling_ugt import item_hash, transition_hash

    prev, node = torch.tensor([3, 4, 5]), torch.tensor([2, 0, 0])
    hp = (3 * 1_299_709 + 4 * 1_951_237 + 5 * 786_433) % 1_000_003
    hn = (2 * 1_299_709) % 1_000_003
    assert int(transition_hash(prev, node, 1, 1 << 20)) == ((hp * 1_000_033 + hn) * 3 + 0) % (1 << 20)
    assert int(item_hash(prev, 1_000_003)) == hp
    # L1 节点 (2, 0, 0) 与 L2 节点 (2, 0) 路径相同，但层级不同，桶也不同
    assert int(transition_hash(prev, node, 1, 1 << 20)) != int(transition_hash(prev, node, 2, 1 << 20))
    # 没有前一个物品（-1）用单独的键，不与物品 (0, 0, 0) 相撞
    none = torch.tensor([-1, -1, -1])
    zero = torch.zeros(3, dtype=torch.long)
    assert int(transition_hash(none, node, 1, 1 << 20)) != int(transition_hash(zero, node, 1, 1 << 20))
    extreme = torch.tensor([1023, 4095, 16383])
    h = transition_hash(extreme, extreme, 3, 1 << 21)
    assert 0 <= int(h) < (1 << 21)


def test_transition_layout_default_round_trip_and_validation(tmp_path):
    """默认 "node"（已保存的配置没有这个字段时也是它）；"block" 保存后再读不变；块排法的桶数少于最大词表时报错。"""
    assert UGTConfig(vocab_sizes=V).transition_layout == "node"
    UGTConfig(vocab_sizes=V, transition_buckets=64, transition_layout="block").save_pretrained(tmp_path)
    assert UGTConfig.from_pretrained(tmp_path).transition_layout == "block"
    with pytest.raises(ValueError, match="transition_layout"):
        UGTConfig(vocab_sizes=V, transition_layout="rows")
    with pytest.raises(ValueError, match="transition_buckets .* largest vocab size"):
        UGTConfig(vocab_sizes=V, transition_buckets=10, transition_layout="block")
    assert UGTConfig(vocab_sizes=V, transition_buckets=10).transition_buckets == 10


def test_child_hashes_and_transition_bias_equal_the_per_triple_hash():
    """束搜索用的增量哈希（前缀部分 + 码字部分）与逐个三元组调用 item_hash / transition_hash 逐位相等，
    规格最大词表与不整除的桶数都试。"""
    from ugt_hf.modeling_ugt import UGTTransitionBias, child_hashes, item_hash, transition_hash

    gen = torch.Generator().manual_seed(0)
    for p, vocab, buckets in [(0, 1024, 65536), (1, 4096, 1 << 21), (2, 16384, 65536), (2, 128, 97)]:
        pre = torch.randint(0, 16384, (9, p), generator=gen)
        codes = torch.arange(vocab)
        triples = torch.cat([pre[:, None, :].expand(9, vocab, p), codes[None, :, None].expand(9, vocab, 1),
                             torch.zeros(9, vocab, 2 - p, dtype=torch.long)], -1)
        assert torch.equal(child_hashes(pre, vocab, buckets).long(), item_hash(triples, buckets))
    cases = [(nb, level, layout) for nb in (1009, 1 << 10) for level in (1, 2, 3) for layout in ("node", "block")]
    for nb, level, layout in cases:  # 2 的幂走按位与
        bias = UGTTransitionBias(UGTConfig(vocab_sizes=V, transition_buckets=nb, transition_scale=2.0,
                                           transition_layout=layout))
        with torch.no_grad():
            bias.table.weight.normal_(0, 1.0, generator=gen)
        prev = torch.randint(0, 8, (4, 5, 3), generator=gen)
        prev[0, :2] = -1  # 没有前一个物品的行
        pre = torch.randint(0, 8, (4, 5, level - 1), generator=gen)
        vocab = V[level - 1]
        codes = torch.arange(vocab)
        nodes = torch.cat([pre[..., None, :].expand(4, 5, vocab, level - 1), codes.expand(4, 5, vocab)[..., None],
                           codes.new_zeros(4, 5, vocab, 3 - level)], -1)
        key = transition_hash(prev[..., None, :], nodes, level, nb, layout=layout, vocab=vocab)
        want = 2.0 * bias.table.weight[:, 0][key]
        assert torch.equal(bias(prev, pre, vocab, level), want)
        if layout == "block":  # 同一父节点的子节点是一段连续的桶
            assert torch.equal(key - key[..., :1], codes.expand_as(key))


@pytest.mark.parametrize("layout", ["block", "node"])
def test_transition_bias_zero_init_previous_items_and_teacher_forcing(layout):
    from ugt_hf.modeling_ugt import transition_hash as _hash

    def transition_hash(prev, node, level, nb):
        return _hash(prev, node, level, nb, layout=layout, vocab=V[level - 1])

    torch.manual_seed(0)
    m = tiny(transition_buckets=1009, transition_scale=4.0, transition_layout=layout)
    plain = tiny()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("transition.")})
    table = m.transition.table.weight
    assert table.shape == (1009, 1) and float(table.detach().abs().sum()) == 0.0
    x = batch(b=3, te=5, td=3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]).bool()
    x["encoder_attention_mask"] = mask
    # 初值 0：与不带宽记忆项的同一模型逐位相同
    assert torch.allclose(m(**x).l3_logits, plain(**x).l3_logits, atol=1e-6)
    enc, dec = x["encoder_semantic_ids"], x["decoder_semantic_ids"]
    prev = m.prediction_previous_items(enc, mask)
    assert torch.equal(prev[0], enc[0, 2]) and torch.equal(prev[1], enc[1, 4]) and prev[2].tolist() == [-1, -1, -1]
    last = m.prediction_previous_items(enc, mask, dec, torch.ones(3, 3).bool(), position="last")
    assert torch.equal(last, dec[:, 2])
    # 手设一个桶：只有“前一个物品 = 该行的 BOS 键、L1 候选 = 2”的那个 logit 改变 scale * w
    key = int(transition_hash(enc[0, 2], torch.tensor([2, 0, 0]), 1, 1009))
    with torch.no_grad():
        m.transition.table.weight[key, 0] = 1.5
    diff = m(**x).l1_logits - plain(**x).l1_logits  # [B, Td, V1]
    assert abs(float(diff[0, 0, 2]) - 6.0) < 1e-5
    # 其余改变的位置（若有）只能是哈希撞到同一个桶的 (前一个物品, 候选)
    keys = m._previous_items_all(enc, mask, dec)  # [B, Td, 3]
    changed = (diff.abs() > 1e-6).nonzero().tolist()
    assert [0, 0, 2] in changed
    assert all(int(transition_hash(keys[b, t], torch.tensor([v, 0, 0]), 1, 1009)) == key for b, t, v in changed)
    # 第 t>0 位的键是解码器第 t 位的输入
    key_t = int(transition_hash(dec[1, 2], torch.tensor([1, 3, 0]), 2, 1009))
    with torch.no_grad():
        m.transition.table.weight.zero_()
        m.transition.table.weight[key_t, 0] = -2.0
    y = dict(x, labels=x["labels"].clone())
    y["labels"][1, 2, 0] = 1
    d2 = m(**y).l2_logits - plain(**y).l2_logits
    assert abs(float(d2[1, 2, 3]) + 8.0) < 1e-5
    # 训练时只有用到的桶拿到梯度
    m.train()
    m(**x).loss.backward()
    g = m.transition.table.weight.grad[:, 0]
    assert 0 < int((g != 0).sum()) < 1009


def test_transition_scores_beam_exhaustive_and_missing_previous_items():
    from ugt_hf.generation import ItemCatalogue, recommend

    torch.manual_seed(1)
    m = tiny(transition_buckets=257, item_id_buckets=64, bos_context="last_item")
    with torch.no_grad():
        m.transition.table.weight.normal_(0, 1.0)
    x = batch(b=4, te=5, td=1)
    enc = {"encoder_semantic_ids": x["encoder_semantic_ids"]}
    cat = ItemCatalogue(torch.stack([torch.randint(0, v, (60,)) for v in V], 1).unique(dim=0), vocab_sizes=V)
    beam = recommend(m, enc, cat, top_k=5, num_beams=200)
    exact = recommend(m, enc, cat, top_k=5, method="exhaustive")
    assert torch.equal(beam.item_indices, exact.item_indices)
    scored = m.score_items(cat.triples[beam.item_indices], **enc)
    assert torch.allclose(scored, beam.scores, atol=1e-5)
    # 宽记忆项确实参与打分：表清零后同样的物品分数改变
    with torch.no_grad():
        m.transition.table.weight.zero_()
    assert not torch.allclose(m.score_items(cat.triples[beam.item_indices], **enc), scored, atol=1e-3)
    # 开了宽记忆项却不给 previous_items：报错，而不是悄悄换一套分数
    states = m.prediction_states(**enc)
    with pytest.raises(ValueError, match="previous_items"):
        m.item_log_probs(states, cat.triples[beam.item_indices])
    with pytest.raises(ValueError, match="transition_buckets"):
        UGTConfig(vocab_sizes=V, transition_buckets=-1)
    with pytest.raises(ValueError, match="transition_scale"):
        UGTConfig(vocab_sizes=V, transition_scale=0.0)


# ---------------------------------------------------------------- 骨干 / 头的拆分
# 拆分前（commit d218ce9）的代码在同一种子下初始化出的 state_dict 的 sha256（键名 + 原始字节，按键排序）。
# 拆分保持子模块的创建与注册顺序，所以随机初始化逐位不变（质量基准可复现）。
_INIT_SHA256 = {
    "default": ("cc58cc8c658682ecc4b6308116f778f9aeeca13057e208e52dcd17b4e05bb9b9", {}),
    "dense": ("acd387efec900b02df2cd1d46d993506f9468a5bdb549c13a247ce4c19caf7c3",
              dict(num_experts=1, num_experts_per_tok=1)),
    "rich": ("40cfcabc766ae92a56b88c25722bdf014888a5bc0d8bc915409983f75632b34f",
             dict(item_id_buckets=97, node_embedding_buckets=53, node_embedding_dim=8, transition_buckets=101,
                  bos_context="last_item", tie_word_embeddings=False, router_z_loss_coef=0.01)),
}


def _init_digest(**kw):
    torch.manual_seed(123)
    cfg = UGTConfig(vocab_sizes=[8, 9, 10], d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
                    ffn_dim=32, **kw)
    sd = UGTForGenerativeRecommendation(cfg).state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(_INIT_SHA256))
def test_fixed_seed_init_is_bit_identical_to_the_pre_split_model(name):
    expected, kw = _INIT_SHA256[name]
    assert _init_digest(**kw) == expected


def test_backbone_loads_head_checkpoint_and_returns_decoder_states(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path)
    backbone = UGTModel.from_pretrained(tmp_path).eval()
    assert not hasattr(backbone, "heads")
    head_keys = {k for k in m.state_dict() if not k.startswith(("heads.", "transition.", "item_proj."))}
    assert set(backbone.state_dict()) == head_keys
    x = batch()
    out = backbone(**x)
    ref = m(**x)
    assert torch.equal(out.last_hidden_state, ref.decoder_hidden_states)
    assert torch.equal(out.moe_balance_loss, ref.moe_balance_loss)
    assert out.encoder_last_hidden_state.shape == (3, 6, 32)


def test_semantic_pad_id_is_independent_of_pad_token_id():
    m = tiny()
    enc = {"encoder_semantic_ids": rand_ids(2, 3)}
    a = m.prediction_states(**enc)
    m.config.pad_token_id = 17  # HF/TRL 写入 tokenizer 的 pad id：模型不读它
    assert torch.equal(m.prediction_states(**enc), a)
    assert m.config.semantic_pad_id == 0


# ---------------------------------------------------------------- 物品头（UGTConfig.num_items）
CAT = torch.tensor([[0, 0, 0], [1, 2, 3], [7, 11, 15], [3, 4, 5], [0, 0, 1], [2, 9, 9]])  # 物品 i = 第 i 行


def item_model(scoring="sum", weight=0.7, **kw):
    torch.manual_seed(0)
    m = tiny(num_items=len(CAT), item_loss_weight=weight, item_scoring=scoring, **kw)
    m.set_item_catalogue(CAT)
    with torch.no_grad():  # 随机的物品头（默认偏置为 0，这里给非零偏置以覆盖 + b）
        m.item_head.out.bias.normal_()
    return m


def item_batch(b=3, te=5, td=3):
    g = torch.Generator().manual_seed(1)
    labels = CAT[torch.randint(0, len(CAT), (b, td), generator=g)]
    labels[0, -1] = IGNORE_INDEX
    dec = torch.cat([torch.zeros(b, 1, 3, dtype=torch.long), labels[:, :-1].clamp(min=0)], 1)
    return dict(encoder_semantic_ids=CAT[torch.randint(0, len(CAT), (b, te), generator=g)],
                decoder_semantic_ids=dec, labels=labels)


def test_item_head_logits_and_loss_hand_computed():
    m = item_model()
    x = item_batch()
    out = m(**x)
    h = out.decoder_hidden_states
    w, b = m.item_head.out.weight, m.item_head.out.bias
    assert torch.allclose(out.item_logits, h @ w.T + b, atol=1e-6)
    # labels 的三元组 -> 物品下标（目录行号），padding 为 -100
    lookup = {tuple(t): i for i, t in enumerate(CAT.tolist())}
    expect = [[lookup[tuple(t)] if t[0] != IGNORE_INDEX else IGNORE_INDEX for t in row]
              for row in x["labels"].tolist()]
    assert out.item_labels.tolist() == expect
    # 损失 = 三层 NTP + 0.7 · 全目录交叉熵均值（逐行手算 lse − z_y）
    rows = [(out.item_logits[i, t].tolist(), y) for i, r in enumerate(expect) for t, y in enumerate(r) if y >= 0]
    item_ce = sum(math.log(sum(math.exp(v) for v in z)) - z[y] for z, y in rows) / len(rows)
    sem = ntp_loss(out.l1_logits, out.l2_logits, out.l3_logits, x["labels"])
    assert out.loss.item() == pytest.approx(sem.item() + 0.7 * item_ce, abs=1e-5)
    out.loss.backward()
    assert m.item_head.out.weight.grad.abs().sum() > 0
    # 元组输出多出 item_logits / item_labels 两项；没有 labels 时 item_labels 为 None
    assert m(encoder_semantic_ids=x["encoder_semantic_ids"]).item_labels is None


def test_return_loss_false_skips_only_the_loss():
    m = item_model()
    x = item_batch()
    full, bare = m(**x), m(**x, return_loss=False)
    assert full.loss is not None and bare.loss is None
    # 其余输出逐位相同：teacher forcing 照用 labels，item_labels 照给（训练器从这些自己组合损失）
    for name in ("l1_logits", "l2_logits", "l3_logits", "item_logits", "item_labels", "user_repr", "item_repr"):
        assert torch.equal(getattr(full, name), getattr(bare, name)), name


def test_item_head_off_changes_nothing_and_on_keeps_other_init():
    assert tiny().item_head is None and tiny()(**batch()).item_logits is None
    torch.manual_seed(5)
    off = tiny().state_dict()
    torch.manual_seed(5)
    on = tiny(num_items=4).state_dict()
    assert set(on) - set(off) == {"item_head.out.weight", "item_head.out.bias", "item_head.triples"}
    assert all(torch.equal(off[k], on[k]) for k in off)  # 物品头最后注册：其余参数的初始化不变


def test_item_scores_sum_and_item_only_flow_through_score_items():
    x = item_batch(td=1)
    enc = {"encoder_semantic_ids": x["encoder_semantic_ids"]}
    items = CAT[torch.tensor([[0, 2, 5], [1, 1, 3], [4, 0, 2]])]  # [B, M, 3]
    idx = torch.tensor([[0, 2, 5], [1, 1, 3], [4, 0, 2]])
    m = item_model("sum")
    states = m.prediction_states(**enc)
    lp_item = torch.log_softmax(m.item_head(states), -1).gather(1, idx)
    m.item_head = None  # 同一模型去掉物品头 = 纯语义分
    sem = m.item_log_probs(states, items)
    m = item_model("sum")
    assert torch.allclose(m.item_log_probs(states, items), sem + lp_item, atol=1e-5)
    assert torch.allclose(m.score_items(items, **enc), sem + lp_item, atol=1e-5)
    lp = m.level_log_probs(states, items)  # 物品项并在最后一列（DPO 按列求和）
    assert torch.allclose(lp.sum(-1), sem + lp_item, atol=1e-5)
    m = item_model("item")
    assert torch.allclose(m.score_items(items, **enc), lp_item, atol=1e-5)
    assert torch.equal(m.level_log_probs(states, items)[..., :2], torch.zeros(3, 3, 2))
    with pytest.raises(ValueError, match=r"item triple \[1, 1, 1\] is not in the item head's catalogue"):
        m.item_log_probs(states, torch.tensor([[1, 1, 1]] * 3))


def test_item_head_catalogue_is_saved_and_checked(tmp_path):
    m = item_model()
    x = item_batch()
    m.save_pretrained(tmp_path)
    loaded = UGTForGenerativeRecommendation.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.item_head.triples, CAT)  # 检查点自带目录
    a, b = m(**x), loaded(**x)
    assert torch.equal(a.item_logits, b.item_logits) and torch.equal(a.loss, b.loss)
    unset = tiny(num_items=len(CAT))
    with pytest.raises(ValueError, match="catalogue is not set"):
        unset(**x)
    with pytest.raises(ValueError, match=r"expected triples of shape \(6, 3\)"):
        unset.set_item_catalogue(CAT[:3])
    with pytest.raises(ValueError, match="duplicate"):
        unset.set_item_catalogue(torch.cat([CAT[:5], CAT[:1]]))
    with pytest.raises(ValueError, match=r"L3\) outside"):
        unset.set_item_catalogue(CAT + torch.tensor([0, 0, 10]))
    with pytest.raises(ValueError, match="no item head"):
        tiny().set_item_catalogue(CAT)
    bad = dict(x, labels=x["labels"].clone())
    bad["labels"][1, 0] = torch.tensor([1, 1, 1])
    with pytest.raises(ValueError, match=r"labels contain the triple \[1, 1, 1\]"):
        m(**bad)
    for field, value, msg in (("num_items", -1, "num_items"), ("item_scoring", "max", "item_scoring"),
                              ("item_loss_weight", -1.0, "item_loss_weight")):
        with pytest.raises(ValueError, match=msg):
            UGTConfig(vocab_sizes=V, **{field: value})


# ---------------------------------------------------------------------------
# push_to_hub：上传的 README.md 是本包的模型卡（不联网：HfApi 的调用换成记录上传内容的假实现）


class _FakeHub:
    """记下 push_to_hub 对 Hub 的调用；upload_folder 时把临时目录里的文件内容拷出来（调用返回后目录就删了）。"""

    def __init__(self, monkeypatch, remote_card=None):
        from huggingface_hub import HfApi

        self.calls, self.files, self.remote_card = [], {}, remote_card
        hub = self

        class _Url:
            def __init__(self, repo_id):
                self.repo_id = repo_id

        def create_repo(api, repo_id, **kw):
            hub.calls.append(("create_repo", repo_id, kw))
            return _Url(repo_id)

        def file_exists(api, repo_id, filename, **kw):
            return filename == "README.md" and hub.remote_card is not None

        def hf_hub_download(api, repo_id, filename, **kw):
            path = hub.tmp / "remote_README.md"
            path.write_text(hub.remote_card, encoding="utf-8")
            return str(path)

        def create_branch(api, **kw):
            hub.calls.append(("create_branch", kw))

        def upload_folder(api, *, repo_id, folder_path, **kw):
            import os

            hub.calls.append(("upload_folder", repo_id, kw))
            for name in os.listdir(folder_path):
                with open(os.path.join(folder_path, name), "rb") as f:
                    hub.files[name] = f.read()
            return "commit-info"

        def no_network(*a, **kw):
            raise AssertionError("push_to_hub must go through upload_folder")

        for name, fn in (("create_repo", create_repo), ("file_exists", file_exists),
                         ("hf_hub_download", hf_hub_download), ("create_branch", create_branch),
                         ("upload_folder", upload_folder), ("create_commit", no_network)):
            monkeypatch.setattr(HfApi, name, fn)

    def readme(self):
        return self.files["README.md"].decode("utf-8")


def test_push_to_hub_uploads_our_card_with_the_stage_metrics(tmp_path, monkeypatch):
    """从某阶段的 best_model 加载再 push：上传的是训练器写的那张卡（指标、数据、library_name、tags），
    标题与加载示例指向 repo id；不是 transformers 的模板卡。"""
    from ugt_hf.model_card import GENERATED_MARKER, read_front_matter, render_model_card

    hub = _FakeHub(monkeypatch)
    hub.tmp = tmp_path
    model = tiny()
    best = tmp_path / "stage2" / "best_model"
    card = render_model_card(model.config, metrics={"stage2": {"recall@10": 0.25, "ndcg@10": 0.125}},
                             baselines={"popularity": {"recall@10": 0.1}}, dataset="beauty",
                             model_name="best_model")
    model.save_pretrained(best, model_card=card)
    loaded = UGTForGenerativeRecommendation.from_pretrained(best)
    loaded.add_model_tags(["my-tag"])
    assert loaded.push_to_hub("owner/ugt-beauty", tags=["extra"], revision="v1") == "commit-info"
    assert ("create_repo", "owner/ugt-beauty", {"private": None, "token": None, "exist_ok": True}) in hub.calls
    assert ("create_branch", {"repo_id": "owner/ugt-beauty", "branch": "v1", "token": None,
                              "exist_ok": True}) in hub.calls
    upload = [c for c in hub.calls if c[0] == "upload_folder"]
    assert upload == [("upload_folder", "owner/ugt-beauty",
                       {"commit_message": "Upload model", "commit_description": None, "token": None,
                        "revision": "v1", "create_pr": False})]
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files)
    text = hub.readme()
    front = read_front_matter(text)
    assert front["library_name"] == "ugt-hf" and front["metrics"] == ["recall", "ndcg"]
    assert front["datasets"] == ["beauty"]
    assert {"recommendation", "semantic-ids", "my-tag", "extra"} <= set(front["tags"])
    assert front["model-index"][0]["name"] == "owner/ugt-beauty"
    assert front["model-index"][0]["results"][0]["metrics"][0] == {"type": "recall@10", "name": "recall@10",
                                                                    "value": 0.25}
    assert GENERATED_MARKER in text and "# owner/ugt-beauty\n" in text and "# best_model" not in text
    assert 'AutoModel.from_pretrained("owner/ugt-beauty")' in text and "path/to/checkpoint" not in text
    assert "| recall@10 | 0.2500 | 0.1000 |" in text and "import ugt_hf" in text
    assert "transformers model that has been pushed on the Hub" not in text  # HF 的模板卡


def test_push_to_hub_fresh_model_keeps_hand_written_hub_card_and_save_pretrained_push(tmp_path, monkeypatch):
    from ugt_hf.model_card import GENERATED_MARKER, read_front_matter

    hub = _FakeHub(monkeypatch)
    hub.tmp = tmp_path
    model = tiny()
    # 没有来源目录的卡：渲染默认卡（配置、语义 ID、加载方法），指向 repo id
    model.push_to_hub("owner/fresh")
    text = hub.readme()
    assert read_front_matter(text)["library_name"] == "ugt-hf" and GENERATED_MARKER in text
    assert 'AutoModel.from_pretrained("owner/fresh")' in text and "## Semantic IDs" in text
    # Hub 上已有手写的卡：保留，只并入 tags（与 HF 对已有卡的处理相同）
    hub.remote_card = "---\nlicense: mit\ntags: [mine]\n---\n# My hand-written card\n"
    model.push_to_hub("owner/fresh", tags=["extra"])
    text = hub.readme()
    assert "# My hand-written card" in text and GENERATED_MARKER not in text
    assert read_front_matter(text) == {"license": "mit", "tags": ["mine", "extra"], "library_name": "ugt-hf"}
    # 显式给出：Mapping 渲染（带指标），False 不传 README.md
    model.push_to_hub("owner/fresh", model_card={"metrics": {"recall@10": 0.5}, "stage": "eval"})
    assert read_front_matter(hub.readme())["metrics"] == ["recall"]
    hub.files.clear()
    model.push_to_hub("owner/fresh", model_card=False)
    assert "README.md" not in hub.files and "model.safetensors" in hub.files
    # save_pretrained(push_to_hub=True)：本地与上传的都是本包的卡（HF 的这条路径会换成模板卡）
    hub.remote_card, hub.files = None, {}
    out = tmp_path / "local"
    model.save_pretrained(out, push_to_hub=True, repo_id="owner/local", commit_message="first")
    assert GENERATED_MARKER in (out / "README.md").read_text(encoding="utf-8")
    assert [c for c in hub.calls if c[0] == "upload_folder"][-1][2]["commit_message"] == "first"
    assert "# owner/local\n" in hub.readme() and read_front_matter(hub.readme())["library_name"] == "ugt-hf"


def test_level_heads_broadcast_states_and_shared_prefixes():
    """states [N, 1, D] 广播到 [N, B] 个前缀、前缀 [1, U] 在用户间共享时，各层 logits 与逐行展开的计算相同。"""
    torch.manual_seed(0)
    m = tiny(node_embedding_buckets=97, node_embedding_dim=8, transition_buckets=1009)
    with torch.no_grad():
        for p in (m.heads.node2.weight, m.heads.node3.weight, m.transition.table.weight):
            p.normal_(0, 1.0)
    n, b = 4, 5
    s = torch.randn(n, 32)
    prev = torch.randint(0, 8, (n, b, 3))
    l1, l2 = torch.randint(0, V[0], (n, b)), torch.randint(0, V[1], (n, b))
    full = s[:, None].expand(n, b, 32)
    assert torch.allclose(m.level2_logits(s[:, None], l1, prev), m.level2_logits(full, l1, prev), atol=1e-5)
    assert torch.allclose(m.level3_logits(s[:, None], l1, l2, prev), m.level3_logits(full, l1, l2, prev), atol=1e-5)
    shared = torch.randint(0, V[0], (1, b))
    assert torch.allclose(m.level2_logits(s[:, None], shared, prev),
                          m.level2_logits(full, shared.expand(n, b), prev), atol=1e-5)
    # 分解后的条件化与“先拼接再过 MLP”相同
    e1 = m.embeddings.l1(l1)
    want = m.heads.norm2(full + m.heads.cond2(torch.cat([full, e1], -1)))
    assert torch.allclose(m.heads.conditioned(2, s[:, None], [l1], [m.embeddings.l1]), want, atol=1e-5)


def test_node_scores_grouped_by_repeated_prefix_equal_per_row():
    """行多、前缀重复多时（束搜索第 3 层）按前缀分组做 bmm；结果与梯度都与逐行 query · E[hash] 相同。"""
    from ugt_hf.modeling_ugt import UGTHierarchicalHeads, item_hash

    gen = torch.Generator().manual_seed(1)
    table = nn.Embedding(97, 8)
    pool = torch.randint(0, 16, (7, 2), generator=gen)
    sizes = [1, 2, 3, 5, 9, 40, 300]  # 各档组大小（补齐到 2 的幂）都出现
    prefix = torch.cat([pool[i].expand(n, 2) for i, n in enumerate(sizes)])[torch.randperm(sum(sizes), generator=gen)]
    q = torch.randn(len(prefix), 8, generator=gen, requires_grad=True)
    assert UGTHierarchicalHeads._grouped_node_scores(q, prefix, table, 16, 1 << 22) is not None  # 走分组路径
    got = UGTHierarchicalHeads.node_scores(q, prefix, table, 16, max_elements=16 * 8 * 4)  # 小块：组也分批
    codes = torch.arange(16)
    triples = torch.cat([prefix[:, None, :].expand(-1, 16, 2), codes[None, :, None].expand(len(prefix), 16, 1)], -1)
    want = (table(item_hash(triples, 97)) * q[:, None, :]).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)
    g_got = torch.autograd.grad(got.square().sum(), [q, table.weight])
    g_want = torch.autograd.grad(want.square().sum(), [q, table.weight])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_got, g_want))


def test_trainer_token_alignment_finds_nothing_to_change(monkeypatch):
    """HF Trainer 开训前把 tokenizer 的 pad id 对齐进 config 与 generation_config，不一致就警告一次
    （"tokenizer has new PAD/BOS/EOS tokens"）；模型的两个 config 都带着同一个 pad id，就没有可改的。"""
    import transformers.trainer_utils as tu

    if not hasattr(tu, "align_special_tokens"):
        pytest.skip("this transformers version has no align_special_tokens")
    said = []
    monkeypatch.setattr(tu.logger, "warning", lambda msg, *a, **k: said.append(msg))
    m = tiny(pad_token_id=7)

    class Tok:
        pad_token_id, bos_token_id, eos_token_id = 7, None, None

    tu.align_special_tokens(m, Tok())
    assert said == [] and m.generation_config.pad_token_id == 7 and m.config.pad_token_id == 7


def test_loading_a_saved_state_dict_misses_exactly_the_keys_ignored_on_save(tmp_path):
    """HF Trainer 加载最佳模型（strict=False）后：缺的键正好是 _keys_to_ignore_on_save 时只重新绑定，否则警告。
    绑定的输出头不单独存，所以缺的就是它们；不绑定时全部都存、什么也不缺。"""
    from safetensors.torch import load_file

    for tied in (True, False):
        m = tiny(tie_word_embeddings=tied)
        m.save_pretrained(tmp_path / str(tied))
        fresh = tiny(tie_word_embeddings=tied)
        result = fresh.load_state_dict(load_file(tmp_path / str(tied) / "model.safetensors"), strict=False)
        assert set(result.missing_keys) == set(fresh._keys_to_ignore_on_save or [])
        assert bool(result.missing_keys) == tied and not result.unexpected_keys
        assert torch.equal(fresh.heads.out3.weight, m.heads.out3.weight)


def test_ugt_dropout_is_bernoulli_keep_scaled_with_mask_gradient():
    from ugt_hf.modeling_ugt import UGTDropout

    torch.manual_seed(0)
    drop = UGTDropout(0.25)
    x = torch.randn(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    # 保留比例 ≈ 1 − p（10 万个元素，标准误约 0.0014），保留的元素乘 1/(1 − p)
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)  # 梯度 = 掩码 · 1/(1 − p)
    # 同一随机状态 -> 同一掩码（断点续训靠全局生成器的状态）
    torch.manual_seed(3)
    a = drop(x.detach())
    torch.manual_seed(3)
    assert torch.equal(a, drop(x.detach()))
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(UGTDropout(1.0)(x.detach()), torch.zeros_like(x))
    assert list(UGTDropout(0.1).state_dict()) == []
