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


@dataclass
class SyntheticTruth:
    """generate() 抽出的隐变量：生成过程的真实参数。用来算“知道答案的”排序与偏好准确率上限
    （benchmarks/demo_oracle.py），说明一个模型离这份数据能达到的最好还差多少。
    物品、用户都是 0 起的下标（i{n} / u{n}）。"""

    cluster_of: np.ndarray  # [N] 物品 -> 簇
    pop: np.ndarray  # [C, N] 簇内流行度（簇外为 0，每行和为 1）
    trans: np.ndarray  # [C, C] 簇级转移
    successors: np.ndarray  # [N, S] 每个物品的后继物品
    succ_w: np.ndarray  # [S] 取第几个后继的概率
    p_successor: float
    user_pref: np.ndarray  # [U, C] 每个用户的 Dirichlet 簇偏好
    liked: np.ndarray  # [U, 3] 评分高的簇（偏好最大的 3 个）

    def next_item_probs(self, prev: int, user: int) -> np.ndarray:
        """P(下一个物品 | 当前物品 prev, 用户 user) [N]：与 generate() 的抽样规则逐项对应。"""
        p = np.zeros(self.pop.shape[1])
        np.add.at(p, self.successors[prev], self.p_successor * self.succ_w)
        c = self.trans[self.cluster_of[prev]] * (self.user_pref[user] + 0.05)
        return p + (1.0 - self.p_successor) * (c / c.sum()) @ self.pop


def generate(config: SyntheticConfig) -> Interactions:
    """生成合成交互表（user/item 为字符串 id：u{n} / i{n}，带评分与标题）。"""
    return generate_with_truth(config)[0]


