"""UGT 参考模型：编码器–解码器 Transformer + MoE 解码器 FFN + 层次化 L1/L2/L3 输出头。

与 transformers 的 T5 相同地分成骨干与带头的模型：
- `UGTModel`：嵌入 + 编码器 + 解码器，forward 返回解码器末层状态（`UGTModelOutput`）；
- `UGTForGenerativeRecommendation`：同一骨干（同名子模块，state_dict 键与拆分前相同）+ 层次化输出头、
  宽记忆项、物品投影与损失（`ugt_hf.loss_utils`）。两者的检查点互相可加载（多出/缺少的头部键按 HF 常规处理）。

- 输入嵌入 = L1/L2/L3 三个 ID 嵌入之和 + 位置嵌入 + token 类型嵌入；token_type 0（BOS/特殊/padding）
  位置不加 ID 嵌入，所以那里的 id 取什么都不影响结果（0 同时是合法码字，不能当 padding_idx 用）。
- 编码器：pre-norm、双向、按 padding 屏蔽；解码器：pre-norm、因果自注意力 + 交叉注意力，
  FFN 为 top-k 路由的 MoE（Switch/GShard 负载均衡损失 + 可选 router z-loss，作为 aux_loss 返回）。
  num_experts = 1 时为稠密 FFN，aux_loss 返回 None（契约：无 MoE 时为 None）。
- 输出头：log p(item) = log p(l1) + log p(l2 | l1) + log p(l3 | l1, l2)。L2 头看到解码器状态与 L1 的 ID 嵌入，
  L3 头再加上 L2 的嵌入；训练时用 labels 里的前缀（teacher forcing），推理时由束搜索
  （`generation.py`）调用 `level1_logits/level2_logits/level3_logits` 逐层给出前缀。
- 可选的物品头（`UGTConfig.num_items` > 0）：每个物品一个自由输出向量，对全目录 softmax（SASRec 的全量 CE）；
  物品分 = log p_sem(item) + log softmax_item(item)（item_scoring="sum"）或只用物品头（"item"）。
  目录三元组是持久 buffer（`set_item_catalogue`），检查点自带目录，labels 的三元组在模型内换成物品下标。
- 注意力统一用 `F.scaled_dot_product_attention`。

push_to_hub：用法与任何 HF 模型相同（`model.push_to_hub(repo)`、`tokenizer.push_to_hub(repo)`），
`import ugt_hf` 会注册 AutoConfig/AutoModel/AutoTokenizer，因此加载端无需 remote code。
`save_pretrained` 另写 README.md 模型卡（`ugt_hf.model_card`），写明加载前先 `import ugt_hf`；
`push_to_hub` 上传的也是这张卡（HF 的实现会换成 transformers 的通用模板卡，见 UGTPreTrainedModel.push_to_hub）。
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.interfaces import IGNORE_INDEX, SPECIAL_TOKEN_TYPE, GenerativeRecOutput
from ugt_hf.item_keys import pack_triples
from ugt_hf.loss_utils import load_balancing_loss, moe_aux_loss, ntp_loss, router_z_loss
from ugt_hf.model_card import (
    GENERATED_MARKER,
    LIBRARY_NAME,
    MODEL_CARD_FILE,
    add_tags,
    render_model_card,
    retarget_card,
    write_model_card,
)

IdsLike = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass
class UGTOutput(GenerativeRecOutput):
    """契约字段之外再给出：解码器末层状态（束搜索/DPO 打分用）与未加系数的 MoE 分项（日志用）。

    decoder_hidden_states: [B, Td, D]
    moe_balance_loss / router_z_loss: 标量（无 MoE 时为 None）
    item_logits: [B, Td, num_items] 物品头的 logits；item_labels: [B, Td] labels 对应的物品下标（-100 = 忽略）。
        没开物品头时都是 None（to_tuple() 跳过 None，元组输出与不开时相同）。
    """

    decoder_hidden_states: Optional[torch.Tensor] = None
    moe_balance_loss: Optional[torch.Tensor] = None
    router_z_loss: Optional[torch.Tensor] = None
    item_logits: Optional[torch.Tensor] = None
    item_labels: Optional[torch.Tensor] = None


@dataclass
class UGTModelOutput(ModelOutput):
    """骨干 `UGTModel` 的输出。

    last_hidden_state: [B, Td, D] 解码器末层状态；encoder_last_hidden_state: [B, Te, D]；
    encoder_attention_mask: bool [B, Te]；moe_balance_loss / router_z_loss: 标量（无 MoE 时为 None）
    """

    last_hidden_state: Optional[torch.Tensor] = None
    encoder_last_hidden_state: Optional[torch.Tensor] = None
    encoder_attention_mask: Optional[torch.Tensor] = None
    moe_balance_loss: Optional[torch.Tensor] = None
    router_z_loss: Optional[torch.Tensor] = None


# ---------------------------------------------------------------------------
# 输入整理
# ---------------------------------------------------------------------------


def stack_semantic_ids(ids: Optional[IdsLike], name: str) -> Optional[torch.Tensor]:
    """接受 [B, T, 3] 张量或规格的 3 个 [B, T] 张量组成的列表，统一成 [B, T, 3] long。"""
    if ids is None:
        return None
    if isinstance(ids, (list, tuple)):
        if len(ids) != 3:
            raise ValueError(f"{name}: expected a list of 3 tensors [B, T] (L1, L2, L3), got {len(ids)}")
        ids = torch.stack([torch.as_tensor(t) for t in ids], dim=-1)
    if ids.dim() != 3 or ids.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [B, T, 3], got {tuple(ids.shape)}")
    return ids.long()


_HASH_COEF = (1_299_709, 1_951_237, 786_433)


def item_hash(triples: torch.Tensor, buckets: int) -> torch.Tensor:
    """完整三元组 -> [0, buckets) 的桶号：[..., 3] -> [...]。

    三个大质数的线性组合再取模：同一 (l1, l2) 格子里相邻的 l3 不会落进相邻或相同的桶；系数都小于 2^21，
    在规格最大词表（1024/4096/16384）下也不会溢出 int64。
    """
    t = triples.long()
    a, b, c = _HASH_COEF
    return (t[..., 0] * a + t[..., 1] * b + t[..., 2] * c) % buckets


def child_hashes(prefix: torch.Tensor, vocab: int, buckets: int) -> torch.Tensor:
    """父节点 prefix 的每个子节点 (prefix, k, 0...) 的 item_hash，k = 0..vocab-1：[M, P] -> [M, vocab]
    （buckets < 2^30 时 int32，否则 int64）。

    与对补齐后的三元组调用 item_hash 逐位相等，但按 (前缀部分 + 码字部分) mod buckets 计算：
    不用展开 [M, vocab, 3] 的三元组，束搜索里给上万个前缀的全部子节点取哈希时省掉大部分整数运算。
    """
    pre = prefix.long()
    base = torch.zeros(pre.shape[0], dtype=torch.long, device=pre.device)
    for j in range(pre.shape[1]):
        base = base + pre[:, j] * _HASH_COEF[j]
    code = torch.arange(vocab, device=pre.device) * _HASH_COEF[pre.shape[1]] % buckets  # [vocab]
    # 两部分都已 < buckets：和 < 2·buckets，桶数 < 2^30 时 [M, vocab] 这一步用 int32（整数取模快一倍，嵌入/
    # index_select 都接受 int32 下标）
    dtype = torch.int32 if buckets < (1 << 30) else torch.long
    return _mod_((base % buckets).to(dtype)[:, None].add(code.to(dtype)[None]), buckets)  # [M, vocab]


def _mod_(x: torch.Tensor, buckets: int) -> torch.Tensor:
    """非负整数张量原地取模；桶数是 2 的幂时用按位与（与 remainder 相等，整数除法慢一倍多）。"""
    if buckets & (buckets - 1) == 0:
        return x.bitwise_and_(buckets - 1)
    return x.remainder_(buckets)


_CROSS_MOD = 1_000_003  # 交叉哈希里两侧各自先压到的范围（质数）；乘积 ~1e12，int64 不溢出
_TRANSITION_MUL = 1_000_033


def _previous_key(previous: torch.Tensor) -> torch.Tensor:
    """前一个物品 [..., 3] -> 哈希键 [...]；没有前一个物品（-1）单独一个键，不与物品 (0, 0, 0) 相撞。"""
    hp = item_hash(previous.clamp(min=0), _CROSS_MOD)
    return torch.where(previous[..., 0] >= 0, hp, torch.full_like(hp, _CROSS_MOD))


def transition_hash(previous: torch.Tensor, nodes: torch.Tensor, level: int, buckets: int,
                    layout: str = "node", vocab: Optional[int] = None) -> torch.Tensor:
    """(前一个物品, 候选节点, 层级) 交叉特征 -> [0, buckets) 的桶号（宽记忆项的定义；UGTTransitionBias 按它算）。

    previous: [..., 3]（没有前一个物品的行为 -1）；nodes: [..., 3] 节点路径，未到的层补 0。
    层级参与哈希：L1 节点 (k, 0, 0) 与 L2 节点 (k, 0) 的路径相同，不能共用一个偏置。
    layout "node"：每个节点单独哈希。"block"（需要 vocab = 该层词表大小）：块号 = 同一公式作用在父节点路径上、
    对 buckets // vocab 取模，桶号 = 块号·vocab + 节点在该层的码字——同一父节点的子节点在一个连续的块里。
    """
    hp = _previous_key(previous)
    if layout == "node":
        hn = item_hash(nodes, _CROSS_MOD)
        return ((hp * _TRANSITION_MUL + hn) * 3 + (level - 1)) % buckets
    if layout != "block" or vocab is None:
        raise ValueError("transition_hash: layout must be 'node', or 'block' with vocab given")
    parent = nodes.clone()
    parent[..., level - 1 :] = 0
    return _transition_block(hp, parent, level, buckets // vocab) * vocab + nodes[..., level - 1].long()


def _transition_block(hp: torch.Tensor, parent: torch.Tensor, level: int, blocks: int) -> torch.Tensor:
    """块排法的块号：前一物品的键 hp [...] 与父节点路径 parent [..., 3]（未到的层补 0）广播后 -> [...]。"""
    return ((hp * _TRANSITION_MUL + item_hash(parent, _CROSS_MOD)) * 3 + (level - 1)) % blocks


def recency_positions(mask: torch.Tensor) -> torch.Tensor:
    """有效位置的“距最近一个有效位置的步数”（最近 = 0，更早的依次 +1）；padding 位置为 0。mask: [B, T] -> [B, T]"""
    m = mask.long()
    return (m.sum(dim=1, keepdim=True) - m.cumsum(dim=1)) * m


# ---------------------------------------------------------------------------
# 模块
# ---------------------------------------------------------------------------


class _MaskedScale(torch.autograd.Function):
    """y = x · m / (1 − p)，m ~ Bernoulli(1 − p)；反向存 bool 掩码（与 torch 的 native_dropout 一样 1 字节/元素）。"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = torch.rand_like(x) >= p  # P(keep) = 1 − p
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return x * mask * ctx.scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None


