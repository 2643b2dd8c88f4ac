"""规格第 10 节的评估指标：recall_at_k、ndcg_at_k、mrr、hit_rate、coverage 与 MetricsCalculator。

实现是生产的纯指标模块 `ugt_hf.metrics`（向量化；接受规格的 (l1, l2, l3) 元组写法），这里只导出规格的名字。
"""

from ugt_hf.metrics import MetricsCalculator, coverage, diversity, gini, hit_rate, mrr, ndcg_at_k, recall_at_k

__all__ = ["MetricsCalculator", "coverage", "diversity", "gini", "hit_rate", "mrr", "ndcg_at_k", "recall_at_k"]
