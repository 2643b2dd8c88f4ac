"""benchmarks/bench_eval.py：在极小的数据与模型上跑通，JSON 里每个线程数 × 协议一行，指标与直接评估一致。"""

import json

import pytest
import torch
from _benchmarks import load_benchmark
from _tiny_artifacts import tiny_data_dir

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.data.datadir import DataDir
from ugt_hf.evaluation import evaluate_ranking
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

bench_eval = load_benchmark("bench_eval")


def test_bench_eval_writes_one_row_per_thread_count_and_protocol(tmp_path):
    data = tiny_data_dir()
    meta = DataDir(data).meta
    torch.manual_seed(0)
    model = UGTForGenerativeRecommendation(UGTConfig(
        vocab_sizes=meta["vocab_sizes"], d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        ffn_dim=32, num_experts=1, num_experts_per_tok=1))
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert bench_eval.main(["--model", str(tmp_path / "m"), "--data", str(data), "--num_beams", "20",
                                "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    written = json.loads(out.read_text())
    assert [(r["threads"], r["protocol"]) for r in written["results"]] == [(1, "allowed"), (1, "masked")]
    want = evaluate_ranking(UGTForGenerativeRecommendation.from_pretrained(tmp_path / "m").eval(), data,
                            num_beams=20)
    row = written["results"][0]
    assert row["recall@10"] == pytest.approx(want["recall@10"]) and row["users"] == int(want["num_users"])
    assert row["users_per_s"] == pytest.approx(row["users"] / row["seconds"])
    assert len(written["git_commit"]) == 40 or written["git_commit"] == "unknown"