class UGTDropout(nn.Dropout):
    """与 `nn.Dropout` 同分布、同接口（无参数，state_dict 不变）。CPU 上 torch 的 dropout 用逐元素的
    `bernoulli_` 生成掩码，在 Beauty 阶段 1 的一步里占 10–17%（bench_roofline，两台机器）；`rand_like` 再比较同一个全局
    生成器、同一分布，快约 3 倍。其他设备上 F.dropout 是融合核，直接用它。"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return _MaskedScale.apply(x, self.p)


class UGTEmbeddings(nn.Module):
    """三层 ID 嵌入（与物品表示、输出头共享）+ 位置 + token 类型。"""

    def __init__(self, config: UGTConfig):
        super().__init__()
        v1, v2, v3 = config.vocab_sizes
        self.l1 = nn.Embedding(v1, config.d_model)
        self.l2 = nn.Embedding(v2, config.d_model)
        self.l3 = nn.Embedding(v3, config.d_model)
        self.position = nn.Embedding(config.max_position_embeddings, config.d_model)
        self.token_type = nn.Embedding(config.num_token_types, config.d_model)
        self.dropout = UGTDropout(config.dropout)
        self.item_id = nn.Embedding(config.item_id_buckets, config.d_model) if config.item_id_buckets > 0 else None

    def item_embedding(self, triples: torch.Tensor) -> torch.Tensor:
        """triples: [..., 3] -> [..., D]（物品 = 三层嵌入之和；开了 item_id_buckets 时再加哈希物品嵌入）"""
        x = self.l1(triples[..., 0]) + self.l2(triples[..., 1]) + self.l3(triples[..., 2])
        if self.item_id is not None:
            x = x + self.item_id(item_hash(triples, self.item_id.num_embeddings))
        return x

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, token_types: torch.Tensor) -> torch.Tensor:
        # ids: [B, T, 3]；特殊位的 id 置 0 再乘 0，既不越界也不参与梯度
        is_item = (token_types != SPECIAL_TOKEN_TYPE).unsqueeze(-1)  # [B, T, 1]
        safe_ids = torch.where(is_item, ids, torch.zeros_like(ids))
        x = self.item_embedding(safe_ids) * is_item.to(self.l1.weight.dtype)
        x = x + self.position(positions) + self.token_type(token_types)
        return self.dropout(x)  # [B, T, D]


class UGTAttention(nn.Module):
    """多头注意力（自注意力或交叉注意力），底层用 scaled_dot_product_attention。"""

    def __init__(self, config: UGTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.o_proj = nn.Linear(config.d_model, config.d_model)
        self.attention_dropout = config.attention_dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]

    def forward(self, x: torch.Tensor, kv: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        # x: [B, Tq, D]；kv: [B, Tk, D]；attn_mask: bool [B, 1, Tq|1, Tk]，True = 可见
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )  # [B, H, Tq, hd]
        b, _, tq, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, tq, -1))


class UGTFeedForward(nn.Module):
    def __init__(self, config: UGTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = UGTDropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class UGTSparseMoE(nn.Module):
    """top-k 路由的专家 FFN（无容量上限、不丢 token）。

    k > 1 时对选中的 k 个概率重新归一（GShard/Mixtral 做法）；k = 1 时乘原始概率（Switch），
    保证路由器能从主损失得到梯度。负载统计只在有效 token 上算，所以 padding 不影响 aux_loss。
    """

    def __init__(self, config: UGTConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.d_model, config.num_experts, bias=False)
        self.experts = nn.ModuleList([UGTFeedForward(config) for _ in range(config.num_experts)])

    def forward(
        self, x: torch.Tensor, token_mask: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        flat = x.reshape(-1, d)  # [N, D]
        logits = self.router(flat)  # [N, E]
        probs = torch.softmax(logits.float(), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # [N, k]
        if self.top_k > 1:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        top_p = top_p.to(flat.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slots = (top_i == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            out.index_add_(0, rows, expert(flat[rows]) * top_p[rows, slots].unsqueeze(-1))
        valid = torch.ones(b * t, dtype=torch.bool, device=x.device) if token_mask is None else token_mask.reshape(-1)
        balance = load_balancing_loss(probs[valid], top_i[valid], self.num_experts)
        z = router_z_loss(logits[valid].float())
        return out.view(b, t, d), balance, z


class _PreNormSelfAttentionLayer(nn.Module):
    """编码器/解码器层共用的部分：pre-norm 自注意力子层 + 残差 dropout。

    子类在 super().__init__() 之后再注册其余子模块；参数注册顺序（self_attn_norm、self_attn、……、ffn）
    与拆分前相同，Dropout 没有参数，所以同一随机种子下的初始化与 state_dict 键都不变。
    """

    def __init__(self, config: UGTConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attn = UGTAttention(config)
        self.dropout = UGTDropout(config.dropout)

    def _self_attention_block(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_norm(x)
        return x + self.dropout(self.self_attn(h, h, attn_mask))


class UGTEncoderLayer(_PreNormSelfAttentionLayer):
    def __init__(self, config: UGTConfig):
        super().__init__(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = UGTFeedForward(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = self._self_attention_block(x, attn_mask)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class UGTDecoderLayer(_PreNormSelfAttentionLayer):
    def __init__(self, config: UGTConfig):
        super().__init__(config)
        self.cross_attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = UGTAttention(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = UGTSparseMoE(config) if config.num_experts > 1 else UGTFeedForward(config)

    def forward(self, x, self_mask, memory, cross_mask, token_mask):
        x = self._self_attention_block(x, self_mask)
        x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), memory, cross_mask))
        h = self.ffn_norm(x)
        if isinstance(self.ffn, UGTSparseMoE):
            y, balance, z = self.ffn(h, token_mask)
        else:
            y, balance, z = self.ffn(h), None, None
        return x + self.dropout(y), balance, z


class UGTHierarchicalHeads(nn.Module):
    """L1 头看解码器状态；L2 头看状态 + L1 嵌入；L3 头看状态 + L1 + L2 嵌入（小残差 MLP 做条件化）。"""

    def __init__(self, config: UGTConfig):
        super().__init__()
        d = config.d_model
        v1, v2, v3 = config.vocab_sizes
        act = ACT2FN[config.hidden_act]
        self.cond2 = nn.Sequential(nn.Linear(2 * d, d), act, nn.Linear(d, d))
        self.cond3 = nn.Sequential(nn.Linear(3 * d, d), act, nn.Linear(d, d))
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm3 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.out1 = nn.Linear(d, v1)
        self.out2 = nn.Linear(d, v2)
        self.out3 = nn.Linear(d, v3)
        # 可选：树节点的哈希输出向量（见 UGTConfig.node_embedding_buckets）
        self.node2 = self.node3 = self.node_proj2 = self.node_proj3 = None
        if config.node_embedding_buckets > 0:
            r, nb = config.node_embedding_dim, config.node_embedding_buckets
            self.node2, self.node3 = nn.Embedding(nb, r), nn.Embedding(nb, r)
            self.node_proj2, self.node_proj3 = nn.Linear(d, r, bias=False), nn.Linear(d, r, bias=False)

    def conditioned(self, level: int, states: torch.Tensor, codes, embeddings) -> torch.Tensor:
        """第 level 层头的输入 norm(s + cond(cat[s, E1(l1), (E2(l2))]))。

        第一层 Linear 按输入块拆开：码字块先在嵌入表上变换（[V, D]，与行数无关）再按码字取行。与先拼接再变换
        只差浮点舍入，但 states 可以是 [..., 1, D] 广播到每个候选前缀：束搜索不用把状态复制 B 份再做 [N·B, 3D]
        的矩阵乘。codes：[l1] 或 [l1, l2]；embeddings：对应的 nn.Embedding。
        """
        mlp, norm = (self.cond2, self.norm2) if level == 2 else (self.cond3, self.norm3)
        first = mlp[0]
        d = states.shape[-1]
        x = nn.functional.linear(states, first.weight[:, :d], first.bias)
        for j, (code, emb) in enumerate(zip(codes, embeddings), start=1):
            x = x + nn.functional.linear(emb.weight, first.weight[:, j * d : (j + 1) * d])[code]
        for layer in list(mlp)[1:]:
            x = layer(x)
        return norm(states + x)

    @staticmethod
    def node_scores(query: torch.Tensor, prefix: torch.Tensor, table: nn.Embedding, vocab: int,
                    max_elements: int = 1 << 22) -> torch.Tensor:
        """每个候选子节点的 query · E[hash(prefix, k)]，k = 0..vocab-1。

        query: [..., r]；prefix: [..., P]（父节点的码字，前缀维度可以广播到 query 的）
        -> [..., vocab]。按行分块，一块最多 max_elements 个取出的数，
        束搜索里上万个前缀一起打分时内存也有界。
        """
        lead = query.shape[:-1]
        if prefix.shape[:-1] != lead:
            shared = prefix.shape[:-1]
            if len(shared) == len(lead) and all(x == 1 for x in shared[:-1]) and shared[-1] == lead[-1]:
                # 前缀只沿最后一维变化（[1, ..., U, P]），所有行共用这 U 个前缀：每个前缀的 [vocab, r] 块只取一次，
                # 再按前缀批量做稠密矩阵乘——束搜索第 2 层给全部合法 L1 打分时不用逐行按哈希取嵌入
                u = shared[-1]
                blocks = table(child_hashes(prefix.reshape(u, prefix.shape[-1]), vocab, table.num_embeddings))
                q = query.reshape(-1, u, query.shape[-1]).transpose(0, 1)  # [U, M, r]
                out = torch.bmm(q, blocks.transpose(1, 2))  # [U, M, vocab]
                return out.transpose(0, 1).reshape(*lead, vocab)
            prefix = prefix.expand(*lead, prefix.shape[-1])
        q = query.reshape(-1, query.shape[-1])  # [M, r]
        pre = prefix.reshape(-1, prefix.shape[-1]).long()  # [M, P]
        grouped = UGTHierarchicalHeads._grouped_node_scores(q, pre, table, vocab, max_elements)
        if grouped is not None:
            return grouped.reshape(*lead, vocab)
        rows = max(1, max_elements // (vocab * q.shape[-1]))
        outs = []
        for s in range(0, q.shape[0], rows):
            # L2 节点 (l1, k) 的第三位是 0，不进哈希；child_hashes 与逐个三元组 item_hash 相等
            e = table(child_hashes(pre[s : s + rows], vocab, table.num_embeddings))  # [m, vocab, r]
            outs.append(torch.bmm(e, q[s : s + rows, :, None]).squeeze(-1))  # [m, vocab]
        return torch.cat(outs).reshape(*lead, vocab)

    @staticmethod
    def _grouped_node_scores(q: torch.Tensor, pre: torch.Tensor, table: nn.Embedding, vocab: int,
                             max_elements: int) -> Optional[torch.Tensor]:
        """行数远多于不同前缀时（束搜索第 3 层：每个用户的 beam 大多落在同一批热门前缀上）按前缀分组算：
        每个前缀的 [vocab, r] 节点块只取一次，同组的行拼成一个矩阵做 bmm。组按大小补齐到 2 的幂，
        同一档的组一起算（补齐的行不超过一倍）。q: [M, r]，pre: [M, P] -> [M, vocab]；重复不多时返回 None。
        """
        m, r = q.shape
        if m < 64 or pre.shape[1] == 0:
            return None
        key = pre[:, 0]
        for j in range(1, pre.shape[1]):  # 码字 < 2^21（规格最大词表 16384），两位前缀拼成一个 int64 键
            key = key * (1 << 21) + pre[:, j]
        uniq, inv = torch.unique(key, return_inverse=True)
        u = uniq.numel()
        if m < 4 * u:
            return None
        order = torch.argsort(inv, stable=True)  # 按组排好的行号
        counts = torch.bincount(inv, minlength=u)  # [U]
        starts = torch.cumsum(counts, 0) - counts
        first = order[starts]  # 每组的一行，用来取该组的前缀
        cap = torch.pow(2, torch.ceil(torch.log2(counts.double()))).long()  # 每组补齐后的行数
        out = q.new_empty(m, vocab)
        for c in torch.unique(cap).tolist():
            groups = (cap == c).nonzero(as_tuple=True)[0]
            step = max(1, max_elements // (vocab * max(c, r)))  # 一次最多取 step 个组：节点块与结果都有界
            slot = torch.arange(c, device=q.device)
            for g0 in range(0, groups.numel(), step):
                g = groups[g0 : g0 + step]
                valid = slot[None] < counts[g][:, None]  # [G, c]
                rows = order[(starts[g][:, None] + slot[None]).clamp(max=m - 1)]  # [G, c]
                blocks = table(child_hashes(pre[first[g]], vocab, table.num_embeddings))  # [G, vocab, r]
                res = torch.bmm(q[rows], blocks.transpose(1, 2))  # [G, c, vocab]
                out[rows[valid]] = res[valid]
        return out


class UGTTransitionBias(nn.Module):
    """宽记忆项（见 UGTConfig.transition_buckets）：logit[k] += s · w[hash(前一个物品, 前缀 + k, 层级)]。"""

    def __init__(self, config: UGTConfig):
        super().__init__()
        self.table = nn.Embedding(config.transition_buckets, 1)
        self.table._ugt_zero_init = True  # _init_weights 把它置 0，训练开始时不改变深层部分
        self.scale = float(config.transition_scale)
        self.layout = config.transition_layout

    def forward(self, previous: torch.Tensor, prefix: torch.Tensor, vocab: int, level: int) -> torch.Tensor:
        """previous: [..., 3]；prefix: [..., level-1]（父节点码字）；两者的前缀维度可以互相广播 -> [..., vocab]"""
        if self.layout == "block":
            # 一个 (前一个物品, 父节点) 的 vocab 个偏置是表里连续的一行：按行取（index_select 一次一整行）
            hp = _previous_key(previous.long())
            parent = torch.cat([prefix.long(), prefix.new_zeros(*prefix.shape[:-1], 4 - level).long()], -1)
            blocks = self.table.num_embeddings // vocab
            block = _transition_block(hp, parent, level, blocks)  # 两侧的前缀维度广播后的 [...]
            rows = self.table.weight[: blocks * vocab, 0].view(blocks, vocab)
            return self.scale * rows.index_select(0, block.reshape(-1)).view(*block.shape, vocab)
        lead = prefix.shape[:-1]
        pre = prefix.reshape(lead.numel(), prefix.shape[-1])  # [M, level-1]
        prev = previous.long()
        # transition_hash 按 (前一物品部分 + 子节点部分) mod buckets 展开：((hp·C + hn)·3 + lvl) 与逐位计算相等；
        # 两部分各按自己的形状算，最后才广播成 [..., vocab]
        hp = item_hash(prev.clamp(min=0), _CROSS_MOD)
        hp = torch.where(prev[..., 0] >= 0, hp, torch.full_like(hp, _CROSS_MOD))  # previous 的前缀形状
        hn = child_hashes(pre, vocab, _CROSS_MOD).reshape(*lead, vocab)
        nb = self.table.num_embeddings
        row = (hp * (_TRANSITION_MUL * 3) + (level - 1)) % nb
        if nb < (1 << 29):  # 3·hn + row < 3·_CROSS_MOD + nb 放得进 int32
            row = row.int()
        idx = _mod_(hn.to(row.dtype) * 3 + row[..., None], nb)  # [..., vocab]
        return self.scale * self.table.weight[:, 0].index_select(0, idx.reshape(-1)).view(idx.shape)


class UGTItemHead(nn.Module):
    """物品头（见 UGTConfig.num_items）：logits = h · W^T + b，W 是每个物品一行的自由输出向量。

    triples：[num_items, 3] 持久 buffer，第 i 行 = 物品 i 的 (l1, l2, l3)（与 items.parquet 的 item_index 一致），
    随检查点保存，所以加载后的模型不需要外部目录就能把三元组换成物品下标。
    """

    def __init__(self, config: UGTConfig):
        super().__init__()
        # nn.Linear 构造时的默认初始化会消耗全局随机数，使 post_init 里所有参数的初始化错位；
        # 它本来就会被 _init_weights 覆盖，所以在独立的 RNG 状态里构造（开物品头不改变其余参数的初值）
        with torch.random.fork_rng(devices=[]):
            self.out = nn.Linear(config.d_model, config.num_items)
        self.register_buffer("triples", torch.zeros(config.num_items, 3, dtype=torch.long))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states: [..., D] -> [..., num_items]"""
        return self.out(states)


