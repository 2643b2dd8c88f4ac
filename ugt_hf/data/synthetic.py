"""合成交互数据：演示与测试的默认数据源。

生成过程（同一 seed 结果完全相同）：
- 物品分成 num_clusters 个簇，簇内物品有 Zipf 流行度；
- 每个簇有一个稀疏的簇级马尔可夫转移（多数概率落在少数“下一簇”上）；
- 每个物品有 num_successors 个“后继物品”（位于它的主要下一簇中），形成物品级的顺序结构；
- 用户有 Dirichlet 簇偏好；下一个事件以 p_successor 的概率取当前物品的后继，否则按
  （簇转移 × 用户偏好）选簇、再按流行度选物品；
- 评分：用户偏好簇内的物品评分高（≥4），其他簇低，外加噪声，因此同时有 chosen/rejected 对。

为什么这样设计：顺序结构让“会学习的模型”能明显超过流行度基线（见 tests/test_synthetic.py），
簇结构让协同语义 ID 有可学习的层次含义。
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from .readers import Interactions


@dataclass
class SyntheticConfig:
    num_users: int = 2000  # 用户数
    num_items: int = 500  # 物品数
    events_per_user: int = 20  # 每个用户的平均事件数（实际在 [0.5x, 1.5x] 间均匀抽取，至少 4）
    num_clusters: int = 20  # 物品簇数
    num_successors: int = 3  # 每个物品的后继物品数
    p_successor: float = 0.6  # 下一个事件取后继物品的概率
    zipf_a: float = 1.1  # 簇内流行度的 Zipf 指数
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("SyntheticConfig needs num_users >= 1 and num_items >= 2")
        if not 1 <= self.num_clusters <= self.num_items:
            raise ValueError(f"SyntheticConfig.num_clusters must be in [1, num_items], got {self.num_clusters}")
        if self.events_per_user < 3:
            raise ValueError("SyntheticConfig.events_per_user must be >= 3")
        if not 0.0 <= self.p_successor <= 1.0:
            raise ValueError("SyntheticConfig.p_successor must be in [0, 1]")

    def checksum(self) -> str:
        """合成数据没有输入文件：用生成参数的哈希作为“输入校验和”。"""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def generate(config: SyntheticConfig) -> Interactions:
    """生成合成交互表（user/item 为字符串 id：u{n} / i{n}，带评分与标题）。"""
    rng = np.random.default_rng(config.seed)
    n_items, n_clusters = config.num_items, config.num_clusters
    # 物品 -> 簇（随机置换后均分，每簇至少一个物品）
    cluster_of = np.empty(n_items, dtype=np.int64)
    perm = rng.permutation(n_items)
    for c, chunk in enumerate(np.array_split(perm, n_clusters)):
        cluster_of[chunk] = c
    members = [np.flatnonzero(cluster_of == c) for c in range(n_clusters)]
    # 簇内 Zipf 流行度
    pop = []
    for m in members:
        w = 1.0 / np.arange(1, len(m) + 1) ** config.zipf_a
        w = w[rng.permutation(len(m))]
        pop.append(w / w.sum())
    # 稀疏的簇级转移：每簇 3 个主要下一簇（含自身的概率较小）
    trans = np.full((n_clusters, n_clusters), 0.02 / max(1, n_clusters))
    for c in range(n_clusters):
        nxt = rng.choice(n_clusters, size=min(3, n_clusters), replace=False)
        trans[c, nxt] += np.array([0.6, 0.25, 0.15])[: len(nxt)]
    trans /= trans.sum(1, keepdims=True)
    # 物品级后继：位于本簇最可能的下一簇中
    top_next = trans.argmax(1)
    successors = np.empty((n_items, config.num_successors), dtype=np.int64)
    for i in range(n_items):
        cand = members[top_next[cluster_of[i]]]
        successors[i] = rng.choice(cand, size=config.num_successors, replace=len(cand) < config.num_successors,
                                   p=pop[top_next[cluster_of[i]]])
    succ_w = np.array([0.6, 0.3, 0.1][: config.num_successors] + [0.1] * max(0, config.num_successors - 3))
    succ_w = succ_w / succ_w.sum()

    users, items, ts, ratings = [], [], [], []
    lo, hi = max(4, config.events_per_user // 2), max(5, (3 * config.events_per_user) // 2)
    for u in range(config.num_users):
        pref = rng.dirichlet(np.full(n_clusters, 0.3))
        liked = set(np.argsort(-pref)[:3].tolist())
        n = int(rng.integers(lo, hi + 1))
        c = int(rng.choice(n_clusters, p=pref))
        item = int(rng.choice(members[c], p=pop[c]))
        t = int(rng.integers(0, 10_000))
        seq = [item]
        for _ in range(n - 1):
            if rng.random() < config.p_successor:
                item = int(successors[item, rng.choice(config.num_successors, p=succ_w)])
            else:
                p = trans[cluster_of[item]] * (pref + 0.05)
                p = p / p.sum()
                c = int(rng.choice(n_clusters, p=p))
                item = int(rng.choice(members[c], p=pop[c]))
            seq.append(item)
        for k, it in enumerate(seq):
            base = 4.3 if int(cluster_of[it]) in liked else 2.3
            r = int(np.clip(np.rint(base + rng.normal(0.0, 0.9)), 1, 5))
            users.append(f"u{u}")
            items.append(f"i{it}")
            ts.append(t + 60 * k)
            ratings.append(r)
    titles = {f"i{i}": f"item {i} (cluster {cluster_of[i]})" for i in range(n_items)}
    return Interactions(
        user=np.asarray(users, dtype=object),
        item=np.asarray(items, dtype=object),
        timestamp=np.asarray(ts, dtype=np.int64),
        rating=np.asarray(ratings, dtype=np.float32),
        titles=titles,
        files=[],
        stats={},
        warnings=[],
    )
