"""`ugt --help` 与每个子命令 `--help` 的冷启动耗时（#15：目标 ≤ 1.5 s）。

每条命令在新的子进程里运行（与 console script `ugt` 相同的入口 `ugt_hf.cli:main`），墙钟计时，重复 --repeats
次取中位数；另记一个空的 `python -c pass` 作为解释器启动的基线。打印表格，写
benchmarks/results/cli_help.json（含 git commit 与机器负载，共享机器上的数字要对照负载看）。

用法：python benchmarks/bench_cli.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "cli_help.json"
TARGET_S = 1.5
COMMANDS = [["--help"], ["prepare", "--help"], ["train", "--stage", "1", "--help"],
            ["train", "--stage", "2", "--help"], ["train", "--stage", "3", "--help"], ["evaluate", "--help"],
            ["pipeline", "--help"], ["report", "--help"]]
_ENTRY = "import sys\nfrom ugt_hf.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _time(cmd, env) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stderr[-2000:]}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold runs per command (the median is reported)")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    load_before = os.getloadavg()[0]
    baseline = [_time([sys.executable, "-c", "pass"], env) for _ in range(args.repeats)]
    rows.append({"command": "python -c pass (interpreter start)", "runs_s": baseline,
                 "median_s": statistics.median(baseline)})
    for argv_ in COMMANDS:
        runs = [_time([sys.executable, "-c", _ENTRY, *argv_], env) for _ in range(args.repeats)]
        rows.append({"command": "ugt " + " ".join(argv_), "runs_s": runs, "median_s": statistics.median(runs)})
    load_after = os.getloadavg()[0]

    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  median_s  runs_s")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['median_s']:8.2f}  " + " ".join(f"{t:.2f}" for t in r["runs_s"]))
    worst = max(r["median_s"] for r in rows[1:])
    print(f"slowest help: {worst:.2f} s (target <= {TARGET_S} s); load average {load_before:.2f} -> {load_after:.2f} "
          f"on {os.cpu_count()} cores")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "git_commit": _git_commit(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after, "repeats": args.repeats,
        "target_s": TARGET_S, "slowest_help_median_s": worst, "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