# ---------------------------------------------------------------------------
# PreTrainedModel
# ---------------------------------------------------------------------------


class UGTPreTrainedModel(PreTrainedModel):
    config_class = UGTConfig
    base_model_prefix = "ugt"
    main_input_name = "encoder_semantic_ids"
    _no_split_modules = ["UGTEncoderLayer", "UGTDecoderLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    def save_pretrained(self, save_directory, *args, model_card: Union[None, bool, str] = None, **kwargs):
        """HF 的 save_pretrained，再写 README.md 模型卡（transformers 不知道 `ugt` 类型，卡里写明先 `import ugt_hf`）。

        model_card：None = 默认卡（已有的 README.md 不是本包生成的就保留）；str = 写这段文本（调用方已渲染好的卡）；
        False = 不写。push_to_hub=True（repo_id、commit_message、create_pr、private 同 HF）：先在本地写好卡，
        再经 `push_to_hub` 上传（HF 的这条路径会先把 README.md 换成它的模板卡并上传）。
        """
        push = kwargs.pop("push_to_hub", False)
        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        is_main = kwargs.get("is_main_process", args[0] if args else True)
        folder = os.fspath(save_directory)
        if model_card is False or not is_main or not os.path.isdir(folder):
            pass
        elif isinstance(model_card, str):
            write_model_card(folder, text=model_card, force=True)
        else:
            name = os.path.basename(os.path.normpath(folder)) or None
            write_model_card(folder, self.config, model_name=name, num_parameters=self.num_parameters() or None)
        if push and is_main:
            repo_id = hub.pop("repo_id", os.path.basename(os.path.normpath(folder)))
            self._push_to_hub(repo_id, card_source=folder, token=kwargs.get("token"),
                              max_shard_size=kwargs.get("max_shard_size", "50GB"),
                              model_card=False if model_card is False else None, **hub)

    def push_to_hub(self, repo_id: str, *, commit_message: Optional[str] = None,
                    commit_description: Optional[str] = None, private: Optional[bool] = None,
                    token: Union[None, bool, str] = None, revision: Optional[str] = None, create_pr: bool = False,
                    max_shard_size: Union[int, str, None] = "50GB", tags: Optional[Sequence[str]] = None,
                    model_card: Union[None, bool, str, Mapping[str, Any]] = None):
        """上传到 Hub（参数同 transformers 的 push_to_hub），README.md 是本包的模型卡，不是 transformers 的模板卡。

        HF 的实现在 save_pretrained 之后用 `create_and_tag_model_card` 的模板卡（library_name: transformers，
        没有指标、语义 ID 与加载方法）覆盖 README.md 再上传，中间没有可用的公开钩子；所以这里用 huggingface_hub 的
        公开 API（create_repo、upload_folder）重做这几步，其余（保存、分片、tags、分支、PR）与 HF 相同。

        model_card：
            None：Hub 上已有手写的卡（没有本包的生成标记）就保留它，只并入 tags（与 HF 相同）；否则用加载来源目录
                （`from_pretrained` 的本地路径，如某阶段的 best_model）里的卡，训练器写的指标、数据与协议都在里面，
                标题与加载示例改成 repo_id；来源没有卡时渲染默认卡（配置、语义 ID、加载方法）。
            str：上传这段文本；Mapping：`render_model_card(config, model_name=repo_id, **model_card)`
                （如 {"metrics": ..., "baselines": ..., "dataset": ...}）；False：不上传 README.md。
        """
        return self._push_to_hub(repo_id, card_source=getattr(self, "name_or_path", None),
                                 commit_message=commit_message, commit_description=commit_description,
                                 private=private, token=token, revision=revision, create_pr=create_pr,
                                 max_shard_size=max_shard_size, tags=tags, model_card=model_card)

    def _hub_card(self, api, repo_id: str, card_source: Optional[str], model_card, tags: Sequence[str],
                  token, revision: Optional[str]) -> Optional[str]:
        """push_to_hub 上传的 README.md 文本（优先级见 push_to_hub 的文档）；None = 不上传。"""
        if model_card is False:
            return None
        if isinstance(model_card, str):
            return model_card
        if isinstance(model_card, Mapping):
            return render_model_card(self.config, model_name=repo_id, tags=tags,
                                     num_parameters=self.num_parameters() or None, **dict(model_card))
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        try:
            if api.file_exists(repo_id, MODEL_CARD_FILE, revision=revision, token=token):
                with open(api.hf_hub_download(repo_id, MODEL_CARD_FILE, revision=revision, token=token),
                          encoding="utf-8") as f:
                    remote = f.read()
                if GENERATED_MARKER not in remote:
                    return add_tags(remote, tags)
        except (EntryNotFoundError, RevisionNotFoundError):
            pass  # 新仓库 / 新分支：没有远端的卡
        local = os.path.join(os.fspath(card_source), MODEL_CARD_FILE) if card_source else None
        if local and os.path.isfile(local):
            with open(local, encoding="utf-8") as f:
                text = f.read()
            return retarget_card(text, repo_id, tags) if GENERATED_MARKER in text else add_tags(text, tags)
        return render_model_card(self.config, model_name=repo_id, tags=tags,
                                 num_parameters=self.num_parameters() or None)

    def _push_to_hub(self, repo_id: str, *, card_source: Optional[str], commit_message: Optional[str] = None,
                     commit_description: Optional[str] = None, private: Optional[bool] = None, token=None,
                     revision: Optional[str] = None, create_pr: bool = False, max_shard_size="50GB",
                     tags: Optional[Sequence[str]] = None, model_card=None):
        from huggingface_hub import HfApi

        api = HfApi(library_name=LIBRARY_NAME)
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        extra = [tags] if isinstance(tags, str) else list(tags or ())
        tags = list(dict.fromkeys([*(self.model_tags or []), *extra]))  # 与 PreTrainedModel.push_to_hub 相同
        card = self._hub_card(api, repo_id, card_source, model_card, tags, token, revision)
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size, model_card=False)
            if card is not None:
                with open(os.path.join(tmp, MODEL_CARD_FILE), "w", encoding="utf-8") as f:
                    f.write(card)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message or "Upload model",
                                     commit_description=commit_description, token=token, revision=revision,
                                     create_pr=create_pr)

    @torch.no_grad()
    def _init_weights(self, module):
        # HF 默认：Linear/Embedding ~ N(0, initializer_range)、偏置 0、LayerNorm (1, 0)；本模型没有裸 Parameter
        super()._init_weights(module)
        if getattr(module, "_ugt_zero_init", False):  # 宽记忆表从 0 开始：训练之初不改变深层部分的分数
            module.weight.zero_()


