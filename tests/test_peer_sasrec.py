"""benchmarks/peer_sasrec.py：记录 -> 序列的还原、历史屏蔽与 evaluation 一致、能学会植入的确定性后继结构。"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from _benchmarks import load_benchmark

from tests._tiny_artifacts import hand_made_data_dir
from ugt_hf.data.datadir import DataDir
from ugt_hf.data.prepare import prepare
from ugt_hf.evaluation import popularity_baseline

peer = load_benchmark("peer_sasrec")

NUM_ITEMS = 50


@pytest.fixture(scope="module")
def cycle_data(tmp_path_factory):
    """确定性后继：物品排成一个长 50 的环，每个用户从随机位置起沿环走 6-12 步（S3-Rec 格式，经 `ugt prepare`）。"""
    folder = tmp_path_factory.mktemp("peer_sasrec")
    rng = np.random.default_rng(0)
    ring = rng.permutation(NUM_ITEMS) + 1
    seqs = {}
    for u in range(1, 201):
        start = int(rng.integers(NUM_ITEMS))
        seqs[str(u)] = [str(ring[(start + t) % NUM_ITEMS]) for t in range(int(rng.integers(6, 13)))]
    (folder / "cyc.txt").write_text("".join(f"{u} {' '.join(s)}\n" for u, s in seqs.items()))
    prepare(str(folder / "data"), source="s3rec", input=str(folder / "cyc.txt"), encoder_max_length=8,
            progress=False, log=lambda *a: None)
    return folder / "data", seqs


def test_extraction_hand_made(tmp_path):
    """手写目录（tests/_tiny_artifacts）：u1 训练 [0] -> [1, 2]，u2 训练 [2, 1] -> [0]；valid/test 各一行。"""
    data = DataDir(hand_made_data_dir(tmp_path))
    cat = data.catalogue()
    assert [p.tolist() for p in peer.train_prefixes(data, cat)] == [[0, 1, 2], [2, 1, 0]]
    hist, target = peer.eval_records(data, "valid", cat)
    assert [h.tolist() for h in hist] == [[0, 1]] and target.tolist() == [2]
    hist, target = peer.eval_records(data, "test", cat)
    assert [h.tolist() for h in hist] == [[2, 1, 0]] and target.tolist() == [1]


def test_extraction_matches_raw_sequences(cycle_data):
    """训练前缀 = 原序列去掉最后两个；valid/test 的历史 = 目标之前最近 8 个（encoder_max_length），
    目标 = 倒数第二/最后一个；历史与 ItemCatalogue.history_items（rank_dataset 的 exclude_history 用的）逐行相同。"""
    folder, seqs = cycle_data
    data = DataDir(folder)
    cat = data.catalogue()
    items = pq.read_table(data.items_path).to_pydict()
    index = dict(zip(items["item_id"], items["item_index"]))
    raw = [np.array([index[i] for i in s]) for s in seqs.values()]
    assert [p.tolist() for p in peer.train_prefixes(data, cat)] == [s[:-2].tolist() for s in raw]
    for split, end in (("valid", -2), ("test", -1)):
        hist, target = peer.eval_records(data, split, cat)
        assert target.tolist() == [int(s[end]) for s in raw]
        assert [h.tolist() for h in hist] == [s[:end][-8:].tolist() for s in raw]
        rows = data.read_table(split, peer.ENC + ("encoder_mask",)).to_pylist()
        for row, h in zip(rows, hist):
            ids = torch.tensor([row[c] for c in peer.ENC]).T[None]  # [1, Te, 3]
            assert cat.history_items(ids, torch.tensor([row["encoder_mask"]]))[0] == h.tolist()


def test_train_windows_cover_every_target_once():
    p = np.arange(7)  # 0..6；窗口长 3，从尾部切：输入 [3, 4, 5] -> [4, 5, 6]，[0, 1, 2] -> [1, 2, 3]
    x, y = peer.train_windows([p, np.array([5])], max_len=3, last_only=False)
    assert x.tolist() == [[4, 5, 6], [1, 2, 3]] and y.tolist() == [[5, 6, 7], [2, 3, 4]]  # 下标 +1，0 = padding
    x, y = peer.train_windows([np.arange(2)], max_len=3, last_only=False)
    assert x.tolist() == [[0, 0, 1]] and y.tolist() == [[0, 0, 2]]  # 左补 0；只有一个物品的前缀（上面的 [5]）没有窗口
    x, _ = peer.train_windows([p], max_len=3, last_only=True)
    assert x.tolist() == [[4, 5, 6]]


def test_fused_softmax_ce_matches_torch():
    torch.manual_seed(0)
    h = torch.randn(30, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    y = torch.randint(0, 20, (30,))
    loss = peer.FullSoftmaxCE.apply(h, w, y, torch.empty(40, 20))  # 缓冲区比本批大，只用前 30 行
    (3 * loss).backward()
    ours = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.T, y)
    (3 * ref).backward()
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(ours[0], h.grad, atol=1e-6) and torch.allclose(ours[1], w.grad, atol=1e-6)


def test_history_masking_filters_the_allowed_ranking():
    """屏蔽后的 top-K = 不屏蔽的完整排序去掉历史物品后的前 K 个；历史几乎占满目录时补 -1。"""
    torch.manual_seed(0)
    model = peer.SASRec(num_items=12, hidden=16, layers=1, heads=2, dropout=0.0, max_len=6)
    hist = [np.array([3, 7, 1]), np.array([5]), np.array([0, 2, 4, 5, 6, 8, 9, 10, 11])]
    full = peer.rank(model, hist, exclude_history=False, top_k=12)
    masked = peer.rank(model, hist, exclude_history=True, top_k=5)
    for f, m, h in zip(full, masked, hist):
        kept = [int(i) for i in f if i not in set(h.tolist())]
        assert m.tolist() == (kept + [-1] * 5)[:5]
    assert masked[2].tolist()[3:] == [-1, -1]  # 只剩 3 个物品可推荐


def test_learns_planted_successor_structure(cycle_data, tmp_path):
    folder, _ = cycle_data
    out = tmp_path / "peer.json"
    result = peer.run(peer.parse(["--data", str(folder), "--dataset", "cyc", "--epochs", "12", "--patience", "12",
                                  "--hidden", "32", "--dropout", "0.1", "--lr", "0.01", "--max_len", "8",
                                  "--out", str(out)]))
    pop = popularity_baseline(folder, "test", k_values=(10,))["recall@10"]
    assert pop < 0.4
    for protocol in ("history_allowed", "history_masked"):
        assert result["test"][protocol]["recall@10"] > 0.9 > pop + 0.5
    saved = json.loads(out.read_text())
    assert saved["best_epoch"] == result["best_epoch"] >= 1 and len(saved["valid_history"]) == saved["epochs_run"]
    assert set(saved["wall_seconds"]) == {"load", "train", "evaluate", "total"}
