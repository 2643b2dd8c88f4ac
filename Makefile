# 两个入口：make demo（主任务）与 make test；都先安装缺少的依赖。
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make-install.stamp

.PHONY: install lint test test-slow demo clean

# 先单独装 torch==2.13.0（本机 /opt/wheels 的 CPU 轮子），避免依赖解析拉取 CUDA 版
$(STAMP): pyproject.toml
	$(PIP) install -q "torch>=2.4,<=2.13.0"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PYTHON) -m ruff check ugt_hf tests benchmarks recipes

test: lint
	$(PYTHON) -m pytest -q

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow

# 合成数据上的完整流程：准备 → 阶段 1→2→3 → 测试评估，打印指标表（报告与图在 runs/demo/）
demo: $(STAMP)
	$(PYTHON) -m ugt_hf.cli pipeline --data runs/demo_data --prepare true --config recipes/configs/demo_pipeline.yaml --out runs/demo

clean:
	rm -rf $(STAMP) runs/demo runs/demo_data
