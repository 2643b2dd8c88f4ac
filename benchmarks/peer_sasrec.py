"""同台对照：SASRec（Kang & McAuley 2018）+ 全物品 softmax 交叉熵（genrec / eSASRec 复现里的 "SASRec-CE"）。

    python benchmarks/peer_sasrec.py --data /tmp/q/beauty_data --dataset beauty
写 benchmarks/results/peer_sasrec_<dataset>.json：git commit、配置、每轮验证指标、最佳轮、两种协议的测试指标、
墙钟时间。

与我们的模型同一套评估：同一个 `ugt prepare` 目录（同样的留一划分），训练只用训练前缀（每个用户去掉最后两个物品），
验证目标 = 倒数第二个、测试目标 = 最后一个，全目录排序，指标出自 `ugt_hf.metrics.MetricsCalculator`；
"历史屏蔽"与 `evaluation.rank_dataset(exclude_history=True)` 相同：屏蔽记录里编码器历史（encoder_mask 为真）的物品。
只用 CPU、默认单线程，墙钟时间可与流水线各阶段直接比较。
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ugt_hf.data.datadir import DataDir  # noqa: E402
from ugt_hf.generation import ItemCatalogue  # noqa: E402
from ugt_hf.metrics import MetricsCalculator  # noqa: E402
from ugt_hf.report import metrics_table  # noqa: E402

K_VALUES = (5, 10, 20)
ENC = ("encoder_l1_ids", "encoder_l2_ids", "encoder_l3_ids")
LAB = ("labels_l1", "labels_l2", "labels_l3")


# ---------------------------------------------------------------------------------------------------------------------
# 数据：记录 -> 物品下标序列
# ---------------------------------------------------------------------------------------------------------------------


def _list_items(table: pa.Table, cols, catalogue: ItemCatalogue) -> Tuple[np.ndarray, np.ndarray]:
    """三列 list<int> 的语义 ID -> (扁平物品下标 [M]，行偏移 [R+1])；向量化，不逐行转 Python 列表。"""
    arrays = [table.column(c).combine_chunks() for c in cols]
    offsets = arrays[0].offsets.to_numpy()
    flat = np.stack([a.flatten().to_numpy() for a in arrays], axis=1)  # [M, 3]
    return catalogue.lookup(torch.as_tensor(flat)).numpy(), offsets


def train_prefixes(data: DataDir, catalogue: ItemCatalogue) -> List[np.ndarray]:
    """由 train 记录还原每个用户的训练前缀（物品下标）。

    prepare 的训练样本是同一用户按切点 s, s+stride, ... 依次写出的：前缀 = 第一条的编码器 + 每条标签的前 stride 个
    （最后一条取全部标签）。逐条核对编码器确实是已还原前缀的尾部，格式不符时报错而不是悄悄训练错的序列。
    """
    stride = int(data.meta.get("stride", 1))
    table = data.read_table("train", ("user_id",) + ENC + LAB)
    enc, eo = _list_items(table, ENC, catalogue)
    lab, lo = _list_items(table, LAB, catalogue)
    if (enc < 0).any() or (lab < 0).any():
        raise ValueError(f"{data.split_path('train')}: a training item is not in items.parquet")
    users = table.column("user_id").to_pylist()
    out: List[np.ndarray] = []
    r = 0
    while r < len(users):
        end = r
        while end < len(users) and users[end] == users[r]:
            end += 1
        seq = list(enc[eo[r]:eo[r + 1]])
        for j in range(r, end):
            cut = len(seq)
            e = enc[eo[j]:eo[j + 1]]
            if cut < len(e) or not np.array_equal(e, seq[cut - len(e):]):
                raise ValueError(f"train record {j} (user {users[j]}): encoder is not the tail of the user's prefix; "
                                 "expected consecutive cut points as written by `ugt prepare`")
            labels = lab[lo[j]:lo[j + 1]]
            seq.extend(labels if j == end - 1 else labels[:stride])
        out.append(np.asarray(seq, dtype=np.int64))
        r = end
    return out


def eval_records(data: DataDir, split: str, catalogue: ItemCatalogue) -> Tuple[List[np.ndarray], np.ndarray]:
    """valid/test 记录 -> (每行的历史物品下标，目标 [N])。历史 = encoder_mask 为真且在目录里的编码器物品
    （同 ItemCatalogue.history_items），目标 = 第 0 个标签（不在目录里为 -1，同 evaluation._target_indices）。"""
    table = data.read_table(split, ENC + LAB + ("encoder_mask",))
    enc, eo = _list_items(table, ENC, catalogue)
    mask = table.column("encoder_mask").combine_chunks().flatten().to_numpy().astype(bool)
    keep = mask & (enc >= 0)
    hist = [enc[eo[i]:eo[i + 1]][keep[eo[i]:eo[i + 1]]] for i in range(len(eo) - 1)]
    lab, lo = _list_items(table, LAB, catalogue)
    return hist, lab[lo[:-1]]


def train_windows(prefixes: List[np.ndarray], max_len: int, last_only: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """训练前缀 -> (输入 [W, L]，目标 [W, L])，左侧补 0，物品下标 +1（0 = padding）。

    每个位置预测下一个物品；长于 L 的前缀从尾部起切成互不重叠的窗口，使每个目标恰好出现一次
    （last_only = SASRec 原实现：每个用户只取最后 L 个位置）。
    """
    inputs, targets = [], []
    for p in prefixes:
        for e in range(len(p) - 1, 0, -max_len):
            b = max(0, e - max_len)
            inputs.append(p[b:e] + 1)
            targets.append(p[b + 1:e + 1] + 1)
            if last_only:
                break
    x = torch.zeros(len(inputs), max_len, dtype=torch.long)
    y = torch.zeros(len(inputs), max_len, dtype=torch.long)
    for i, (a, b) in enumerate(zip(inputs, targets)):
        x[i, max_len - len(a):] = torch.as_tensor(a)
        y[i, max_len - len(b):] = torch.as_tensor(b)
    return x, y


def history_inputs(hist: List[np.ndarray], max_len: int) -> torch.Tensor:
    """评估历史 -> 模型输入 [N, L]（最近 L 个，左侧补 0，下标 +1）。"""
    x = torch.zeros(len(hist), max_len, dtype=torch.long)
    for i, h in enumerate(hist):
        h = h[-max_len:]
        if len(h):
            x[i, max_len - len(h):] = torch.as_tensor(h + 1)
    return x


# ---------------------------------------------------------------------------------------------------------------------
# 模型
# ---------------------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-LN 因果自注意力块：x + Attn(LN x)，x + FFN(LN x)（FFN 为 SASRec 的逐位置两层 ReLU）。"""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape  # [B, T, H]
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # [B, nh, T, dh]
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, h)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    """物品嵌入（0 = padding）+ 可学习位置嵌入 + 因果块；输出层与物品嵌入共享权重。"""

    def __init__(self, num_items: int, hidden: int, layers: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.max_len, self.scale = max_len, hidden ** 0.5
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(layers))
        self.drop, self.ln = nn.Dropout(dropout), nn.LayerNorm(hidden)
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, T] 左补 0 的物品号（T <= L，右对齐到位置 L-1）-> 隐状态 [B, T, H]。"""
        t = seq.shape[1]
        valid = seq > 0  # [B, T]
        pos = torch.arange(self.max_len - t, self.max_len)
        x = self.drop(self.item_emb(seq) * self.scale + self.pos_emb(pos)) * valid[..., None]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        # 因果且只看非 padding 的键；padding 查询至少能看自己，避免整行被屏蔽成 NaN（其输出不参与损失）
        allowed = (causal & valid[:, None, :]) | torch.eye(t, dtype=torch.bool)  # [B, T, T]
        allowed = allowed[:, None]  # [B, 1, T, T]
        for blk in self.blocks:
            x = blk(x, allowed) * valid[..., None]
        return self.ln(x)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """隐状态 [..., H] -> 全部物品的分数 [..., N]（不含 padding 行）。"""
        return h @ self.item_emb.weight[1:].T


class FullSoftmaxCE(torch.autograd.Function):
    """全物品 softmax 交叉熵（均值），与 F.cross_entropy(h @ w.T, y) 数值相同。

    [M, N] 的 logits 是一步里唯一的大张量（Beauty 每批约 750 x 12101）：它写进一块反复使用的缓冲区，softmax 与梯度
    都原地算，每步不再新分配、清零几十 MB（实测单线程每步快约三分之一）。不支持二阶导。
    """

    @staticmethod
    def forward(ctx, h, w, y, buf):  # h [M, H]，w [N, H]，y [M]，buf [>=M, N]
        p = torch.mm(h, w.T, out=buf[: len(h)])  # [M, N] logits
        picked = p.gather(1, y[:, None])  # [M, 1]
        top = p.max(1, keepdim=True).values  # [M, 1]
        p.sub_(top).exp_()
        total = p.sum(1, keepdim=True)  # [M, 1]
        p.div_(total)  # 原地变成 softmax，留给反向
        ctx.save_for_backward(h, w, y)
        ctx.probs = p
        return (top + total.log() - picked).mean()

    @staticmethod
    def backward(ctx, grad):
        h, w, y = ctx.saved_tensors
        g = ctx.probs  # [M, N]：d loss / d logits = (softmax - onehot) / M
        g[torch.arange(len(y)), y] -= 1.0
        g.mul_(grad / len(y))
        return g @ w, g.T @ h, None, None


def _trim(x: torch.Tensor, *others: torch.Tensor):
    """去掉整批都是 padding 的左侧列（位置嵌入按右对齐，结果不变，只省计算）。"""
    t = max(int((x > 0).sum(1).max()), 1)
    return (x[:, -t:],) + tuple(o[:, -t:] for o in others)


# ---------------------------------------------------------------------------------------------------------------------
# 训练与评估
# ---------------------------------------------------------------------------------------------------------------------


def bucketed_batches(lengths: torch.Tensor, batch: int, gen: torch.Generator, pool: int = 50) -> List[torch.Tensor]:
    """随机批次，但长度相近的窗口放在一起：先打乱，每 pool 个批次的样本按长度排序后切批，再打乱批次顺序。

    Beauty 的前缀平均不到 7 个物品而窗口长 50，纯随机批次里约 85% 是 padding，Transformer 部分的计算因此多数是浪费；
    分桶后每批只补到本批最长（_trim），每批仍是全体样本的随机子集。
    """
    batches: List[torch.Tensor] = []
    for chunk in torch.randperm(len(lengths), generator=gen).split(batch * pool):
        batches.extend(chunk[torch.argsort(lengths[chunk], stable=True)].split(batch))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen)]


def train_epoch(model: SASRec, opt, x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator) -> float:
    """一轮：每个非 padding 位置对全部物品做 softmax 交叉熵。返回平均损失。"""
    model.train()
    total, count = 0.0, 0
    lengths = (x > 0).sum(1)  # [W]
    buf = torch.empty(0)
    for idx in bucketed_batches(lengths, batch, gen):
        xb, yb = _trim(x[idx], y[idx])  # [B, T]
        h = model(xb)  # [B, T, H]
        keep = yb > 0
        if buf.shape[0] < int(keep.sum()):  # 只在本轮出现更多目标的批时长大
            buf = torch.empty(int(keep.sum()), model.item_emb.num_embeddings - 1)
        # 只算有目标的位置：[M, H] x [N, H] -> [M, N]
        loss = FullSoftmaxCE.apply(h[keep], model.item_emb.weight[1:], yb[keep] - 1, buf)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = int(keep.sum())
        total, count = total + float(loss.detach()) * n, count + n
    return total / max(count, 1)


@torch.inference_mode()
def rank(model: SASRec, hist: List[np.ndarray], exclude_history: bool, top_k: int = max(K_VALUES),
         batch: int = 1024) -> np.ndarray:
    """每个用户的 top-K 物品下标 [N, K]；exclude_history 时历史物品的分数为 -inf，剩余不足 K 个处补 -1。"""
    model.eval()
    x = history_inputs(hist, model.max_len)  # [N, L]
    order = torch.argsort((x > 0).sum(1), stable=True)  # 按历史长度分批：每批只补到本批最长（_trim）
    out = torch.empty(len(x), min(top_k, model.item_emb.num_embeddings - 1), dtype=torch.long)
    for idx in order.split(batch):
        xb, = _trim(x[idx])
        s = model.scores(model(xb)[:, -1])  # [B, N] 最后一个位置 = 最近的历史物品
        if exclude_history:
            rows = torch.cat([torch.full((len(hist[i]),), r) for r, i in enumerate(idx.tolist())])
            cols = torch.as_tensor(np.concatenate([hist[i] for i in idx.tolist()]), dtype=torch.long)
            s[rows, cols] = float("-inf")
        val, top = s.topk(out.shape[1], dim=1)
        out[idx] = torch.where(torch.isinf(val), -1, top)
    return out.numpy()


def metrics(model: SASRec, hist, targets, catalogue: ItemCatalogue, exclude_history: bool) -> Dict[str, float]:
    calc = MetricsCalculator(num_items=catalogue.num_items, item_l1=catalogue.triples[:, 0].numpy())
    calc.add_batch(rank(model, hist, exclude_history), targets)
    return {k: float(v) for k, v in calc.compute(k_values=list(K_VALUES)).items()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    data = DataDir(args.data)
    catalogue = data.catalogue()
    prefixes = train_prefixes(data, catalogue)
    x, y = train_windows(prefixes, args.max_len, args.train_windows == "last")
    valid, test = eval_records(data, "valid", catalogue), eval_records(data, "test", catalogue)
    load_s = time.perf_counter() - t0
    if args.max_len > data.encoder_max_length:
        print(f"[sasrec] note: eval histories hold at most {data.encoder_max_length} items (encoder_max_length), "
              f"fewer than --max_len {args.max_len}")
    print(f"[sasrec] {args.dataset}: {catalogue.num_items} items, {len(prefixes)} training prefixes, "
          f"{len(x)} windows, {int((y > 0).sum())} training targets, {len(valid[1])} eval users ({load_s:.1f}s)")
    model = SASRec(catalogue.num_items, args.hidden, args.layers, args.heads, args.dropout, args.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    history, best, best_epoch, best_state = [], -1.0, 0, None
    train_s = eval_s = 0.0
    stopped = f"max epochs ({args.epochs})"
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        loss = train_epoch(model, opt, x, y, args.batch, gen)
        train_s += time.perf_counter() - t
        t = time.perf_counter()
        m = metrics(model, *valid, catalogue, exclude_history=False)
        eval_s += time.perf_counter() - t
        history.append({"epoch": epoch, "loss": loss, "train_seconds": train_s, **{k: m[k] for k in
                        ("recall@10", "ndcg@10", "mrr")}})
        better = m["ndcg@10"] > best
        if better:
            best, best_epoch, best_state = m["ndcg@10"], epoch, copy.deepcopy(model.state_dict())
        print(f"[sasrec] epoch {epoch:3d} loss {loss:.4f} valid R@10 {m['recall@10']:.4f} N@10 {m['ndcg@10']:.4f}"
              f"{' *' if better else ''} ({train_s:.0f}s train)", flush=True)
        if epoch - best_epoch >= args.patience:
            stopped = f"no better valid NDCG@10 for {args.patience} epochs"
            break
        if args.time_budget and train_s + eval_s >= args.time_budget:
            stopped = f"time budget of {args.time_budget:.0f}s reached"
            break
    model.load_state_dict(best_state)
    t = time.perf_counter()
    result = {split: {name: metrics(model, *recs, catalogue, exclude_history=masked)
                      for name, masked in (("history_allowed", False), ("history_masked", True))}
              for split, recs in (("valid", valid), ("test", test))}
    eval_s += time.perf_counter() - t
    out = {
        "dataset": args.dataset, "git_commit": git_commit(), "model": "SASRec, full softmax cross-entropy over items",
        "data": str(args.data), "config": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
        "protocol": "leave-one-out, full-catalogue ranking; history_masked = the record's encoder items excluded "
                    "(as evaluation.rank_dataset(exclude_history=True))",
        "num_items": catalogue.num_items, "num_train_windows": len(x), "num_train_targets": int((y > 0).sum()),
        "epochs_run": len(history), "best_epoch": best_epoch, "stopped": stopped, "valid_history": history,
        "valid": result["valid"], "test": result["test"],
        "wall_seconds": {"load": load_s, "train": train_s, "evaluate": eval_s, "total": time.perf_counter() - t0},
        "threads": args.threads,
    }
    rows = {f"SASRec-CE test, history {p.split('_')[1]}": result["test"][p] for p in result["test"]}
    print(f"\n== {args.dataset}: SASRec-CE (best epoch {best_epoch} of {len(history)}; stopped: {stopped}) ==")
    print(metrics_table(rows))
    print(f"wall time: train {train_s:.0f}s, evaluate {eval_s:.0f}s, total {out['wall_seconds']['total']:.0f}s "
          f"({args.threads} thread(s))")
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"peer_sasrec_{args.dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return out


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SASRec with full softmax CE, in the UGT evaluation harness")
    p.add_argument("--data", required=True, help="folder written by `ugt prepare`")
    p.add_argument("--dataset", required=True, help="name used in the results file name")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs")
    p.add_argument("--patience", type=int, default=20,
                   help="stop after this many epochs without a better valid NDCG@10")
    p.add_argument("--time_budget", type=float, default=None,
                   help="stop after the epoch in which train + valid time passes this many seconds")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max_len", type=int, default=50, help="most recent items the model reads")
    p.add_argument("--train_windows", choices=["all", "last"], default="all",
                   help="all: non-overlapping windows cover every training target; last: only the last max_len")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/peer_sasrec_<dataset>.json)")
    args = p.parse_args(argv)
    if args.hidden % args.heads:
        p.error("--hidden must be divisible by --heads")
    return args


def main(argv=None) -> int:
    run(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
