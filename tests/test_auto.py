"""auto.py：`import ugt_hf` 不加载 torch，却仍足以让 AutoConfig / AutoModel / pipeline 认得 `ugt`。

每种导入顺序在独立的子进程里跑（本进程早已注册过）。
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

REPO = Path(__file__).resolve().parents[1]

# 注册后的检查：三个注册表与 pipeline 任务都认得 ugt，钩子已卸下，模块的 loader 是原来的（不是包装）
_CHECK = """
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY
import ugt_hf.auto as auto, ugt_hf.modeling_ugt as m
assert "ugt" in CONFIG_MAPPING and "generative-recommendation" in PIPELINE_REGISTRY.supported_tasks
assert auto.is_registered() and auto._FINDER not in sys.meta_path
assert type(m.__loader__).__name__ == type(m.__spec__.loader).__name__ == "SourceFileLoader"
print("OK")
"""


def _run(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ugt_model")
    UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=[8, 8, 8], d_model=16, num_heads=2, ffn_dim=16,
                                             num_encoder_layers=1, num_decoder_layers=1, num_experts=2,
                                             num_experts_per_tok=1, max_position_embeddings=16)).save_pretrained(path)
    return str(path)


def test_import_loads_neither_torch_nor_transformers():
    out = _run("import sys, ugt_hf\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
               "print(ugt_hf.auto.is_registered(), ugt_hf.auto._FINDER in sys.meta_path, ugt_hf.__version__)")
    assert out.split("\n")[:2] == ["[]", "False True 0.1.0"]


def test_import_ugt_hf_then_transformers_is_enough_for_automodel(saved_model):
    """模型卡教的顺序：先 import ugt_hf，再用 transformers 的 AutoModel（注册发生在 transformers 导入时）。"""
    out = _run("import sys, ugt_hf\nfrom transformers import AutoConfig, AutoModel\n"
               "print(type(AutoModel.from_pretrained(sys.argv[1])).__name__, AutoConfig.from_pretrained(sys.argv[1])"
               ".model_type)\n" + _CHECK, saved_model)
    assert out.split("\n")[:2] == ["UGTForGenerativeRecommendation ugt", "OK"]


def test_transformers_first_registers_on_import(saved_model):
    out = _run("import sys\nfrom transformers import AutoModel\nimport ugt_hf\n"
               "print(type(AutoModel.from_pretrained(sys.argv[1])).__name__)\n" + _CHECK, saved_model)
    assert out.split("\n")[:2] == ["UGTForGenerativeRecommendation", "OK"]


@pytest.mark.parametrize("module", ["ugt_hf.configuration_ugt", "ugt_hf.training.trainer"])
def test_registration_waits_for_the_outermost_import(module):
    """transformers 在这些模块执行到一半时被导入：注册要等最外层的导入结束（否则撞上只初始化了一半的模块）。"""
    out = _run(f"import sys, {module}\n" + _CHECK)
    assert out.strip() == "OK"


def test_lazy_names_and_python_dash_m():
    out = _run("import ugt_hf, sys\nassert 'torch' not in sys.modules\nprint(ugt_hf.UGTConfig.model_type, "
               "'UGTTokenizer' in dir(ugt_hf))\n" + _CHECK)
    assert out.split("\n")[:2] == ["ugt True", "OK"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # runpy 经由包装过的 loader 取模块代码（get_code）
    out = subprocess.run([sys.executable, "-m", "ugt_hf.cli", "--help"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and "usage: ugt" in out.stdout, out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import ugt_hf

        ugt_hf.nope
