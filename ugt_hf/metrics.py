"""离线评估指标（规格第 10 节）：Recall/NDCG/HitRate@K、MRR、Coverage、Gini、Diversity。

输入约定：
- predictions：每个用户的 top-K 物品，整数数组 [N, K]（numpy / torch / 列表）；也接受规格的写法——列表的列表，
  元素是 (l1, l2, l3) 元组，或形如 [N, K, 3] 的数组。元组在内部用 `item_keys.pack_triples`（与 ItemCatalogue
  同一条规则，固定进制 2^21）打包成一个整数 id，数值上等于 l1<<42 | l2<<21 | l3。
  各用户列表长度可以不同，短的用 -1 补齐；负数 id 一律视为 padding（HF Trainer 跨批拼接时用 -100 补齐），
  既不会命中，也不计入 coverage / gini / diversity。
- ground_truth：每个用户一个目标物品，[N]（或 (l1, l2, l3) 元组 / [N, 3]）。-1、负数或 None 表示该用户没有
  真实目标：它仍计入分母，按“未命中”处理（不把缺失目标悄悄剔除，以免抬高指标）。
- 只有一个目标，所以 IDCG = 1，NDCG@K = 1/log2(rank+2)；同一物品在列表中重复出现时只算第一次。
- K 超过列表长度时使用整个列表。

全部向量化（numpy），100,000 用户 × top-50 的全部指标在 1 秒内（benchmarks/bench_metrics.py）。
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .item_keys import METRICS_RADIX, key_l1, pack_triples

_MAX_CODE = METRICS_RADIX[0]  # 每层码字必须 < 2^21 才能无冲突地打包
DEFAULT_K_VALUES = (5, 10, 20, 50)
_MISS = np.iinfo(np.int64).max  # 未命中的“排名”，比任何 K 都大


# ---------------------------------------------------------------------------------------------------------------------
# 输入转换
# ---------------------------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor，不强制依赖 torch
        return x.detach().cpu().numpy()
    return x


def _pack_triples(arr: np.ndarray, what: str) -> np.ndarray:
    """[..., 3] 的 (l1, l2, l3) -> [...] int64 id；任一层为负（padding / 缺失）则结果为 -1。"""
    arr = arr.astype(np.int64, copy=False)
    neg = (arr < 0).any(axis=-1)
    if (arr >= _MAX_CODE).any():
        raise ValueError(f"{what}: semantic id codes must be < {_MAX_CODE} to be packed into item ids")
    return np.where(neg, -1, pack_triples(arr, METRICS_RADIX))


def _is_triple(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 3 and all(
        isinstance(v, (int, np.integer)) for v in x
    )


def to_prediction_ids(predictions: Any) -> Tuple[np.ndarray, bool]:
    """predictions -> ([N, K] int64 id，是否来自 (l1, l2, l3) 元组)。"""
    predictions = _to_numpy(predictions)
    if isinstance(predictions, np.ndarray):
        if predictions.dtype.kind not in "iu":
            if predictions.dtype.kind == "f" and np.all(np.mod(predictions, 1) == 0):
                predictions = predictions.astype(np.int64)
            else:
                raise TypeError(f"predictions must hold integer item ids, got dtype {predictions.dtype}")
        if predictions.ndim == 3 and predictions.shape[-1] == 3:
            return _pack_triples(predictions, "predictions"), True
        if predictions.ndim == 1:  # 只有一个用户
            predictions = predictions[None, :]
        if predictions.ndim != 2:
            raise ValueError(
                f"predictions must be [N, K] item ids or [N, K, 3] triples, got shape {predictions.shape}"
            )
        return predictions.astype(np.int64, copy=False), False
    if not isinstance(predictions, (list, tuple)):
        raise TypeError(f"predictions must be an array or a list of lists, got {type(predictions).__name__}")
    n = len(predictions)
    k = max((len(p) for p in predictions), default=0)
    first = next((p[0] for p in predictions if len(p) > 0), None)
    triples = _is_triple(first) if first is not None else False
    out = np.full((n, k, 3) if triples else (n, k), -1, dtype=np.int64)
    for i, row in enumerate(predictions):
        if len(row) == 0:
            continue
        try:
            out[i, : len(row)] = np.asarray([(-1, -1, -1) if r is None else r for r in row] if triples else
                                            [-1 if r is None else r for r in row], dtype=np.int64)
        except (ValueError, TypeError) as exc:
            kind = "(l1, l2, l3) tuples" if triples else "integer item ids"
            raise ValueError(f"predictions[{i}]: expected a list of {kind}: {exc}") from None
    if triples:
        return _pack_triples(out, "predictions"), True
    return out, False


def to_target_ids(ground_truth: Any, triples: Optional[bool] = None) -> np.ndarray:
    """ground_truth -> [N] int64 id；None / 负数 -> -1（无真实目标）。"""
    ground_truth = _to_numpy(ground_truth)
    if isinstance(ground_truth, np.ndarray):
        arr = ground_truth
        if arr.dtype == object:
            ground_truth = arr.tolist()
        else:
            if arr.ndim == 2 and arr.shape[-1] == 3 and triples is not False:
                return _pack_triples(arr, "ground_truth")
            if arr.ndim == 2 and arr.shape[-1] == 1:
                arr = arr[:, 0]
            if arr.ndim == 0:
                arr = arr[None]
            if arr.ndim != 1:
                raise ValueError(f"ground_truth must be [N] item ids or [N, 3] triples, got shape {arr.shape}")
            if arr.dtype.kind not in "iuf":
                raise TypeError(f"ground_truth must hold integer item ids, got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
            return np.where(arr < 0, -1, arr)
    if not isinstance(ground_truth, (list, tuple)):
        raise TypeError(f"ground_truth must be an array or a list, got {type(ground_truth).__name__}")
    if triples is None:
        triples = any(_is_triple(g) for g in ground_truth)
    if triples:
        out = np.full((len(ground_truth), 3), -1, dtype=np.int64)
        for i, g in enumerate(ground_truth):
            if g is None:
                continue
            if not _is_triple(g):
                raise ValueError(f"ground_truth[{i}]: expected an (l1, l2, l3) tuple or None, got {g!r}")
            out[i] = g
        return _pack_triples(out, "ground_truth")
    out = np.full(len(ground_truth), -1, dtype=np.int64)
    for i, g in enumerate(ground_truth):
        if g is None:
            continue
        if not isinstance(g, (int, np.integer)):
            raise ValueError(f"ground_truth[{i}]: expected an integer item id or None, got {g!r}")
        out[i] = max(int(g), -1)
    return out


def _prepare(predictions: Any, ground_truth: Any) -> Tuple[np.ndarray, np.ndarray, bool]:
    preds, triples = to_prediction_ids(predictions)
    gt = to_target_ids(ground_truth, triples=triples)
    if preds.shape[0] != gt.shape[0]:
        raise ValueError(f"predictions has {preds.shape[0]} users but ground_truth has {gt.shape[0]}")
    return preds, gt, triples


def _check_k(k: int) -> int:
    if int(k) <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    return int(k)


# ---------------------------------------------------------------------------------------------------------------------
# 排名类指标
# ---------------------------------------------------------------------------------------------------------------------


def first_hit_rank(preds: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """每个用户目标物品第一次出现的位置（0 起），未命中 / 无目标为 `_MISS`（int64 最大值）。

    Args:
        preds: [N, K] int64
        gt: [N] int64，-1 表示无目标
    Returns:
        [N] int64
    """
    n, k = preds.shape
    if k == 0:
        return np.full(n, _MISS, dtype=np.int64)
    hits = (preds == gt[:, None]) & (gt >= 0)[:, None]  # [N, K]
    rank = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), rank, _MISS).astype(np.int64)


def _recall_from_rank(rank: np.ndarray, k: int) -> float:
    return float(np.mean(rank < k)) if rank.size else 0.0


def _ndcg_from_rank(rank: np.ndarray, k: int) -> float:
    if rank.size == 0:
        return 0.0
    gain = np.where(rank < k, 1.0 / np.log2(np.minimum(rank, k) + 2.0), 0.0)
    return float(gain.mean())


def _mrr_from_rank(rank: np.ndarray) -> float:
    if rank.size == 0:
        return 0.0
    return float(np.where(rank < _MISS, 1.0 / (rank + 1.0), 0.0).mean())


def recall_at_k(predictions: Any, ground_truth: Any, k: int = 10) -> float:
    """Recall@K：目标物品出现在前 K 个预测中的用户比例（单目标时等于 Hit Rate@K）。"""
    preds, gt, _ = _prepare(predictions, ground_truth)
    return _recall_from_rank(first_hit_rank(preds, gt), _check_k(k))


def hit_rate(predictions: Any, ground_truth: Any, k: int = 10) -> float:
    """Hit Rate@K：每个用户只有一个目标，因此与 Recall@K 相同。"""
    return recall_at_k(predictions, ground_truth, k)


def ndcg_at_k(predictions: Any, ground_truth: Any, k: int = 10) -> float:
    """NDCG@K：命中在第 r 位（0 起）得 1/log2(r+2)，IDCG = 1（单目标）。"""
    preds, gt, _ = _prepare(predictions, ground_truth)
    return _ndcg_from_rank(first_hit_rank(preds, gt), _check_k(k))


def mrr(predictions: Any, ground_truth: Any) -> float:
    """MRR：整个预测列表上第一次命中位置的倒数的平均，未命中为 0。"""
    preds, gt, _ = _prepare(predictions, ground_truth)
    return _mrr_from_rank(first_hit_rank(preds, gt))


# ---------------------------------------------------------------------------------------------------------------------
# 目录级指标
# ---------------------------------------------------------------------------------------------------------------------


def _catalogue_size(all_items: Any, triples: bool) -> Tuple[int, Optional[np.ndarray]]:
    """all_items 可以是物品总数（int），也可以是物品集合（id 或 (l1, l2, l3) 元组）。返回 (大小, 物品 id 或 None)。"""
    if isinstance(all_items, (int, np.integer)):
        if int(all_items) <= 0:
            raise ValueError(f"num_items must be positive, got {all_items}")
        return int(all_items), None
    items = _to_numpy(all_items)
    if isinstance(items, (set, frozenset)):
        items = list(items)
    if isinstance(items, (list, tuple)) and items and _is_triple(items[0]):
        ids = _pack_triples(np.asarray(items, dtype=np.int64), "all_items")
    else:
        ids = np.asarray(items, dtype=np.int64).reshape(-1)
    ids = np.unique(ids[ids >= 0])
    if ids.size == 0:
        raise ValueError("all_items is empty")
    return int(ids.size), ids


def _topk_valid(preds: np.ndarray, k: int) -> np.ndarray:
    top = preds[:, : _check_k(k)]
    return top[top >= 0]


def coverage(predictions: Any, all_items: Any, k: int = 10) -> float:
    """Coverage@K：所有用户 top-K 中出现过的不同物品数 / 目录物品数。

    Args:
        all_items: 目录物品总数（int），或目录物品集合（只统计其中的物品）
    """
    preds, triples = to_prediction_ids(predictions)
    size, ids = _catalogue_size(all_items, triples)
    rec = np.unique(_topk_valid(preds, k))
    if ids is not None:
        rec = rec[np.isin(rec, ids)]
    return float(rec.size / size)


def _gini_from_counts(counts: np.ndarray, num_items: int) -> float:
    """推荐次数在 num_items 个物品上的 Gini 系数；counts 只含被推荐过的物品，其余按 0 补齐。"""
    if counts.size > num_items:
        raise ValueError(f"{counts.size} distinct items were recommended but num_items={num_items}")
    total = counts.sum()
    if total == 0:
        return 0.0
    x = np.concatenate([np.zeros(num_items - counts.size), np.sort(counts).astype(np.float64)])  # 升序
    i = np.arange(1, num_items + 1, dtype=np.float64)
    return float(np.sum((2.0 * i - num_items - 1.0) * x) / (num_items * total))


def gini(predictions: Any, num_items: int, k: int = 10) -> float:
    """Gini@K：目录中每个物品在所有 top-K 里被推荐的次数的 Gini 系数（从未被推荐的物品计 0）。

    0 = 推荐完全均匀，越接近 1 越集中于少数物品。G = Σ_i (2i − n − 1)·x_(i) / (n·Σx)，x 升序，n = num_items。
    """
    preds, _ = to_prediction_ids(predictions)
    _, counts = np.unique(_topk_valid(preds, k), return_counts=True)
    return _gini_from_counts(counts, int(num_items))


def _l1_codes(preds: np.ndarray, triples: bool, item_l1: Any) -> np.ndarray:
    """[N, K] 物品 id -> [N, K] L1 码，padding 为 -1。"""
    valid = preds >= 0
    if triples and item_l1 is None:
        return np.where(valid, key_l1(preds, METRICS_RADIX), -1)
    if item_l1 is None:
        raise ValueError("diversity needs item_l1 (the L1 code of every item id) unless predictions are (l1, l2, l3)")
    table = np.asarray(_to_numpy(item_l1), dtype=np.int64).reshape(-1)
    if valid.any() and preds[valid].max() >= table.size:
        raise ValueError(f"prediction item id {int(preds[valid].max())} is outside item_l1 (size {table.size})")
    if valid.all():
        return table[preds]
    return np.where(valid, table[np.where(valid, preds, 0)], -1)


def _first_occurrence(l1: np.ndarray) -> np.ndarray:
    """[N, K] L1 码 -> [N, K] bool：该位置的 L1 码在本行中第一次出现（且非 padding）。

    每行只排序一次；之后任意前缀 k 的不同码个数 = 该掩码前 k 列之和，多个 k 共用。
    """
    n, kk = l1.shape
    # 键 = L1 码·K + 列号：排序后同一码的各位置按原序相邻，段首即该码第一次出现（键互不相同，无需稳定排序）
    key = np.sort(l1 * kk + np.arange(kk, dtype=np.int64)[None, :], axis=1)  # [N, K]
    code = key // kk
    first_sorted = np.ones((n, kk), dtype=bool)
    first_sorted[:, 1:] = code[:, 1:] != code[:, :-1]
    first = np.zeros((n, kk), dtype=bool)
    rows = np.arange(n, dtype=np.int64)[:, None] * kk
    first.reshape(-1)[(rows + key % kk).reshape(-1)] = first_sorted.reshape(-1)
    return first & (l1 >= 0)


def _diversity_from_first(first: np.ndarray, valid: np.ndarray, k: int) -> float:
    k = _check_k(k)
    distinct = first[:, :k].sum(axis=1)  # [N]
    n_valid = valid[:, :k].sum(axis=1)  # [N]
    keep = n_valid > 0
    if not keep.any():
        return 0.0
    return float(np.mean(distinct[keep] / n_valid[keep]))


def _diversity_from_l1(l1: np.ndarray, k: int) -> float:
    return _diversity_from_first(_first_occurrence(l1), l1 >= 0, k)


def diversity(predictions: Any, item_l1: Any = None, k: int = 10) -> float:
    """Diversity@K（列表内、按 L1 码）：每个用户 top-K 中不同 L1 码的个数 / 该列表的有效物品数，再对用户平均。

    1 = 每个物品属于不同的粗类目；1/K = 全部同一类目。列表为空的用户不参与平均。

    Args:
        item_l1: [num_items]，物品 id -> L1 码；predictions 是 (l1, l2, l3) 元组时可省略
    """
    preds, triples = to_prediction_ids(predictions)
    return _diversity_from_l1(_l1_codes(preds, triples, item_l1), k)


# ---------------------------------------------------------------------------------------------------------------------
# 批量计算器
# ---------------------------------------------------------------------------------------------------------------------


class MetricsCalculator:
    """分批累积、一次计算全部指标。

    add_batch 时只做转换与命中位置计算；coverage@k / gini@k / diversity@k 需要目录信息（num_items / item_l1），
    知道时才输出（predictions 是元组时 diversity 可直接从元组取 L1）。
    不知道目录大小时按规格 10.2 仍输出 `gini`：目录取本次见过的全部物品（各用户完整预测列表 ∪ 真实目标），
    次数按完整列表统计；知道 num_items 时只输出 gini@k（与以前相同）。
    """

    def __init__(self, num_items: Optional[int] = None, item_l1: Any = None):
        self.num_items = None if num_items is None else int(num_items)
        self.item_l1 = None if item_l1 is None else np.asarray(_to_numpy(item_l1), dtype=np.int64).reshape(-1)
        if self.num_items is None and self.item_l1 is not None:
            self.num_items = int(self.item_l1.size)
        self.reset()

    def reset(self) -> None:
        self._preds: List[np.ndarray] = []
        self._targets: List[np.ndarray] = []
        self._ranks: List[np.ndarray] = []
        self._triples: Optional[bool] = None

    def __len__(self) -> int:
        return int(sum(r.size for r in self._ranks))

    def add_batch(self, predictions: Any, ground_truth: Any) -> None:
        """
        Args:
            predictions: [N, K] 物品 id（或元组形式，见模块说明）
            ground_truth: [N] 目标物品 id（-1 / None = 无目标）
        """
        preds, gt, triples = _prepare(predictions, ground_truth)
        if self._triples is not None and triples != self._triples:
            raise ValueError("add_batch: cannot mix (l1, l2, l3) tuples and integer item ids across batches")
        self._triples = triples
        self._preds.append(preds)
        self._targets.append(gt)
        # 排名在 add 时算好（与各批的 K 无关），compute 只做聚合
        self._ranks.append(first_hit_rank(preds, gt))

    def _stacked_predictions(self) -> np.ndarray:
        k = max(p.shape[1] for p in self._preds)
        if all(p.shape[1] == k for p in self._preds):
            return np.concatenate(self._preds, axis=0)
        return np.concatenate([np.pad(p, ((0, 0), (0, k - p.shape[1])), constant_values=-1) for p in self._preds])

    def compute(self, k_values: Iterable[int] = DEFAULT_K_VALUES) -> Dict[str, float]:
        """返回 recall@k、ndcg@k、hit_rate@k、mrr，以及（目录信息已知时）coverage@k、gini@k、diversity@k，
        不知道 num_items 时另有 gini（见类说明）。"""
        if not self._ranks:
            raise ValueError("MetricsCalculator.compute: no batches were added")
        k_values = [_check_k(k) for k in k_values]
        rank = np.concatenate(self._ranks)  # [N]，未命中为 _MISS
        out: Dict[str, float] = {}
        for k in k_values:
            out[f"recall@{k}"] = _recall_from_rank(rank, k)
        for k in k_values:
            out[f"ndcg@{k}"] = _ndcg_from_rank(rank, k)
        for k in k_values:
            out[f"hit_rate@{k}"] = out[f"recall@{k}"]
        out["mrr"] = _mrr_from_rank(rank)
        preds = self._stacked_predictions()  # [N, K]
        if self.num_items is not None:
            valid = preds >= 0
            use_bincount = not self._triples and (not valid.any() or preds[valid].max() < self.num_items)
            for k in k_values:
                top = _topk_valid(preds, k)
                if use_bincount:  # id 在 [0, num_items)：O(n) 计数，不排序
                    counts = np.bincount(top, minlength=self.num_items)
                    counts = counts[counts > 0]
                else:
                    _, counts = np.unique(top, return_counts=True)
                out[f"coverage@{k}"] = float(counts.size / self.num_items)
                out[f"gini@{k}"] = _gini_from_counts(counts, self.num_items)
        if self.item_l1 is not None or self._triples:
            l1 = _l1_codes(preds, bool(self._triples), None if self._triples else self.item_l1)
            first, l1_valid = _first_occurrence(l1), l1 >= 0  # 所有 k 共用一次排序
            for k in k_values:
                out[f"diversity@{k}"] = _diversity_from_first(first, l1_valid, k)
        if self.num_items is None:
            out["gini"] = self._observed_gini(preds)
        out["num_users"] = float(rank.size)
        return out

    def _observed_gini(self, preds: np.ndarray) -> float:
        """目录 = 见过的物品（预测 ∪ 目标）时，完整预测列表上的 Gini；什么物品都没见过时为 0。"""
        recommended = preds[preds >= 0]
        targets = np.concatenate(self._targets)
        seen = np.unique(np.concatenate([recommended, targets[targets >= 0]]))
        if seen.size == 0:
            return 0.0
        _, counts = np.unique(recommended, return_counts=True)
        return _gini_from_counts(counts, int(seen.size))


# ---------------------------------------------------------------------------------------------------------------------
# HF 集成：Trainer 的 compute_metrics 与 evaluate.Metric
# ---------------------------------------------------------------------------------------------------------------------


def make_compute_metrics(
    k_values: Sequence[int] = DEFAULT_K_VALUES, num_items: Optional[int] = None, item_l1: Any = None
) -> Callable[[Any], Dict[str, float]]:
    """构造 HF Trainer 的 `compute_metrics`。

    EvalPrediction.predictions：top-K 物品 id [N, K]（或 [N, K, 3]；若为元组取第一个元素）；
    EvalPrediction.label_ids：目标物品 id [N]（或 [N, 1] / [N, 3]）。Trainer 跨批拼接时补的 -100 视为 padding。
    """
    k_values = tuple(_check_k(k) for k in k_values)

    def compute_metrics(eval_pred: Any) -> Dict[str, float]:
        preds = eval_pred.predictions if hasattr(eval_pred, "predictions") else eval_pred[0]
        labels = eval_pred.label_ids if hasattr(eval_pred, "label_ids") else eval_pred[1]
        if isinstance(preds, (tuple, list)) and preds and not np.isscalar(preds[0]) and np.ndim(preds[0]) >= 2:
            preds = preds[0]
        calc = MetricsCalculator(num_items=num_items, item_l1=item_l1)
        calc.add_batch(preds, labels)
        return calc.compute(k_values)

    return compute_metrics


def _build_evaluate_metric():
    """延迟构造 evaluate.Metric 子类（import evaluate 较慢，只在用到时导入）。"""
    import datasets
    import evaluate

    class RecommendationMetrics(evaluate.Metric):
        """evaluate 形式的推荐指标：add_batch(predictions=[N, K] 物品 id, references=[N] 目标 id)，
        compute(k_values=..., num_items=..., item_l1=...)。本地类，不从 Hub 下载任何东西。"""

        def __init__(self, num_items: Optional[int] = None, item_l1: Any = None, **kwargs: Any):
            super().__init__(**kwargs)
            self._num_items = num_items
            self._item_l1 = item_l1

        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(
                description="Recall/NDCG/HitRate@K, MRR, coverage, Gini and L1 diversity for next-item recommendation",
                citation="",
                inputs_description=(
                    "predictions: top-K item ids per user, int [N, K]; references: target item id per user, "
                    "int [N] (-1 = no target, counted as a miss)."
                ),
                features=datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("int64")),
                     "references": datasets.Value("int64")}
                ),
            )

        def _compute(self, predictions=None, references=None, k_values=DEFAULT_K_VALUES, num_items=None,
                     item_l1=None):
            preds = predictions
            if isinstance(preds, list):  # Arrow 读回的是列表的列表，长度可以不同
                preds, _ = to_prediction_ids([list(p) for p in preds])
            calc = MetricsCalculator(
                num_items=num_items if num_items is not None else self._num_items,
                item_l1=item_l1 if item_l1 is not None else self._item_l1,
            )
            calc.add_batch(preds, np.asarray(references, dtype=np.int64))
            return calc.compute(k_values)

    return RecommendationMetrics


_EVALUATE_CLASS = None


def __getattr__(name: str) -> Any:
    """`from ugt_hf.metrics import RecommendationMetrics` 时才导入 evaluate（import 约 6 秒，只有这个适配器用它）。"""
    global _EVALUATE_CLASS
    if name == "RecommendationMetrics":
        if _EVALUATE_CLASS is None:
            _EVALUATE_CLASS = _build_evaluate_metric()
        return _EVALUATE_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
