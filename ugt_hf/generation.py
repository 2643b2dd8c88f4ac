"""受约束的层次束搜索：只在合法的 (l1, l2, l3) 前缀上展开，输出 top-K 物品。

物品目录（`ItemCatalogue`）把 items.parquet 的三元组整理成逐层的子节点表（等价于一棵深度 3 的 trie）：
    children2[l1]  -> 该 L1 下的 L2 码字（以及对应的二层前缀编号），[V1, C2]，-1 填充
    children3_items[children3_start[p2] : + children3_count[p2]] -> 二层前缀 p2 下的物品编号（CSR，升序）
束搜索在每层保留 num_beams 个前缀，最后一层取 top_k 个物品。

为什么逐层束搜索不一定精确：第 1 层只按 log p(l1) 剪枝，一个 log p(l1) 稍低、但 L2/L3 概率很高的物品可能被剪掉。
由于 log 概率 <= 0，物品总分 <= 它任何前缀的累计分，所以存在可检验的精确性证书：
    若第 K 名的得分 >= 所有被剪掉前缀的最高累计分，则结果就是穷举 top-K。
当 num_beams >= 每层合法前缀数时证书必然成立（不剪枝）。`GenerationResult.exact` 逐用户给出该证书。

穷举打分（`exhaustive_scores`）对目录中每个物品算 log p(l1) + log p(l2|l1) + log p(l3|l1,l2)，用于校验。
两种方法共用同一归一化（各层在整个词表上 softmax），因此分数可以直接比较。

模型开了物品头（`UGTConfig.num_items` > 0）时：item_scoring="sum" 在最后一层再加 log softmax_item(item)
（也 <= 0，上面的证书不变）；"item" 只用物品头，束搜索与穷举都直接在全目录上取 top-K（精确）。
目录必须与模型保存的目录逐行相同（物品下标要对得上），否则报错而不是悄悄错位。
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import pyarrow.parquet as pq
import torch

from .item_keys import pack_triples

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------
# 物品目录
# ---------------------------------------------------------------------------


class ItemCatalogue:
    """合法物品三元组的逐层表。第 i 行 = item_index i 的 (l1, l2, l3)。

    全包 (l1, l2, l3) <-> item_index 的换算只走这里：`lookup`（三元组 -> 下标）、`triples`（下标 -> 三元组）；
    三元组的整数键是 `item_keys.pack_triples(·, vocab_sizes)`（`pack`）。

    Args:
        triples: [N, 3] 非负整数，行号即 item_index，三元组必须互不相同
        vocab_sizes: 每层词表大小（用于越界检查）；缺省为各层最大值 + 1
        source: 出错信息里用的来源名（文件路径等）
    """

    def __init__(self, triples, vocab_sizes: Optional[Sequence[int]] = None, source: str = "<arrays>"):
        t = torch.as_tensor(np.asarray(triples), dtype=torch.long)
        if t.dim() != 2 or t.shape[1] != 3 or t.shape[0] == 0:
            raise ValueError(f"{source}: item triples must have shape [N>0, 3], got {tuple(t.shape)}")
        if int(t.min()) < 0:
            row = int((t < 0).any(dim=1).nonzero()[0])
            raise ValueError(f"{source}: item_index {row} has a negative semantic id {t[row].tolist()}")
        maxes = [int(v) + 1 for v in t.max(dim=0).values]
        self.vocab_sizes = [int(v) for v in vocab_sizes] if vocab_sizes is not None else maxes
        for level in range(3):
            if maxes[level] > self.vocab_sizes[level]:
                row = int((t[:, level] >= self.vocab_sizes[level]).nonzero()[0])
                raise ValueError(
                    f"{source}: item_index {row} field l{level + 1}={int(t[row, level])} is outside the vocabulary "
                    f"[0, {self.vocab_sizes[level]})"
                )
        self.source = source
        self.triples = t  # [N, 3]
        v1, v2, v3 = self.vocab_sizes
        keys = pack_triples(t, self.vocab_sizes)  # [N] 三元组的唯一编码
        order = torch.argsort(keys)
        sorted_keys = keys[order]
        dup = (sorted_keys[1:] == sorted_keys[:-1]).nonzero()
        if dup.numel():
            a, b = sorted((int(order[int(dup[0])]), int(order[int(dup[0]) + 1])))
            raise ValueError(
                f"{source}: items {a} and {b} share the semantic id {t[a].tolist()}; triples must be unique"
            )
        self._sorted_keys, self._key_order = sorted_keys, order

        # 第二层前缀：唯一的 (l1, l2)
        p2_keys = t[:, 0] * v2 + t[:, 1]
        uniq2, item_p2 = torch.unique(p2_keys, return_inverse=True)  # uniq2 已排序
        self.prefix2_l1 = uniq2 // v2  # [P2]
        self.prefix2_l2 = uniq2 % v2  # [P2]
        self.item_prefix2 = item_p2  # [N] 每个物品所属的二层前缀
        self.level1_values = torch.unique(t[:, 0])  # [U1]
        self.level1_valid = torch.zeros(v1, dtype=torch.bool)
        self.level1_valid[self.level1_values] = True

        # children2: [V1, C2] 每个 L1 下的二层前缀编号（-1 填充）
        self.children2 = _padded_groups(self.prefix2_l1, v1)
        # 每个二层前缀下的物品（CSR）：children3_items[children3_start[p] : + children3_count[p]]（升序）。
        # 不用按最大格子补齐的 [P2, C3] 表：格子大小极不均匀（Beauty 最大 59、平均 1.9），
        # 束搜索第 3 层只展开真实存在的物品
        self.children3_count = torch.bincount(item_p2, minlength=uniq2.numel())  # [P2]
        self.children3_start = torch.cumsum(self.children3_count, 0) - self.children3_count  # [P2]
        self.children3_items = torch.argsort(item_p2, stable=True)  # [N]
        self._prefix2_index = None
        self._prefix2_mask = None

    def prefix2_index(self) -> torch.Tensor:
        """[V1, V2] 的 (l1, l2) -> 二层前缀编号，不存在的为 -1（第一次用时建，之后缓存）。"""
        if self._prefix2_index is None:
            v1, v2 = self.vocab_sizes[0], self.vocab_sizes[1]
            table = torch.full((v1 * v2,), -1, dtype=torch.long)
            table[self.prefix2_l1 * v2 + self.prefix2_l2] = torch.arange(self.prefix2_l1.numel())
            self._prefix2_index = table.view(v1, v2)
        return self._prefix2_index

    def prefix2_mask(self) -> torch.Tensor:
        """[V1, V2] float：存在的 (l1, l2) 为 0，不存在的为 -inf（束搜索第 2 层稠密路径加在分数上；缓存）。"""
        if self._prefix2_mask is None:
            index = self.prefix2_index()
            self._prefix2_mask = torch.zeros(index.shape).masked_fill(index < 0, NEG_INF)
        return self._prefix2_mask

    # ---- 构造 ----

    @classmethod
    def from_parquet(cls, path: Union[str, Path], vocab_sizes: Optional[Sequence[int]] = None) -> "ItemCatalogue":
        """读 `ugt prepare` 写出的 items.parquet（列 item_index, l1, l2, l3）。"""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"items table not found: {path}")
        table = pq.read_table(path)
        missing = [c for c in ("item_index", "l1", "l2", "l3") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected item_index, l1, l2, l3")
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("item_index", "l1", "l2", "l3")}
        for c, arr in cols.items():
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{path}: column '{c}' must be integer, got {arr.dtype}")
        return cls.from_arrays(cols["l1"], cols["l2"], cols["l3"], cols["item_index"], vocab_sizes, source=str(path))

    @classmethod
    def from_arrays(cls, l1, l2, l3, item_index=None, vocab_sizes=None, source: str = "<arrays>") -> "ItemCatalogue":
        triples = np.stack([np.asarray(l1), np.asarray(l2), np.asarray(l3)], axis=1).astype(np.int64)
        if item_index is not None:
            item_index = np.asarray(item_index, dtype=np.int64)
            n = len(item_index)
            if sorted(item_index.tolist()) != list(range(n)):
                raise ValueError(f"{source}: item_index must be a permutation of 0..{n - 1}")
            out = np.empty_like(triples)
            out[item_index] = triples
            triples = out
        return cls(triples, vocab_sizes, source)

    # ---- 查询 ----

    @property
    def num_items(self) -> int:
        return self.triples.shape[0]

    def pack(self, triples):
        """三元组 [..., 3] -> 整数键 [...]（本目录的词表进制；不检查是否在目录里）。"""
        return pack_triples(triples, self.vocab_sizes)

    def lookup(self, triples: torch.Tensor) -> torch.Tensor:
        """三元组 [..., 3] -> item_index [...]；不在目录里的返回 -1。"""
        t = torch.as_tensor(triples).long().cpu()
        v1, v2, v3 = self.vocab_sizes
        inside = (t >= 0).all(-1) & (t[..., 0] < v1) & (t[..., 1] < v2) & (t[..., 2] < v3)
        keys = self.pack(t)
        pos = torch.searchsorted(self._sorted_keys, keys.reshape(-1)).clamp(max=self.num_items - 1).view_as(keys)
        found = inside & (self._sorted_keys[pos] == keys)
        return torch.where(found, self._key_order[pos], torch.full_like(keys, -1))

    def exclusion_mask(self, exclude, num_users: int) -> Optional[torch.Tensor]:
        """exclude: None、[N, num_items] bool 或每个用户的 item_index 列表 -> bool [N, num_items]（True = 不推荐）。"""
        if exclude is None:
            return None
        if torch.is_tensor(exclude) and exclude.dtype == torch.bool:
            if tuple(exclude.shape) != (num_users, self.num_items):
                raise ValueError(
                    f"exclude mask must have shape {(num_users, self.num_items)}, got {tuple(exclude.shape)}"
                )
            return exclude.cpu()
        if len(exclude) != num_users:
            raise ValueError(f"exclude has {len(exclude)} rows, expected one per user ({num_users})")
        mask = torch.zeros(num_users, self.num_items, dtype=torch.bool)
        for u, items in enumerate(exclude):
            idx = torch.as_tensor(list(items), dtype=torch.long)
            idx = idx[idx >= 0]
            if idx.numel() and int(idx.max()) >= self.num_items:
                raise ValueError(f"exclude row {u}: item_index {int(idx.max())} >= num_items {self.num_items}")
            mask[u, idx] = True
        return mask

    def history_items(self, encoder_semantic_ids: torch.Tensor, encoder_attention_mask=None) -> List[List[int]]:
        """从编码器输入里取出历史物品的 item_index（用于“不推荐历史物品”开关）。"""
        ids = torch.as_tensor(encoder_semantic_ids)
        if isinstance(encoder_semantic_ids, (list, tuple)):
            ids = torch.stack([torch.as_tensor(x) for x in encoder_semantic_ids], dim=-1)
        idx = self.lookup(ids)  # [B, Te]
        if encoder_attention_mask is not None:
            idx = torch.where(torch.as_tensor(encoder_attention_mask).bool().cpu(), idx, torch.full_like(idx, -1))
        return [[int(i) for i in row if i >= 0] for row in idx]


def _padded_groups(group_of: torch.Tensor, num_groups: int) -> torch.Tensor:
    """group_of: [M] 每个成员所属的组 -> [num_groups, Cmax]，每行是该组成员的编号（升序），-1 填充。"""
    m = group_of.numel()
    order = torch.argsort(group_of, stable=True)
    counts = torch.bincount(group_of, minlength=num_groups)
    cmax = max(int(counts.max()), 1)
    starts = torch.cumsum(counts, 0) - counts
    g = group_of[order]
    slot = torch.arange(m) - starts[g]
    table = torch.full((num_groups, cmax), -1, dtype=torch.long)
    table[g, slot] = order
    return table


# ---------------------------------------------------------------------------
# 结果
# ---------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """item_indices [N, K]（不足 K 个合法物品时以 -1 填充）、scores [N, K]（log p(item)，缺位为 -inf）、
    triples [N, K, 3]（缺位为 -1）、exact [N]（结果是否可证明等于穷举 top-K）。"""

    item_indices: torch.Tensor
    scores: torch.Tensor
    triples: torch.Tensor
    exact: torch.Tensor


def _finish(
    catalogue: ItemCatalogue, scores: torch.Tensor, items: torch.Tensor, exact: torch.Tensor
) -> GenerationResult:
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    triples = catalogue.triples[items.clamp(min=0).cpu()]
    triples[items.cpu() < 0] = -1
    return GenerationResult(items.cpu(), scores.cpu(), triples, exact.cpu())


# ---------------------------------------------------------------------------
# 束搜索
# ---------------------------------------------------------------------------


@torch.no_grad()
def beam_search(
    model,
    states: torch.Tensor,
    catalogue: ItemCatalogue,
    num_beams: int = 20,
    top_k: int = 10,
    exclude=None,
    batch_size: int = 1024,
    max_elements: int = 1 << 24,
    previous_items: Optional[torch.Tensor] = None,
) -> GenerationResult:
    """对每个用户状态做三层受约束束搜索。

    Args:
        model: 提供 level1_logits / level2_logits / level3_logits 的模型（如 UGTForGenerativeRecommendation）
        states: [N, D] 预测位置的解码器状态（`model.prediction_states(...)`）
        num_beams: 第 1、2 层保留的前缀数（必须 >= top_k）
        exclude: 见 `ItemCatalogue.exclusion_mask`（如历史物品）
        batch_size / max_elements: 每块最多 batch_size 个用户，且 用户数 * num_beams * max(V) <= max_elements
            （L3 词表 16384 时一块约 50 个用户，logits 约 64 MB）
        previous_items: [N, 3] 每个用户预测位置之前的物品（`model.prediction_previous_items(...)`）；
            模型开了宽记忆项（transition_buckets）时必需，其余模型不用给
    """
    if num_beams < top_k:
        raise ValueError(f"num_beams ({num_beams}) must be >= top_k ({top_k})")
    mask = catalogue.exclusion_mask(exclude, states.shape[0])
    if _item_head_scoring(model) == "item":  # 只用物品头：全目录稠密打分，精确 top-K
        return exhaustive_topk(model, states, catalogue, top_k=top_k, exclude=mask, previous_items=previous_items)
    vmax = max(model.config.vocab_sizes) if hasattr(model, "config") else max(catalogue.vocab_sizes)
    batch_size = max(1, min(batch_size, max_elements // (num_beams * vmax)))
    outs = []
    for start in range(0, states.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        prev = None if previous_items is None else previous_items[sl].to(states.device)
        excl = None if mask is None else mask[sl]
        outs.append(_beam_chunk(model, states[sl], catalogue, num_beams, top_k, excl, prev))
    fields = ("item_indices", "scores", "triples", "exact")
    return GenerationResult(*(torch.cat([getattr(o, f) for o in outs]) for f in fields))


def _topk_with_bound(scores: torch.Tensor, k: int):
    """取 top-k，同时返回第 k+1 名（被剪掉的最高分）作为上界；不足时为 -inf。scores: [N, M]"""
    k_eff = min(k, scores.shape[1])
    if scores.shape[1] > k_eff:
        vals, idx = scores.topk(k_eff + 1, dim=1)
        return vals[:, :k_eff], idx[:, :k_eff], vals[:, k_eff]
    vals, idx = scores.topk(k_eff, dim=1)
    return vals, idx, scores.new_full((scores.shape[0],), NEG_INF)


def _item_head_scoring(model) -> Optional[str]:
    """模型的物品头打分方式（"sum" / "item"）；没有物品头的模型为 None。"""
    if getattr(model, "item_head", None) is None:
        return None
    return getattr(model.config, "item_scoring", "sum")


def _item_term(model, states: torch.Tensor, catalogue: ItemCatalogue) -> Optional[torch.Tensor]:
    """物品头的 log softmax [N, num_items]（列 = 目录的 item_index）；没有物品头时 None。目录与模型不一致时报错。"""
    if _item_head_scoring(model) is None:
        return None
    own = model.item_head.triples
    if tuple(own.shape) != tuple(catalogue.triples.shape) or not torch.equal(own.cpu(), catalogue.triples):
        raise ValueError(
            f"catalogue {catalogue.source} ({catalogue.num_items} items) does not match the item head's catalogue "
            f"({own.shape[0]} items, saved with the model): item indices would not line up"
        )
    return model.item_head_log_probs(states)


def _prev_kw(prev: Optional[torch.Tensor], *lead: int) -> dict:
    """previous_items 按 states 的前缀维度展开后作为关键字参数；没有时不传（不认识它的模型也能用）。"""
    if prev is None:
        return {}
    return {"previous_items": prev.reshape(prev.shape[0], *([1] * (len(lead) - 1)), 3).expand(*lead, 3)}


def _beam_chunk(model, states, catalogue: ItemCatalogue, num_beams, top_k, excl, prev=None):
    device = states.device
    n = states.shape[0]
    children2 = catalogue.children2.to(device)
    p2_l2 = catalogue.prefix2_l2.to(device)
    item_l3 = catalogue.triples[:, 2].to(device)

    # 第 1 层：只在合法 L1 上
    lp1 = torch.log_softmax(model.level1_logits(states, **_prev_kw(prev, n)).float(), dim=-1)  # [N, V1]
    lp1 = lp1.masked_fill(~catalogue.level1_valid.to(device), NEG_INF)
    s1, l1, bound = _topk_with_bound(lp1, num_beams)  # [N, B1]
    b1 = l1.shape[1]

    # 第 2 层：beam 中每个 L1 的子前缀
    u1 = catalogue.level1_values.to(device)  # [U1]
    if u1.numel() <= 2 * b1:
        # 合法 L1 不比 beam 多太多时（小 L1 词表），所有用户对全部合法 L1 一起算：前缀在用户间共享，
        # 节点向量按前缀批量做稠密矩阵乘，比逐行取哈希嵌入快得多；再取各自 beam 的那几行，只对它们加按用户
        # 查表的宽记忆项、做 log_softmax（都是逐行的运算，数值与全部算完再取相同）
        wide = prev is not None and getattr(model, "transition", None) is not None
        kw = {"with_transition": False} if wide else _prev_kw(prev, n, u1.numel())
        logits2_all = model.level2_logits(states[:, None], u1[None], **kw)  # [N, U1, V2]
        pos = torch.searchsorted(u1, l1.contiguous()).clamp(max=u1.numel() - 1)  # [N, B1]；不合法的 L1 分数已是 -inf
        logits2 = logits2_all.gather(1, pos[..., None].expand(n, b1, logits2_all.shape[-1]))  # [N, B1, V2]
        if wide:
            bias = model.transition_logits(prev[:, None].expand(n, b1, 3), l1[..., None], logits2.shape[-1], 2)
            logits2 = logits2 + bias.to(logits2.dtype)
        lp2 = torch.log_softmax(logits2.float(), dim=-1)  # [N, B1, V2]
    else:
        logits2 = model.level2_logits(states[:, None], l1, **_prev_kw(prev, n, b1))
        lp2 = torch.log_softmax(logits2.float(), dim=-1)  # [N, B1, V2]
    v2 = lp2.shape[-1]
    if 2 * children2.shape[1] >= v2:
        # L1 的子节点几乎占满 L2 词表时（小词表），直接在 [N, B1, V2] 上屏蔽不存在的 (l1, l2)：
        # 省去按补齐的子节点表取数（候选的相对顺序与按子节点表取相同，都是 l2 升序）
        p2_of = catalogue.prefix2_index().to(device)  # [V1, V2]
        # 加 0 / -inf 的表（逐位等于 masked_fill），原地加在 lp2 上：省掉 bool 掩码与两个 [N, B1, V2] 的临时张量
        sc2 = lp2.add_(s1.unsqueeze(-1)).add_(catalogue.prefix2_mask().to(device)[l1])  # [N, B1, V2]
        s2, flat, bound2 = _topk_with_bound(sc2.reshape(n, -1), num_beams)  # [N, B2]
        beam_idx = flat // v2
        l2_2 = flat % v2
        l1_2 = l1.gather(1, beam_idx)
        p2 = p2_of[l1_2, l2_2].clamp(min=0)  # [N, B2]；-1 只出现在分数为 -inf 的位置
    else:
        cand_p2 = children2[l1]  # [N, B1, C2]
        ok = cand_p2 >= 0
        cand_l2 = p2_l2[cand_p2.clamp(min=0)]
        sc2 = (s1.unsqueeze(-1) + lp2.gather(2, cand_l2)).masked_fill(~ok, NEG_INF)
        s2, flat, bound2 = _topk_with_bound(sc2.reshape(n, -1), num_beams)  # [N, B2]
        c2 = cand_p2.shape[2]
        beam_idx = flat // c2
        p2 = cand_p2.reshape(n, -1).gather(1, flat).clamp(min=0)  # [N, B2]
        l1_2 = l1.gather(1, beam_idx)
        l2_2 = p2_l2[p2]
    bound = torch.maximum(bound, bound2)
    b2 = p2.shape[1]

    # 第 3 层：每个二层前缀下的物品。只展开真实存在的 (beam, 物品) 对（CSR），再按用户补齐到本块最多的那个用户
    logits3 = model.level3_logits(states[:, None], l1_2, l2_2, **_prev_kw(prev, n, b2)).float()  # [N, B2, V3]
    v3 = logits3.shape[-1]
    lse3 = torch.logsumexp(logits3, dim=-1)  # [N, B2]
    cnt = catalogue.children3_count.to(device)[p2]
    cnt = torch.where(torch.isfinite(s2), cnt, torch.zeros_like(cnt)).reshape(-1)  # [N·B2]
    total = int(cnt.sum())
    beam = torch.repeat_interleave(torch.arange(n * b2, device=device), cnt)  # [T] 每个候选属于哪个 beam
    seq = torch.arange(total, device=device)
    first = torch.cumsum(cnt, 0) - cnt
    item = catalogue.children3_items.to(device)[
        catalogue.children3_start.to(device)[p2.reshape(-1)[beam]] + seq - first[beam]]  # [T]
    user = beam // b2
    score = (s2.reshape(-1)[beam] + logits3.reshape(-1, v3)[beam, item_l3[item]] - lse3.reshape(-1)[beam])  # [T]
    item_lp = _item_term(model, states, catalogue)  # [N, num_items] 或 None
    if item_lp is not None:  # 物品项 <= 0：前缀分仍是物品分的上界，证书不变
        score = score + item_lp[user, item]
    if excl is not None:
        score = score.masked_fill(excl.to(device)[user, item], NEG_INF)
    per_user = cnt.view(n, b2).sum(1)  # [N]
    width = max(int(per_user.max()), 1) if n else 1
    slot = seq - (torch.cumsum(per_user, 0) - per_user)[user]
    sc3 = torch.full((n, width), NEG_INF, device=device)
    sc3[user, slot] = score
    cand = torch.full((n, width), -1, dtype=torch.long, device=device)
    cand[user, slot] = item
    vals, flat = sc3.topk(min(top_k, width), dim=1)
    items = cand.gather(1, flat)
    if vals.shape[1] < top_k:  # 合法物品太少时补位
        pad = top_k - vals.shape[1]
        vals = torch.cat([vals, vals.new_full((n, pad), NEG_INF)], 1)
        items = torch.cat([items, items.new_full((n, pad), -1)], 1)
    # 证书：第 K 名 >= 被剪前缀的最高累计分（物品分 <= 前缀分）
    exact = vals[:, -1] >= bound
    return _finish(catalogue, vals, items, exact)


# ---------------------------------------------------------------------------
# 穷举打分
# ---------------------------------------------------------------------------


@torch.no_grad()
def exhaustive_scores(
    model, states: torch.Tensor, catalogue: ItemCatalogue, batch_size: int = 64, max_elements: int = 1 << 23,
    previous_items: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """每个用户对目录中每个物品的 log p(item)：[N, num_items]（列 = item_index）。

    L2 头对每个出现过的 L1、L3 头对每个二层前缀各算一次完整 softmax；按块计算以控制内存（max_elements 个 logit）。
    开了物品头时加上（"sum"）或只用（"item"）物品头的 log softmax。
    """
    if _item_head_scoring(model) == "item":
        return torch.cat([_item_term(model, states[i : i + batch_size], catalogue).cpu()
                          for i in range(0, states.shape[0], batch_size)])
    device = states.device
    u1 = catalogue.level1_values.to(device)  # [U1]
    p2_l1 = catalogue.prefix2_l1.to(device)
    p2_l2 = catalogue.prefix2_l2.to(device)
    items = catalogue.triples.to(device)
    item_p2 = catalogue.item_prefix2.to(device)
    v1, v2, v3 = model.config.vocab_sizes if hasattr(model, "config") else catalogue.vocab_sizes
    # 第 1 层码字在 u1 中的位置（用于把 [N, U1] 的条件分布对回二层前缀）
    pos_in_u1 = torch.searchsorted(u1, p2_l1)  # [P2]
    out = []
    for start in range(0, states.shape[0], batch_size):
        s = states[start : start + batch_size]
        n = s.shape[0]
        prev = None if previous_items is None else previous_items[start : start + batch_size].to(device)
        lp1 = torch.log_softmax(model.level1_logits(s, **_prev_kw(prev, n)).float(), dim=-1)  # [N, V1]
        lp2_u = _blockwise(lambda blk: model.level2_logits(s[:, None], blk[None], **_prev_kw(prev, n, blk.numel())),
                           u1, None, n, v2, max_elements)  # [N, U1, V2]
        lp2 = lp2_u[:, pos_in_u1].gather(2, p2_l2[None, :, None].expand(n, -1, 1)).squeeze(-1)  # [N, P2]
        # 第 3 层：逐块的二层前缀，只取目录里存在的 L3
        lp3_item = torch.empty(n, catalogue.num_items, device=device)
        p2_count = p2_l1.numel()
        block = max(1, max_elements // max(1, n * v3))
        for b0 in range(0, p2_count, block):
            pids = torch.arange(b0, min(p2_count, b0 + block), device=device)
            # 前缀在用户间共享（[1, blk]）：模型按前缀批量算节点向量，状态广播
            lg = model.level3_logits(s[:, None], p2_l1[pids][None], p2_l2[pids][None],
                                     **_prev_kw(prev, n, pids.numel()))
            lp3 = torch.log_softmax(lg.float(), dim=-1)  # [N, blk, V3]
            sel = (item_p2 >= b0) & (item_p2 < b0 + pids.numel())
            idx = sel.nonzero(as_tuple=True)[0]
            lp3_item[:, idx] = lp3[:, item_p2[idx] - b0, items[idx, 2]]
        score = lp1[:, items[:, 0]] + lp2[:, item_p2] + lp3_item
        item_lp = _item_term(model, s, catalogue)
        out.append(score if item_lp is None else score + item_lp.to(device))
    return torch.cat(out).cpu()


def _blockwise(fn, values: torch.Tensor, _unused, n: int, vocab: int, max_elements: int) -> torch.Tensor:
    """对 values 分块调用 fn，返回拼接后的 log_softmax：[N, len(values), vocab]"""
    block = max(1, max_elements // max(1, n * vocab))
    parts = [torch.log_softmax(fn(values[i : i + block]).float(), dim=-1) for i in range(0, values.numel(), block)]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def exhaustive_topk(model, states: torch.Tensor, catalogue: ItemCatalogue, top_k: int = 10, exclude=None,
                    batch_size: int = 64, previous_items: Optional[torch.Tensor] = None):
    """穷举 top-K（校验束搜索用）。"""
    scores = exhaustive_scores(model, states, catalogue, batch_size=batch_size, previous_items=previous_items)
    mask = catalogue.exclusion_mask(exclude, states.shape[0])
    if mask is not None:
        scores = scores.masked_fill(mask, NEG_INF)
    k = min(top_k, scores.shape[1])
    vals, items = scores.topk(k, dim=1)
    if k < top_k:
        vals = torch.cat([vals, vals.new_full((vals.shape[0], top_k - k), NEG_INF)], 1)
        items = torch.cat([items, items.new_full((items.shape[0], top_k - k), -1)], 1)
    return _finish(catalogue, vals, items, torch.ones(vals.shape[0], dtype=torch.bool))


# ---------------------------------------------------------------------------
# 便捷入口：批次 -> top-K
# ---------------------------------------------------------------------------


@torch.no_grad()
def prediction_previous_items(
    model, batch: dict, position: Union[int, str, torch.Tensor] = 0
) -> Optional[torch.Tensor]:
    """模型用宽记忆项（transition_buckets > 0）时返回预测位置之前的物品 [B, 3]，否则 None。"""
    if getattr(model, "transition", None) is None or not hasattr(model, "prediction_previous_items"):
        return None
    return model.prediction_previous_items(position=position, **batch)


def recommend(
    model,
    batch: dict,
    catalogue: ItemCatalogue,
    top_k: int = 10,
    num_beams: int = 20,
    exclude_history: bool = False,
    position: Union[int, str, torch.Tensor] = 0,
    method: str = "beam",
) -> GenerationResult:
    """模型批次（契约键）-> top-K 物品。position：0 = BOS（评估样本），"last" = 每行最后一个有效解码位置，或 [B] 张量。

    exclude_history=True 时不推荐编码器历史里的物品（结果表须注明所用设置）。
    """
    was_training = model.training
    model.eval()
    try:
        states = model.prediction_states(position=position, **batch)
        prev = prediction_previous_items(model, batch, position)
    finally:
        model.train(was_training)
    exclude = None
    if exclude_history:
        exclude = catalogue.history_items(batch["encoder_semantic_ids"], batch.get("encoder_attention_mask"))
    if method == "beam":
        return beam_search(model, states, catalogue, num_beams=num_beams, top_k=top_k, exclude=exclude,
                           previous_items=prev)
    if method == "exhaustive":
        return exhaustive_topk(model, states, catalogue, top_k=top_k, exclude=exclude, previous_items=prev)
    raise ValueError(f"method must be 'beam' or 'exhaustive', got {method!r}")


__all__ = [
    "ItemCatalogue",
    "GenerationResult",
    "beam_search",
    "exhaustive_scores",
    "exhaustive_topk",
    "recommend",
    "prediction_previous_items",
]
