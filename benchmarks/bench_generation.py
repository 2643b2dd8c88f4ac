"""生成速度与束搜索精确度：Beauty 目录（`ugt prepare --source s3rec` 的产物）上 top-10 推荐。

测量（同一进程、同一模型，比例可比）：
  - 束搜索（num_beams=20, top_k=10）给全部测试用户排序的总时间与 users/s（含编码器+解码器前向）
  - 穷举打分（目录中每个物品）的 users/s（在子集上）
  - 子集上束搜索 top-10 与穷举 top-10 完全一致（同序）/ 集合一致的比例，以及精确性证书成立的比例
  - 子集上两者的 Recall@10（验证模型确实学到了东西，束搜索没有丢掉命中）
模型：d_model=128、2+2 层、4 专家 top-2；默认先在 train split 上训练 --train_steps 步（随机初始化的模型
分布几乎均匀，束搜索与穷举的一致率没有代表性）。第二个场景用规格词表 1024/4096/16384 下的随机唯一三元组目录
（12,101 个物品）测束搜索速度。

    python benchmarks/bench_generation.py --artifacts /tmp/beauty
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ugt_hf.configuration_ugt import UGTConfig  # noqa: E402
from ugt_hf.data.datadir import DataDir  # noqa: E402
from ugt_hf.generation import ItemCatalogue, beam_search, exhaustive_scores, exhaustive_topk  # noqa: E402
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation  # noqa: E402

BEAUTY_TXT = "/work/shared/data/amazon-beauty/Beauty.txt"


def padded(table, prefix_fields, max_len=None, pad=0):
    """pyarrow 的 list 列 -> 右 padding 的 [N, T] int64 数组（截断时保留最后 max_len 个）。"""
    out = []
    for name in prefix_fields:
        col = table.column(name).combine_chunks()
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy()
        lens = np.diff(offsets)
        t = int(lens.max()) if max_len is None else min(int(lens.max()), max_len)
        arr = np.full((len(lens), t), pad, dtype=np.int64)
        for i, (s, n) in enumerate(zip(offsets[:-1], lens)):
            k = min(n, t)
            arr[i, :k] = values[s + n - k : s + n]
        out.append(arr)
    return out


def load_split(path: Path, max_rows=None, encoder_max_length=50):
    table = pq.read_table(path)
    if max_rows is not None:
        table = table.slice(0, max_rows)
    e1, e2, e3, epos, etyp, emask = padded(
        table,
        ["encoder_l1_ids", "encoder_l2_ids", "encoder_l3_ids", "encoder_positions", "encoder_token_types",
         "encoder_mask"],
        encoder_max_length,
    )
    # 截断后位置重新从 0 开始（与 schema 的约定一致）
    epos = np.where(emask > 0, np.cumsum(emask, 1) - 1, 0)
    d1, d2, d3, dpos, dtyp, dmask = padded(
        table,
        ["decoder_l1_ids", "decoder_l2_ids", "decoder_l3_ids", "decoder_positions", "decoder_token_types",
         "decoder_mask"]
    )
    l1, l2, l3 = padded(table, ["labels_l1", "labels_l2", "labels_l3"], pad=-100)
    t = torch.from_numpy
    return {
        "encoder_semantic_ids": t(np.stack([e1, e2, e3], -1)),
        "encoder_positions": t(epos),
        "encoder_token_types": t(etyp),
        "encoder_attention_mask": t(emask),
        "decoder_semantic_ids": t(np.stack([d1, d2, d3], -1)),
        "decoder_positions": t(dpos),
        "decoder_token_types": t(dtyp),
        "decoder_attention_mask": t(dmask),
        "labels": t(np.stack([l1, l2, l3], -1)),
    }


def take(batch, idx):
    return {k: v[idx] for k, v in batch.items()}


def ensure_artifacts(path: Path) -> Path:
    data = DataDir(path)
    if not data.missing_files() and (path / "test.parquet").is_file():
        return path
    print(f"[bench] no artefacts at {path}; running ugt prepare ...", flush=True)
    subprocess.run([sys.executable, "-m", "ugt_hf.cli", "prepare", "--source", "s3rec", "--input", BEAUTY_TXT,
                    "--out", str(path)],
                   check=True, cwd=ROOT)
    return path


def train(model, data, steps, batch_size, lr, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    n = data["labels"].shape[0]
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        b = take(data, idx)
        # 去掉批内多余的 padding 列
        te = int(b["encoder_attention_mask"].sum(1).max())
        td = int(b["decoder_attention_mask"].sum(1).max())
        b = {k: (v[:, :te] if k.startswith("encoder") else v[:, :td]) for k, v in b.items()}
        out = model(**b)
        loss = out.loss + 0.01 * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "seconds": time.perf_counter() - t0,
            "first_loss": float(np.mean(losses[:10])), "last_loss": float(np.mean(losses[-10:]))}


@torch.no_grad()
def states_for(model, data, batch_size=1024):
    """BOS 位的解码器状态 [N, D]。按历史长度排序后分批，批内只 pad 到该批最长（Beauty 平均历史 ~9，上限 50）。"""
    lengths = data["encoder_attention_mask"].sum(1)
    order = torch.argsort(lengths)
    out = torch.empty(len(order), model.config.d_model)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        b = take(data, idx)
        te = max(1, int(lengths[idx].max()))
        b = {k: (v[:, :te] if k.startswith("encoder") else v) for k, v in b.items() if k != "labels"}
        out[idx] = model.prediction_states(position=0, **b)
    return out


def recall(items, targets):
    return float((items == targets[:, None]).any(1).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default="/tmp/ugt_bench_beauty", help="ugt prepare 产物目录（不存在时自动生成）")
    ap.add_argument("--train_steps", type=int, default=200)
    ap.add_argument("--train_batch", type=int, default=128)
    ap.add_argument("--num_beams", type=int, default=20)
    ap.add_argument("--top_k", type=int, default=10)
    ap.add_argument("--exhaustive_users", type=int, default=300)
    ap.add_argument("--max_users", type=int, default=None, help="只排序前 N 个测试用户（调试用）")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_generation.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    art = ensure_artifacts(Path(args.artifacts))
    data = DataDir(art)
    meta = data.meta
    vocab = meta["vocab_sizes"]
    catalogue = data.catalogue()
    print(f"[bench] catalogue {catalogue.num_items} items, vocab {vocab}, "
          f"{catalogue.level1_values.numel()} L1 / {catalogue.prefix2_l1.numel()} (L1,L2) prefixes", flush=True)
    config = UGTConfig(vocab_sizes=vocab, d_model=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                       ffn_dim=512, num_experts=4, num_experts_per_tok=2, dropout=0.1,
                       max_position_embeddings=max(64, meta.get("encoder_max_length", 50) + 8))
    model = UGTForGenerativeRecommendation(config)
    result = {"device": "cpu", "threads": args.threads, "artifacts": str(art), "num_items": catalogue.num_items,
              "vocab_sizes": vocab, "d_model": 128, "layers": "2+2", "num_experts": 4, "top_k_experts": 2,
              "num_beams": args.num_beams, "top_k": args.top_k, "history_items_excluded": False}
    if args.train_steps:
        train_data = load_split(art / "train.parquet")
        # 训练只是为了得到一个不均匀的模型，不计入测量；共享机器上 1 线程更稳
        torch.set_num_threads(1)
        result["training"] = train(model, train_data, args.train_steps, args.train_batch, 3e-3)
        torch.set_num_threads(args.threads)
        print(f"[bench] trained {args.train_steps} steps: loss {result['training']['first_loss']:.3f} -> "
              f"{result['training']['last_loss']:.3f} ({result['training']['seconds']:.1f}s)", flush=True)
        del train_data
    model.eval()

    test = load_split(art / "test.parquet", args.max_users)
    n_users = test["labels"].shape[0]
    targets = catalogue.lookup(test["labels"][:, 0])

    # 1) 全部测试用户：编码 + 束搜索
    t0 = time.perf_counter()
    states = states_for(model, test)
    t_enc = time.perf_counter() - t0
    beam = beam_search(model, states, catalogue, num_beams=args.num_beams, top_k=args.top_k, batch_size=1024)
    t_all = time.perf_counter() - t0
    result["beam_all_users"] = {"users": n_users, "seconds_total": t_all, "seconds_encode": t_enc,
                                "users_per_s": n_users / t_all, "recall@10": recall(beam.item_indices, targets),
                                "certified_exact_rate": float(beam.exact.float().mean()),
                                "under_60s": t_all < 60.0}
    print(f"[bench] beam: {n_users} users in {t_all:.1f}s ({n_users / t_all:.0f} users/s; encode {t_enc:.1f}s)",
          flush=True)

    # 2) 子集：穷举 vs 束搜索
    m = min(args.exhaustive_users, n_users)
    sub_states = states[:m]
    t0 = time.perf_counter()
    ex_scores = exhaustive_scores(model, sub_states, catalogue, batch_size=32)
    ex = exhaustive_topk(model, sub_states, catalogue, top_k=args.top_k)  # 复用同样的打分；计时只算上一行
    t_ex = time.perf_counter() - t0
    t0 = time.perf_counter()
    sub_beam = beam_search(model, sub_states, catalogue, num_beams=args.num_beams, top_k=args.top_k)
    t_sub_beam = time.perf_counter() - t0
    same_order = (sub_beam.item_indices == ex.item_indices).all(1)
    pairs = zip(sub_beam.item_indices.tolist(), ex.item_indices.tolist())
    same_set = torch.tensor([set(a) == set(b) for a, b in pairs])
    assert torch.allclose(sub_beam.scores, ex_scores.gather(1, sub_beam.item_indices), atol=1e-4)
    result["subset"] = {
        "users": m,
        "exhaustive_users_per_s": m / t_ex,
        "beam_users_per_s_states_given": m / t_sub_beam,
        "beam_vs_exhaustive_speedup": t_ex / t_sub_beam,
        "top10_identical_rate": float(same_order.float().mean()),
        "top10_same_set_rate": float(same_set.float().mean()),
        "certified_exact_rate": float(sub_beam.exact.float().mean()),
        "recall@10_beam": recall(sub_beam.item_indices, targets[:m]),
        "recall@10_exhaustive": recall(ex.item_indices, targets[:m]),
    }
    # 束宽与精确度的权衡（同一子集、同一模型）
    sweep = {}
    for width in sorted({args.num_beams, 50, 100, 200}):
        t0 = time.perf_counter()
        r = beam_search(model, sub_states, catalogue, num_beams=width, top_k=args.top_k)
        dt = time.perf_counter() - t0
        sweep[str(width)] = {"users_per_s_states_given": m / dt,
                             "top10_identical_rate": float((r.item_indices == ex.item_indices).all(1).float().mean()),
                             "certified_exact_rate": float(r.exact.float().mean())}
    result["subset"]["beam_width_sweep"] = sweep
    print(f"[bench] subset {m}: exhaustive {m / t_ex:.1f} users/s, beam {m / t_sub_beam:.0f} users/s; "
          f"identical top-10 {result['subset']['top10_identical_rate']:.3f}", flush=True)

    # 3) 规格词表 1024/4096/16384 的随机目录：束搜索速度
    g = np.random.default_rng(0)
    spec_vocab = [1024, 4096, 16384]
    trip = np.unique(np.stack([g.integers(0, v, 13000) for v in spec_vocab], 1), axis=0)[: catalogue.num_items]
    spec_cat = ItemCatalogue(trip, spec_vocab)
    spec_model = UGTForGenerativeRecommendation(UGTConfig(**{**config.to_dict(), "vocab_sizes": spec_vocab})).eval()
    su = min(2000, n_users)
    t0 = time.perf_counter()
    s_states = states_for(spec_model, take(test, slice(0, su)))
    # 测试集的三元组在 128 词表内，同样落在 1024/4096/16384 词表内，可直接作为编码器输入
    beam_search(spec_model, s_states, spec_cat, num_beams=args.num_beams, top_k=args.top_k, batch_size=256)
    t_spec = time.perf_counter() - t0
    result["spec_vocab_random_catalogue"] = {"vocab_sizes": spec_vocab, "num_items": spec_cat.num_items,
                                             "untrained": True,
                                             "users": su, "users_per_s": su / t_spec,
                                             "extrapolated_seconds_22363_users": 22363 / (su / t_spec)}
    print(f"[bench] spec vocab random catalogue: {su / t_spec:.0f} users/s", flush=True)

    rows = [
        ("beam top-10, all test users (users/s)", f"{result['beam_all_users']['users_per_s']:.0f}"),
        ("beam all users total (s)", f"{t_all:.1f}"),
        ("exhaustive (users/s)", f"{result['subset']['exhaustive_users_per_s']:.1f}"),
        ("beam / exhaustive speed ratio", f"{result['subset']['beam_vs_exhaustive_speedup']:.1f}x"),
        ("beam top-10 == exhaustive top-10 (same order)", f"{result['subset']['top10_identical_rate']:.3f}"),
        ("beam top-10 == exhaustive top-10 (same set)", f"{result['subset']['top10_same_set_rate']:.3f}"),
        ("certified exact (subset)", f"{result['subset']['certified_exact_rate']:.3f}"),
        ("Recall@10 beam / exhaustive (subset)",
         f"{result['subset']['recall@10_beam']:.4f} / {result['subset']['recall@10_exhaustive']:.4f}"),
        *[(f"beam {w}: identical top-10 / users/s (subset)",
           f"{v['top10_identical_rate']:.3f} / {v['users_per_s_states_given']:.0f}")
          for w, v in result["subset"]["beam_width_sweep"].items()],
        ("spec-vocab random catalogue beam (users/s)", f"{result['spec_vocab_random_catalogue']['users_per_s']:.0f}"),
    ]
    print()
    for k, v in rows:
        print(f"{k:<50} {v:>18}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
