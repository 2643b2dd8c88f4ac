"""model_card.py：模型卡的 YAML 头（可解析、HF model-index 合法）、正文（语义 ID、配置、加载方法、指标表），
save_pretrained 写卡与不覆盖手写的 README.md，卡里的加载提示与 transformers 真实的报错一致。"""

import json
import math
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from ugt_hf import model_card as mc
from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
from ugt_hf.pipeline import TASK


def _config(**kw):
    return UGTConfig(vocab_sizes=[6, 5, 4], d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                     ffn_dim=32, num_experts=2, num_experts_per_tok=1, **kw)


METRICS = {"stage1": {"recall@10": 0.1, "ndcg@10": 0.05, "loss": 3.2},
           "stage3": {"recall@10": 0.125, "ndcg@10": 0.0625, "bad": math.nan}}


def test_front_matter_is_valid_yaml_and_hf_model_index():
    text = mc.render_model_card(_config(), metrics=METRICS, baselines={"SASRec": {"recall@10": 0.11}},
                                dataset="beauty", protocol="leave-one-out, full ranking")
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front == mc.read_front_matter(text)
    assert front["library_name"] == "ugt-hf"
    assert {"recommendation", "generative-retrieval", "semantic-ids", "ugt"} <= set(front["tags"])
    assert front["datasets"] == ["beauty"]
    assert front["metrics"] == ["recall", "ndcg"]  # 排序指标的 id；损失不算
    # model-index 只放最后一个阶段（这个检查点），NaN 丢掉
    results = ModelCard(text).data.eval_results
    assert {(r.metric_type, r.metric_value) for r in results} == {("recall@10", 0.125), ("ndcg@10", 0.0625)}
    assert {r.dataset_name for r in results} == {"beauty"} and {r.task_type for r in results} == {TASK}


def test_body_has_semantic_ids_config_loading_and_metrics_table():
    text = mc.render_model_card(_config(num_items=40, item_scoring="item"), metrics=METRICS,
                                baselines={"SASRec": {"recall@10": 0.11}}, protocol="leave-one-out, full ranking",
                                extra="## Notes\n\nhello", training={"run name": "run-7"})
    assert "`[6, 5, 4]`" in text and "120 distinct IDs" in text
    assert "Item-level head: on (40 items" in text and "`item_scoring='item'`" in text
    assert "| d_model / heads | 16 / 2 |" in text and "MoE: 2 experts, top-1" in text
    # 加载方法：先 import ugt_hf（注册 ugt 类型），AutoModel 与本包的 pipeline 任务名
    assert "pip install ugt-hf" in text and "import ugt_hf" in text and mc.LOAD_HINT in text
    assert "AutoModel.from_pretrained(" in text and f'pipeline("{TASK}"' in text
    assert "trust_remote_code" in text
    assert mc.PIPELINE_TASK == TASK
    # 指标表：各阶段与基线并排，缺的格子是 "-"
    assert "| metric | stage1 | stage3 | SASRec (baseline) |" in text
    assert "| recall@10 | 0.1000 | 0.1250 | 0.1100 |" in text
    assert "| loss | 3.2000 | - | - |" in text
    assert "bad" not in text
    assert "## Evaluation protocol\n\nleave-one-out, full ranking" in text
    assert text.rstrip().endswith("hello") and "- run name: run-7" in text
    assert "Item-level head: off" in mc.render_model_card(_config())


