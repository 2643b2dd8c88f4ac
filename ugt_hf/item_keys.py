"""(l1, l2, l3) 三元组 <-> 整数键：全包唯一的一条打包规则（混合进制），numpy 数组与 torch 张量通用。

    key = (l1 * V2 + l2) * V3 + l3

`generation.ItemCatalogue` 用数据的词表大小打包（键即排序查找的依据）；`metrics` 不知道词表时用固定进制
`METRICS_RADIX`（每层 2^21），此时键恰好等于 l1<<42 | l2<<21 | l3。本模块不依赖 torch，处于最底层。
"""

from __future__ import annotations

from typing import Any, Sequence

METRICS_CODE_BITS = 21
METRICS_RADIX = (1 << METRICS_CODE_BITS,) * 3  # 每层码字 < 2^21 时无冲突


def pack_triples(triples: Any, vocab_sizes: Sequence[int]) -> Any:
    """[..., 3] 非负码字 -> [...] 整数键；同一输入类型进同一类型出（numpy / torch）。调用方负责越界检查。"""
    _, v2, v3 = (int(v) for v in vocab_sizes)
    return (triples[..., 0] * v2 + triples[..., 1]) * v3 + triples[..., 2]


def key_l1(keys: Any, vocab_sizes: Sequence[int]) -> Any:
    """键 -> L1 码（pack_triples 的第一层逆运算；键须非负）。"""
    _, v2, v3 = (int(v) for v in vocab_sizes)
    return keys // (v2 * v3)


__all__ = ["METRICS_CODE_BITS", "METRICS_RADIX", "pack_triples", "key_l1"]
