"""坏输入语料（#16）：从外部驱动 `ugt` 命令行与 recipes 的用例表。

每个用例给出：名字、所属方面（prepare / data / config / cli / env）、构造函数 build(ctx) -> argv（`ugt` 的参数；
以 "recipe:N" 开头时运行 recipes/stageN.py）、期望的退出码（ugt_hf/errors.py 的表）和消息里必须同在一行的片段
（文件名/行号/字段名或参数名，以及原因）。测试断言：退出码相同（非 0）、输出里没有 "Traceback"、有一行同时
含全部片段。数据目录的坏法都作用在 tiny_data_dir 的副本上。
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Tuple

import pyarrow.parquet as pq

from ugt_hf.errors import EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED, EXIT_ENVIRONMENT, EXIT_UNSAFE_CHECKPOINT

# 很小的模型：配置错误在建模型前后就报出，数据错误在建数据集时报出，都走不到训练
TINY_MODEL = json.dumps({"d_model": 16, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1,
                         "ffn_dim": 32, "num_experts": 1, "num_experts_per_tok": 1})


class Ctx:
    """用例的工作区：tmp 目录与共享的小数据目录（按需复制一份来破坏）。"""

    def __init__(self, tmp: Path, data_dir: Path):
        self.tmp, self._data = tmp, data_dir

    def file(self, name: str, text="", data: bytes = None) -> str:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            p.write_bytes(data)
        else:
            p.write_text(text)
        return str(p)

    @property
    def data(self) -> str:
        return str(self._data)

    def data_copy(self) -> Path:
        dst = self.tmp / "data"
        if not dst.exists():
            shutil.copytree(self._data, dst)
        return dst

    def out(self, name="out") -> str:
        return str(self.tmp / name)

    def stage(self, *extra, stage=1, data=None, model=TINY_MODEL, from_scratch=True) -> List[str]:
        """`ugt train --stage N` 的参数：小模型、1 步、不评估、CPU。"""
        args = ["train", "--stage", str(stage), "--data_dir", str(data or self.data), "--output_dir", self.out("run"),
                "--fp16", "false", "--max_steps", "1", "--eval_strategy", "no", "--report_to", "none",
                "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--warmup_steps", "0",
                "--save_strategy", "no", "--dataloader_num_workers", "0"]
        if model is not None:
            args += ["--model_config", model]
        if stage > 1 and from_scratch:
            args += ["--from_scratch", "true"]
        return args + list(extra)

    def yaml(self, text: str, name="cfg.yaml") -> str:
        return self.file(name, text)


@dataclass
class Case:
    name: str
    area: str
    build: Callable[[Ctx], List[str]]
    code: int
    says: Tuple[str, ...] = field(default_factory=tuple)


def _jsonl(ctx: Ctx, name: str, records, raw_line: bytes = None, at: int = None) -> str:
    lines = [json.dumps(r).encode() for r in records]
    if raw_line is not None:
        lines.insert(at, raw_line)
    return ctx.file(name, data=b"".join(line + b"\n" for line in lines))


def _train_records(ctx: Ctx, n=4):
    return pq.read_table(Path(ctx.data) / "train.parquet").slice(0, n).to_pylist()


def _pref_records(ctx: Ctx, n=4):
    out = []
    for r in _train_records(ctx, n):
        seq = {k: r[k] for k in r if k.startswith("encoder_")}
        out.append({"user_id": r["user_id"], "user_sequence": seq,
                    "chosen_item": {"l1_id": 0, "l2_id": 0, "l3_id": 0},
                    "rejected_item": {"l1_id": 0, "l2_id": 0, "l3_id": 1}, "preference_score": 1.0})
    return out


def _mutated(ctx: Ctx, line: int, mutate, name="bad_train.jsonl", make=_train_records) -> str:
    records = make(ctx)
    mutate(records[line - 1])
    return _jsonl(ctx, name, records)


# ------------------------------------------------------------------------------------------------------- prepare
def _prep(ctx: Ctx, source: str, name: str, text=None, data=None, *extra) -> List[str]:
    path = ctx.file(name, text if text is not None else "", data)
    return ["prepare", "--source", source, "--input", path, "--out", ctx.out(), "--no_progress", *extra]


def _tiny_prepare(out: str) -> List[str]:
    return ["prepare", "--source", "synthetic", "--num_users", "20", "--num_items", "10", "--num_clusters", "2",
            "--out", out, "--no_progress"]


_CSV_HEAD = "user_id,item_id,rating\n"
_CSV_OK = "".join(f"u{i % 5},i{i % 7},4\n" for i in range(30))

PREPARE = [
    Case("s3rec_non_integer_item", "prepare", lambda c: _prep(c, "s3rec", "b.txt", "1 2 3\n2 4 oops\n"), EXIT_DATA,
         ("b.txt:2", "field 'item'", "oops")),
    Case("s3rec_given_movielens_file", "prepare",
         lambda c: _prep(c, "s3rec", "u.data", "1\t2\t5\t881250949\n"), EXIT_DATA, ("u.data:1", "--source ml-100k")),
    Case("input_file_missing", "prepare",
         lambda c: ["prepare", "--source", "pairs", "--input", c.out("nope.txt"), "--out", c.out()], EXIT_DATA,
         ("nope.txt", "not found")),
    Case("input_flag_missing", "prepare", lambda c: ["prepare", "--source", "s3rec", "--out", c.out()], EXIT_CONFIG,
         ("--input is required",)),
    Case("unknown_source", "prepare", lambda c: ["prepare", "--source", "netflix", "--out", c.out()], EXIT_CONFIG,
         ("source", "netflix")),
    Case("codebook_sizes_not_integers", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--codebook_sizes", "8,x,2"], EXIT_CONFIG,
         ("--codebook_sizes", "8,x,2")),
    Case("codebook_sizes_two_values", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--codebook_sizes", "8,8"], EXIT_CONFIG,
         ("--codebook_sizes", "three")),
    Case("min_user_events_one", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--min_user_events", "1"], EXIT_CONFIG,
         ("--min_user_events", ">= 2")),
    Case("stride_zero", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--stride", "0"], EXIT_CONFIG,
         ("--stride", "got 0")),
    Case("preference_cut_above_one", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--preference_cut", "1.5"], EXIT_CONFIG,
         ("--preference_cut", "1.5")),
    Case("encoder_max_length_zero", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--encoder_max_length", "0"], EXIT_CONFIG,
         ("--encoder_max_length", ">= 1")),
    Case("synthetic_more_clusters_than_items", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--num_items", "10"], EXIT_CONFIG,
         ("--num_clusters", "--num_items")),
    Case("synthetic_too_few_events", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--events_per_user", "2"], EXIT_CONFIG,
         ("--events_per_user", ">= 3")),
    Case("pairs_every_user_has_one_event", "prepare", lambda c: _prep(c, "pairs", "one.txt", "u1 a\nu2 b\nu3 c\n"),
         EXIT_DATA, ("one.txt", "no user has at least 2 interactions", "--min_user_events")),
    Case("codebook_too_small_for_the_catalogue", "prepare",
         lambda c: _tiny_prepare(c.out()) + ["--codebook_sizes", "1,1,1"], EXIT_CONFIG, ("codebook_sizes",)),
    Case("embedding_unknown", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--embedding", "bert"], EXIT_CONFIG,
         ("--embedding", "bert")),
    Case("misspelt_flag", "prepare",
         lambda c: ["prepare", "--source", "synthetic", "--out", c.out(), "--num_user", "5"], EXIT_CONFIG,
         ("--num_user", "num_users")),
    Case("csv_column_missing", "prepare",
         lambda c: _prep(c, "csv", "log.csv", _CSV_HEAD + _CSV_OK, None, "--user_col", "uid"), EXIT_DATA,
         ("log.csv", "'uid'", "--user_col")),
    Case("csv_empty_user_id", "prepare",
         lambda c: _prep(c, "csv", "log.csv", _CSV_HEAD + "u1,a,4\n,b,3\n" + _CSV_OK, None, "--rating_col", "rating"),
         EXIT_DATA, ("log.csv", "row 2", "field 'user_id' is empty")),
    Case("csv_rating_1e308", "prepare",
         lambda c: _prep(c, "csv", "log.csv", _CSV_HEAD + "u1,a,4\nu1,b,1e308\n" + _CSV_OK, None,
                         "--rating_col", "rating"), EXIT_DATA, ("log.csv", "row 2", "field 'rating'", "1e+308")),
    Case("csv_rating_negative", "prepare",
         lambda c: _prep(c, "csv", "log.csv", _CSV_HEAD + "u1,a,-3\n" + _CSV_OK, None, "--rating_col", "rating"),
         EXIT_DATA, ("log.csv", "row 1", "field 'rating'", "-3")),
    Case("movielens_rating_negative", "prepare",
         lambda c: _prep(c, "ml-100k", "u.data", "1\t2\t5\t881250949\n1\t3\t-3\t881250950\n"), EXIT_DATA,
         ("u.data:2", "field 'rating'", "-3")),
    Case("movielens_rating_1e308", "prepare",
         lambda c: _prep(c, "ml-100k", "u.data", "1\t2\t5\t881250949\n\n1\t3\t1e308\t881250950\n"), EXIT_DATA,
         ("u.data:3", "field 'rating'", "1e+308")),
    Case("csv_10mb_line", "prepare",
         lambda c: _prep(c, "csv", "log.csv", _CSV_HEAD + _CSV_OK + "u1,i" + "x" * 10_000_000 + ",3\n"),
         EXIT_DATA, ("log.csv:32", "10.0 MB", "line")),
    Case("pairs_10mb_id", "prepare",
         lambda c: _prep(c, "pairs", "log.txt", "u1 a\nu1 " + "x" * 10_000_000 + "\n"), EXIT_DATA,
         ("log.txt:2", "field 'item'", "characters long")),
    Case("pairs_invalid_utf8", "prepare",
         lambda c: _prep(c, "pairs", "log.txt", None, b"u1 a\nu1 caf\xe9\n"), EXIT_DATA,
         ("log.txt:2", "encoding 'utf-8'")),
    Case("csv_invalid_utf8", "prepare",
         lambda c: _prep(c, "csv", "log.csv", None, (_CSV_HEAD + _CSV_OK).encode() + b"u1,caf\xe9,3\n"), EXIT_DATA,
         ("log.csv", "row 31", "field 'item_id'", "--encoding")),
    Case("s3rec_empty_file", "prepare", lambda c: _prep(c, "s3rec", "e.txt", ""), EXIT_DATA, ("e.txt", "empty")),
    Case("parquet_source_not_parquet", "prepare", lambda c: _prep(c, "parquet", "x.parquet", "not parquet"),
         EXIT_DATA, ("x.parquet", "Parquet")),
    Case("unknown_encoding", "prepare", lambda c: _prep(c, "pairs", "log.txt", "u1 a\n", None, "--encoding", "utf9"),
         EXIT_DATA, ("unknown encoding 'utf9'",)),
    Case("out_is_foreign_folder", "prepare",
         lambda c: (c.file("out/notes.txt", "mine"), ["prepare", "--source", "synthetic", "--out", c.out()])[1],
         EXIT_ENVIRONMENT, ("out", "--force")),
    Case("out_below_a_file", "prepare",
         lambda c: _tiny_prepare(c.file("plain.txt", "x") + "/sub"), EXIT_ENVIRONMENT,
         ("plain.txt", "is a file where a folder is needed")),
    Case("out_not_writable", "prepare",
         lambda c: _tiny_prepare("/sys/ugt_fault_test/out"), EXIT_ENVIRONMENT,
         ("/sys/ugt_fault_test", "permission denied")),
]


# ---------------------------------------------------------------------------------------------------------- data
def _corrupt_meta(ctx: Ctx, data: bytes) -> str:
    d = ctx.data_copy()
    (d / "meta.json").write_bytes(data)
    return str(d)


def _without(ctx: Ctx, name: str) -> str:
    d = ctx.data_copy()
    (d / name).unlink()
    return str(d)


def _non_utf8_record(ctx: Ctx) -> bytes:
    return json.dumps(_train_records(ctx)[0]).encode().replace(b'"user_id": "', b'"user_id": "\xff')


def _setitem(field_name, idx, value):
    def f(r):
        r[field_name][idx] = value
    return f


DATA = [
    Case("meta_json_not_json", "data", lambda c: c.stage(data=_corrupt_meta(c, b"{not json")), EXIT_DATA,
         ("meta.json", "invalid JSON")),
    Case("meta_json_invalid_utf8", "data", lambda c: c.stage(data=_corrupt_meta(c, b'{"a": "\xff"}')), EXIT_DATA,
         ("meta.json", "UTF-8")),
    Case("meta_json_is_array", "data", lambda c: c.stage(data=_corrupt_meta(c, b"[1, 2]")), EXIT_DATA,
         ("meta.json", "JSON object")),
    Case("meta_json_without_vocab", "data", lambda c: c.stage(data=_corrupt_meta(c, b'{"splits": {}}')),
         EXIT_DATA, ("meta.json", "vocab_sizes")),
    Case("items_parquet_missing", "data", lambda c: c.stage(data=_without(c, "items.parquet")), EXIT_CONFIG,
         ("items.parquet", "data_dir")),
    Case("items_parquet_garbage", "data",
         lambda c: (c.data_copy().joinpath("items.parquet").write_text("garbage"),
                    c.stage(data=str(c.data_copy())))[1], EXIT_DATA, ("items.parquet",)),
    Case("train_file_truncated_line", "data",
         lambda c: c.stage("--train_data", _jsonl(c, "t.jsonl", _train_records(c), b'{"user_id": "u9", "enc', 2)),
         EXIT_DATA, ("t.jsonl", "line 3", "invalid JSON")),
    Case("train_file_out_of_vocabulary", "data",
         lambda c: c.stage("--train_data", _mutated(c, 2, _setitem("encoder_l1_ids", 0, 10 ** 6))), EXIT_DATA,
         ("bad_train.jsonl", "line 2", "encoder_l1_ids", "out-of-vocabulary")),
    Case("train_file_invalid_utf8", "data",
         lambda c: c.stage("--train_data", _jsonl(c, "t.jsonl", _train_records(c), _non_utf8_record(c), 1)),
         EXIT_DATA, ("t.jsonl", "line 2", "UTF-8")),
    Case("train_file_empty_user_id", "data",
         lambda c: c.stage("--train_data", _mutated(c, 3, lambda r: r.__setitem__("user_id", ""))), EXIT_DATA,
         ("bad_train.jsonl", "line 3", "user_id", "empty user id")),
    Case("train_file_missing_field", "data",
         lambda c: c.stage("--train_data", _mutated(c, 1, lambda r: r.pop("decoder_mask"))), EXIT_DATA,
         ("bad_train.jsonl", "line 1", "decoder_mask")),
    Case("train_file_not_found", "data", lambda c: c.stage("--train_data", c.out("missing.jsonl")), EXIT_DATA,
         ("missing.jsonl", "not found")),
    Case("train_file_wrong_extension", "data", lambda c: c.stage("--train_data", c.file("t.csv", "a,b\n")),
         EXIT_DATA, ("t.csv", "extension")),
    Case("train_file_empty", "data", lambda c: c.stage("--train_data", c.file("t.jsonl", "")), EXIT_DATA,
         ("t.jsonl", "empty")),
    Case("train_file_json_array", "data",
         lambda c: c.stage("--train_data", c.file("t.jsonl", json.dumps(_train_records(c)))), EXIT_DATA,
         ("t.jsonl", "line 1", "not a JSON object")),
    Case("valid_split_corrupt", "data",
         lambda c: (c.data_copy().joinpath("valid.parquet").unlink(),
                    c.data_copy().joinpath("valid.jsonl").write_text('{"user_id": 1}\n'),
                    c.stage("--eval_strategy", "steps", "--eval_steps", "1", data=str(c.data_copy())))[2],
         EXIT_DATA, ("valid.jsonl", "line 1")),
    Case("preference_chosen_equals_rejected", "data",
         lambda c: c.stage("--train_data", _mutated(c, 2, lambda r: r.__setitem__("rejected_item", r["chosen_item"]),
                                                    name="p.jsonl", make=_pref_records), stage=3), EXIT_DATA,
         ("p.jsonl", "line 2", "rejected_item", "identical")),
    Case("preference_negative_score", "data",
         lambda c: c.stage("--train_data", _mutated(c, 1, lambda r: r.__setitem__("preference_score", -1.0),
                                                    name="p.jsonl", make=_pref_records), stage=3), EXIT_DATA,
         ("p.jsonl", "line 1", "preference_score")),
    Case("evaluate_on_corrupt_meta", "data",
         lambda c: ["evaluate", "--model", str(_tiny_model(c)), "--data", _corrupt_meta(c, b"{oops")], EXIT_CONFIG,
         ("meta.json", "invalid JSON")),
]


def _tiny_model(ctx: Ctx) -> Path:
    """save_pretrained 的小模型目录（不训练）：evaluate 的用例只需要能加载。"""
    from ugt_hf.configuration_ugt import UGTConfig
    from ugt_hf.data.datadir import DataDir
    from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation

    vocab = DataDir(ctx.data).vocab_sizes
    kw = json.loads(TINY_MODEL)
    path = ctx.tmp / "model"
    UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=vocab, **kw)).save_pretrained(path)
    return path


def _broken_model(ctx: Ctx, config: bytes = None, weights: bytes = None) -> str:
    """小模型目录，再把 config.json 或权重换成坏内容。"""
    path = _tiny_model(ctx)
    if config is not None:
        (path / "config.json").write_bytes(config)
    if weights is not None:
        (path / "model.safetensors").write_bytes(weights)
    return str(path)


# -------------------------------------------------------------------------------------------------------- config
def _model(**kw) -> str:
    return json.dumps({**json.loads(TINY_MODEL), **kw})


CONFIG = [
    Case("model_config_misspelt_key", "config", lambda c: c.stage(model=_model(d_modle=16)), EXIT_CONFIG,
         ("model_config.d_modle", "d_model")),
    Case("model_config_misspelt_key_in_yaml", "config",
         lambda c: c.stage("--config", c.yaml("model_config: {d_modle: 16, num_heads: 2}\n"), model=None),
         EXIT_CONFIG, ("model_config.d_modle", "d_model")),
    Case("model_config_dropout_2", "config", lambda c: c.stage(model=_model(dropout=2.0)), EXIT_CONFIG,
         ("model_config.dropout", "[0, 1)")),
    Case("model_config_heads_do_not_divide", "config", lambda c: c.stage(model=_model(num_heads=3)), EXIT_CONFIG,
         ("model_config.d_model", "num_heads")),
    Case("model_config_string_width", "config", lambda c: c.stage(model=_model(d_model="big")), EXIT_CONFIG,
         ("model_config.d_model", "integer")),
    Case("model_config_num_items_mismatch", "config", lambda c: c.stage(model=_model(num_items=7)), EXIT_CONFIG,
         ("model_config", "num_items=7")),
    Case("model_config_bad_json_string", "config", lambda c: c.stage(model='{"d_model": 16,'), EXIT_CONFIG,
         ("model_config", "JSON")),
    Case("model_config_path_missing", "config", lambda c: c.stage(model=c.out("cfg.json")), EXIT_CONFIG,
         ("model_config", "cfg.json")),
    Case("model_config_file_not_json", "config", lambda c: c.stage(model=c.file("cfg.json", "{d_model: 16")),
         EXIT_CONFIG, ("cfg.json", "model_config", "invalid JSON")),
    Case("model_config_file_invalid_utf8", "config",
         lambda c: c.stage(model=c.file("cfg.json", data=b'{"hidden_act": "\xff"}')), EXIT_CONFIG,
         ("cfg.json", "model_config", "UTF-8")),
    Case("torch_num_threads_negative", "config", lambda c: c.stage("--torch_num_threads", "-3"), EXIT_CONFIG,
         ("torch_num_threads", "-3")),
    Case("save_steps_zero", "config", lambda c: c.stage("--save_steps", "0"), EXIT_CONFIG, ("save_steps", "got 0")),
    Case("logging_steps_negative", "config", lambda c: c.stage("--logging_steps", "-5"), EXIT_CONFIG,
         ("logging_steps", "-5")),
    Case("eval_strategy_sometimes", "config", lambda c: c.stage("--eval_strategy", "sometimes"), EXIT_CONFIG,
         ("eval_strategy", "sometimes")),
    Case("eval_strategy_sometimes_in_yaml", "config",
         lambda c: c.stage("--config", c.yaml("batch_size: 8\neval_strategy: sometimes\n")), EXIT_CONFIG,
         ("eval_strategy", "sometimes")),
    Case("dataloader_workers_negative", "config", lambda c: c.stage("--dataloader_num_workers", "-1"), EXIT_CONFIG,
         ("dataloader_num_workers",)),
    Case("learning_rate_negative", "config", lambda c: c.stage("--learning_rate", "-1"), EXIT_CONFIG,
         ("learning_rate",)),
    Case("optimizer_misspelt", "config", lambda c: c.stage("--optimizer_type", "adamx"), EXIT_CONFIG,
         ("optimizer_type", "adamx")),
    Case("yaml_unknown_key", "config", lambda c: c.stage("--config", c.yaml("batch_size: 8\nbatch_sise: 8\n")),
         EXIT_CONFIG, ("cfg.yaml:2", "batch_sise", "batch_size")),
    Case("yaml_syntax_error", "config", lambda c: c.stage("--config", c.yaml("batch_size: [8\nmax_epochs: 2\n")),
         EXIT_CONFIG, ("cfg.yaml", "YAML")),
    Case("yaml_wrong_type", "config", lambda c: c.stage("--config", c.yaml("max_epochs: many\n")), EXIT_CONFIG,
         ("cfg.yaml:1", "num_train_epochs", "many")),
    Case("yaml_base_missing", "config", lambda c: c.stage("--config", c.yaml("base: nope.yaml\n")), EXIT_CONFIG,
         ("cfg.yaml:1", "nope.yaml")),
    Case("config_file_missing", "config", lambda c: c.stage("--config", c.out("none.yaml")), EXIT_CONFIG,
         ("none.yaml",)),
    Case("config_file_invalid_utf8", "config", lambda c: c.stage("--config", c.file("cfg.yaml", data=b"a: \xff\n")),
         EXIT_CONFIG, ("cfg.yaml", "UTF-8")),
    Case("stage2_without_pretrained", "config",
         lambda c: c.stage(stage=2, from_scratch=False), EXIT_CONFIG,
         ("pretrained_model_path", "from_scratch")),
    Case("pretrained_folder_missing", "config",
         lambda c: c.stage("--pretrained", c.out("run/stage1/best_modl"), stage=2, model=None, from_scratch=False),
         EXIT_CONFIG, ("--pretrained", "best_modl")),
    Case("pretrained_config_not_json", "config",
         lambda c: c.stage("--pretrained", _broken_model(c, config=b"{oops"), stage=2, model=None,
                           from_scratch=False), EXIT_CONFIG, ("--pretrained", "config.json", "not a valid JSON")),
    Case("pretrained_weights_garbage", "config",
         lambda c: c.stage("--pretrained", _broken_model(c, weights=b"garbage"), stage=2, model=None,
                           from_scratch=False), EXIT_CONFIG, ("--pretrained", "cannot load the model")),
    Case("resume_checkpoint_missing", "config", lambda c: c.stage("--resume_from_checkpoint", c.out("ck-9")),
         EXIT_ENVIRONMENT, ("resume_from_checkpoint", "ck-9", "not found")),
    Case("eval_data_missing", "config", lambda c: c.stage("--eval_data", c.out("v.jsonl")), EXIT_DATA,
         ("v.jsonl", "not found")),
    Case("train_data_folder_without_files", "config",
         lambda c: c.stage("--train_data", str(Path(c.file("empty_dir/readme.txt", "x")).parent)), EXIT_DATA,
         ("empty_dir", "no .jsonl")),
    Case("deepspeed_config_missing", "config", lambda c: c.stage("--deepspeed", c.out("ds.json")), EXIT_CONFIG,
         ("deepspeed",)),
    Case("yaml_top_level_list", "config", lambda c: c.stage("--config", c.yaml("- a\n- b\n")), EXIT_CONFIG,
         ("cfg.yaml",)),
    Case("max_steps_negative", "config", lambda c: c.stage("--max_steps", "-5"), EXIT_CONFIG, ("max_steps",)),
    Case("num_beams_zero", "config", lambda c: c.stage("--num_beams", "0"), EXIT_CONFIG, ("num_beams",)),
    Case("eval_max_samples_negative", "config", lambda c: c.stage("--eval_max_samples", "-1"), EXIT_CONFIG,
         ("eval_max_samples",)),
    Case("eval_batch_size_zero", "config", lambda c: c.stage("--per_device_eval_batch_size", "0"), EXIT_CONFIG,
         ("per_device_eval_batch_size",)),
    Case("eval_k_values_zero", "config", lambda c: c.stage("--eval_k_values", "0"), EXIT_CONFIG, ("eval_k_values",)),
    Case("scheduler_misspelt", "config", lambda c: c.stage("--lr_scheduler_type", "cosinee"), EXIT_CONFIG,
         ("lr_scheduler_type", "cosinee")),
    Case("reference_model_missing", "config",
         lambda c: c.stage("--reference_model_path", c.out("ref"), stage=3), EXIT_CONFIG,
         ("reference_model_path", "ref")),
    Case("unknown_flag", "config", lambda c: c.stage("--batch_sise", "8"), EXIT_CONFIG, ("batch_sise", "batch_size")),
    Case("recipe_unknown_flag", "config", lambda c: ["recipe:1"] + c.stage("--batch_sise", "8")[3:], EXIT_CONFIG,
         ("batch_sise", "batch_size")),
    Case("recipe_model_config_misspelt", "config", lambda c: ["recipe:1"] + c.stage(model=_model(num_head=2))[3:],
         EXIT_CONFIG, ("model_config.num_head", "num_heads")),
]


# ----------------------------------------------------------------------------------------------------------- cli
def _pipeline_cfg(ctx: Ctx, text: str) -> str:
    stage = ctx.yaml("batch_size: 8\n", name="s.yaml")
    return ctx.yaml(text + f"stages: {{1: {stage}, 2: {stage}, 3: {stage}}}\n", name="pipe.yaml")


CLI = [
    Case("unknown_command", "cli", lambda c: ["trian"], EXIT_CONFIG, ("unknown command 'trian'",)),
    Case("train_without_stage", "cli", lambda c: ["train", "--config", "x.yaml"], EXIT_CONFIG, ("--stage",)),
    Case("train_stage_4", "cli", lambda c: ["train", "--stage", "4"], EXIT_CONFIG, ("--stage {1,2,3}",)),
    Case("prepare_without_arguments", "cli", lambda c: ["prepare"], EXIT_CONFIG, ("source",)),
    Case("evaluate_model_missing", "cli", lambda c: ["evaluate", "--model", c.out("mdl"), "--data", c.data],
         EXIT_CONFIG, ("--model", "mdl", "does not exist")),
    Case("evaluate_data_missing", "cli",
         lambda c: ["evaluate", "--model", str(_tiny_model(c)), "--data", c.out("dta")], EXIT_CONFIG,
         ("--data", "dta", "does not exist")),
    Case("evaluate_bad_k_values", "cli",
         lambda c: ["evaluate", "--model", str(_tiny_model(c)), "--data", c.data, "--k_values", "5,ten"],
         EXIT_CONFIG, ("ten",)),
    Case("report_missing_run", "cli", lambda c: ["report", c.out("norun")], EXIT_CONFIG, ("norun",)),
    Case("pipeline_config_missing", "cli",
         lambda c: ["pipeline", "--data", c.data, "--config", c.out("p.yaml"), "--out", c.out()], EXIT_CONFIG,
         ("p.yaml",)),
    Case("pipeline_unknown_key", "cli",
         lambda c: ["pipeline", "--data", c.data, "--config", _pipeline_cfg(c, "dataset: x\nstagez: {}\n"), "--out",
                    c.out()], EXIT_CONFIG, ("pipe.yaml:2", "stagez")),
    Case("pipeline_stage_model_config_typo", "cli",
         lambda c: ["pipeline", "--data", c.data, "--out", c.out(), "--config", c.yaml(
             "dataset: x\nstages: {1: s1.yaml, 2: s1.yaml, 3: s1.yaml}\n", name="pipe.yaml"), "--stages", "1"]
         if c.yaml("model_config: {d_model: 16, num_heads: 2, n_layers: 1}\nmax_steps: 1\nfp16: false\n"
                   "report_to: none\n", name="s1.yaml") else None, EXIT_CONFIG, ("model_config.n_layers",)),
    Case("report_results_not_json", "cli",
         lambda c: ["report", str(Path(c.file("run/results.json", '{"stages": [')).parent)], EXIT_DATA,
         ("results.json", "invalid JSON")),
    Case("evaluate_unknown_split", "cli",
         lambda c: ["evaluate", "--model", str(_tiny_model(c)), "--data", c.data, "--split", "tset"], EXIT_CONFIG,
         ("tset",)),
    Case("pipeline_data_typo", "cli",
         lambda c: ["pipeline", "--data", c.data + "x", "--config", _pipeline_cfg(c, "dataset: x\n"), "--out",
                    c.out()], EXIT_CONFIG, ("--data",)),
]


# ----------------------------------------------------------------------------------------------------------- env
def _pickled_checkpoint(ctx: Ctx) -> List[str]:
    ckpt = Path(ctx.out("run")) / "checkpoint-1"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": []}))
    (ckpt / "optimizer.pt").write_bytes(b"not a zip archive")  # 不是 torch.save 的 zip：必须拒绝，而不是 unpickle
    args = ctx.stage("--resume_from_checkpoint", "true")
    i = args.index("--max_steps")
    return args[:i] + ["--max_steps", "2"] + args[i + 2:]


def _diverging(ctx: Ctx) -> List[str]:
    args = ctx.stage("--learning_rate", "1e30", "--max_grad_norm", "0", "--max_consecutive_nonfinite", "1")
    i = args.index("--max_steps")
    return args[:i] + ["--max_steps", "4"] + args[i + 2:]


ENV = [
    Case("output_dir_is_a_file", "env", lambda c: c.stage("--output_dir", c.file("run_file", "x")),
         EXIT_ENVIRONMENT, ("run_file", "is a file where a folder is needed")),
    Case("output_dir_not_writable", "env", lambda c: c.stage("--output_dir", "/sys/ugt_fault_test/run"),
         EXIT_ENVIRONMENT, ("/sys/ugt_fault_test", "permission denied")),
    # 名字像暂存目录的普通文件不再是错误：启动时的清理把它删掉并警告（tests/test_checkpointing.py）
    Case("training_diverges", "env", _diverging, EXIT_DIVERGED, ("non-finite loss", "max_consecutive_nonfinite")),
    Case("resume_from_unsafe_checkpoint", "env", _pickled_checkpoint, EXIT_UNSAFE_CHECKPOINT,
         ("optimizer.pt", "refused to load")),
]

CASES = PREPARE + DATA + CONFIG + CLI + ENV

