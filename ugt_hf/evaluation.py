"""离线排序评估：全目录约束 beam search → Recall/NDCG@K、MRR、覆盖率、Gini；以及流行度基线。

训练中的评估走 `UGTTrainer.evaluate`（HF 评估循环）；这里是阶段结束后在 valid/test 上的独立评估，
供 `ugt pipeline`、`ugt evaluate` 与 benchmarks/quality.py 使用，三者得到的数字出自同一段代码。
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

from .argparsing import ConfigError, arg, check_model_dir, missing_path_message, parse_args

# numpy、torch 与模型 / 数据模块在函数里导入：`ugt evaluate --help` 与参数错误不必加载它们（冷启动 5–8 s）
if TYPE_CHECKING:
    import numpy as np
    import torch

    from .data.datadir import DataDir
    from .data.datasets import RecommendDataset
    from .generation import ItemCatalogue

DEFAULT_K_VALUES = (5, 10, 20)

DataDirLike = Union[str, Path, "DataDir"]

def _target_indices(labels: torch.Tensor, catalogue: ItemCatalogue) -> torch.Tensor:
    """labels [B, Td, 3] 的第 0 位（评估样本只有这一位）-> 物品下标 [B]，不在目录里为 -1。"""
    import torch

    first = labels[:, 0, :]  # [B, 3]
    idx = catalogue.lookup(first.clamp(min=0))
    ok = (first >= 0).all(-1)
    return torch.where(ok, idx, torch.full_like(idx, -1))


def rank_dataset(
    model,
    dataset: RecommendDataset,
    catalogue: ItemCatalogue,
    top_k: int = 20,
    num_beams: int = 20,
    exclude_history: bool = False,
    batch_size: int = 256,
    max_samples: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    return_scores: bool = False,
):
    """对数据集每个样本（BOS 位置）做约束 beam search。返回 (predictions [N, K] 物品下标, targets [N])；
    return_scores 时为 (predictions, scores [N, K] 的 log p（缺位 -inf）, targets)。"""
    import torch

    with torch.inference_mode():
        return _rank_dataset(model, dataset, catalogue, top_k, num_beams, exclude_history, batch_size, max_samples,
                             device, return_scores)


def _rank_dataset(model, dataset, catalogue, top_k, num_beams, exclude_history, batch_size, max_samples, device,
                  return_scores=False):
    """rank_dataset 的主体（在 inference_mode 里运行；装饰器要在导入时就有 torch，所以拆成两层）。"""
    import numpy as np
    import torch

    from .data.collator import DataCollator
    from .generation import recommend
    from .interfaces import SEMANTIC_PAD_ID

    device = torch.device(device) if device is not None else next(model.parameters()).device
    collator = DataCollator(semantic_pad_id=SEMANTIC_PAD_ID)
    n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
    # 按历史长度排好再分批：批内只 padding 到本批最长，Beauty 的历史大多不到 10 个物品，而随机的 256 人里几乎
    # 总有一个到截断长度 50，不排序时编码器的大部分计算花在 padding 上。结果按原顺序还回去
    order = np.argsort(np.asarray(dataset.lengths()[:n]), kind="stable") if hasattr(dataset, "lengths") \
        else np.arange(n)
    preds, scores, targets = [], [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size].tolist()
            if hasattr(dataset, "collate"):  # RecommendDataset：整批在 Arrow 列上拼（逐条取样本占排序时间约 1/5）
                batch = dataset.collate(rows, semantic_pad_id=SEMANTIC_PAD_ID)
            else:
                batch = collator([dataset[i] for i in rows])
            labels = batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            result = recommend(model, batch, catalogue, top_k=top_k, num_beams=max(num_beams, top_k),
                               exclude_history=exclude_history, position=0, method="beam")
            preds.append(result.item_indices.cpu())
            if return_scores:
                scores.append(result.scores.float().cpu())
            targets.append(_target_indices(labels, catalogue))
    finally:
        model.train(was_training)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    if return_scores:
        return (torch.cat(preds).numpy()[inverse], torch.cat(scores).double().numpy()[inverse],
                torch.cat(targets).numpy()[inverse])
    return torch.cat(preds).numpy()[inverse], torch.cat(targets).numpy()[inverse]


def ranking_metrics(predictions, targets, catalogue: ItemCatalogue,
                    k_values: Sequence[int] = DEFAULT_K_VALUES) -> Dict[str, float]:
    from .metrics import MetricsCalculator

    calc = MetricsCalculator(num_items=catalogue.num_items, item_l1=catalogue.triples[:, 0].numpy())
    calc.add_batch(predictions, targets)
    return {k: float(v) for k, v in calc.compute(k_values=list(k_values)).items()}


def evaluate_ranking(
    model,
    data_dir: DataDirLike,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    num_beams: int = 20,
    exclude_history: bool = False,
    batch_size: int = 256,
    max_samples: Optional[int] = None,
    catalogue: Optional[ItemCatalogue] = None,
) -> Dict[str, float]:
    """`data_dir` 的 valid/test 划分上的全目录排序指标（留一法，每个用户一个目标）。"""
    from .data.datadir import DataDir

    data = DataDir.of(data_dir)
    catalogue = catalogue or data.catalogue()
    dataset = data.recommend_dataset(split)
    t0 = time.perf_counter()
    preds, targets = rank_dataset(model, dataset, catalogue, top_k=max(k_values), num_beams=num_beams,
                                  exclude_history=exclude_history, batch_size=batch_size, max_samples=max_samples)
    metrics = ranking_metrics(preds, targets, catalogue, k_values)
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics["exclude_history"] = float(exclude_history)
    return metrics


_ENCODER_COLS = ("encoder_l1_ids", "encoder_l2_ids", "encoder_l3_ids")
_LABEL_COLS = ("labels_l1", "labels_l2", "labels_l3")


def _first_label_items(table, catalogue: ItemCatalogue) -> np.ndarray:
    """每行第 0 个标签的物品号：[N]（不在目录里为 -1）。"""
    import numpy as np
    import torch

    first = np.stack([np.array([r[0] for r in table.column(c).to_pylist()]) for c in _LABEL_COLS], axis=1)
    return catalogue.lookup(torch.as_tensor(first)).numpy()


def _history_items(enc_columns, u: int, catalogue: ItemCatalogue) -> np.ndarray:
    """第 u 行编码器历史的物品号 [T]；enc_columns 是 _ENCODER_COLS 三列的 to_pylist()。"""
    import numpy as np
    import torch

    return catalogue.lookup(torch.as_tensor(np.stack([c[u] for c in enc_columns], 1))).numpy()


def _train_popularity(data: DataDir, catalogue: ItemCatalogue) -> np.ndarray:
    """训练集里每个物品作为第 0 个标签的次数：[num_items]。stride=1 时恰好覆盖训练前缀里的每次出现。"""
    import numpy as np

    idx = _first_label_items(data.read_table("train", _LABEL_COLS), catalogue)
    return np.bincount(idx[idx >= 0], minlength=catalogue.num_items)


def popularity_baseline(
    data_dir: DataDirLike,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    exclude_history: bool = False,
) -> Dict[str, float]:
    """流行度基线：按训练集标签中的出现次数给每个用户推荐同一份 top-K（可选去掉历史物品）。"""
    import numpy as np

    from .data.datadir import DataDir

    data = DataDir.of(data_dir)
    catalogue = data.catalogue()
    counts = _train_popularity(data, catalogue)
    kmax = max(k_values)
    order = np.argsort(-counts, kind="stable")
    evald = data.read_table(split, _ENCODER_COLS + _LABEL_COLS)
    targets = _first_label_items(evald, catalogue)
    if exclude_history:
        enc = [evald.column(c).to_pylist() for c in _ENCODER_COLS]
        preds = np.empty((len(targets), kmax), dtype=np.int64)
        for u in range(len(targets)):
            hist = _history_items(enc, u, catalogue)
            cand = order[: kmax + len(hist)]
            preds[u] = cand[~np.isin(cand, hist)][:kmax]
    else:
        preds = np.broadcast_to(order[:kmax], (len(targets), kmax))
    metrics = ranking_metrics(preds, targets, catalogue, k_values)
    metrics["exclude_history"] = float(exclude_history)
    return metrics


def _last_and_first(table, catalogue: ItemCatalogue):
    """每行（编码器最后一个物品, 第 0 个标签）的物品号；没有历史的行前者为 -1。"""
    return _last_k_items(table, catalogue, 1)[:, 0], _first_label_items(table, catalogue)


def transition_baseline(
    data_dir: DataDirLike,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    exclude_history: bool = False,
) -> Dict[str, float]:
    """一阶转移基线：按训练前缀里“物品 A 之后紧接着 B”的次数，给最近一个历史物品的后继排序，不足处按流行度补齐。

    比流行度强得多的参照（Beauty 这类“成套购买”数据上，它的 NDCG 可高过不少神经模型），用来判断模型是否学会了
    具体物品之间的转移。转移与流行度都只用训练样本：每个训练样本的（编码器最后一个物品, 第 0 个标签），
    stride=1 时恰好是训练前缀里每一对相邻交互各一次。
    """
    import numpy as np

    from .data.datadir import DataDir

    data = DataDir.of(data_dir)
    catalogue = data.catalogue()
    cols = _ENCODER_COLS + _LABEL_COLS
    src, dst = _last_and_first(data.read_table("train", cols), catalogue)
    popularity = np.bincount(dst[dst >= 0], minlength=catalogue.num_items)  # 与 _train_popularity 同一计数，不再读一遍
    pop_order = np.argsort(-popularity, kind="stable")
    ok = (src >= 0) & (dst >= 0)
    pair_counts: Dict[int, Dict[int, int]] = {}
    for a, b in zip(src[ok].tolist(), dst[ok].tolist()):
        row = pair_counts.setdefault(a, {})
        row[b] = row.get(b, 0) + 1
    evald = data.read_table(split, cols)
    last, targets = _last_and_first(evald, catalogue)
    enc = [evald.column(c).to_pylist() for c in _ENCODER_COLS] if exclude_history else None
    kmax = max(k_values)
    preds = np.empty((len(targets), kmax), dtype=np.int64)
    for u, a in enumerate(last.tolist()):
        succ = pair_counts.get(a, {})
        # 次数降序，同次数按流行度降序，再按物品号（结果确定）
        ranked = sorted(succ, key=lambda j: (-succ[j], -popularity[j], j))
        banned = set()
        if exclude_history:
            banned = set(_history_items(enc, u, catalogue).tolist())
        out = [j for j in ranked if j not in banned][:kmax]
        if len(out) < kmax:
            seen = set(out) | banned
            for j in pop_order.tolist():
                if j not in seen:
                    out.append(j)
                    if len(out) == kmax:
                        break
        preds[u] = out + [-1] * (kmax - len(out))  # 目录太小（去掉历史后）时补 -1，与束搜索的补位一致
    metrics = ranking_metrics(preds, targets, catalogue, k_values)
    metrics["exclude_history"] = float(exclude_history)
    return metrics


_INTEGER_METRICS = ("num_users",)
_FLAG_METRICS = ("exclude_history",)


def _last_k_items(table, catalogue: ItemCatalogue, window: int) -> np.ndarray:
    """每行编码器历史里最近的 window 个物品号：[N, window]，第 k-1 列 = 倒数第 k 个（最近 = 第 0 列），缺位 -1。"""
    import numpy as np
    import pyarrow as pa
    import torch

    cols = [table.column(c).combine_chunks() if isinstance(table.column(c), pa.ChunkedArray) else table.column(c)
            for c in _ENCODER_COLS]
    offsets = np.asarray(cols[0].offsets, dtype=np.int64)  # [N+1]，三列的偏移相同（同一段历史）
    offsets = offsets - offsets[0]  # 切片过的数组：offsets 不减起点，flatten() 却从起点开始
    flat = np.stack([np.asarray(c.flatten()) for c in cols], 1)  # [sum T, 3]
    lengths = np.diff(offsets)
    out = np.full((len(lengths), window), -1, dtype=np.int64)
    for k in range(1, window + 1):
        ok = np.flatnonzero(lengths >= k)
        if len(ok):  # 只换算要用的那几个位置，不必把整段历史都查一遍目录
            out[ok, k - 1] = catalogue.lookup(torch.as_tensor(flat[offsets[1:][ok] - k])).numpy()
    return out


class TransitionPrior:
    """多阶转移计数先验，评估时与模型分数做浅融合（shallow fusion，语音识别里模型 + n-gram 语言模型的做法）。

    prior(j | 历史) = Σ_{k=1..window} log(1 + c_k(h_k, j))，h_k = 倒数第 k 个历史物品，c_k = 训练样本里
    “目标前第 k 个物品是 a、目标是 j”的次数（stride=1 时即训练前缀里每一对相隔 k 步的交互各一次）。
    模型的宽记忆项只学一阶转移、且稀疏的表学得慢：在 Beauty 验证集上把它加到束搜索候选的分数上，一阶、
    二阶、三阶各自都还有增益（README 的 Beauty 表与消融）。权重由 `select_prior_weight` 在验证集上选，
    选出 0 就等于不用。计数只来自训练划分，与两条基线同一份数据。
    """

    def __init__(self, keys: Sequence[np.ndarray], counts: Sequence[np.ndarray], num_items: int):
        import numpy as np

        self.keys = [np.asarray(k, dtype=np.int64) for k in keys]  # 每阶一个升序键 a·num_items + j
        self.counts = [np.asarray(c, dtype=np.float64) for c in counts]
        self.num_items = int(num_items)
        self.window = len(self.keys)

    @classmethod
    def from_data(cls, data_dir: DataDirLike, window: int = 3,
                  catalogue: Optional[ItemCatalogue] = None) -> "TransitionPrior":
        import numpy as np

        from .data.datadir import DataDir

        if int(window) < 1:
            raise ValueError(f"transition prior window must be >= 1, got {window}")
        data = DataDir.of(data_dir)
        catalogue = catalogue or data.catalogue()
        table = data.read_table("train", _ENCODER_COLS + _LABEL_COLS)
        hist = _last_k_items(table, catalogue, int(window))  # [N, W]
        target = _first_label_items(table, catalogue)  # [N]
        n = catalogue.num_items
        keys, counts = [], []
        for k in range(int(window)):
            ok = (hist[:, k] >= 0) & (target >= 0)
            uniq, cnt = np.unique(hist[ok, k] * n + target[ok], return_counts=True)
            keys.append(uniq)
            counts.append(cnt)
        return cls(keys, counts, n)

    def history(self, table, catalogue: ItemCatalogue) -> np.ndarray:
        """评估划分的表 -> 每行最近的 window 个历史物品 [N, window]（缺位 -1）。"""
        return _last_k_items(table, catalogue, self.window)

    def scores(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """history [N, window]（-1 = 缺位），candidates [N, K] 物品号（-1 = 缺位）-> 先验分 [N, K]（缺位为 0）。"""
        import numpy as np

        history, candidates = np.asarray(history, dtype=np.int64), np.asarray(candidates, dtype=np.int64)
        out = np.zeros(candidates.shape, dtype=np.float64)
        for k in range(self.window):
            keys, counts = self.keys[k], self.counts[k]
            if len(keys) == 0:
                continue
            a = history[:, k:k + 1]  # [N, 1]
            key = a * self.num_items + candidates  # [N, K]
            pos = np.searchsorted(keys, key).clip(max=len(keys) - 1)
            found = (keys[pos] == key) & (a >= 0) & (candidates >= 0)
            out += np.where(found, np.log1p(counts[pos]), 0.0)
        return out


def _fused_topk(items: np.ndarray, scores: np.ndarray, prior_scores: np.ndarray, weight: float,
                top_k: int) -> np.ndarray:
    """候选 [N, C] 按 模型 log p + weight·先验 重排，取前 top_k -> [N, top_k]；缺位（-1 / -inf）仍排在最后。"""
    import numpy as np

    fused = np.where(items >= 0, scores + weight * prior_scores, -np.inf)
    order = np.argsort(-fused, axis=1, kind="stable")[:, :top_k]
    return np.take_along_axis(items, order, 1)


def _ranked_candidates(model, data: DataDir, split: str, catalogue: ItemCatalogue, num_candidates: int,
                       exclude_history: bool, batch_size: int, max_samples: Optional[int]):
    """束搜索的前 num_candidates 个候选与它们的 log p：(items [N, C], scores [N, C], targets [N])。"""
    return rank_dataset(model, data.recommend_dataset(split), catalogue, top_k=num_candidates,
                        num_beams=num_candidates, exclude_history=exclude_history, batch_size=batch_size,
                        max_samples=max_samples, return_scores=True)


def fused_metrics(items: np.ndarray, scores: np.ndarray, targets: np.ndarray, prior_scores: np.ndarray,
                  weights: Sequence[float], catalogue: ItemCatalogue, k_values: Sequence[int] = DEFAULT_K_VALUES,
                  exclude_history: bool = False) -> Dict[float, Dict[str, float]]:
    """束搜索候选 items / scores [N, C]、目标 [N]、先验分 [N, C] -> 每个权重的排序指标（重排只动候选顺序）。"""
    out = {}
    for w in weights:
        metrics = ranking_metrics(_fused_topk(items, scores, prior_scores, float(w), max(k_values)), targets,
                                  catalogue, k_values)
        metrics["exclude_history"] = float(exclude_history)
        metrics["prior_weight"] = float(w)
        out[float(w)] = metrics
    return out


def evaluate_with_prior(
    model,
    data_dir: DataDirLike,
    prior: TransitionPrior,
    weights: Sequence[float],
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    num_beams: int = 20,
    exclude_history: bool = False,
    batch_size: int = 256,
    max_samples: Optional[int] = None,
    catalogue: Optional[ItemCatalogue] = None,
) -> Dict[float, Dict[str, float]]:
    """模型 + 转移先验（浅融合）的排序指标，每个权重一行；束搜索只跑一次（候选 = 束宽个），权重 0 = 模型本身。"""
    from .data.datadir import DataDir

    data = DataDir.of(data_dir)
    catalogue = catalogue or data.catalogue()
    t0 = time.perf_counter()
    kmax = max(k_values)
    items, scores, targets = _ranked_candidates(model, data, split, catalogue, max(num_beams, kmax),
                                                exclude_history, batch_size, max_samples)
    hist = prior.history(data.read_table(split, _ENCODER_COLS), catalogue)[: len(items)]
    out = fused_metrics(items, scores, targets, prior.scores(hist, items), weights, catalogue, k_values,
                        exclude_history)
    seconds = time.perf_counter() - t0
    for m in out.values():
        m["eval_seconds"] = seconds
    return out


def select_prior_weight(grid: Dict[float, Dict[str, float]], metric: str = "recall@10",
                        second: str = "ndcg@10") -> float:
    """验证集上各权重的指标 -> 选中的权重。

    有权重 0（模型本身）时，只在两项指标（metric 与 second）都不低于模型本身的权重里选：融合要在两项上都不吃亏才用，
    否则留在 0（演示数据上就是这样：Recall@10 多 0.005、NDCG@10 少 0.009）。其中 metric 最高者，相同时 second 高的，
    再相同取较小的权重。
    """
    if not grid:
        raise ValueError("select_prior_weight: empty grid")
    if any(metric not in m or second not in m for m in grid.values()):
        raise ValueError(f"select_prior_weight: the metrics have no {metric!r} or {second!r} (k_values must include "
                         "their cut-off)")
    allowed = sorted(grid)
    if 0.0 in grid:
        base = grid[0.0]
        allowed = [w for w in allowed if grid[w][metric] >= base[metric] and grid[w][second] >= base[second]]
    return max(allowed, key=lambda w: (grid[w][metric], grid[w][second], -w))


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """`ugt evaluate` 的默认输出：指标为行、模型/基线为列，4 位小数，计数写成整数，开关写 true/false。"""
    columns = list(results)
    rows: List[str] = []
    for metrics in results.values():
        rows += [k for k in metrics if k not in rows]

    def cell(key: str, value) -> str:
        if value is None:
            return "-"
        if key in _INTEGER_METRICS:
            return str(int(round(value)))
        if key in _FLAG_METRICS:
            return "true" if value else "false"
        return f"{value:.4f}"

    table = [["metric"] + columns] + [[k] + [cell(k, results[c].get(k)) for c in columns] for k in rows]
    width = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join([r[0].ljust(width[0])] + [v.rjust(w) for v, w in zip(r[1:], width[1:])])
                     for r in table)


@dataclasses.dataclass
class EvaluateArguments:
    """`ugt evaluate` 的命令行（共用的 HfArgumentParser 解析）。"""

    model: str = arg(dataclasses.MISSING, "save_pretrained model directory (e.g. RUN/stage3/best_model)")
    data: str = arg(dataclasses.MISSING, "artifact directory written by `ugt prepare`")
    split: str = arg("test", "split to rank", choices=["valid", "test"])
    k_values: str = arg("5,10,20", "cut-offs K, comma-separated")
    num_beams: int = arg(20, "constrained beam search width")
    exclude_history: bool = arg(False, "never recommend the user's history items")
    batch_size: int = arg(256, "evaluation batch size")
    max_samples: Optional[int] = arg(None, "evaluate at most this many samples (default: all)")
    popularity: bool = arg(False, "also report the popularity baseline")
    transition: bool = arg(False, "also report the first-order transition baseline (successors of the last item)")
    prior_weight: Optional[float] = arg(None, "also report the model fused with the transition-count prior at "
                                              "this weight (the pipeline picks it on valid)")
    prior_window: int = arg(3, "transition prior: how many of the latest history items count (with --prior_weight)")
    json: bool = arg(False, "print the metrics as JSON (full precision) instead of the aligned table")


def main(argv=None) -> int:
    """`ugt evaluate --model DIR --data DIR [--split test] [--num_beams 20] [--exclude_history] [--json]`。"""
    try:
        (ns,) = parse_args([EvaluateArguments], argv, prog="ugt evaluate", config_flag=False)
        check_model_dir(ns.model, "--model")
        if ns.prior_weight is not None and not (math.isfinite(ns.prior_weight) and ns.prior_weight >= 0
                                                and ns.prior_window >= 1):
            raise ConfigError(f"--prior_weight must be a finite number >= 0 and --prior_window >= 1 (got "
                              f"{ns.prior_weight:g}, {ns.prior_window})")
        if not Path(ns.data).is_dir():
            raise ConfigError(f"--data: {missing_path_message(ns.data, 'data folder')} "
                              "(the artifact folder written by `ugt prepare`)")
        from .modeling_ugt import UGTForGenerativeRecommendation

        try:
            model = UGTForGenerativeRecommendation.from_pretrained(ns.model).eval()
        except OSError as e:  # 不像本地路径的值交给了 Hub：也说明本地没有这个目录
            raise ConfigError(f"--model: cannot load {ns.model!r}: no local folder of that name "
                              f"({missing_path_message(ns.model, 'folder')}) and not loadable from the Hub "
                              f"({str(e).splitlines()[0]})") from None
        ks = [int(k) for k in ns.k_values.split(",")]
        out = {"model": evaluate_ranking(model, ns.data, ns.split, ks, ns.num_beams, ns.exclude_history,
                                         ns.batch_size, ns.max_samples)}
        if ns.popularity:
            out["popularity"] = popularity_baseline(ns.data, ns.split, ks, ns.exclude_history)
        if ns.transition:
            out["transition"] = transition_baseline(ns.data, ns.split, ks, ns.exclude_history)
        if ns.prior_weight is not None:
            prior = TransitionPrior.from_data(ns.data, ns.prior_window)
            w = float(ns.prior_weight)
            out[f"model + transition prior (w={w:g})"] = evaluate_with_prior(
                model, ns.data, prior, [w], ns.split, ks, ns.num_beams, ns.exclude_history, ns.batch_size,
                ns.max_samples)[w]
    except (FileNotFoundError, OSError, ValueError) as e:  # ConfigError 是 ValueError
        print(f"ugt evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if ns.json else format_table(out))
    return 0