class UGTModel(UGTPreTrainedModel):
    """骨干：三层 ID 嵌入 + 编码器 + 解码器（T5Model 的位置）。forward 返回 `UGTModelOutput`。

    子模块名与带头的模型相同（embeddings / encoder_layers / encoder_norm / decoder_layers / decoder_norm），
    所以 `UGTModel.from_pretrained(带头模型的目录)` 直接可用（头部键作为多余键忽略）。
    """

    # 从带头模型的检查点加载骨干时，头部的键是预期之内的多余键
    _keys_to_ignore_on_load_unexpected = [r"^heads\.", r"^transition\.", r"^item_proj\.", r"^item_head\."]

    def __init__(self, config: UGTConfig):
        super().__init__(config)
        self._build_backbone(config)
        self.post_init()

    def _build_backbone(self, config: UGTConfig) -> None:
        """按固定顺序注册骨干子模块（参数创建顺序决定同一随机种子下的初始化，不能改）。"""
        self.embeddings = UGTEmbeddings(config)
        self.encoder_layers = nn.ModuleList([UGTEncoderLayer(config) for _ in range(config.num_encoder_layers)])
        self.encoder_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.decoder_layers = nn.ModuleList([UGTDecoderLayer(config) for _ in range(config.num_decoder_layers)])
        self.decoder_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    # ---- 输入校验与默认值 ----

    def _check_ids(self, ids: torch.Tensor, token_types: torch.Tensor, name: str) -> None:
        """物品位的语义 ID 必须落在词表内；越界时指明字段与层级，而不是报 index error。"""
        is_item = token_types != SPECIAL_TOKEN_TYPE
        if not bool(is_item.any()):
            return
        for level, vocab in enumerate(self.config.vocab_sizes):
            vals = ids[..., level][is_item]
            lo, hi = int(vals.min()), int(vals.max())
            if lo < 0 or hi >= vocab:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name}[..., {level}] (L{level + 1}) contains id {bad} outside [0, {vocab})")

    def _prepare_side(self, ids, positions, token_types, mask, name: str):
        """补齐 positions/token_types/mask 的默认值并校验形状。返回 ids, positions, token_types, mask(bool)。"""
        b, t, _ = ids.shape
        if t == 0:
            # 空序列没有可算的位置（下面的 max() 也会抛无关的 RuntimeError）；解码器至少要有 BOS
            raise ValueError(f"{name}: sequence length is 0 (expected shape [B, T, 3] with T >= 1)")
        device = ids.device
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=device)
        mask = mask.to(device=device).bool()
        if token_types is None:
            token_types = mask.long()
        token_types = token_types.to(device=device).long()
        if positions is None:
            positions = torch.arange(t, device=device).unsqueeze(0).expand(b, t)
        positions = positions.to(device=device).long()
        for field, tensor in (("positions", positions), ("token_types", token_types), ("attention_mask", mask)):
            if tuple(tensor.shape) != (b, t):
                raise ValueError(f"{name.split('_')[0]}_{field}: expected shape {(b, t)}, got {tuple(tensor.shape)}")
        if int(positions.max()) >= self.config.max_position_embeddings or int(positions.min()) < 0:
            raise ValueError(
                f"{name.split('_')[0]}_positions: values must be in [0, max_position_embeddings="
                f"{self.config.max_position_embeddings}), got max {int(positions.max())}"
            )
        if int(token_types.max()) >= self.config.num_token_types or int(token_types.min()) < 0:
            raise ValueError(f"{name.split('_')[0]}_token_types: values must be in [0, {self.config.num_token_types})")
        self._check_ids(ids, token_types, name)
        return ids, positions, token_types, mask

    # ---- 编码 / 解码 ----

    def encode(
        self,
        encoder_semantic_ids: IdsLike,
        encoder_positions: Optional[torch.Tensor] = None,
        encoder_token_types: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """返回 (编码器输出 [B, Te, D]（已过末层 LayerNorm）, 有效位 mask bool [B, Te])。"""
        ids = stack_semantic_ids(encoder_semantic_ids, "encoder_semantic_ids").to(self.device)
        ids, pos, types, mask = self._prepare_side(
            ids, encoder_positions, encoder_token_types, encoder_attention_mask, "encoder_semantic_ids"
        )
        if self.config.encoder_position_mode == "recency":
            pos = recency_positions(mask)  # [B, Te]：最近的物品总在位置 0
        x = self.embeddings(ids, pos, types)
        # 每个位置至少能看到自己：padding 查询不会得到全屏蔽（NaN），有效位置不受影响
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        attn_mask = mask[:, None, None, :] | eye[None, None]  # [B, 1, Te, Te]
        for layer in self.encoder_layers:
            x = layer(x, attn_mask)
        return self.encoder_norm(x), mask

    def decode(
        self,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        decoder_semantic_ids: Optional[IdsLike] = None,
        decoder_positions: Optional[torch.Tensor] = None,
        decoder_token_types: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
    ):
        """返回 (解码器状态 [B, Td, D]（已过末层 LayerNorm）, 负载均衡损失, z-loss)；无 MoE 时后两者为 None。

        不给 decoder_semantic_ids 时用单个 BOS（token_type 0、位置 0），即评估样本的约定。
        """
        b = encoder_hidden_states.shape[0]
        device = encoder_hidden_states.device
        if decoder_semantic_ids is None:
            ids = torch.full((b, 1, 3), self.config.semantic_pad_id, dtype=torch.long, device=device)
            decoder_token_types = torch.full((b, 1), SPECIAL_TOKEN_TYPE, dtype=torch.long, device=device)
            decoder_positions = decoder_attention_mask = None
        else:
            ids = stack_semantic_ids(decoder_semantic_ids, "decoder_semantic_ids").to(device)
        if ids.shape[0] != b:
            raise ValueError(f"decoder_semantic_ids has batch size {ids.shape[0]}, encoder has {b}")
        if decoder_token_types is None:
            # 约定：第 0 位是 BOS（类型 0），其余有效位是物品
            decoder_token_types = torch.ones(ids.shape[:2], dtype=torch.long, device=device)
            decoder_token_types[:, 0] = SPECIAL_TOKEN_TYPE
            if decoder_attention_mask is not None:
                decoder_token_types = decoder_token_types * decoder_attention_mask.to(device).long()
        ids, pos, types, dmask = self._prepare_side(
            ids, decoder_positions, decoder_token_types, decoder_attention_mask, "decoder_semantic_ids"
        )
        td = ids.shape[1]
        x = self.embeddings(ids, pos, types)
        if self.config.bos_context == "last_item":
            # BOS 的残差流里直接放入最近一个历史物品的编码（见 UGTConfig.bos_context）；
            # 空历史行取第 0 位（已被 LayerNorm）
            last = self.select_position(encoder_hidden_states, "last", encoder_attention_mask)  # [B, D]
            x = torch.cat([x[:, :1] + last[:, None], x[:, 1:]], dim=1)
        causal = torch.ones(td, td, dtype=torch.bool, device=device).tril()
        eye = torch.eye(td, dtype=torch.bool, device=device)
        self_mask = (causal[None, None] & dmask[:, None, None, :]) | eye[None, None]  # [B, 1, Td, Td]
        # 空历史（编码器全为 padding）的行退化为只看第 0 位，保证结果有限且确定
        enc_mask = encoder_attention_mask.clone()
        empty = ~enc_mask.any(dim=1)
        if bool(empty.any()):
            enc_mask[empty, 0] = True
        cross_mask = enc_mask[:, None, None, :]  # [B, 1, 1, Te]
        balances, zs = [], []
        for layer in self.decoder_layers:
            x, balance, z = layer(x, self_mask, encoder_hidden_states, cross_mask, dmask)
            if balance is not None:
                balances.append(balance)
                zs.append(z)
        if not balances:
            return self.decoder_norm(x), None, None
        return self.decoder_norm(x), torch.stack(balances).mean(), torch.stack(zs).mean()

    @staticmethod
    def select_position(
        hidden: torch.Tensor, position: Union[int, str, torch.Tensor], mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """从 [B, Td, D] 取每行一个位置的状态 -> [B, D]。

        position: int（所有行同一位置，0 = BOS）、"last"（每行最后一个有效位置）或 [B] 张量。
        """
        b, td, _ = hidden.shape
        if isinstance(position, str):
            if position != "last":
                raise ValueError(f"position must be an int, 'last' or a [B] tensor, got {position!r}")
            if mask is None:
                idx = torch.full((b,), td - 1, dtype=torch.long, device=hidden.device)
            else:
                ar = torch.arange(td, device=hidden.device).expand(b, td)
                idx = torch.where(mask.bool(), ar, torch.zeros_like(ar)).max(dim=1).values
        elif isinstance(position, int):
            if not -td <= position < td:
                raise ValueError(f"position {position} out of range for decoder length {td}")
            return hidden[:, position]
        else:
            idx = torch.as_tensor(position, device=hidden.device).long().reshape(-1)
            if idx.numel() != b or int(idx.min()) < 0 or int(idx.max()) >= td:
                raise ValueError(f"position tensor must have {b} entries in [0, {td}), got {idx.tolist()[:8]}")
        return hidden[torch.arange(b, device=hidden.device), idx]

    def forward(
        self,
        encoder_semantic_ids: Optional[IdsLike] = None,
        encoder_positions: Optional[torch.Tensor] = None,
        encoder_token_types: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        decoder_semantic_ids: Optional[IdsLike] = None,
        decoder_positions: Optional[torch.Tensor] = None,
        decoder_token_types: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        encoder_mask: Optional[torch.Tensor] = None,
        decoder_mask: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **unused,
    ) -> Union[UGTModelOutput, tuple]:
        """编码 + 解码，返回解码器末层状态（批次键见 `ugt_hf.interfaces`；labels 等多余键被忽略）。"""
        if encoder_semantic_ids is None:
            raise ValueError("forward() requires encoder_semantic_ids ([B, Te, 3] or a list of 3 [B, Te] tensors)")
        encoder_attention_mask = encoder_attention_mask if encoder_attention_mask is not None else encoder_mask
        decoder_attention_mask = decoder_attention_mask if decoder_attention_mask is not None else decoder_mask
        memory, enc_mask = self.encode(
            encoder_semantic_ids, encoder_positions, encoder_token_types, encoder_attention_mask
        )
        hidden, balance, z = self.decode(
            memory, enc_mask, decoder_semantic_ids, decoder_positions, decoder_token_types, decoder_attention_mask
        )
        out = UGTModelOutput(last_hidden_state=hidden, encoder_last_hidden_state=memory,
                             encoder_attention_mask=enc_mask, moe_balance_loss=balance, router_z_loss=z)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()


class UGTForGenerativeRecommendation(UGTModel):
    """UGT 生成式推荐模型（forward 满足 `ugt_hf.interfaces` 的批次与输出契约）：骨干 + 层次化输出头。

    骨干子模块直接挂在本模型上（T5ForConditionalGeneration 的做法），state_dict 键与拆分前一致，旧检查点照常加载。
    """

    # tie_word_embeddings=True 时各层输出头与该层 ID 嵌入共享权重（v5 的 {目标: 来源} 写法）
    _tied_weights_keys = {
        "heads.out1.weight": "embeddings.l1.weight",
        "heads.out2.weight": "embeddings.l2.weight",
        "heads.out3.weight": "embeddings.l3.weight",
    }
    _keys_to_ignore_on_load_unexpected = None

    def __init__(self, config: UGTConfig):
        # 跳过 UGTModel.__init__：post_init（权重初始化）只能在头部也建好之后调用一次，
        # 否则骨干先初始化、头部后建，随机数的消耗顺序与拆分前不同
        UGTPreTrainedModel.__init__(self, config)
        self._build_backbone(config)
        self.heads = UGTHierarchicalHeads(config)
        self.transition = UGTTransitionBias(config) if config.transition_buckets > 0 else None
        self.item_proj = nn.Linear(config.d_model, config.d_model)
        # 物品头最后注册：开启时前面所有参数的初始化随机数不变，不开时模型与之前完全相同
        self.item_head = UGTItemHead(config) if config.num_items > 0 else None
        # 本模型不走 HF generate()（束搜索在 generation.py），但 TRL 的 DPOTrainer 会无条件写
        # model.generation_config.pad_token_id，所以给一个只带 pad id 的 GenerationConfig（can_generate() 为 False，
        # 不会被保存）。pad id 与 config 一致：否则 HF Trainer 对比 tokenizer 时发现 generation_config 缺 pad，
        # 每次训练都警告 "tokenizer has new PAD/BOS/EOS tokens"
        self.generation_config = GenerationConfig(pad_token_id=config.pad_token_id)
        # 绑定权重时输出头本来就不单独存（safetensors 去重）；写进 _keys_to_ignore_on_save 后，HF Trainer 加载最佳
        # 模型时把“缺的正是这几个键”当作正常并重新绑定，而不是每个阶段末尾都警告 missing keys
        self._keys_to_ignore_on_save = set(self._tied_weights_keys) if config.tie_word_embeddings else None
        self.post_init()

    # ---- 层次化输出头（束搜索与打分直接调用） ----

    def transition_logits(self, previous_items: torch.Tensor, prefix: torch.Tensor, vocab: int,
                          level: int) -> Optional[torch.Tensor]:
        """宽记忆项本身（见 UGTConfig.transition_buckets）：previous_items [..., 3]，prefix [..., level-1]（父节点）
        -> [..., vocab]；没开时 None。`level2_logits(..., with_transition=False)` 的 logits 加上它，与开着算逐位相同：
        束搜索第 2 层对全部合法 L1 共享地算深层部分，只给 beam 里的那些行取这一项（它按用户逐行查表，是排序里
        最大的一块随机访存）。"""
        if self.transition is None:
            return None
        return self.transition(previous_items.to(prefix.device), prefix, vocab, level)

    def _add_transition(self, logits: torch.Tensor, previous_items: Optional[torch.Tensor], prefix: torch.Tensor,
                        level: int) -> torch.Tensor:
        if self.transition is None:
            return logits
        if previous_items is None:
            # 静默省略会让分数与训练时不一致（指标悄悄变差），所以直接报错
            raise ValueError("this model has transition_buckets > 0: pass previous_items ([..., 3], see "
                             "prediction_previous_items) to level1_logits/level2_logits/level3_logits/item_log_probs")
        prev = previous_items.to(logits.device)
        if prev.shape[:-1] != logits.shape[:-1]:
            raise ValueError(
                f"previous_items: expected shape {tuple(logits.shape[:-1]) + (3,)}, got {tuple(prev.shape)}"
            )
        return logits + self.transition(prev, prefix, logits.shape[-1], level).to(logits.dtype)

    def level1_logits(self, states: torch.Tensor, previous_items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """states: [..., D]，previous_items: [..., 3]（只有开了 transition_buckets 才需要）-> [..., V1]"""
        logits = self.heads.out1(states)
        return self._add_transition(logits, previous_items, states.new_zeros(states.shape[:-1] + (0,)).long(), 1)

    def level2_logits(self, states: torch.Tensor, l1: torch.Tensor,
                      previous_items: Optional[torch.Tensor] = None, with_transition: bool = True) -> torch.Tensor:
        """states: [..., D]，l1: [...]（states 的前缀维度可以广播到 l1 的，如 [N, 1, D] 对 [N, B]）-> [..., V2]。
        with_transition=False 时不加宽记忆项（也不需要 previous_items），见 `transition_logits`。"""
        h = self.heads.conditioned(2, states, [l1], [self.embeddings.l1])
        logits = self.heads.out2(h)
        if self.heads.node2 is not None:
            logits = logits + self.heads.node_scores(self.heads.node_proj2(h), l1[..., None], self.heads.node2,
                                                     logits.shape[-1])
        if not with_transition:
            return logits
        return self._add_transition(logits, previous_items, l1[..., None], 2)

    def level3_logits(self, states: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor,
                      previous_items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """states: [..., D]，l1/l2: [...]（states 可广播，见 level2_logits）-> [..., V3]"""
        h = self.heads.conditioned(3, states, [l1, l2], [self.embeddings.l1, self.embeddings.l2])
        logits = self.heads.out3(h)
        if self.heads.node3 is not None:
            logits = logits + self.heads.node_scores(self.heads.node_proj3(h), torch.stack([l1, l2], -1),
                                                     self.heads.node3, logits.shape[-1])
        return self._add_transition(logits, previous_items, torch.stack([l1, l2], -1), 3)

    def level_log_probs(self, states: torch.Tensor, item_triples: torch.Tensor,
                        previous_items: Optional[torch.Tensor] = None, return_logits: bool = False):
        """给定状态下物品每一层的 log p：[log p(l1), log p(l2 | l1), log p(l3 | l1, l2)]。

        states: [B, D]；item_triples: [B, M, 3]；previous_items: [B, 3]（开了 transition_buckets 时必需）
        -> [B, M, 3]；return_logits 时再给出三层 logits（L1 [B, V1]，M 个物品共用；L2 [B, M, V2]；L3 [B, M, V3]）。
        `item_log_probs` 与 DPO 的融合前向都用它（物品打分只写这一处）。
        开了物品头时最后一列 = log p(l3 | l1, l2) + log softmax_item(item)（item_scoring="sum"），
        或三列为 [0, 0, log softmax_item(item)]（"item"）；物品必须在目录里。
        """
        triples = item_triples.to(states.device).long()
        b, m, _ = triples.shape
        l1, l2, l3 = triples[..., 0], triples[..., 1], triples[..., 2]
        prev = None if previous_items is None else previous_items.to(states.device)
        prev_m = None if prev is None else prev.unsqueeze(1).expand(b, m, 3)
        logits1 = self.level1_logits(states, prev)  # [B, V1]
        lp1 = torch.log_softmax(logits1.float(), dim=-1).gather(1, l1)  # [B, M]
        s = states.unsqueeze(1)  # [B, 1, D]，在各层头里广播到 M 个物品
        logits2 = self.level2_logits(s, l1, prev_m)  # [B, M, V2]
        lp2 = torch.log_softmax(logits2.float(), dim=-1).gather(2, l2.unsqueeze(-1)).squeeze(-1)
        logits3 = self.level3_logits(s, l1, l2, prev_m)  # [B, M, V3]
        lp3 = torch.log_softmax(logits3.float(), dim=-1).gather(2, l3.unsqueeze(-1)).squeeze(-1)
        if self.item_head is not None:
            # 物品项并进最后一列：行和 = 束搜索 / 穷举打分用的物品分，DPO 按列求和得到同一个 log p
            lp_item = self.item_head_log_probs(states).gather(1, self.item_indices(triples, strict=True))  # [B, M]
            if self.config.item_scoring == "sum":
                lp3 = lp3 + lp_item
            else:  # "item"：只用物品头，语义层不计分
                lp1, lp2, lp3 = torch.zeros_like(lp1), torch.zeros_like(lp2), lp_item
        out = torch.stack([lp1, lp2, lp3], dim=-1)  # [B, M, 3]
        return (out, (logits1, logits2, logits3)) if return_logits else out

    # ---- 物品头 ----

    def _catalogue_keys(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """目录三元组的 (升序键, 对应的物品下标)；目录没设置（全 0 的 buffer）或有重复时报错。"""
        if self.item_head is None:
            raise ValueError("this model has no item head (UGTConfig.num_items = 0)")
        keys = pack_triples(self.item_head.triples.long(), self.config.vocab_sizes)
        sorted_keys, order = torch.sort(keys)
        if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise ValueError("the item head's catalogue is not set or has duplicate triples: call "
                             "model.set_item_catalogue(triples [num_items, 3]) (training.stages.build_model does)")
        return sorted_keys, order

    def set_item_catalogue(self, triples) -> None:
        """写入物品头的目录：triples [num_items, 3]（或 generation.ItemCatalogue），第 i 行 = 物品 i。"""
        if self.item_head is None:
            raise ValueError("set_item_catalogue: this model has no item head (UGTConfig.num_items = 0)")
        t = torch.as_tensor(getattr(triples, "triples", triples)).long()
        n = self.config.num_items
        if tuple(t.shape) != (n, 3):
            raise ValueError(f"set_item_catalogue: expected triples of shape ({n}, 3) (UGTConfig.num_items), "
                             f"got {tuple(t.shape)}")
        for level, vocab in enumerate(self.config.vocab_sizes):
            if int(t[:, level].min()) < 0 or int(t[:, level].max()) >= vocab:
                raise ValueError(f"set_item_catalogue: triples[:, {level}] (L{level + 1}) outside [0, {vocab})")
        with torch.no_grad():
            self.item_head.triples.copy_(t.to(self.item_head.triples.device))
        self._catalogue_keys()  # 重复的三元组在这里就报错

    def item_indices(self, triples: torch.Tensor, strict: bool = False) -> torch.Tensor:
        """三元组 [..., 3] -> 物品头的下标 [...]；不在目录里的为 -1（strict 时报错）。"""
        sorted_keys, order = self._catalogue_keys()
        t = torch.as_tensor(triples).long().to(sorted_keys.device)
        inside = (t >= 0).all(-1)
        for level, vocab in enumerate(self.config.vocab_sizes):
            inside = inside & (t[..., level] < vocab)
        keys = pack_triples(t.clamp(min=0), self.config.vocab_sizes)
        pos = torch.searchsorted(sorted_keys, keys.reshape(-1)).clamp(max=sorted_keys.numel() - 1).view_as(keys)
        found = inside & (sorted_keys[pos] == keys)
        if strict and not bool(found.all()):
            bad = t[~found][0].tolist()
            raise ValueError(f"item triple {bad} is not in the item head's catalogue (UGTConfig.num_items = "
                             f"{self.config.num_items}); the model can only score catalogue items")
        return torch.where(found, order[pos], torch.full_like(keys, -1))

    def item_head_log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """物品头在全目录上的 log softmax：states [..., D] -> [..., num_items]（float32）。"""
        if self.item_head is None:
            raise ValueError("this model has no item head (UGTConfig.num_items = 0)")
        return torch.log_softmax(self.item_head(states).float(), dim=-1)

    def item_log_probs(self, states: torch.Tensor, item_triples: torch.Tensor,
                       previous_items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """给定状态下物品的 log p(item) = 三层 log p 之和（开了物品头时含物品项，见 `level_log_probs`）。
        states: [B, D]；item_triples: [B, M, 3] 或 [B, 3] -> [B, M] 或 [B]；
        previous_items: [B, 3]（开了 transition_buckets 时必需）。"""
        squeeze = item_triples.dim() == 2
        triples = item_triples.unsqueeze(1) if squeeze else item_triples  # [B, M, 3]
        lp = self.level_log_probs(states, triples, previous_items)  # [B, M, 3]
        out = lp[..., 0] + lp[..., 1] + lp[..., 2]
        return out.squeeze(1) if squeeze else out

    # ---- 用户状态 / 物品打分 ----

    def prediction_states(
        self,
        encoder_semantic_ids: IdsLike,
        encoder_positions: Optional[torch.Tensor] = None,
        encoder_token_types: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        decoder_semantic_ids: Optional[IdsLike] = None,
        decoder_positions: Optional[torch.Tensor] = None,
        decoder_token_types: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        position: Union[int, str, torch.Tensor] = 0,
        **unused,
    ) -> torch.Tensor:
        """用于预测下一个物品的解码器状态 [B, D]（默认 BOS 位，即评估样本的约定）。多余的批次键（labels 等）被忽略。"""
        memory, enc_mask = self.encode(
            encoder_semantic_ids, encoder_positions, encoder_token_types, encoder_attention_mask
        )
        hidden, _, _ = self.decode(
            memory, enc_mask, decoder_semantic_ids, decoder_positions, decoder_token_types, decoder_attention_mask
        )
        dmask = None if decoder_semantic_ids is None else decoder_attention_mask
        return self.select_position(hidden, position, dmask)

    def _previous_items_all(self, encoder_ids: torch.Tensor, encoder_mask: torch.Tensor,
                            decoder_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """解码器每个位置“之前紧挨着的物品”：[B, Td, 3]。第 0 位（BOS）= 历史最后一个有效物品（空历史为 -1），
        第 t 位 = 解码器第 t 位的输入物品（teacher forcing 时即 labels[t-1]）。"""
        mask = encoder_mask.bool()
        last = self.select_position(encoder_ids, "last", mask).long()  # [B, 3]，与 bos_context 取同一位置
        last = torch.where(mask.any(dim=1, keepdim=True), last, torch.full_like(last, -1))
        if decoder_ids is None:
            return last[:, None]
        return torch.cat([last[:, None], decoder_ids[:, 1:].long().to(last.device)], dim=1)

    def prediction_previous_items(
        self,
        encoder_semantic_ids: IdsLike,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        decoder_semantic_ids: Optional[IdsLike] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        position: Union[int, str, torch.Tensor] = 0,
        **unused,
    ) -> torch.Tensor:
        """与 `prediction_states` 同一位置的“前一个物品” [B, 3]（宽记忆项的键；空历史为 -1）。"""
        enc = stack_semantic_ids(encoder_semantic_ids, "encoder_semantic_ids").to(self.device)
        mask = (torch.ones(enc.shape[:2], dtype=torch.bool, device=enc.device) if encoder_attention_mask is None
                else encoder_attention_mask.to(enc.device))
        dec = None
        if decoder_semantic_ids is not None:
            dec = stack_semantic_ids(decoder_semantic_ids, "decoder_semantic_ids").to(enc.device)
        prev = self._previous_items_all(enc, mask, dec)  # [B, Td, 3]
        dmask = None if dec is None else decoder_attention_mask
        return self.select_position(prev, position, dmask)

    def score_items(self, item_triples: torch.Tensor, position: Union[int, str, torch.Tensor] = 0, **batch):
        """给一批用户的给定物品打分：log p(item) [B, M]（item_triples [B, M, 3]）或 [B]（[B, 3]）。

        用户由批次里的编码器（及可选的解码器）输入给出，默认从 BOS 位置预测；DPO 用它算 chosen/rejected 的 logp。
        """
        states = self.prediction_states(position=position, **batch)
        prev = self.prediction_previous_items(position=position, **batch) if self.transition is not None else None
        return self.item_log_probs(states, item_triples, prev)

    def user_representation(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """编码器池化 -> [B, D]：有效位置均值，或最后一个有效位置。"""
        m = mask.to(memory.dtype).unsqueeze(-1)  # [B, Te, 1]
        if self.config.user_pooling == "last":
            return self.select_position(memory, "last", mask)
        return (memory * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def item_representation(self, item_triples: torch.Tensor) -> torch.Tensor:
        """共享 ID 嵌入之和 + 投影：[..., 3] -> [..., D]"""
        return self.item_proj(self.embeddings.item_embedding(item_triples.long()))

    # ---- forward ----

    def forward(
        self,
        encoder_semantic_ids: Optional[IdsLike] = None,
        encoder_positions: Optional[torch.Tensor] = None,
        encoder_token_types: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        decoder_semantic_ids: Optional[IdsLike] = None,
        decoder_positions: Optional[torch.Tensor] = None,
        decoder_token_types: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[IdsLike] = None,
        target_item_ids: Optional[torch.Tensor] = None,
        encoder_mask: Optional[torch.Tensor] = None,
        decoder_mask: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        return_loss: Optional[bool] = None,
    ) -> Union[UGTOutput, tuple]:
        """批次键见 `ugt_hf.interfaces`。encoder_mask/decoder_mask 是规格记录里的别名。

        有 labels 时 L2/L3 头用 labels 的前缀（teacher forcing）并返回加权 NTP loss；
        没有 labels 时 L2/L3 用贪心前缀（argmax L1、再 argmax L2），只为满足输出契约——
        推荐请用 `generation.py` 的束搜索。
        item_repr：target_item_ids [B, 3]，否则取每行最后一个有效 label；都没有时为 None。
        aux_loss = router_aux_loss_coef * 负载均衡 + router_z_loss_coef * z-loss（无 MoE 时 None）。
        return_loss=False：有 labels 也不算 loss（仍按 labels 做 teacher forcing、给出 item_labels）。UGTTrainer
        从 logits 自己组合损失，前向里再算一遍是白费：物品头的 [B·Td, num_items] log-softmax 约占一步的 5%。
        """
        if encoder_semantic_ids is None:
            raise ValueError("forward() requires encoder_semantic_ids ([B, Te, 3] or a list of 3 [B, Te] tensors)")
        encoder_attention_mask = encoder_attention_mask if encoder_attention_mask is not None else encoder_mask
        decoder_attention_mask = decoder_attention_mask if decoder_attention_mask is not None else decoder_mask
        memory, enc_mask = self.encode(
            encoder_semantic_ids, encoder_positions, encoder_token_types, encoder_attention_mask
        )
        hidden, balance, z = self.decode(
            memory, enc_mask, decoder_semantic_ids, decoder_positions, decoder_token_types, decoder_attention_mask
        )  # hidden: [B, Td, D]

        prev = None
        if self.transition is not None:  # [B, Td, 3]：每个解码位置之前紧挨着的物品
            enc_ids = stack_semantic_ids(encoder_semantic_ids, "encoder_semantic_ids").to(hidden.device)
            dec_ids = None
            if decoder_semantic_ids is not None:
                dec_ids = stack_semantic_ids(decoder_semantic_ids, "decoder_semantic_ids")
            prev = self._previous_items_all(enc_ids, enc_mask, dec_ids)
        l1_logits = self.level1_logits(hidden, prev)  # [B, Td, V1]
        labels_t = stack_semantic_ids(labels, "labels")
        if labels_t is not None:
            labels_t = labels_t.to(hidden.device)
            if labels_t.shape[:2] != hidden.shape[:2]:
                raise ValueError(
                    f"labels: expected shape {tuple(hidden.shape[:2]) + (3,)}, got {tuple(labels_t.shape)}"
                )
            self._check_labels(labels_t)
            prefix = labels_t.clamp(min=0)  # -100 的位置随便给个合法前缀，loss 会忽略
        else:
            with torch.no_grad():
                g1 = l1_logits.argmax(dim=-1)
                g2 = self.level2_logits(hidden, g1, prev).argmax(dim=-1)
            prefix = torch.stack([g1, g2, torch.zeros_like(g1)], dim=-1)
        l2_logits = self.level2_logits(hidden, prefix[..., 0], prev)  # [B, Td, V2]
        l3_logits = self.level3_logits(hidden, prefix[..., 0], prefix[..., 1], prev)  # [B, Td, V3]

        aux_loss = moe_aux_loss(balance, z, self.config)

        user_repr = self.user_representation(memory, enc_mask)
        target = self._target_items(labels_t, target_item_ids)
        if target_item_ids is not None:  # 从 labels 取的目标已由 _check_labels 查过
            self._check_ids(target, torch.ones_like(target[..., 0]), "target_item_ids")
        item_repr = self.item_representation(target.to(hidden.device)) if target is not None else None

        item_logits = item_labels = None
        if self.item_head is not None:
            item_logits = self.item_head(hidden)  # [B, Td, num_items]
            if labels_t is not None:
                valid = labels_t[..., 0] != IGNORE_INDEX
                idx = self.item_indices(prefix)
                if bool((valid & (idx < 0)).any()):
                    bad = prefix[valid & (idx < 0)][0].tolist()
                    raise ValueError(f"labels contain the triple {bad}, which is not in the item head's catalogue")
                item_labels = torch.where(valid, idx, torch.full_like(idx, IGNORE_INDEX))

        loss = None
        if labels_t is not None and return_loss is not False:
            loss = ntp_loss(l1_logits, l2_logits, l3_logits, labels_t, chunk_size=self.config.loss_chunk_size,
                            item_logits=item_logits, item_labels=item_labels,
                            item_weight=self.config.item_loss_weight)

        out = UGTOutput(
            loss=loss,
            l1_logits=l1_logits,
            l2_logits=l2_logits,
            l3_logits=l3_logits,
            aux_loss=aux_loss,
            user_repr=user_repr,
            item_repr=item_repr,
            decoder_hidden_states=hidden,
            moe_balance_loss=balance,
            router_z_loss=z,
            item_logits=item_logits,
            item_labels=item_labels,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()

    def _check_labels(self, labels: torch.Tensor) -> None:
        valid = labels[..., 0] != IGNORE_INDEX
        if not bool(valid.any()):
            return
        for level, vocab in enumerate(self.config.vocab_sizes):
            vals = labels[..., level][valid]
            if int(vals.min()) < 0 or int(vals.max()) >= vocab:
                raise ValueError(
                    f"labels[..., {level}] (L{level + 1}) has values outside [0, {vocab}) at non-ignored positions"
                )

    @staticmethod
    def _target_items(
        labels: Optional[torch.Tensor], target_item_ids: Optional[torch.Tensor]
    ) -> Optional[torch.Tensor]:
        """目标物品 [B, 3]：显式给出的 target_item_ids，或每行最后一个有效 label（全无效的行取 0 号三元组）。"""
        if target_item_ids is not None:
            target = torch.as_tensor(target_item_ids).long()
            if target.dim() != 2 or target.shape[-1] != 3:
                raise ValueError(f"target_item_ids: expected shape [B, 3], got {tuple(target.shape)}")
            return target
        if labels is None:
            return None
        valid = labels[..., 0] != IGNORE_INDEX  # [B, Td]
        td = labels.shape[1]
        ar = torch.arange(td, device=labels.device).expand_as(valid)
        last = torch.where(valid, ar, torch.zeros_like(ar)).max(dim=1).values  # [B]
        target = labels[torch.arange(labels.shape[0], device=labels.device), last]
        return target.clamp(min=0)


__all__ = [
    "UGTForGenerativeRecommendation",
    "UGTItemHead",
    "UGTModel",
    "UGTModelOutput",
    "UGTPreTrainedModel",
    "UGTOutput",
    "load_balancing_loss",
    "router_z_loss",
    "stack_semantic_ids",
    "ntp_loss",
]
