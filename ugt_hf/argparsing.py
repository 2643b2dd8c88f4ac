"""YAML + 命令行 → dataclass 的通用解析（训练阶段、`ugt prepare / evaluate / pipeline` 共用）。

建立在 `HfArgumentParser` 上：它负责 字段 → argparse 选项与类型转换（YAML 的标量也交给同一类型函数）；这里补上
它没有的部分——YAML 行号、`base:` 继承（路径相对本文件，可链式，循环报错）、未知键的 difflib 提示、同一参数
两种写法（别名）的冲突，全部报成带 文件:行 与字段名的 ConfigError（ValueError 子类），不让 argparse 直接 exit。
只依赖 PyYAML 与 transformers 的 hf_argparser.py（按文件加载，不执行 transformers/__init__，见 _hf_argument_parser），
不加载 torch：`ugt <命令> --help` 与参数错误因此在 1 s 内返回。位于 training/、data/ 之下。
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import os
import re
import sys
import types
from dataclasses import field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, get_args, get_type_hints

import yaml


def _hf_argument_parser() -> type:
    """transformers 的 HfArgumentParser 类（字段 → argparse 选项的规则只有这一份）。

    `import transformers` 本身要 1.5–3 s（huggingface_hub、httpx…，见 `python -X importtime`），而 hf_argparser.py
    只依赖标准库与 PyYAML：transformers 尚未导入时按文件单独加载它（同一份代码，不复制）；找不到文件或它将来
    有了包内相对导入时，退回正常导入。"""
    loaded = sys.modules.get("transformers.hf_argparser")
    if loaded is not None:
        return loaded.HfArgumentParser
    spec = importlib.util.find_spec("transformers")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "hf_argparser.py" if locations else None
    if path is not None and path.is_file():
        file_spec = importlib.util.spec_from_file_location("ugt_hf._hf_argparser", path)
        module = importlib.util.module_from_spec(file_spec)
        try:
            file_spec.loader.exec_module(module)
            return module.HfArgumentParser
        except ImportError:
            pass
    from transformers import HfArgumentParser

    return HfArgumentParser


HfArgumentParser = _hf_argument_parser()

CLI_SOURCE = "command line"
BASE_KEY = "base"  # YAML 继承：`base: 相对本文件的路径`


class ConfigError(ValueError):
    """配置错误：消息里写明来源（YAML 文件:行 或 命令行）与字段名。"""

    def __init__(self, message: str, *, field: Optional[str] = None, source: Optional[str] = None,
                 line: Optional[int] = None):
        self.message, self.field, self.source, self.line = message, field, source, line
        parts = [f"{source}:{line}" if line else str(source)] if source else []
        if field:
            parts.append(f"field '{field}'")
        where = ", ".join(parts)
        super().__init__(f"config error ({where}): {message}" if where else f"config error: {message}")

    def located(self, source: Optional[str], line: Optional[int] = None) -> ConfigError:
        """返回补上来源信息的新异常（已有来源则保持不变）。"""
        if self.source or not source:
            return self
        return ConfigError(self.message, field=self.field, source=source, line=line)


def arg(default: Any = None, help: str = "", *, factory: Any = None, aliases: Optional[List[str]] = None,
        **argparse_kw: Any) -> Any:
    """带帮助文本（与 argparse 别名/选项）的 dataclass 字段。"""
    metadata = {"help": help, **argparse_kw, **({"aliases": aliases} if aliases else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


Origin = Tuple[str, Optional[int]]  # (文件, 行)


def _read_yaml_mapping(path: Path) -> Tuple[Dict[str, Any], Dict[str, int]]:
    source = str(path)
    if not path.exists():
        raise ConfigError("config file not found", source=source)
    if not path.is_file():
        raise ConfigError("config path is not a file", source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: {e}", source=source) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        if context and context_mark is not None and context_mark.line + 1 != line:
            # 真正的错误常在上下文起点（如未闭合的 [）
            problem += f" ({context}, starting at line {context_mark.line + 1})"
        raise ConfigError(f"YAML syntax error: {problem}", source=source, line=line) from None
    if data is None:
        raise ConfigError("config file is empty (expected a `key: value` mapping)", source=source)
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"the YAML top level must be a `key: value` mapping, got {type(data).__name__}",
                          source=source, line=1)
    lines: Dict[str, int] = {}
    for key_node, _ in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
            raise ConfigError(f"keys must be strings, got {key!r}", source=source, line=line)
        if key in lines:
            raise ConfigError(f"duplicate key '{key}' (first at line {lines[key]})", field=key, source=source,
                              line=line)
        lines[key] = line
    return data, lines


def load_yaml_config(path: Union[str, Path], rename: Optional[Mapping[str, str]] = None,
                     _chain: Tuple[Path, ...] = ()) -> Tuple[Dict[str, Any], Dict[str, Origin]]:
    """读取 YAML 配置，返回 (键值, 键 → (文件, 行))。`base: 文件` 先读基础配置（路径相对本文件，可链式），
    本文件的键覆盖它（顶层整键替换）。rename 把别名归一到同一键：同一文件里两种写法取值不同 → ConfigError。"""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"circular base chain: {cycle}", field=BASE_KEY, source=str(path))
    raw, lines = _read_yaml_mapping(path)
    source = str(path)
    data: Dict[str, Any] = {}
    origin: Dict[str, Origin] = {}
    if BASE_KEY in raw:
        base = raw.pop(BASE_KEY)
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"base must be a YAML file path, got {base!r}", field=BASE_KEY, source=source,
                              line=lines[BASE_KEY])
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"base file {base_path} does not exist", field=BASE_KEY, source=source,
                              line=lines[BASE_KEY])
        data, origin = load_yaml_config(base_path, rename, (*_chain, path.resolve()))
    own: Dict[str, Tuple[str, Any]] = {}
    for key, value in raw.items():
        name = (rename or {}).get(key, key)
        if name in own and own[name][1] != value:
            first, first_value = own[name]
            raise ConfigError(f"'{first}: {first_value!r}' and '{key}: {value!r}' are the same option with different "
                              "values; keep one",
                              field=name, source=source, line=lines[key])
        own[name] = (key, value)
        data[name] = value
        origin[name] = (source, lines[key])
    return data, origin


class _Parser(HfArgumentParser):
    """argparse 出错时抛 ConfigError 而不是打印用法后 exit(2)。"""

    def error(self, message: str):  # type: ignore[override]
        match = re.search(r"argument (--[\w-]+)", message)
        field_name = match.group(1).lstrip("-").replace("-", "_") if match else None
        raise ConfigError(message, field=field_name, source=CLI_SOURCE)


class _TypeMismatch(Exception):
    pass


def _union_members(hint: Any) -> Tuple[Any, ...]:
    return get_args(hint) if getattr(hint, "__origin__", None) is Union or isinstance(hint, types.UnionType) \
        else (hint,)


def _coerce(value: Any, action: argparse.Action, hint: Any) -> Any:
    """YAML 值 → 字段值：标量交给 HfArgumentParser 为该字段生成的 argparse 类型函数，再查 choices。"""
    members = _union_members(hint)
    if value is None:
        if type(None) in members or hint is Any:
            return None
        raise _TypeMismatch
    if isinstance(value, dict):
        if any(m is dict or getattr(m, "__origin__", None) is dict for m in members):
            return value
        raise _TypeMismatch
    if isinstance(value, list):
        if action.nargs in ("+", "*") or any(m is list or getattr(m, "__origin__", None) is list for m in members):
            return [_coerce_scalar(v, action) for v in value]
        raise _TypeMismatch
    return _coerce_scalar(value, action)


def _coerce_scalar(value: Any, action: argparse.Action) -> Any:
    convert = action.type or str
    if isinstance(value, (dict, list)) or (isinstance(value, bool) and convert in (int, float)):
        raise _TypeMismatch
    if convert is int and isinstance(value, float):
        if not value.is_integer():
            raise _TypeMismatch
        value = int(value)
    try:
        out = convert(value)  # float("1e-4")：PyYAML 把无小数点的 1e-4 读成字符串
    except Exception:  # argparse 类型函数的任何失败都是“类型不对”
        raise _TypeMismatch from None
    if isinstance(out, Enum):
        out = out.value
    if action.choices is not None and out not in action.choices:
        raise _TypeMismatch
    return out


def _describe(action: argparse.Action, hint: Any) -> str:
    if action.choices is not None:
        return "{" + ", ".join(str(c) for c in action.choices) + "}"
    return " or ".join("null" if m is type(None) else getattr(m, "__name__", str(m)) for m in _union_members(hint))


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _split_config_flag(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    config_path, rest, i = None, [], 0
    while i < len(argv):
        token = argv[i]
        if token in ("--config", "-c"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config needs a YAML file path", field="config", source=CLI_SOURCE)
            config_path, i = argv[i + 1], i + 2
        elif token.startswith("--config="):
            config_path, i = token.split("=", 1)[1], i + 1
        else:
            rest.append(token)
            i += 1
    return config_path, rest


def build_parser(dataclass_types: Sequence[type], prog: Optional[str] = None, config_flag: bool = True,
                 defaults: Optional[Mapping[str, Any]] = None,
                 epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """dataclass 字段 → argparse 解析器（parse_args 与各子命令的 --help 共用这一个）。帮助文本末尾写上默认值
    （defaults 里的值优先，如各训练阶段的默认值）；之后所有选项的默认值都换成 SUPPRESS，解析结果里只有命令行
    显式给出的参数（不能用 set_defaults：SUPPRESS 会被当成默认值再做类型转换）。"""
    parser = _Parser(tuple(dataclass_types), allow_abbrev=False, prog=prog or Path(sys.argv[0]).name or "ugt",
                     epilog=epilog)
    if config_flag:
        parser.add_argument("--config", "-c", help="YAML config file; command-line options override its values")
    for action in parser._actions:
        if action.dest == "help":
            continue
        shown = (defaults or {}).get(action.dest, action.default)
        if action.help and shown not in (None, argparse.SUPPRESS) and not action.required:
            action.help += " (default: " + str(shown).replace("%", "%%") + ")"
        action.default = argparse.SUPPRESS
    return parser


def parse_args(dataclass_types: Sequence[type], argv: Optional[Sequence[str]] = None,
               yaml_file: Optional[Union[str, Path]] = None, defaults: Optional[Mapping[str, Any]] = None,
               prog: Optional[str] = None, config_flag: bool = True, allow_remaining: bool = False) -> tuple:
    """从 defaults < YAML（`--config FILE` 或 yaml_file）< 命令行 构造各 dataclass，按给定顺序返回元组。

    别名（字段 metadata 的 aliases 与类属性 `_SPEC_TWINS` {规格名: HF 名}）在 YAML 与命令行里都接受，一律归一到
    字段名。所有错误抛 ConfigError，消息含来源（文件:行 或 "命令行"）与字段名；未知键给出最接近的合法名。
    config_flag=False 时不认 --config（如 `ugt pipeline` 自己的 --config 是流水线文件）；allow_remaining=True 时
    不认识的命令行参数原样放在返回元组的最后（转交给下一层）。
    """
    dataclass_types = tuple(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    cli_config = None
    if config_flag:
        cli_config, argv = _split_config_flag(argv)
    if cli_config is not None and yaml_file is not None and Path(cli_config) != Path(yaml_file):
        raise ConfigError(f"both yaml_file={yaml_file} and --config {cli_config} were given; give one",
                          source=CLI_SOURCE)
    yaml_path = cli_config if cli_config is not None else yaml_file

    parser = build_parser(dataclass_types, prog=prog, config_flag=config_flag)
    owner: Dict[str, type] = {}
    hints: Dict[str, Any] = {}
    aliases: Dict[str, str] = {}
    for dtype in dataclass_types:
        type_hints = get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                owner[f.name], hints[f.name] = dtype, type_hints[f.name]
                aliases.update({a.lstrip("-"): f.name for a in f.metadata.get("aliases", [])})
        aliases.update(getattr(dtype, "_SPEC_TWINS", {}))
    actions: Dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest != "help" and not isinstance(action, argparse._StoreFalseAction):  # --no_x 与 --x 同 dest
            actions.setdefault(action.dest, action)
    valid = sorted(set(owner) | set(aliases))

    values = {aliases.get(k, k): v for k, v in (defaults or {}).items() if aliases.get(k, k) in owner}
    where: Dict[str, Origin] = {}
    if yaml_path is not None:
        data, origin = load_yaml_config(yaml_path, aliases)
        for key, value in data.items():
            source, line = origin[key]
            if key not in owner:
                raise ConfigError(f"unknown option '{key}'{_suggest(key, valid)}", field=key, source=source, line=line)
            try:
                values[key] = _coerce(value, actions[key], hints[key])
            except _TypeMismatch:
                raise ConfigError(f"wrong type: expected {_describe(actions[key], hints[key])}, got "
                                  f"{type(value).__name__} {value!r}", field=key, source=source, line=line) from None
            where[key] = (source, line)

    namespace, remaining = parser.parse_known_args(argv)
    if remaining and not allow_remaining:
        token = next((t for t in remaining if t.startswith("-")), remaining[0])
        name = token.lstrip("-").split("=", 1)[0].replace("-", "_")
        if token.startswith("-"):
            raise ConfigError(f"unknown argument '{token}'{_suggest(name, valid)}", field=name, source=CLI_SOURCE)
        raise ConfigError(f"unexpected positional arguments {remaining!r}", source=CLI_SOURCE)
    cli = {k: v for k, v in vars(namespace).items() if not (config_flag and k == "config")}
    for key, value in cli.items():
        name = aliases.get(key, key)
        if name != key and name in cli and cli[name] != value:
            raise ConfigError(f"'{name}: {cli[name]!r}' and '{key}: {value!r}' are the same option with different "
                              "values; keep one",
                              field=name, source=CLI_SOURCE)
        values[name] = value
        where[name] = (CLI_SOURCE, None)
    if "eval_strategy" in owner and "eval_strategy" not in values and values.get("eval_data_path"):
        values["eval_strategy"] = "steps"  # 给了验证数据却没说评估策略：按 eval_steps 评估

    out = []
    for dtype in dataclass_types:
        try:
            out.append(dtype(**{k: v for k, v in values.items() if owner[k] is dtype}))
        except ConfigError as e:
            raise _locate(e, where, aliases, str(yaml_path) if yaml_path is not None else None) from None
        except (ValueError, TypeError) as e:
            sources = {s for s, _ in where.values()} or ({str(yaml_path)} if yaml_path else set())
            raise ConfigError(str(e), source=" + ".join(sorted(sources)) or None) from e
    return (*out, remaining) if allow_remaining else tuple(out)


def _locate(error: ConfigError, where: Mapping[str, Origin], aliases: Mapping[str, str],
            default_source: Optional[str]) -> ConfigError:
    for part in (error.field or "").split("/"):
        key = aliases.get(part, part)
        if key in where:
            return error.located(*where[key])
    return error.located(default_source)


def parse_config(config_cls: type, argv: Optional[Sequence[str]] = None,
                 yaml_file: Optional[Union[str, Path]] = None):
    """单个配置类的 parse_args（规格配置类与 UGTTrainingArguments 都可用）。"""
    return parse_args([config_cls], argv, yaml_file)[0]


# ---------------------------------------------------------------------------------------------------------- 路径
BEST_MODEL_DIR = "best_model"  # 每个阶段保存最佳模型的子目录（training.stages 从这里取）


def looks_local(value) -> bool:
    """像本地路径而非 Hub 仓库名（`org/name`）：以 . / ~ 开头、含反斜杠、多于一个 /，或上级目录在本地存在。
    这样写错的本地目录得到“目录不存在”，而不是 Hub 的“Repo id must be in the form …”。"""
    text = str(value)
    if text.startswith((".", "/", "~")) or "\\" in text or (os.sep != "/" and os.sep in text):
        return True
    if text.count("/") > 1:
        return True
    return "/" in text and Path(text).parent.is_dir()


def close_paths(path) -> List[str]:
    """path 不存在时：从最深的已存在祖先目录里，找与下一级名字相近的条目（difflib），返回完整路径。"""
    path = Path(path).expanduser()
    parts = path.parts
    for depth in range(len(parts) - 1, -1, -1):
        parent = Path(*parts[:depth]) if depth else Path(".")
        if parent.is_dir():
            names = sorted(p.name for p in parent.iterdir())
            return [str(parent / n) if depth else n for n in difflib.get_close_matches(parts[depth], names, n=3)]
    return []


def close_hint(path) -> str:
    """相近名字的提示 ` (did you mean 'a' or 'b'?)`；没有相近名字时为空串。"""
    close = close_paths(path)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def missing_path_message(path, what: str = "folder") -> str:
    """“X does not exist”加上相近的已有名字（若有）。"""
    return f"{what} {path} does not exist{close_hint(path)}"


def check_model_dir(value, flag: str, field: Optional[str] = None) -> None:
    """本地模型目录必须存在且含 config.json；不像本地路径的值留给 from_pretrained（Hub）。
    给的是运行/阶段目录时提示其中的 best_model。"""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return
        inner = [str(p.parent) for p in sorted(path.glob(f"*{BEST_MODEL_DIR}/config.json"))
                 + sorted(path.glob(f"*/{BEST_MODEL_DIR}/config.json"))]
        hint = f"; did you mean {' or '.join(repr(c) for c in inner[:3])}?" if inner else ""
        raise ConfigError(f"{flag} {value} is a folder without config.json, not a saved model (expected a "
                          f"save_pretrained directory such as RUN/stage1/{BEST_MODEL_DIR}){hint}", field=field)
    if path.exists():
        raise ConfigError(f"{flag} {value} is a file; expected a saved model folder (save_pretrained directory)",
                          field=field)
    if looks_local(value):
        raise ConfigError(f"{flag}: {missing_path_message(value, 'model folder')}", field=field)
