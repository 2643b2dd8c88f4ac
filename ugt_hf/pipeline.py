"""HF pipeline "generative-recommendation"：用户历史（item_id 列表）进，top-K 物品（item_id + 分数）出。

    from transformers import pipeline
    import ugt_hf  # 注册 Auto* 与本 pipeline
    rec = pipeline("generative-recommendation", model="path/to/checkpoint")
    rec(["item_a", "item_b"], top_k=10)             # 一个用户 -> [{"item_id", "item_index", "score"}, ...]
    rec([["item_a"], ["item_b", "item_c"]])          # 一批用户 -> 每个用户一个列表

物品由 `generation.beam_search`（受约束的层次束搜索）给出，与直接调用 generation.py 的结果一致。
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from ugt_hf.generation import beam_search, exhaustive_topk, prediction_previous_items

TASK = "generative-recommendation"


class GenerativeRecommendationPipeline(Pipeline):
    """参数（构造或调用时给出）：top_k=10, num_beams=20, exclude_history=False（是否过滤历史物品），
    method="beam" | "exhaustive", max_length（历史截断，默认 tokenizer.encoder_max_length），
    unknown="error" | "skip"（历史里不认识的 item_id 如何处理）。"""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None or not hasattr(self.tokenizer, "catalogue"):
            raise ValueError(f"the {TASK} pipeline needs a UGTTokenizer (the checkpoint's items table)")
        self.catalogue = self.tokenizer.catalogue()

    def _sanitize_parameters(
        self, top_k=None, num_beams=None, exclude_history=None, method=None, max_length=None, unknown=None
    ):
        pre: Dict[str, Any] = {}
        fwd: Dict[str, Any] = {}
        if max_length is not None:
            pre["max_length"] = max_length
        if unknown is not None:
            pre["unknown"] = unknown
        for name, value in (("top_k", top_k), ("num_beams", num_beams), ("exclude_history", exclude_history),
                            ("method", method)):
            if value is not None:
                fwd[name] = value
        return pre, fwd, {}

    def __call__(self, inputs, **kwargs):
        # 标量列表 = 一个用户的历史（基类会把 list 当成一批输入，所以先包成 dict）
        if isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and not any(isinstance(h, (list, tuple, dict)) for h in inputs)
        ):
            return super().__call__({"history": inputs}, **kwargs)
        if isinstance(inputs, (list, tuple)):
            inputs = [h if isinstance(h, dict) else {"history": h} for h in inputs]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs, max_length: Optional[int] = None, unknown: str = "error"):
        history = inputs["history"] if isinstance(inputs, dict) else inputs
        enc = dict(self.tokenizer(history, max_length=max_length, unknown=unknown))
        # 过滤用的是完整历史（不只截断后的窗口）
        items = self.tokenizer.item_indices(history.split() if isinstance(history, str) else history, unknown)
        enc["history_items"] = torch.tensor([items], dtype=torch.long).reshape(1, -1)
        return enc

    def _forward(self, model_inputs, top_k: int = 10, num_beams: int = 20, exclude_history: bool = False,
                 method: str = "beam"):
        history = model_inputs.pop("history_items")
        states = self.model.prediction_states(**model_inputs)  # [1, D]，BOS 位
        prev = prediction_previous_items(self.model, model_inputs)  # 宽记忆项的键；没开时为 None
        exclude = [row[row >= 0].tolist() for row in history] if exclude_history else None
        if method == "beam":
            res = beam_search(self.model, states, self.catalogue, num_beams=max(num_beams, top_k), top_k=top_k,
                              exclude=exclude, previous_items=prev)
        elif method == "exhaustive":
            res = exhaustive_topk(self.model, states, self.catalogue, top_k=top_k, exclude=exclude,
                                  previous_items=prev)
        else:
            raise ValueError(f"method must be 'beam' or 'exhaustive', got {method!r}")
        return {"item_indices": res.item_indices, "scores": res.scores}

    def postprocess(self, model_outputs) -> List[Dict[str, Any]]:
        idx = model_outputs["item_indices"][0].tolist()
        scores = model_outputs["scores"][0].tolist()
        return [
            {"item_id": self.tokenizer.item_ids[i], "item_index": i, "score": s}
            for i, s in zip(idx, scores)
            if i >= 0
        ]


def register_pipeline() -> None:
    """注册 "generative-recommendation"（幂等）。"""
    if TASK in PIPELINE_REGISTRY.supported_tasks:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=GenerativeRecommendationPipeline, pt_model=AutoModel)


__all__ = ["GenerativeRecommendationPipeline", "register_pipeline", "TASK"]
