"""RQ-KMeans：现在的实现（faiss 最近质心 + 抽样训练）与一个旧提交的实现（torch 稠密 [N, K] 距离）对比。

    python benchmarks/bench_kmeans.py --items 62500,312500,1000000 --reference 98cf55a --reference_max_items 312500

输入是可复现的合成嵌入：--clusters 个潜在簇中心加噪声，L2 归一化，维度 --dim（prepare 的默认 64），和 prepare 的
协同嵌入一样在单位球面上。每个目录规模按 `effective_codebook_sizes`（请求 --codebook_sizes）定簇数，
两种实现各跑一次完整的 `rq_kmeans`（三层 + 冲突消解），记录墙钟时间、码是否逐项相同，以及各层的量化误差
（按码重新求簇均值后的平均残差平方；抽样训练是否变差看这一项）。旧实现用 `git show` 从 --reference 提交
取出 `ugt_hf/data/semantic_ids.py` 单独加载（不在仓库里另存一份旧代码）。两种实现在同一进程、同样线程数下
先后运行，时间只在同一次运行内可比。写 JSON（--out，含 git commit）并打印表格。
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_embeddings(num_items: int, dim: int, clusters: int, seed: int):
    """潜在簇中心 + 噪声，行 L2 归一化 [N, dim]。"""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    member = torch.randint(0, clusters, (num_items,), generator=g)
    emb = centres[member] + 0.7 * torch.randn(num_items, dim, generator=g)
    return emb / emb.norm(dim=1, keepdim=True)


def quantisation_error(emb, codes) -> dict:
    """各层前缀（L1；L1+L2；L1+L2+L3）按码求簇均值后的逐层残差平方均值。"""
    import numpy as np
    import torch

    out, residual = {}, emb.clone()
    for level in range(3):
        key = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)[1].reshape(-1)
        key = torch.from_numpy(key.astype(np.int64))
        groups = int(key.max()) + 1
        sums = torch.zeros(groups, emb.shape[1]).index_add_(0, key, residual)
        means = sums / torch.bincount(key, minlength=groups).clamp_min(1)[:, None]
        residual = residual - means[key]
        out[f"l{level + 1}"] = round(float(residual.pow(2).sum(1).mean()), 6)
    return out


def load_reference(commit: str, workdir: Path):
    """从 git 提交取出旧的 semantic_ids.py 单独加载（它只相对导入 .schema，换成当前包的 schema）。"""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:ugt_hf/data/semantic_ids.py"],
                          check=True, capture_output=True, text=True).stdout
    text = text.replace("from .schema import", "from ugt_hf.data.schema import")
    path = workdir / f"semantic_ids_{commit}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"semantic_ids_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass 需要在 sys.modules 里找到自己的模块
    spec.loader.exec_module(module)
    return module


def time_rq(module, emb, sizes, seed):
    t = time.perf_counter()
    sid = module.rq_kmeans(emb, sizes, seed=seed)
    return sid, round(time.perf_counter() - t, 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="62500,312500", help="comma-separated catalogue sizes")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=1024, help="latent clusters of the synthetic embeddings")
    p.add_argument("--codebook_sizes", default="1024,4096,16384")
    p.add_argument("--reference", default="98cf55a", help="git commit whose rq_kmeans is the baseline")
    p.add_argument("--reference_max_items", type=int, default=312500,
                   help="run the baseline only up to this many items (it is slow)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_kmeans.json"))
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from ugt_hf.data import semantic_ids
    from ugt_hf.workflow import git_commit

    torch.set_num_threads(args.threads)
    sizes = [int(v) for v in args.codebook_sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = load_reference(args.reference, Path(tmp)) if args.reference else None
        for n in [int(float(v)) for v in args.items.split(",")]:
            emb = synthetic_embeddings(n, args.dim, args.clusters, args.seed)
            row = {"items": n, "kmeans_sizes": semantic_ids.effective_codebook_sizes(n, sizes),
                   "train_points_cap": semantic_ids.MAX_POINTS_PER_CENTROID}
            sid, row["seconds"] = time_rq(semantic_ids, emb, sizes, args.seed)
            row["quantisation_error"] = quantisation_error(emb, sid.codes)
            row["vocab_sizes"] = sid.vocab_sizes
            if reference is not None and n <= args.reference_max_items:
                ref, row["reference_seconds"] = time_rq(reference, emb, sizes, args.seed)
                row["reference_quantisation_error"] = quantisation_error(emb, ref.codes)
                row["identical_codes"] = bool(np.array_equal(ref.codes, sid.codes))
                row["items_with_identical_codes"] = round(float((ref.codes == sid.codes).all(1).mean()), 4)
                row["speedup"] = round(row["reference_seconds"] / row["seconds"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)

    out = {"benchmark": "bench_kmeans", "git_commit": git_commit(ROOT), "reference_commit": args.reference,
           "threads": args.threads, "options": vars(args), "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{'items':>9} {'K':>16} {'now s':>8} {'ref s':>8} {'speedup':>8} {'same codes':>10} "
          f"{'L2 err now':>10} {'L2 err ref':>10}")
    for r in rows:
        k = "/".join(str(v) for v in r["kmeans_sizes"])
        print(f"{r['items']:>9} {k:>16} {r['seconds']:>8.1f} {r.get('reference_seconds', float('nan')):>8.1f} "
              f"{r.get('speedup', float('nan')):>8.2f} {str(r.get('items_with_identical_codes', '-')):>10} "
              f"{r['quantisation_error']['l2']:>10.4f} "
              f"{r.get('reference_quantisation_error', {}).get('l2', float('nan')):>10.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
