"""report.py：results.json → Markdown 表 + PNG 图；`ugt report` 重画。"""

import json

from ugt_hf.report import main, metrics_table, write_report


def _fake_run(tmp_path):
    run = tmp_path / "run"
    stages = {}
    for i, name in enumerate(("stage1", "stage2", "stage3")):
        (run / name).mkdir(parents=True)
        history = [{"step": s, "loss": 3.0 - 0.1 * s - i} for s in range(1, 6)]
        (run / name / "stage_summary.json").write_text(json.dumps({"log_history": history}))
        stages[name] = {"train_seconds": 10.0 + i, "eval_seconds": 1.0,
                        "test": {"recall@5": 0.01 * (i + 1), "recall@10": 0.02 * (i + 1), "ndcg@10": 0.011 * (i + 1),
                                 "mrr": 0.005}}
    stages["stage3"]["preference_accuracy"] = {"preference_accuracy": 0.61, "num_pairs": 100}
    results = {"dataset": "fake", "data_dir": "/x", "num_items": 50, "num_beams": 20, "exclude_history": False,
               "git_commit": "abc", "total_seconds": 42.0, "stages": stages,
               "popularity": {"recall@10": 0.005, "ndcg@10": 0.002},
               "transition": {"recall@10": 0.0432, "ndcg@10": 0.021},
               "published": {"TIGER": {"recall@10": 0.0648}}}
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_write_report_table_and_plots(tmp_path):
    run = _fake_run(tmp_path)
    out = write_report(run)
    md = (run / "report.md").read_text()
    assert "| stage3 |" in md and "| popularity |" in md and "| TIGER |" in md
    assert "| transition |" in md and "0.0432" in md
    assert "0.0600" in md  # stage3 recall@10
    assert "history items allowed" in md
    assert "| stage3 | 0.6100 | 100 |" in md
    for key in ("plot0", "plot1"):
        data = open(out[key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_metrics_table_missing_values_dash():
    t = metrics_table({"a": {"recall@10": 0.5}}, keys=("recall@10", "ndcg@10"))
    assert t.splitlines()[2] == "| a | 0.5000 | - |"


def test_report_cli(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert main([str(run)]) == 0
    assert "Test metrics per stage" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
