"""benchmarks/stage3_sweep.py：变体名与 --set 覆盖的解析、每个变体后写出的 JSON（训练与评估换成替身）。"""

import json

import pytest
from _benchmarks import load_benchmark

sweep = load_benchmark("stage3_sweep")


def test_unknown_variant_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--data", "d", "--stage2", "m", "--dataset", "ml-100k", "--variants", "committed,nope"])
    assert e.value.code == 2 and "unknown variant(s) ['nope']" in capsys.readouterr().err


def test_variants_get_their_overrides_plus_the_shared_ones(tmp_path, monkeypatch):
    seen = {}
    metrics = {"recall@10": 0.1, "ndcg@10": 0.05}
    monkeypatch.setattr(sweep, "test_metrics", lambda model_dir, data, ev: dict(metrics))

    def fake_run_variant(name, extra, args, ev):
        seen[name] = list(extra) + list(args.set_args)
        return {"test": {"recall@10": 0.09, "ndcg@10": 0.05}, "preference_after": None, "train_seconds": 1.0}

    monkeypatch.setattr(sweep, "run_variant", fake_run_variant)
    out = tmp_path / "sweep.json"
    sweep.main(["--data", "d", "--stage2", "m", "--dataset", "ml-100k", "--variants", "committed,dpo_light",
                "--set", "torch_num_threads=2", "--out", str(out)])
    assert seen == {"committed": ["--torch_num_threads", "2"],
                    "dpo_light": ["--lambda_preference", "0.3", "--dpo_beta", "1.0", "--torch_num_threads", "2"]}
    written = json.loads(out.read_text())
    assert written["stage2_test"] == metrics and list(written["variants"]) == ["committed", "dpo_light"]
    assert written["protocol"]["num_beams"] == 100  # recipes/configs/ml100k_pipeline.yaml 的评估协议
