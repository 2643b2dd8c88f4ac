"""`UGTTokenizer`：物品 <-> (l1, l2, l3) 对照表，作为 PreTrainedTokenizer 与模型一起保存/加载。

“词表”是原始 item_id（字符串）-> item_index；一个用户的历史（item_id 列表）被编成批次契约的编码器输入
（每个位置一个三元组），解码器为 [BOS]。对照表以 JSON 存在 checkpoint 目录（`ugt_items.json`，不用 pickle），
所以 `AutoTokenizer.from_pretrained(dir)` 或 Hub 上的 checkpoint 可以单独使用；
TRL 的 DPOTrainer 与 UGTTrainer 都可以以它为 processing_class（语义 padding 值是单独的 semantic_pad_id）。
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import BatchEncoding, PreTrainedTokenizer

from ugt_hf.generation import ItemCatalogue
from ugt_hf.interfaces import ITEM_TOKEN_TYPE, MODEL_INPUT_KEYS, SEMANTIC_PAD_ID, SPECIAL_TOKEN_TYPE

ITEMS_JSON = "ugt_items.json"
ITEMS_FORMAT = "ugt-items-v1"

History = Sequence[Union[str, int]]


class UGTTokenizer(PreTrainedTokenizer):
    """物品对照表 + 历史编码器。

    Args:
        items_file: `ugt_items.json` 路径（from_pretrained 时由 HF 自动传入）
        item_ids / triples: 直接给出对照表（第 i 行 = item_index i）；与 items_file 二选一
        encoder_max_length: 历史截断长度（保留最近的 N 个）
        vocab_sizes: 三层词表大小（越界检查、ItemCatalogue 用）
    """

    vocab_files_names = {"items_file": ITEMS_JSON}
    # 模型 forward 的批次键（labels 除外：推理时没有），与 interfaces.MODEL_INPUT_KEYS 同源
    model_input_names = [k for k in MODEL_INPUT_KEYS if k != "labels"]

    def __init__(
        self,
        items_file: Optional[str] = None,
        item_ids: Optional[Sequence[Union[str, int]]] = None,
        triples=None,
        encoder_max_length: int = 50,
        vocab_sizes: Optional[Sequence[int]] = None,
        **kwargs,
    ):
        if items_file is not None:
            item_ids, triples, file_vocab = _read_items_json(items_file)
            vocab_sizes = vocab_sizes or file_vocab
        if item_ids is None or triples is None:
            raise ValueError("UGTTokenizer needs items_file or both item_ids and triples")
        self.item_ids: List[str] = [str(i) for i in item_ids]
        self.triples = torch.as_tensor(np.asarray(triples), dtype=torch.long)
        if self.triples.dim() != 2 or self.triples.shape[1] != 3 or self.triples.shape[0] != len(self.item_ids):
            raise ValueError(
                f"UGTTokenizer: triples must have shape [{len(self.item_ids)}, 3], got {tuple(self.triples.shape)}"
            )
        self.item_to_index: Dict[str, int] = {}
        for idx, item in enumerate(self.item_ids):
            if item in self.item_to_index:
                raise ValueError(
                    f"UGTTokenizer: item_id {item!r} appears twice (rows {self.item_to_index[item]} and {idx})"
                )
            self.item_to_index[item] = idx
        self.vocab_sizes = (
            [int(v) for v in vocab_sizes] if vocab_sizes else [int(v) + 1 for v in self.triples.max(0).values]
        )
        if int(encoder_max_length) < 1:
            raise ValueError(f"UGTTokenizer: encoder_max_length must be >= 1, got {encoder_max_length}")
        self.encoder_max_length = int(encoder_max_length)
        self._catalogue = None
        kwargs.setdefault("model_max_length", self.encoder_max_length)
        # TRL 的 DPOTrainer 要求 pad_token 存在于词表：用一个附加特殊 token（id = 物品数，不与任何物品冲突）。
        # 模型输入里的 padding 语义 ID 仍是 schema 的 0（由 token_type 0 屏蔽），与这个 id 无关。
        kwargs.setdefault("pad_token", "<pad>")
        super().__init__(encoder_max_length=self.encoder_max_length, vocab_sizes=self.vocab_sizes, **kwargs)
        self.catalogue()  # 立即校验：三元组唯一、在词表内

    # ---- 构造 ----

    @classmethod
    def from_items_parquet(cls, path: Union[str, Path], encoder_max_length: int = 50, vocab_sizes=None, **kwargs):
        """由 `ugt prepare` 的 items.parquet 构造；同目录的 meta.json 提供 vocab_sizes / encoder_max_length。"""

        path = Path(path)
        table = pq.read_table(path)
        missing = [c for c in ("item_id", "item_index", "l1", "l2", "l3") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        order = np.argsort(table.column("item_index").to_numpy())
        index = table.column("item_index").to_numpy()[order]
        if not np.array_equal(index, np.arange(len(index))):
            raise ValueError(f"{path}: item_index must be 0..N-1 without gaps")
        ids = [str(x) for x in np.asarray(table.column("item_id").to_pylist(), dtype=object)[order]]
        triples = np.stack([table.column(c).to_numpy()[order] for c in ("l1", "l2", "l3")], axis=1)
        meta_path = path.parent / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            vocab_sizes = vocab_sizes or meta.get("vocab_sizes")
            encoder_max_length = meta.get("encoder_max_length", encoder_max_length)
        return cls(item_ids=ids, triples=triples, encoder_max_length=encoder_max_length, vocab_sizes=vocab_sizes,
                   **kwargs)

    # ---- PreTrainedTokenizer 的必要钩子（token = 原始 item_id） ----

    @property
    def vocab_size(self) -> int:
        return len(self.item_ids)

    def get_vocab(self) -> Dict[str, int]:
        vocab = dict(self.item_to_index)
        vocab.update(getattr(self, "_added_tokens_encoder", {}))
        return vocab

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        # 文本形式的历史：空白或逗号分隔的 item_id
        return text.replace(",", " ").split()

    def _convert_token_to_id(self, token: str) -> int:
        if token not in self.item_to_index:
            raise ValueError(f"unknown item_id {token!r} (not in the tokenizer's items table)")
        return self.item_to_index[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self.item_ids[int(index)]

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        return " ".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None):
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_vocabulary: {save_directory} is not a directory")
        path = os.path.join(save_directory, (f"{filename_prefix}-" if filename_prefix else "") + ITEMS_JSON)
        payload = {
            "format": ITEMS_FORMAT,
            "vocab_sizes": self.vocab_sizes,
            "item_id": self.item_ids,
            "l1": self.triples[:, 0].tolist(),
            "l2": self.triples[:, 1].tolist(),
            "l3": self.triples[:, 2].tolist(),
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
        return (path,)

    # ---- 物品 <-> 三元组 ----

    def item_indices(self, items: Iterable[Union[str, int]], unknown: str = "error",
                     where: str = "history") -> List[int]:
        """item_id 列表 -> item_index 列表。unknown: "error"（报出位置与 id）或 "skip"。"""
        out = []
        for pos, item in enumerate(items):
            idx = self.item_to_index.get(str(item))
            if idx is None:
                if unknown == "skip":
                    continue
                raise ValueError(f"{where}[{pos}]: unknown item_id {item!r} (not in the tokenizer's items table)")
            out.append(idx)
        return out

    def triples_for(self, items: Iterable[Union[str, int]], unknown: str = "error") -> torch.Tensor:
        """item_id 列表 -> [M, 3]"""
        return self.triples[torch.as_tensor(self.item_indices(items, unknown, where="items"), dtype=torch.long)]

    def decode_items(self, item_indices) -> List:
        """item_index（嵌套列表或张量，-1 = 空位）-> item_id（空位为 None），保持嵌套结构。"""
        arr = item_indices.tolist() if torch.is_tensor(item_indices) else item_indices
        if isinstance(arr, (list, tuple)):
            return [self.decode_items(a) for a in arr]
        return None if int(arr) < 0 else self.item_ids[int(arr)]

    def decode_triples(self, triples) -> List:
        """三元组 [..., 3] -> item_id（不在表中的为 None），形状去掉最后一维。"""
        idx = self.catalogue().lookup(torch.as_tensor(triples))
        return self.decode_items(idx)

    def catalogue(self):
        """合法物品的逐层表（束搜索用），缓存。"""
        if self._catalogue is None:
            self._catalogue = ItemCatalogue(self.triples, self.vocab_sizes, source="UGTTokenizer items table")
        return self._catalogue

    # ---- 历史 -> 批次 ----

    def encode_history(self, history: History, max_length: Optional[int] = None,
                       unknown: str = "error") -> Dict[str, list]:
        """一个用户的历史（时间顺序，最旧在前）-> 规格记录的编码器字段（截断到最近 max_length 个）。"""
        if isinstance(history, (str, bytes)):
            history = self._tokenize(history.decode() if isinstance(history, bytes) else history)
        idx = self.item_indices(history, unknown)
        n = max_length or self.encoder_max_length
        idx = idx[-n:]
        t = self.triples[idx].tolist() if idx else []
        return {
            "encoder_l1_ids": [x[0] for x in t],
            "encoder_l2_ids": [x[1] for x in t],
            "encoder_l3_ids": [x[2] for x in t],
            "encoder_positions": list(range(len(t))),
            "encoder_token_types": [ITEM_TOKEN_TYPE] * len(t),
            "encoder_mask": [1] * len(t),
        }

    def __call__(
        self,
        histories,
        max_length: Optional[int] = None,
        padding: Union[bool, str] = True,
        return_tensors: Optional[str] = "pt",
        unknown: str = "error",
        **kwargs,
    ) -> BatchEncoding:
        """一个或一批历史 -> 批次契约的张量（encoder_* [B, Te(,3)]，decoder = [BOS]）。

        histories: item_id 列表（一个用户）、其列表（一批），或空白分隔的字符串。
        padding: True/"longest" 补到批内最长；"max_length" 补到 max_length（默认 encoder_max_length）。
        空历史得到全 padding 的编码器行（模型按约定处理）。
        """
        if kwargs:
            raise TypeError(f"UGTTokenizer.__call__ got unsupported argument(s): {sorted(kwargs)}")
        # 字符串或标量列表 = 一个用户；列表的列表 = 一批用户
        nested = [isinstance(h, (list, tuple)) for h in ([] if isinstance(histories, str) else histories)]
        if any(nested) and not all(nested):
            raise ValueError("UGTTokenizer: pass one history (list of item_ids) or a list of histories, not a mix")
        single = not any(nested)
        batch = [histories] if single else list(histories)
        n = max_length or self.encoder_max_length
        recs = [self.encode_history(h, n, unknown) for h in batch]
        width = n if padding == "max_length" else max([len(r["encoder_positions"]) for r in recs] + [1])
        b = len(recs)
        ids = torch.full((b, width, 3), self.semantic_pad_id, dtype=torch.long)
        pos = torch.zeros(b, width, dtype=torch.long)
        types = torch.full((b, width), SPECIAL_TOKEN_TYPE, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        for i, r in enumerate(recs):
            k = len(r["encoder_positions"])
            if k:
                ids[i, :k] = torch.tensor([r["encoder_l1_ids"], r["encoder_l2_ids"], r["encoder_l3_ids"]]).T
                pos[i, :k] = torch.arange(k)
                types[i, :k] = ITEM_TOKEN_TYPE
                mask[i, :k] = 1
        data = {
            "encoder_semantic_ids": ids,
            "encoder_positions": pos,
            "encoder_token_types": types,
            "encoder_attention_mask": mask,
            "decoder_semantic_ids": torch.full((b, 1, 3), self.semantic_pad_id, dtype=torch.long),
            "decoder_positions": torch.zeros(b, 1, dtype=torch.long),
            "decoder_token_types": torch.full((b, 1), SPECIAL_TOKEN_TYPE, dtype=torch.long),
            "decoder_attention_mask": torch.ones(b, 1, dtype=torch.long),
        }
        if return_tensors is None:
            data = {k: v.tolist() for k, v in data.items()}
        elif return_tensors != "pt":
            raise ValueError(f"UGTTokenizer supports return_tensors='pt' or None, got {return_tensors!r}")
        return BatchEncoding(data)

    @property
    def semantic_pad_id(self) -> int:
        """语义 ID 的 padding 值（与 UGTConfig.semantic_pad_id 一致）；它与 token_type 0 一起出现，不参与嵌入。
        与 tokenizer 的 "<pad>" token（pad_token_id，HF/TRL 会写进 model.config.pad_token_id）不是一回事。"""
        return SEMANTIC_PAD_ID


def _read_items_json(path: str):
    """读取并校验 ugt_items.json；出错时指明文件与字段。"""
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != ITEMS_FORMAT:
        raise ValueError(f"{path}: expected an object with format={ITEMS_FORMAT!r}")
    for key in ("item_id", "l1", "l2", "l3"):
        if not isinstance(payload.get(key), list):
            raise ValueError(f"{path}: field '{key}' must be a list")
    n = len(payload["item_id"])
    for key in ("l1", "l2", "l3"):
        if len(payload[key]) != n:
            raise ValueError(f"{path}: field '{key}' has {len(payload[key])} entries, item_id has {n}")
        for row, v in enumerate(payload[key]):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{path}: record {row} field '{key}' must be a non-negative int, got {v!r}")
    triples = np.stack([np.asarray(payload[k], dtype=np.int64) for k in ("l1", "l2", "l3")], axis=1)
    return payload["item_id"], triples, payload.get("vocab_sizes")


__all__ = ["UGTTokenizer", "ITEMS_JSON"]