def generate_with_truth(config: SyntheticConfig):
    """同 generate()，另返回生成它的隐变量（SyntheticTruth）；交互表与 generate() 逐项相同（同一串随机数）。"""
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
    prefs, liked_all = [], []
    lo, hi = max(4, config.events_per_user // 2), max(5, (3 * config.events_per_user) // 2)
    for u in range(config.num_users):
        pref = rng.dirichlet(np.full(n_clusters, 0.3))
        top3 = np.argsort(-pref)[:3]
        liked = set(top3.tolist())
        prefs.append(pref)
        liked_all.append(np.resize(top3, 3))
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
    inter = Interactions(
        user=np.asarray(users, dtype=object),
        item=np.asarray(items, dtype=object),
        timestamp=np.asarray(ts, dtype=np.int64),
        rating=np.asarray(ratings, dtype=np.float32),
        titles=titles,
        files=[],
        stats={},
        warnings=[],
    )
    pop_full = np.zeros((n_clusters, n_items))
    for c, m in enumerate(members):
        pop_full[c, m] = pop[c]
    truth = SyntheticTruth(cluster_of=cluster_of, pop=pop_full, trans=trans, successors=successors, succ_w=succ_w,
                           p_successor=float(config.p_successor), user_pref=np.asarray(prefs).reshape(-1, n_clusters),
                           liked=np.asarray(liked_all, dtype=np.int64).reshape(-1, 3))
    return inter, truth


# ------------------------------------------------------------------------------------------------ 长尾、可扩展的版本
@dataclass
class LongTailConfig:
    """长尾合成日志（规模基准用；generate() 与 SyntheticConfig 不受影响）。

    与 generate() 的区别，以及为什么：
    - 物品流行度是全目录的 Zipf（少数物品占大部分交互），序列长度是对数正态（少数用户很长），
      这是真实日志的形状，决定了 prepare 与训练在规模上的代价；
    - 按“序列第 k 个事件”对所有用户一起向量化生成，千万级交互也只是数秒到数十秒，而不是逐事件的 Python 循环。
    结构仍可学习：下一个事件以 p_successor 取当前物品的后继（位于其簇的“下一簇”），否则以 p_cluster 取用户偏好簇内
    的热门物品，再否则按全局流行度抽。
    """

    num_users: int = 2000
    num_items: int = 500
    mean_events: float = 20.0  # 每用户事件数的均值（对数正态）
    length_sigma: float = 0.8  # 对数正态的 sigma：越大尾巴越长
    min_events: int = 4
    max_events: int = 500
    zipf_a: float = 1.0  # 全目录流行度的 Zipf 指数
    num_clusters: int = 50
    num_successors: int = 3
    p_successor: float = 0.4
    p_cluster: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("LongTailConfig needs num_users >= 1 and num_items >= 2")
        if not 1 <= self.num_clusters <= self.num_items:
            raise ValueError(f"LongTailConfig.num_clusters must be in [1, num_items], got {self.num_clusters}")
        if not 3 <= self.min_events <= self.max_events:
            raise ValueError("LongTailConfig needs 3 <= min_events <= max_events "
                             f"(got {self.min_events}, {self.max_events})")
        for name in ("p_successor", "p_cluster"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LongTailConfig.{name} must be in [0, 1]")
        if self.mean_events <= 0 or self.length_sigma < 0 or self.zipf_a < 0 or self.num_successors < 1:
            raise ValueError("LongTailConfig needs mean_events > 0, length_sigma >= 0, zipf_a >= 0, "
                             "num_successors >= 1")

    @classmethod
    def for_interactions(cls, n: int, items_per_interaction: float = 1 / 16, max_items: int = 1_000_000,
                         **kwargs) -> "LongTailConfig":
        """约 n 条交互的配置：用户数 = n / mean_events，物品数 = n × items_per_interaction（上限 max_items）。"""
        mean = float(kwargs.get("mean_events", cls.mean_events))
        items = int(min(max_items, max(10, round(n * items_per_interaction))))
        clusters = int(kwargs.pop("num_clusters", max(1, min(1024, items // 20))))
        return cls(num_users=max(1, round(n / mean)), num_items=items, num_clusters=clusters, **kwargs)

    def checksum(self) -> str:
        return hashlib.sha256(json.dumps({"long_tail": asdict(self)}, sort_keys=True).encode()).hexdigest()


def _cluster_sampler(cluster_of: np.ndarray, weight: np.ndarray, num_clusters: int):
    """按簇内权重抽物品的向量化抽样器：sample(clusters, u) -> 物品，u ∈ [0,1) 均匀。

    做法：物品按簇排好，簇 c 内的累积权重归一化后平移到 (c, c+1]，一次 searchsorted 同时完成“选簇内位置”。"""
    order = np.argsort(cluster_of, kind="stable")
    c_sorted = cluster_of[order]
    w = weight[order]
    cum = np.cumsum(w)
    starts = np.searchsorted(c_sorted, np.arange(num_clusters))
    base = np.concatenate([[0.0], cum])[starts]  # 各簇之前的累积和
    total = np.add.reduceat(w, starts)
    key = c_sorted + (cum - base[c_sorted]) / total[c_sorted]
    ends = np.append(starts[1:], len(order)) - 1
    key[ends] = np.arange(num_clusters) + 1.0  # 浮点误差不让最后一个物品落空

    def sample(clusters: np.ndarray, u: np.ndarray) -> np.ndarray:
        return order[np.minimum(np.searchsorted(key, clusters + u), len(order) - 1)]

    return sample


def generate_long_tail(config: LongTailConfig) -> Interactions:
    """长尾合成交互表（user/item 为字符串 id u{n} / i{n}，带评分与标题；同一 seed 结果完全相同）。"""
    rng = np.random.default_rng(config.seed)
    n_users, n_items, n_clusters = config.num_users, config.num_items, config.num_clusters
    mu = np.log(config.mean_events) - config.length_sigma ** 2 / 2  # 使均值为 mean_events
    lengths = np.clip(np.rint(rng.lognormal(mu, config.length_sigma, n_users)), config.min_events,
                      config.max_events).astype(np.int64)
    # 全局 Zipf 流行度（按随机排名），物品均分到各簇
    rank = rng.permutation(n_items)
    pop = 1.0 / (rank + 1.0) ** config.zipf_a
    pop /= pop.sum()
    cluster_of = np.empty(n_items, dtype=np.int64)
    cluster_of[rng.permutation(n_items)] = np.arange(n_items) % n_clusters
    in_cluster = _cluster_sampler(cluster_of, pop, n_clusters)
    global_cum = np.cumsum(pop)
    next_cluster = rng.permutation(n_clusters)  # 每簇的“下一簇”
    successors = in_cluster(np.repeat(next_cluster[cluster_of], config.num_successors),
                            rng.random(n_items * config.num_successors)).reshape(n_items, config.num_successors)
    favourite = rng.integers(0, n_clusters, n_users)

    def fresh(users: np.ndarray) -> np.ndarray:
        out = np.minimum(np.searchsorted(global_cum, rng.random(len(users)) * global_cum[-1]), n_items - 1)
        use_cluster = rng.random(len(users)) < config.p_cluster
        out[use_cluster] = in_cluster(favourite[users[use_cluster]], rng.random(int(use_cluster.sum())))
        return out

    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    items = np.empty(int(lengths.sum()), dtype=np.int64)
    everyone = np.arange(n_users)
    items[offsets] = fresh(everyone)
    for k in range(1, int(lengths.max())):
        users = everyone[lengths > k]
        prev = items[offsets[users] + k - 1]
        nxt = fresh(users)
        succ = rng.random(len(users)) < config.p_successor
        nxt[succ] = successors[prev[succ], rng.integers(0, config.num_successors, int(succ.sum()))]
        items[offsets[users] + k] = nxt
    user_idx = np.repeat(everyone, lengths)
    step = np.arange(len(items)) - np.repeat(offsets, lengths)
    timestamps = np.repeat(rng.integers(0, 10_000, n_users), lengths) + 60 * step
    liked = cluster_of[items] == favourite[user_idx]
    ratings = np.clip(np.rint(np.where(liked, 4.3, 2.3) + rng.normal(0.0, 0.9, len(items))), 1, 5)
    user_names = np.char.add("u", np.arange(n_users).astype(str)).astype(object)
    item_names = np.char.add("i", np.arange(n_items).astype(str)).astype(object)
    titles = {name: f"item {i} (cluster {cluster_of[i]})" for i, name in enumerate(item_names)}
    return Interactions(
        user=user_names[user_idx], item=item_names[items], timestamp=timestamps.astype(np.int64),
        rating=ratings.astype(np.float32), titles=titles, files=[], stats={}, warnings=[],
    )
