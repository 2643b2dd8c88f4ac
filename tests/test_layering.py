"""包的分层：模型层不指向训练层，训练层不指向工作流 / CLI / 规格适配层，顶层单元之间没有导入环。

导入图用 ast 从 ugt_hf/ 的源码建出（函数体里的导入也算：延迟导入只是把边藏起来，不是去掉）。
“单元”= ugt_hf 下的一个顶层模块（如 `modeling_ugt`）或一个子包（`training`、`data`、`spec`）；根包记为 `ugt_hf`。
"""

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ugt_hf"
REPO = PKG.parent

# 模型层：纯模型、数据与指标，不知道训练循环的存在
MODEL_LAYER = ("configuration_ugt", "modeling_ugt", "generation", "tokenization_ugt", "loss_utils", "metrics",
               "interfaces", "item_keys", "model_card", "data")
ABOVE_MODEL = ("training", "evaluation", "workflow", "cli", "spec")
ABOVE_TRAINING = ("workflow", "cli", "spec")
# 这三个模块连数据准备（data.prepare）也不导入
CORE_MODEL = ("configuration_ugt", "modeling_ugt", "generation")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """path 里导入的所有 ugt_hf 模块全名（相对导入已解析；`from pkg import name` 也记 pkg.name，可能是子模块）。"""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "ugt_hf")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ugt_hf":
                continue
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ugt_hf"


def _known_units():
    units = {"ugt_hf"}
    for p in PKG.iterdir():
        if p.suffix == ".py" and p.name != "__init__.py":
            units.add(p.stem)
        elif p.is_dir() and (p / "__init__.py").is_file():
            units.add(p.name)
    return units


def _edges():
    """[(源模块全名, 目标模块全名)]，只保留存在的单元（`from ugt_hf.x import Name` 里的 Name 不是单元时忽略）。"""
    units = _known_units()
    edges = []
    for path in sorted(PKG.rglob("*.py")):
        src = _module_name(path)
        for dst in _imports(path):
            if _unit(dst) in units:
                edges.append((src, dst))
    return edges


def _violations(sources, forbidden):
    return sorted(
        f"{src} -> {dst}" for src, dst in _edges()
        if _unit(src) in sources and _unit(dst) in forbidden and _unit(src) != _unit(dst)
    )


def test_importing_the_model_loads_no_training_or_evaluation_module():
    code = ("import sys, ugt_hf.modeling_ugt\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('ugt_hf.training', 'ugt_hf.evaluation')))\n"
            "print(','.join(bad))")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing ugt_hf.modeling_ugt loaded {out.stdout.strip()}"


def test_model_layer_never_imports_training_evaluation_workflow_cli_or_spec():
    assert _violations(MODEL_LAYER, ABOVE_MODEL) == []


def test_core_model_modules_do_not_import_data_preparation():
    bad = sorted(f"{s} -> {d}" for s, d in _edges()
                 if _unit(s) in CORE_MODEL and (d == "ugt_hf.data.prepare" or d.startswith("ugt_hf.data.prepare.")))
    assert bad == []


def test_training_never_imports_workflow_cli_or_spec():
    assert _violations(("training",), ABOVE_TRAINING) == []


def _cycles(graph):
    """graph 的强连通分量中大小 > 1 的（Tarjan）；每个分量按名字排序。"""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_top_level_units():
    graph = defaultdict(set)
    witness = {}
    for src, dst in _edges():
        a, b = _unit(src), _unit(dst)
        # 根包 ugt_hf/__init__ 只做注册与再导出：它指向各单元是预期的，不计入（否则谁导入 ugt_hf 都成环）
        if a != b and a != "ugt_hf":
            graph[a].add(b)
            witness.setdefault((a, b), f"{src} -> {dst}")
    cycles = _cycles(graph)
    detail = [[witness[(a, b)] for a in c for b in c if (a, b) in witness] for c in cycles]
    assert cycles == [], detail


@pytest.mark.parametrize("module", ["ugt_hf.loss_utils", "ugt_hf.modeling_ugt", "ugt_hf.configuration_ugt"])
def test_model_modules_import_only_lower_layers(module):
    path = PKG / (module.split(".", 1)[1] + ".py")
    targets = {_unit(d) for d in _imports(path)} & _known_units()
    assert targets <= {"configuration_ugt", "interfaces", "loss_utils", "item_keys", "model_card"}, targets
