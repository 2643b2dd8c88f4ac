"""benchmarks/demo_oracle.py：合成数据目录上的上限（小数据，跑得快）。"""

import json

import pytest

from tests._benchmarks import load_benchmark
from ugt_hf.data.prepare import prepare

SMALL = dict(source="synthetic", num_users=150, num_items=60, events_per_user=10, num_clusters=4)


def _quiet(*a, **k):
    pass


def test_oracle_on_a_small_synthetic_folder(tmp_path, capsys):
    bench = load_benchmark("demo_oracle")
    data = tmp_path / "syn"
    prepare(str(data), progress=False, log=_quiet, **SMALL)
    results = {"stages": {"stage2": {"test": {f"{m}@{k}": 0.1 for m in ("recall", "ndcg") for k in (5, 10, 20)},
                                     "preference_accuracy": {"preference_accuracy": 0.5}}},
               "transition": {f"{m}@{k}": 0.2 for m in ("recall", "ndcg") for k in (5, 10, 20)}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "oracle.json"
    assert bench.main(["--data", str(data), "--results", str(tmp_path / "results.json"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["test_users"] == 150 and got["preference_pairs"] > 0
    ranking = got["ranking"]
    assert set(ranking) == {"true parameters + user preference", "true parameters, no user preference"}
    for m in ranking.values():
        assert 0.0 < m["recall@5"] <= m["recall@10"] <= m["recall@20"] <= 1.0
        assert m["ndcg@10"] <= m["recall@10"]
    # 这份数据的结构很强：真实参数的排序远好于随机（60 个物品，随机 R@10 = 1/6）
    assert ranking["true parameters, no user preference"]["recall@10"] > 0.5
    assert all(0.0 <= v <= 1.0 for v in got["preference_accuracy"].values())
    # 看得到评分时，同簇历史的平均评分能分出 liked 与 disliked（评分由簇决定）
    assert got["preference_accuracy"]["mean rating of same-cluster history items (sees the ratings)"] > 0.6
    assert got["pipeline_rows"]["transition baseline"]["recall@10"] == 0.2
    assert got["pipeline_preference_accuracy"] == {"stage2": 0.5}
    assert "true parameters + user preference" in capsys.readouterr().out


def test_refuses_a_folder_whose_options_do_not_match_its_data(tmp_path):
    bench = load_benchmark("demo_oracle")
    data = tmp_path / "syn"
    prepare(str(data), progress=False, log=_quiet, **SMALL)
    meta = json.loads((data / "meta.json").read_text())
    meta["input_checksum"] = "0" * 64
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="input_checksum"):
        bench.main(["--data", str(data), "--out", str(tmp_path / "o.json")])
