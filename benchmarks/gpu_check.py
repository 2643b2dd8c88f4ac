"""一次性的 GPU 检查（由 benchmarks/gpu_check.sh 调用）：在 CUDA 机器上装 deepspeed 可选依赖、跑 GPU 标记的测试
（bf16、带损失缩放的 fp16、DeepSpeed ZeRO-2/3 跟随普通训练的损失曲线、FSDP）、按提交的 Beauty 阶段 1 配置计时
（samples/s，固定的少量步数），总共不超过 8 分钟，写 JSON。

    bash benchmarks/gpu_check.sh --out /path/gpu.json            # GPU 机器上的一条命令
    bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu.json  # CPU 上：同样的编排，GPU 步骤换成 CPU 小规模或跳过

JSON：git commit、GPU 名称、torch/CUDA 版本，每项检查的 status（pass / fail / skip）、seconds 与原因。每完成一项就
重写一次文件，所以被外层 timeout 打断时也留下已完成的部分。dry-run 的吞吐量只验证编排能跑通，不是测量值。

为什么分子进程：测试要独立的 pytest 进程；计时放在子进程里，卡住或 CUDA 出错时能按剩余预算杀掉，JSON 照样写出。
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCHEMA = "ugt-gpu-check/1"
BUDGET_S = 480  # 8 分钟：包括安装、测试与计时
GPU_TEST_FILES = ["tests/test_deepspeed.py", "tests/test_gpu_training.py"]
# 计时：GPU 上去掉前 WARMUP 步（CUDA 上下文、cuDNN/cuBLAS 选算法、DataLoader 启动）后再计 STEPS 步
GPU_TIMING = {"warmup": 5, "steps": 50, "batch": None, "variants": ["fp32", "bf16"]}
DRY_TIMING = {"warmup": 1, "steps": 3, "batch": 32, "variants": ["fp32"]}
DRY_SYNTHETIC = {"num_users": 300, "num_items": 150, "events_per_user": 8, "num_clusters": 10}
THROUGHPUT_RESERVE_S = 150  # 留给数据准备与计时的时间；测试最多用到预算减去它


# ---------------------------------------------------------------------------------------------------------- 工具
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = out.stdout.strip() or "unknown"
        return commit + ("+dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def deepspeed_extra() -> List[str]:
    """pyproject.toml 里 deepspeed 可选依赖的需求串（如 ["deepspeed>=0.15"]）；没有这个 extra 时返回空表。"""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data.get("project", {}).get("optional-dependencies", {}).get("deepspeed", []))


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # 没装
        return None


def environment() -> Dict[str, Any]:
    """版本与设备信息；torch 导入失败时也返回（其余检查会报同样的错）。"""
    env: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count()}
    for name in ("torch", "transformers", "accelerate", "trl", "deepspeed"):
        env[name] = _version(name)
    gpu = None
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu = {"name": props.name, "count": torch.cuda.device_count(),
                   "memory_gib": round(props.total_memory / 2 ** 30, 1),
                   "capability": f"{props.major}.{props.minor}", "bf16_supported": torch.cuda.is_bf16_supported()}
    except Exception as e:  # noqa: BLE001 - 记录下来，不让环境信息本身中断检查
        env["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["nvidia_driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
    except (OSError, subprocess.SubprocessError, IndexError):
        env["nvidia_driver"] = None
    env["gpu"] = gpu
    return env


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:] if text else ""


def parse_junit(path: Path) -> List[Dict[str, Any]]:
    """pytest --junitxml 的每个测试：名称、状态（pass/fail/skip）、秒数、跳过或失败的信息。"""
    if not path.is_file():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        status, message = "pass", None
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "fail", _tail((child.get("message") or "") + "\n" + (child.text or ""), 1500)
            elif child.tag == "skipped":
                status, message = "skip", child.get("message")
        tests.append({"name": f"{case.get('classname', '')}::{case.get('name', '')}", "status": status,
                      "seconds": round(float(case.get("time") or 0.0), 3), "message": message})
    return tests


# ---------------------------------------------------------------------------------------------------------- 检查
class Run:
    """检查的记录与预算：每项检查一个字典，完成一项写一次 JSON。"""

    def __init__(self, out: Path, dry_run: bool, budget_s: float):
        self.out, self.dry_run, self.budget_s = out, dry_run, budget_s
        self.t0 = time.perf_counter()
        self.result: Dict[str, Any] = {
            "schema": SCHEMA, "mode": "dry-run" if dry_run else "gpu", "git_commit": git_commit(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": budget_s,
            "environment": None, "checks": [], "total_seconds": None, "within_budget": None, "ok": None,
        }

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, name: str, status: str, seconds: float, reason: Optional[str] = None, **extra) -> Dict[str, Any]:
        assert status in ("pass", "fail", "skip"), status
        check = {"name": name, "status": status, "seconds": round(seconds, 3), "reason": reason, **extra}
        self.result["checks"].append(check)
        mark = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[status]
        print(f"[gpu_check] {mark} {name} ({seconds:.1f}s){': ' + reason if reason else ''}", flush=True)
        self.write()
        return check

    def write(self) -> None:
        total = time.perf_counter() - self.t0
        checks = self.result["checks"]
        self.result.update(total_seconds=round(total, 3), within_budget=total <= self.budget_s,
                           ok=bool(checks) and all(c["status"] != "fail" for c in checks))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(self.out.suffix + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=2))
        tmp.replace(self.out)


def check_imports(run: Run) -> bool:
    t = time.perf_counter()
    try:
        import ugt_hf.training.trainer  # noqa: F401
    except Exception as e:  # noqa: BLE001
        run.add("import_stack", "fail", time.perf_counter() - t,
                f"{type(e).__name__}: {e}; install the project first: pip install -e .")
        return False
    run.add("import_stack", "pass", time.perf_counter() - t)
    return True


def check_cuda(run: Run, env: Dict[str, Any]) -> bool:
    gpu = env.get("gpu")
    if run.dry_run:
        run.add("cuda_available", "skip", 0.0, "dry run: GPU steps are replaced by CPU-sized runs or skipped",
                found=gpu is not None)
        return False
    if gpu is None:
        run.add("cuda_available", "fail", 0.0, "torch.cuda.is_available() is False: run on a CUDA machine, "
                "or pass --dry-run to check the orchestration on CPU")
        return False
    run.add("cuda_available", "pass", 0.0, gpu=gpu)
    return True


def install_deepspeed(run: Run, wheelhouse: Optional[str], timeout: float) -> None:
    t = time.perf_counter()
    reqs = deepspeed_extra()
    if not reqs:
        run.add("install_deepspeed", "fail", 0.0, "pyproject.toml has no [project.optional-dependencies] deepspeed")
        return
    if _version("deepspeed"):
        run.add("install_deepspeed", "pass", time.perf_counter() - t,
                f"already installed: deepspeed {_version('deepspeed')}", requirements=reqs)
        return
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *reqs]
    if wheelhouse:
        cmd[4:4] = ["--no-index", "--find-links", wheelhouse]
    if run.dry_run:
        run.add("install_deepspeed", "skip", 0.0, f"dry run: would run {' '.join(cmd[2:])}", requirements=reqs)
        return
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, timeout),
                              env={**os.environ, "DS_BUILD_OPS": "0"})  # 只装 Python 部分，算子按需 JIT
        ok, output = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        ok, output = False, f"timed out after {e.timeout:.0f}s"
    hint = None if ok else ("pip failed (a device machine without network needs --wheelhouse DIR, made elsewhere "
                            f"with: pip download {' '.join(reqs)} -d DIR)")
    run.add("install_deepspeed", "pass" if ok else "fail", time.perf_counter() - t, hint, command=cmd,
            output_tail=_tail(output, 1500), deepspeed=_version("deepspeed"))


def _pytest_file(path: str, timeout: float) -> Dict[str, Any]:
    """一个测试文件一个 pytest 进程：DeepSpeed / FSDP 建的进程组与环境变量不会带进下一个文件。"""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs",
               f"--junitxml={junit}", path]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, output = None, f"timed out after {e.timeout:.0f}s\n" + (e.stdout or b"").decode(errors="replace")
        tests = parse_junit(junit)
    # 模块级跳过在 junit 里只写 "collection skipped"：原因取 -rs 的摘要行
    reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", output, re.M))
                     or {x["message"] for x in tests if x["status"] == "skip" and x["message"]})
    failed = rc is None or rc not in (0, 5) or any(x["status"] == "fail" for x in tests)  # 5 = 没有收集到测试
    return {"file": path, "rc": rc, "seconds": round(time.perf_counter() - t, 3), "command": cmd, "tests": tests,
            "skip_reasons": reasons, "output_tail": _tail(output, 3000) if failed else None, "failed": failed}


def run_gpu_tests(run: Run, files: List[str], timeout: float) -> None:
    t = time.perf_counter()
    if timeout < 30:
        run.add("gpu_tests", "skip", 0.0, f"budget: only {timeout:.0f}s left")
        return
    deadline = t + timeout
    per_file = []
    for path in files:
        left = deadline - time.perf_counter()
        if left < 10:
            per_file.append({"file": path, "rc": None, "seconds": 0.0, "tests": [], "failed": True,
                             "skip_reasons": [], "output_tail": f"not run: budget ({left:.0f}s left)"})
            continue
        per_file.append(_pytest_file(path, left))
    tests = [x for f in per_file for x in f["tests"]]
    counts = {s: sum(x["status"] == s for x in tests) for s in ("pass", "fail", "skip")}
    reasons = sorted({r for f in per_file for r in f["skip_reasons"]})
    bad = [f["file"] for f in per_file if f["failed"]]
    if bad:
        status, reason = "fail", f"failed or timed out: {', '.join(bad)} ({counts['fail']} failing tests)"
    elif counts["pass"] == 0:
        status = "skip"
        reason = "all GPU tests skipped: " + "; ".join(reasons) if reasons else "no GPU tests collected"
    else:
        status = "pass"
        reason = f"{counts['pass']} passed, {counts['skip']} skipped: " + "; ".join(reasons) if counts["skip"] \
            else None
    run.add("gpu_tests", status, time.perf_counter() - t, reason, counts=counts, skip_reasons=reasons,
            files=per_file)


def run_throughput(run: Run, args, timeout: float) -> None:
    """子进程里准备数据并计时；子进程的每项检查并入总 JSON。"""
    if timeout < 20:
        run.add("stage1_throughput", "skip", 0.0, f"budget: only {timeout:.0f}s left")
        return
    t = time.perf_counter()
    spec = {"dry_run": run.dry_run, "beauty": args.beauty, "work": args.work,
            "timing": DRY_TIMING if run.dry_run else GPU_TIMING}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "checks.json"
        spec["out"] = str(out_path)
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(spec_path)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, output = None, f"timed out after {e.timeout:.0f}s"
        checks = json.loads(out_path.read_text()) if out_path.is_file() else []
    for c in checks:
        run.add(**c)
    if rc != 0 or not checks:
        run.add("stage1_throughput_worker", "fail", time.perf_counter() - t,
                "worker timed out" if rc is None else f"worker rc={rc}", output_tail=_tail(output, 3000))


# ---------------------------------------------------------------------------------------------------------- 子进程
def worker(spec_path: str) -> int:
    """准备数据（Beauty；找不到就用 Beauty 量级的合成数据；dry run 用很小的合成数据），再按每个精度变体计时。"""
    import _stage1 as S
    import torch

    spec = json.loads(Path(spec_path).read_text())
    out, timing, dry = Path(spec["out"]), spec["timing"], spec["dry_run"]
    checks: List[Dict[str, Any]] = []

    def emit(**check):
        checks.append(check)
        out.write_text(json.dumps(checks))

    work = Path(spec["work"] or tempfile.mkdtemp(prefix="ugt_gpu_check_"))
    t = time.perf_counter()
    try:
        beauty = None if dry else S.find_beauty(spec["beauty"])
        data_dir, label, meta = S.prepare_data(work, beauty, DRY_SYNTHETIC if dry else None, log=lambda *a: None)
    except Exception as e:  # noqa: BLE001
        emit(name="prepare_data", status="fail", seconds=time.perf_counter() - t, reason=f"{type(e).__name__}: {e}")
        return 1
    note = None
    if dry:
        note = "dry run: tiny synthetic data"
    elif beauty is None:
        note = ("Beauty.txt not found (--beauty, $UGT_BEAUTY, ../shared/data or ./shared/data): timed on "
                "Beauty-sized synthetic data instead")
    emit(name="prepare_data", status="pass", seconds=time.perf_counter() - t, reason=note, data=label,
         data_dir=str(data_dir), vocab_sizes=meta.get("vocab_sizes"), splits=meta.get("splits"))

    failed = False
    for variant in timing["variants"]:
        name = f"stage1_throughput_{variant}"
        t = time.perf_counter()
        try:
            overrides = {"bf16": variant == "bf16", "fp16": variant == "fp16"}
            if timing["batch"]:
                overrides["batch_size"] = int(timing["batch"])
            steps = int(timing["warmup"]) + int(timing["steps"])
            args = S.stage1_args(data_dir, work / f"run_{variant}", steps, overrides)
            stamps = S.step_stamps()
            trainer, model, train_ds = S.build_stage1(args, callbacks=[stamps])
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
            targs = args.training
            per_step = targs.per_device_train_batch_size * targs.gradient_accumulation_steps * targs.world_size
            intervals, seconds, rate = S.samples_per_second(stamps.t, int(timing["warmup"]), per_step)
            emit(name=name, status="pass", seconds=time.perf_counter() - t,
                 reason="dry run: CPU, tiny data; not a measurement" if dry else None,
                 config=str(S.STAGE1_CONFIG.relative_to(S.ROOT)), overrides=overrides, data=label,
                 device=str(trainer.args.device), samples_per_step=per_step, warmup_steps=int(timing["warmup"]),
                 timed_steps=intervals, timed_seconds=round(seconds, 4),
                 samples_per_s=None if rate is None else round(rate, 2),
                 parameters=sum(p.numel() for p in model.parameters()),
                 peak_cuda_memory_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
                 if torch.cuda.is_available() else None,
                 final_loss=next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None))
        except Exception as e:  # noqa: BLE001 - 一个变体失败不影响其它变体
            failed = True
            emit(name=name, status="fail", seconds=time.perf_counter() - t, reason=f"{type(e).__name__}: {e}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------- 入口
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=False, help="JSON report path (required)")
    p.add_argument("--dry-run", action="store_true", help="CPU: same orchestration, GPU steps replaced or skipped")
    p.add_argument("--beauty", help="path of amazon-beauty/Beauty.txt (default: $UGT_BEAUTY, ../shared/data, "
                                    "./shared/data; Beauty-sized synthetic data when none is found)")
    p.add_argument("--work", help="folder for the prepared data and run outputs (default: a new temp folder)")
    p.add_argument("--wheelhouse", help="install the deepspeed extra offline from this folder of wheels")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="total seconds for all checks (default 480)")
    p.add_argument("--tests", nargs="*", default=GPU_TEST_FILES, help="GPU test files to run with -m gpu")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not a._worker and not a.out:
        p.error("--out PATH is required (where the JSON report is written)")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a._worker:
        return worker(a._worker)
    run = Run(Path(a.out), a.dry_run, a.budget)
    env = environment()
    run.result["environment"] = env
    run.write()
    # CUDA 先查：没有 GPU 的 GPU 模式不必等 transformers 导入完才失败
    has_cuda = check_cuda(run, env)
    if (has_cuda or a.dry_run) and check_imports(run):
        install_deepspeed(run, a.wheelhouse, timeout=min(180.0, run.remaining() - THROUGHPUT_RESERVE_S - 60))
        run.result["environment"]["deepspeed"] = _version("deepspeed")
        run_gpu_tests(run, a.tests, timeout=run.remaining() - THROUGHPUT_RESERVE_S)
        run_throughput(run, a, timeout=run.remaining())
    run.write()
    ok = run.result["ok"] and run.result["within_budget"]
    print(f"[gpu_check] {'OK' if ok else 'NOT OK'} in {run.result['total_seconds']:.0f}s "
          f"(budget {a.budget:.0f}s); wrote {a.out}", flush=True)
    for c in run.result["checks"]:
        if c.get("samples_per_s") is not None:
            print(f"[gpu_check] {c['name']}: {c['samples_per_s']:.1f} samples/s on {c['device']} "
                  f"({c['timed_steps']} steps x {c['samples_per_step']} samples)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
