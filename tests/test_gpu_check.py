"""benchmarks/gpu_check.sh / gpu_check.py：CPU 上的 --dry-run 走完整编排并写出约定形状的 JSON；没有 GPU 时的 GPU
模式快速失败并说明原因；junit 解析与 deepspeed 可选依赖的读取。"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CHECK_KEYS = {"name", "status", "seconds", "reason"}
TOP_KEYS = {"schema", "mode", "git_commit", "started_at", "budget_s", "environment", "checks", "total_seconds",
            "within_budget", "ok"}


def _module():
    return load_benchmark("gpu_check")


def _shell(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def _check_shape(report):
    assert TOP_KEYS <= set(report)
    assert report["schema"] == "ugt-gpu-check/1"
    env = report["environment"]
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert {"torch_cuda", "gpu", "python", "transformers", "deepspeed"} <= set(env)
    for c in report["checks"]:
        assert CHECK_KEYS <= set(c), c
        assert c["status"] in ("pass", "fail", "skip") and c["seconds"] >= 0
        if c["status"] == "skip":
            assert c["reason"], c  # 跳过必须说明原因
    return {c["name"]: c for c in report["checks"]}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU path; on a GPU run the real check")
def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _shell("--dry-run", "--out", str(out), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = _check_shape(report)
    assert report["mode"] == "dry-run" and report["ok"] is True and report["within_budget"] is True
    assert report["environment"]["gpu"] is None
    assert [n for n in checks] == ["cuda_available", "import_stack", "install_deepspeed", "gpu_tests",
                                   "prepare_data", "stage1_throughput_fp32"]
    assert checks["cuda_available"]["status"] == "skip"
    # GPU 测试在 CPU 上全部跳过，原因写进 JSON（来自测试模块自己的跳过说明）
    assert checks["gpu_tests"]["status"] == "skip" and "CUDA" in checks["gpu_tests"]["reason"]
    assert checks["gpu_tests"]["counts"]["fail"] == 0
    files = checks["gpu_tests"]["files"]  # 每个测试文件一个 pytest 进程
    assert [f["file"] for f in files] == ["tests/test_deepspeed.py", "tests/test_gpu_training.py"]
    assert all(f["skip_reasons"] and not f["failed"] for f in files)
    tp = checks["stage1_throughput_fp32"]
    assert tp["status"] == "pass" and tp["device"] == "cpu" and tp["samples_per_s"] > 0
    assert tp["timed_steps"] == 3 and tp["samples_per_step"] == 32 and tp["config"].endswith("beauty_stage1.yaml")
    assert "not a measurement" in tp["reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_gpu_mode_without_cuda_fails_fast_with_reason(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _shell("--out", str(out))
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    checks = _check_shape(report)
    assert report["mode"] == "gpu" and report["ok"] is False
    assert checks["cuda_available"]["status"] == "fail"
    assert "--dry-run" in checks["cuda_available"]["reason"]
    assert list(checks) == ["cuda_available"]  # 没有 CUDA 就不往下跑


def test_out_is_required():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_deepspeed_extra_comes_from_pyproject():
    reqs = _module().deepspeed_extra()
    assert reqs and all(r.startswith("deepspeed") for r in reqs)


def test_parse_junit(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.test_a" name="test_bad" time="0.2"><failure message="boom">trace</failure>'
        '</testcase>'
        '<testcase classname="tests.test_b" name="test_skip" time="0"><skipped message="no CUDA"/></testcase>'
        '</testsuite></testsuites>')
    tests = _module().parse_junit(xml)
    assert [(t["name"], t["status"]) for t in tests] == [
        ("tests.test_a::test_ok", "pass"), ("tests.test_a::test_bad", "fail"), ("tests.test_b::test_skip", "skip")]
    assert tests[0]["seconds"] == 1.5 and "boom" in tests[1]["message"] and tests[2]["message"] == "no CUDA"
    assert _module().parse_junit(tmp_path / "missing.xml") == []


def test_pytest_file_reports_each_test(tmp_path):
    # 在仓库外的临时目录里：不加载仓库的 conftest，子进程几秒就完
    path = tmp_path / "test_fake_gpu.py"
    path.write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.gpu\n"
        "def test_ok():\n    assert True\n"
        "def test_bad():\n    assert 1 == 2\n"
        "def test_later():\n    pytest.skip('needs a bigger GPU')\n")
    res = _module()._pytest_file(str(path), timeout=120)
    status = {t["name"].split("::")[-1]: t["status"] for t in res["tests"]}
    assert status == {"test_ok": "pass", "test_bad": "fail", "test_later": "skip"}
    assert res["failed"] is True and res["rc"] == 1 and "assert 1 == 2" in res["output_tail"]
    assert res["skip_reasons"] == ["needs a bigger GPU"]
