"""小产物目录：prepare 出的合成目录（模块级缓存：同一测试进程只准备一次）与手写的最小目录。"""

import functools
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ugt_hf.data.prepare import prepare


@functools.lru_cache(maxsize=None)
def tiny_data_dir() -> Path:
    out = Path(tempfile.mkdtemp(prefix="ugt_tiny_")) / "data"
    prepare(str(out), source="synthetic", num_users=200, num_items=80, events_per_user=10, num_clusters=8, seed=1,
            encoder_max_length=20, progress=False, log=lambda *a: None)
    return out


# 手写的最小产物目录：3 个物品、2 个用户，直接写出 prepare 的文件格式（不跑 prepare，几毫秒）
HAND_ITEMS = [("a", 0, 0, 1, 0), ("b", 1, 1, 0, 1), ("c", 2, 1, 1, 0)]  # item_id, item_index, l1, l2, l3
HAND_VOCAB = [2, 2, 2]


def _recommend_record(user, history, targets):
    """history / targets：item_index 列表 -> RecommendDataset 记录（decoder = [BOS, targets[:-1]]）。"""
    trip = {r[1]: r[2:] for r in HAND_ITEMS}
    enc = [trip[i] for i in history]
    dec = [(0, 0, 0)] + [trip[i] for i in targets[:-1]]
    lab = [trip[i] for i in targets]
    rec = {"user_id": user}
    for lvl in range(3):
        rec[f"encoder_l{lvl + 1}_ids"] = [t[lvl] for t in enc]
    n = len(enc)
    rec.update(encoder_positions=list(range(n)), encoder_token_types=[1] * n, encoder_mask=[1] * n)
    for lvl in range(3):
        rec[f"decoder_l{lvl + 1}_ids"] = [t[lvl] for t in dec]
    rec.update(decoder_positions=list(range(len(dec))), decoder_token_types=[0] + [1] * (len(dec) - 1),
               decoder_mask=[1] * len(dec))
    for lvl in range(3):
        rec[f"labels_l{lvl + 1}"] = [t[lvl] for t in lab]
    return rec


def hand_made_data_dir(folder) -> Path:
    """写出 meta.json、items.parquet、train/valid/test 的 .jsonl 与 .parquet、preference_train.jsonl（只有 JSONL）。"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cols = list(zip(*HAND_ITEMS))
    pq.write_table(pa.table({"item_id": list(cols[0]), "item_index": list(cols[1]), "l1": list(cols[2]),
                             "l2": list(cols[3]), "l3": list(cols[4]), "title": [None, "B", None]}),
                   folder / "items.parquet")
    train = [_recommend_record("u1", [0], [1, 2]), _recommend_record("u2", [2, 1], [0])]
    valid = [_recommend_record("u1", [0, 1], [2])]
    test = [_recommend_record("u2", [2, 1, 0], [1])]

    def jsonl(name, rows):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    for name, rows in (("train", train), ("valid", valid), ("test", test)):  # 两种格式都写（同 prepare）
        jsonl(f"{name}.jsonl", rows)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    seq = {k: v for k, v in train[0].items() if k.startswith("encoder_")}
    jsonl("preference_train.jsonl", [{"user_id": "u1", "user_sequence": seq,
                                      "chosen_item": {"l1_id": 1, "l2_id": 0, "l3_id": 1},
                                      "rejected_item": {"l1_id": 1, "l2_id": 1, "l3_id": 0},
                                      "preference_score": 2.0}])
    meta = {"vocab_sizes": HAND_VOCAB, "num_users": 2, "num_items": 3, "pad_token_id": 0,
            "encoder_max_length": 4, "decoder_max_length": 3,
            "splits": {"train": 2, "valid": 1, "test": 1, "preference_train": 1, "preference_test": 0}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder
