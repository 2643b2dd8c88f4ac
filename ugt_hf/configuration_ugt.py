"""UGT 模型配置：`UGTConfig(PretrainedConfig)`，model_type = "ugt"。

transformers 5.x 的配置类是 dataclass：字段带类型注解与默认值，校验放在 `__post_init__`，
这样 `save_pretrained` / `from_pretrained` / `AutoConfig` 全部按 HF 的常规方式工作。
"""

from __future__ import annotations

import numbers
from typing import List, Optional

from transformers import PretrainedConfig

# 规格的三层语义 ID 词表大小（L1/L2/L3）
DEFAULT_VOCAB_SIZES = (1024, 4096, 16384)


_INT_FIELDS = ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "ffn_dim",
               "max_position_embeddings", "num_token_types", "num_experts", "num_experts_per_tok", "item_id_buckets",
               "node_embedding_buckets", "node_embedding_dim", "transition_buckets", "num_items", "semantic_pad_id",
               "loss_chunk_size")
CONFIG_ALIASES = ("top_k", "moe_top_k")  # __post_init__ 认的规格别名


class UGTConfig(PretrainedConfig):
    r"""UGT 生成式推荐模型的配置。

    vocab_sizes (`list[int]`, 默认 [1024, 4096, 16384]): L1/L2/L3 语义 ID 词表大小。
    d_model (`int`, 默认 128): 隐层维度。
    num_heads (`int`, 默认 4): 注意力头数（d_model 必须能整除）。
    num_encoder_layers / num_decoder_layers (`int`, 默认 2 / 2): 编码器 / 解码器层数。
    ffn_dim (`int`, 默认 512): FFN（以及每个专家）的中间维度。
    dropout / attention_dropout (`float`): 残差与注意力 dropout。
    max_position_embeddings (`int`, 默认 512): 可学习位置嵌入的长度（位置 id 必须小于它）。
    num_token_types (`int`, 默认 2): 0 = BOS/特殊位，1 = 物品。
    num_experts (`int`, 默认 4): 解码器 FFN 的专家数；1 = 稠密 FFN（此时 aux_loss 为 None）。
    num_experts_per_tok (`int`, 默认 2): 每个 token 路由到的专家数 top_k。
    router_aux_loss_coef (`float`, 默认 1.0): aux_loss 里负载均衡项的系数（训练器再乘 lambda_moe_balance）。
    router_z_loss_coef (`float`, 默认 0.0): aux_loss 里 router z-loss（ST-MoE）的系数，0 表示不用。
    user_pooling (`str`, 默认 "mean"): user_repr 的池化方式，"mean"（有效位置均值）或 "last"（最后一个有效位置）。
    encoder_position_mode (`str`, 默认 "absolute"): 编码器位置 id。"absolute" 用批次给的 encoder_positions
        （从历史开头数）；
        "recency" 由 mask 重新计算“距最近一个物品的步数”（最近 = 0），使最近的物品总落在同一个位置嵌入上——
        下一物品主要由最近几次交互决定，绝对位置下模型得先从变长序列里“找到”末尾。
    item_id_buckets (`int`, 默认 0): >0 时给每个物品再加一个按完整三元组哈希到该桶数的嵌入（输入侧）。三层码嵌入之和
        在层间共享、容量有限；哈希嵌入给每个物品独立参数，用于记住具体物品之间的转移。0 表示不用。
        这三张哈希表（还有 node_embedding_buckets、transition_buckets）在训练配置里可写 "auto"，
        由 `training.stages.build_model` 按物品数 / 交互数算（`AUTO_TABLE_SIZES`）。
    node_embedding_buckets (`int`, 默认 0): >0 时 L2/L3 头给树上每个节点（(l1, l2) 格子、(l1, l2, l3) 物品）再加一个
        按哈希取的输出向量：logit += (P·h) · E[node]。共享的码字输出表只能表达“残差方向”，记不住
        “买了 A 接着买 B”这类具体转移；这是层次 softmax 本来的“每个内部节点一个向量”。代价是每次打分要取
        V2（或 V3）个 node_embedding_dim 维向量，所以适合封顶后的小词表（如 128）；0 表示不用。
    node_embedding_dim (`int`, 默认 32): 节点输出向量的维度（低秩，控制上面那次取数的内存）。
    bos_context (`str`, 默认 "none"): "last_item" 时把编码器在最后一个有效历史位置的输出加到解码器 BOS 的输入上。
        自回归的 SASRec 在最后一个物品的残差流上直接预测下一个，物品到物品的转移一步可学；编码器-解码器里 BOS
        只能经交叉注意力在整段历史上“取”信息，最近物品被稀释。"none" 保持原始的编码器-解码器结构。
    transition_buckets (`int`, 默认 0): >0 时加 Wide&Deep 式的“宽”记忆项：按 (前一个物品, 候选节点) 的交叉特征哈希到
        该桶数的一个标量偏置，加到每层 logit 上（L1/L2 是树上的前缀节点，L3 是物品本身）。前一个物品 = 预测位置之前
        紧挨着的那个物品（BOS 位是历史最后一个物品，其后各位是解码器输入）。低秩的节点向量要把“A 之后是 B”压进
        几十维，记不住成千上万条稀疏转移；交叉特征的一个标量可以逐条记住，深层部分负责泛化（Cheng et al. 2016）。
        0 表示不用。
    transition_layout (`str`, 默认 "node"): 宽记忆项的桶怎么排。"block" = 按 (前一个物品, 父节点, 层级) 哈希出一个
        连续的块，块里第 k 个数是子节点 k 的偏置：束搜索给一个前缀的全部子节点取偏置时读的是一段连续内存，
        不是 V 个随机位置（Beauty 的全目录排序里这项查表原来占约四分之一的时间）。"node" = 每个 (前一个物品,
        节点) 单独哈希到一个桶（默认：没有这个字段的旧检查点按它训练，改默认会让它们悄悄换一套哈希）。
        提交的 Beauty 配置用 "block"（README 的对照里质量不差，评估更快）。
        两种排法每个 (前一个物品, 节点) 都落在一个桶里、桶数相同，只是撞桶的方式不同。
    transition_scale (`float`, 默认 10.0): 宽记忆项的乘子 s（偏置 = s·w，w 初值 0）。Adam 每步对 w 的更新约为学习率，
        所以 s 等于这张表的有效学习率倍数：稀疏的转移对一轮只见几次，与深层共用学习率时几乎学不动。
    num_items (`int`, 默认 0): >0 时在语义 ID 头旁边再加一个物品级输出层（每个物品一个自由的输出向量 + 偏置，
        logits = h·W^T + b，对全目录 softmax，即 SASRec 的全量 CE）。模型把目录三元组存成持久 buffer
        （`set_item_catalogue`），labels 的三元组在模型内换成物品下标，保存的检查点自带目录。0 表示不用，
        其余数值逐位与不开时相同。训练配置里可写 "auto"，由 `training.stages.build_model` 填数据的目录大小。
    item_loss_weight (`float`, 默认 1.0): 物品头全目录交叉熵的权重（与三层 NTP 加在一起，同一个 token 平均口径）。
    item_scoring (`str`, 默认 "sum"): 开了物品头时物品的分数。"sum" = log p_sem(item) + log softmax_item(item)
        （专家乘积；两项都是归一化的 log 概率、都 <= 0，所以束搜索在最后一层加上物品项后，前缀分仍是物品分的上界，
        精确性证书照常成立）；"item" = 只用物品头（全目录稠密打分，精确 top-K，不再束搜索）。
    tie_word_embeddings (`bool`, 默认 True): 各层输出头与该层的 ID 嵌入共享权重。
    initializer_range (`float`, 默认 0.02): HF 约定的正态初始化标准差。
    semantic_pad_id (`int`, 默认 0): padding/BOS 位置上的语义 ID 取值（由 token_type 屏蔽，不参与嵌入）。
        单独一个名字：HF/TRL 会把 tokenizer 的 pad id 写进 `pad_token_id`，模型不读那个字段。
    pad_token_id (`int`, 默认 0): HF 约定的字段（tokenizer 的 pad token），模型不使用。
    loss_chunk_size (`int`, 可选): 给出时 NTP 交叉熵按这么多行分块计算（`loss_utils.chunked_cross_entropy`，
        数值与整块相同，省一份 [B×T, V] 的 log-softmax）；None 用 F.cross_entropy。训练器也读这个字段。
    """

    model_type = "ugt"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_decoder_layers",
    }

    vocab_sizes: Optional[List[int]] = None
    d_model: int = 128
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    ffn_dim: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    max_position_embeddings: int = 512
    num_token_types: int = 2
    num_experts: int = 4
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 1.0
    router_z_loss_coef: float = 0.0
    user_pooling: str = "mean"
    encoder_position_mode: str = "absolute"
    item_id_buckets: int = 0
    node_embedding_buckets: int = 0
    node_embedding_dim: int = 32
    bos_context: str = "none"
    transition_buckets: int = 0
    transition_scale: float = 10.0
    transition_layout: str = "node"
    num_items: int = 0
    item_loss_weight: float = 1.0
    item_scoring: str = "sum"
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    semantic_pad_id: int = 0
    loss_chunk_size: Optional[int] = None
    pad_token_id: Optional[int] = 0
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        # 规格沿用的别名：top_k / moe_top_k -> num_experts_per_tok
        for alias in ("top_k", "moe_top_k"):
            if alias in kwargs:
                self.num_experts_per_tok = int(kwargs.pop(alias))
        if self.vocab_sizes is None:
            self.vocab_sizes = list(DEFAULT_VOCAB_SIZES)
        self.vocab_sizes = [int(v) for v in self.vocab_sizes]
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        """配置错误时给出指明字段的报错，而不是等到 forward 里才出现形状错误。"""
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if name == "num_items" or (value is None and name == "loss_chunk_size"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy 整数也算
                hint = ("; 'auto' is resolved by training.stages.build_model from the data"
                        if name.endswith("_buckets") else "")
                raise ValueError(f"UGTConfig.{name} must be an integer, got {type(value).__name__} {value!r}{hint}")
        if len(self.vocab_sizes) != 3 or any(v <= 0 for v in self.vocab_sizes):
            raise ValueError(f"UGTConfig.vocab_sizes must be 3 positive ints (L1, L2, L3), got {self.vocab_sizes}")
        if self.d_model <= 0 or self.num_heads <= 0 or self.d_model % self.num_heads != 0:
            raise ValueError(
                f"UGTConfig.d_model ({self.d_model}) must be a positive multiple of num_heads ({self.num_heads})"
            )
        if self.num_experts < 1:
            raise ValueError(f"UGTConfig.num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"UGTConfig.num_experts_per_tok ({self.num_experts_per_tok}) must be in "
                f"[1, num_experts={self.num_experts}]"
            )
        if self.user_pooling not in ("mean", "last"):
            raise ValueError(f"UGTConfig.user_pooling must be 'mean' or 'last', got {self.user_pooling!r}")
        if self.encoder_position_mode not in ("absolute", "recency"):
            raise ValueError(
                f"UGTConfig.encoder_position_mode must be 'absolute' or 'recency', got {self.encoder_position_mode!r}"
            )
        if self.bos_context not in ("none", "last_item"):
            raise ValueError(f"UGTConfig.bos_context must be 'none' or 'last_item', got {self.bos_context!r}")
        for name in ("item_id_buckets", "node_embedding_buckets", "transition_buckets"):
            if getattr(self, name) < 0:
                raise ValueError(f"UGTConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.node_embedding_buckets > 0 and self.node_embedding_dim < 1:
            raise ValueError(f"UGTConfig.node_embedding_dim must be >= 1, got {self.node_embedding_dim}")
        if isinstance(self.num_items, bool) or not isinstance(self.num_items, int) or self.num_items < 0:
            raise ValueError(
                f"UGTConfig.num_items must be an int >= 0 (0 = no item head), got {self.num_items!r}; "
                "'auto' is resolved by training.stages.build_model from the data's catalogue"
            )
        if not self.item_loss_weight >= 0:
            raise ValueError(f"UGTConfig.item_loss_weight must be >= 0, got {self.item_loss_weight}")
        if self.item_scoring not in ("sum", "item"):
            raise ValueError(f"UGTConfig.item_scoring must be 'sum' or 'item', got {self.item_scoring!r}")
        if self.transition_layout not in ("block", "node"):
            raise ValueError(f"UGTConfig.transition_layout must be 'block' or 'node', got {self.transition_layout!r}")
        if self.transition_layout == "block" and 0 < self.transition_buckets < max(self.vocab_sizes):
            raise ValueError(
                f"UGTConfig.transition_buckets ({self.transition_buckets}) must be >= the largest vocab size "
                f"({max(self.vocab_sizes)}) with transition_layout 'block' (one block holds a node's children); "
                "use more buckets or transition_layout 'node'"
            )
        if not self.transition_scale > 0:
            raise ValueError(f"UGTConfig.transition_scale must be > 0, got {self.transition_scale}")
        for name in ("num_encoder_layers", "num_decoder_layers", "ffn_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"UGTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.semantic_pad_id < 0:
            raise ValueError(f"UGTConfig.semantic_pad_id must be >= 0, got {self.semantic_pad_id}")
        if self.loss_chunk_size is not None and self.loss_chunk_size < 1:
            raise ValueError(f"UGTConfig.loss_chunk_size must be None or >= 1, got {self.loss_chunk_size}")
        if self.num_token_types < 2:
            raise ValueError(
                f"UGTConfig.num_token_types must be >= 2 (0 = special, 1 = item), got {self.num_token_types}"
            )
        # 概率与系数：越界值不会报错，只会悄悄训练出别的东西（dropout 2.0 在 torch 里直接抛异常）
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
                raise ValueError(f"UGTConfig.{name} must be a probability in [0, 1), got {value!r}")
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"UGTConfig.{name} must be a number >= 0, got {value!r}")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, numbers.Real) \
                or not self.layer_norm_eps > 0:
            raise ValueError(f"UGTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @classmethod
    def known_keys(cls) -> List[str]:
        """model_config 里可写的键：本类字段、HF 通用字段（save_pretrained 写出的 config.json 里都有）、别名。"""
        import dataclasses

        keys = {f.name for f in dataclasses.fields(cls)} | set(cls.attribute_map) | set(CONFIG_ALIASES)
        keys |= set(PretrainedConfig().to_dict())
        return sorted(keys)


def unknown_config_keys(keys) -> List[tuple]:
    """keys 里 UGTConfig 不认识的键，每个配上最接近的合法键（没有则为 None）。PretrainedConfig 对未知键照单全收
    （写错的 d_modle 会悄悄变成一个没人读的属性、模型按默认 d_model 建），所以用户给的 model_config 要先查。"""
    import difflib

    known = UGTConfig.known_keys()
    out = []
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            out.append((key, close[0] if close else None))
    return out


__all__ = ["UGTConfig", "DEFAULT_VOCAB_SIZES", "unknown_config_keys"]
