"""benchmarks/ablation.py：变体确实改了该改的那一处、只换打分的变体复用模型、结果 JSON 完整。"""

import json

import numpy as np
import pytest
from _benchmarks import load_benchmark

from ugt_hf.data.prepare import prepare

ablation = load_benchmark("ablation")


@pytest.fixture(scope="module")
def ring_data(tmp_path_factory):
    """50 个物品排成环、用户沿环走 6-12 步（S3-Rec 格式，经 `ugt prepare`）。"""
    folder = tmp_path_factory.mktemp("ablation")
    rng = np.random.default_rng(0)
    ring = rng.permutation(50) + 1
    lines = []
    for u in range(1, 121):
        start = int(rng.integers(50))
        lines.append(f"{u} " + " ".join(str(ring[(start + t) % 50]) for t in range(int(rng.integers(6, 13)))))
    (folder / "ring.txt").write_text("\n".join(lines) + "\n")
    prepare(str(folder / "data"), source="s3rec", input=str(folder / "ring.txt"), encoder_max_length=8,
            progress=False, log=lambda *a: None)
    return folder


def test_variants_change_one_thing_and_results_are_written(ring_data, tmp_path):
    out = tmp_path / "ablation.json"
    rc = ablation.main(["--data", str(ring_data / "data"), "--dataset", "beauty", "--epochs", "1", "--num_beams", "10",
                        "--variants", "committed,item_scoring_item,no_item_head,weight_decay_0.1",
                        "--work", str(tmp_path), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    v = res["variants"]
    assert list(v) == ["committed", "item_scoring_item", "no_item_head", "weight_decay_0.1"]
    assert len(res["git_commit"]) >= 7
    # 训练参数类的变体：model_config 不变，参数确实进了那次运行保存的解析后配置
    wd = v["weight_decay_0.1"]
    assert wd["model_config"] == v["committed"]["model_config"] and wd["train_args"] == ["--weight_decay", "0.1"]
    saved = json.loads((tmp_path / "ablation_beauty_weight_decay_0.1" / "ugt_config.json").read_text())
    assert saved["config"]["weight_decay"] == pytest.approx(0.1)
    assert v["committed"]["train_args"] == []
    # 全部验证用户（不是训练中每轮评的子集）上的指标
    n_valid = json.loads((ring_data / "data" / "meta.json").read_text())["splits"]["valid"]
    assert v["committed"]["valid_all_users"]["num_users"] == n_valid
    assert v["committed"]["model_config"]["num_items"] == "auto"
    assert v["no_item_head"]["model_config"] == {**v["committed"]["model_config"], "num_items": 0}
    assert v["item_scoring_item"]["reuses"] == "committed" and "model_config" not in v["item_scoring_item"]
    for name, entry in v.items():
        for label in ("allowed", "masked"):
            m = entry["test"][label]
            assert 0.0 <= m["ndcg@10"] <= m["recall@10"] <= 1.0, (name, label)
            assert m["exclude_history"] == float(label == "masked")
    assert v["committed"]["best_validation"]["epoch"] == pytest.approx(1.0)


def test_dropping_the_transition_options_keeps_the_rest():
    base = {"d_model": 8, "num_items": "auto", "bos_context": "last_item", "transition_buckets": 4,
            "transition_scale": 3.0, "encoder_position_mode": "recency"}
    changed = ablation.VARIANTS["no_transition_options"][1](dict(base), {})
    assert changed == {"d_model": 8, "num_items": "auto"}


def test_table_variants_scale_the_resolved_sizes():
    base = {"d_model": 8, "item_id_buckets": "auto", "node_embedding_buckets": 1000, "transition_buckets": "auto"}
    size = {"num_items": 12101, "num_interactions": 198502}
    half = ablation.VARIANTS["tables_half"][1](dict(base), size)
    assert half == {"d_model": 8, "item_id_buckets": 16384, "node_embedding_buckets": 500,
                    "transition_buckets": 2 ** 20}
    double = ablation.VARIANTS["tables_double"][1]({"d_model": 8, "transition_buckets": "auto"}, size)
    assert double == {"d_model": 8, "transition_buckets": 2 ** 22}  # 没开的表不会被打开


def test_unknown_variant_is_an_error(ring_data, capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--data", str(ring_data / "data"), "--dataset", "beauty", "--variants", "comitted"])
    assert "unknown variant" in capsys.readouterr().err
