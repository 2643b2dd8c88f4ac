"""benchmarks/bench_prior.py：窗口 × 权重的消融在小数据上跑通；窗口 0 = 模型本身，权重按验证集选。"""

import json

import pytest
import torch
from _benchmarks import load_benchmark
from _tiny_artifacts import tiny_data_dir

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.data.datadir import DataDir
from ugt_hf.evaluation import evaluate_ranking, select_prior_weight
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

bench = load_benchmark("bench_prior")


def test_windows_and_weights_with_selection_on_valid(tmp_path, capsys):
    d = tiny_data_dir()
    torch.manual_seed(0)
    model = UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=DataDir(d).meta["vocab_sizes"], d_model=16,
                                                     num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                                                     ffn_dim=32, num_experts=1, num_experts_per_tok=1))
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "prior.json"
    assert bench.main(["--model", str(tmp_path / "m"), "--data", str(d), "--windows", "0,2", "--weights", "0,1,3",
                       "--num_beams", "10", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["windows"]) == {"0", "2"} and res["git_commit"]
    plain = evaluate_ranking(model.eval(), d, split="test", num_beams=10)
    assert res["windows"]["0"]["test"]["0"]["recall@10"] == pytest.approx(plain["recall@10"])
    w2 = res["windows"]["2"]
    assert set(w2["valid"]) == {"0", "1", "3"}
    assert w2["chosen_weight"] == select_prior_weight({float(w): m for w, m in w2["valid"].items()})
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value", [("--weights", "1,-1"), ("--weights", "1,x"), ("--windows", "1.5")])
def test_bad_windows_or_weights_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--model", "m", "--data", "d", flag, value])
    assert e.value.code == 2 and "--windows" in capsys.readouterr().err