def test_local_dataset_path_is_not_a_hub_id_and_no_metrics_no_model_index(tmp_path):
    folder = tmp_path / "prepared_beauty"
    folder.mkdir()
    text = mc.render_model_card(_config(), dataset=str(folder))
    front = mc.read_front_matter(text)
    assert "datasets" not in front and "model-index" not in front and "metrics" not in front
    assert "- name: `prepared_beauty`" in text and str(tmp_path) not in text
    # 扁平指标 + 映射形式的数据集（显式 id）
    text = mc.render_model_card(_config(), metrics={"recall@20": 0.3}, stage="stage2",
                                dataset={"name": "ml-100k", "id": "owner/ml-100k", "split": "test", "num_users": 9})
    front = mc.read_front_matter(text)
    assert front["datasets"] == ["owner/ml-100k"]
    result = front["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "ml-100k", "type": "owner/ml-100k", "split": "test"}
    assert result["metrics"] == [{"type": "recall@20", "name": "recall@20", "value": 0.3}]
    assert "| metric | stage2 |" in text and "- num_users: 9" in text


def test_save_pretrained_writes_card_and_keeps_hand_written_readme(tmp_path):
    model = UGTForGenerativeRecommendation(_config(num_items=4))
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert mc.GENERATED_MARKER in card and "# ckpt" in card
    assert f"| parameters | {model.num_parameters():,} |" in card
    assert json.loads((out / "config.json").read_text())["model_type"] == "ugt"
    # 本包生成的卡每次保存都重写；用户手写（没有标记行）的卡保留
    (out / "README.md").write_text("# my notes\n", encoding="utf-8")
    model.save_pretrained(out)
    assert (out / "README.md").read_text(encoding="utf-8") == "# my notes\n"
    # 调用方给出卡片文本时总是写它；model_card=False 不写
    model.save_pretrained(out, model_card="---\nlibrary_name: ugt-hf\n---\n# given\n")
    assert (out / "README.md").read_text(encoding="utf-8").endswith("# given\n")
    other = tmp_path / "nocard"
    model.save_pretrained(other, model_card=False)
    assert not (other / "README.md").exists() and (other / "model.safetensors").exists()
    assert mc.write_model_card(str(out), _config()) is None  # 非生成的卡：不覆盖
    assert mc.write_model_card(str(out), _config(), force=True) == str(out / "README.md")


def test_load_hint_matches_the_error_transformers_raises_without_import_ugt_hf(tmp_path):
    """不先 import ugt_hf 时 transformers 的报错就是卡里引用的那句（换了 transformers 版本时这里提醒更新提示）。"""
    UGTForGenerativeRecommendation(_config()).save_pretrained(tmp_path / "m")
    code = ("import sys\nfrom transformers import AutoConfig\n"
            "try:\n    AutoConfig.from_pretrained(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n"
            "assert 'ugt_hf' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    quoted = mc.LOAD_HINT.split('"')[1]  # 卡里引用的报错原文
    assert quoted in out.stdout, out.stdout
    assert "import ugt_hf" in (tmp_path / "m" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("value", [True, "x", None, math.inf])
def test_non_numeric_metrics_are_dropped(value):
    text = mc.render_model_card(_config(), metrics={"recall@10": 0.5, "odd": value}, dataset="d")
    values = mc.read_front_matter(text)["model-index"][0]["results"][0]["metrics"]
    assert [m["type"] for m in values] == ["recall@10"]


def test_retarget_card_points_a_local_card_at_the_hub_repo():
    """push_to_hub 用：本地卡（训练器写的，带指标）的标题、model-index 名、加载示例换成 repo id，
    tags 并入，其余不动。"""
    text = mc.render_model_card(_config(), metrics=METRICS, dataset="beauty", model_name="best_model",
                                tags=["stage-3"])
    out = mc.retarget_card(text, "owner/ugt", tags=["stage-3", "new"])
    front = mc.read_front_matter(out)
    assert front["model-index"][0]["name"] == "owner/ugt"
    assert front["tags"][-2:] == ["stage-3", "new"] and front["tags"].count("stage-3") == 1
    assert out.count("# owner/ugt\n") == 1 and "# best_model" not in out
    assert 'AutoModel.from_pretrained("owner/ugt")' in out and 'model="owner/ugt")' in out
    assert mc.LOCAL_PLACEHOLDER not in out and mc.GENERATED_MARKER in out
    assert out.split(mc.GENERATED_MARKER, 1)[1].count("| recall@10 | 0.1000 | 0.1250 |") == 1
    # 已经指向另一个 repo id 的卡（trainer.create_model_card(model_name="a/b")）同样改过来
    again = mc.retarget_card(mc.render_model_card(_config(), model_name="a/b"), "owner/ugt")
    assert 'from_pretrained("owner/ugt")' in again and '"a/b"' not in again
    # 手写、没有 YAML 头的卡：只补 tags 与 library_name，正文原样
    plain = mc.add_tags("# mine\n\ntext\n", ["x"])
    assert mc.read_front_matter(plain) == {"tags": ["x"], "library_name": "ugt-hf"}
    assert plain.endswith("# mine\n\ntext\n")
