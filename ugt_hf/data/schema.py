"""数据产物的格式约定（规格第 5.1 节的记录格式 + `ugt prepare` 的产物目录）。

`ugt prepare` 写出、数据集类读取的都是这里的字段名，二者之间不再有别的约定。

产物目录：
    items.parquet            item_id(str, 原始 id) item_index(int64, 0..N-1) l1 l2 l3(int64) title(str, 可空)
    train.jsonl / .parquet   RecommendDataset 记录（RECOMMEND_FIELDS）
    valid.jsonl / .parquet   同上，decoder = [BOS]，labels = 留出的验证物品
    test.jsonl  / .parquet   同上，labels = 留出的测试物品
    preference_train.jsonl / .parquet  PreferenceDataset 记录（有评分时）：每个用户训练前缀按时间切在
                             preference_cut（默认 0.8）处，切点之前的评分对用于训练
    preference_test.jsonl / .parquet   同格式：历史 = 切点之前，偏好对来自切点之后（留出的偏好准确率评估）
    meta.json                计数、词表大小、协议、随机种子、输入校验和

序列约定：
    encoder = 最近的历史物品（最多 encoder_max_length 个，全部 token_type 1，位置 0..Te-1）
    decoder = [BOS, d1, ..., d_{n-1}]（BOS 的 token_type 0、三层 id 为 pad_token_id），
    labels  = [d1, ..., dn]（位置 t 预测下一个物品）；valid/test 记录的 decoder 只有 [BOS]。

meta.json 至少包含：
    vocab_sizes [V1, V2, V3]、num_users、num_items、num_interactions、pad_token_id、
    encoder_max_length、decoder_max_length、splits {train, valid, test, preference_train, preference_test}、
    source、seed、input_checksum、protocol、codebook_utilisation、collisions
"""

from __future__ import annotations

# ---- `ugt prepare` 的输入格式与默认码本（放在这里而不是 readers / semantic_ids：`ugt prepare --help` 只需这些常量，
# 不必加载 pyarrow / torch）----
SOURCES = ("ml-100k", "ml-1m", "ml-10m", "s3rec", "pairs", "csv", "parquet", "synthetic")
DEFAULT_CODEBOOK_SIZES = (1024, 4096, 16384)  # 规格默认

# ---- RecommendDataset 记录（规格 5.1）----
ENCODER_LIST_FIELDS = (
    "encoder_l1_ids",
    "encoder_l2_ids",
    "encoder_l3_ids",
    "encoder_positions",
    "encoder_token_types",
    "encoder_mask",
)
DECODER_LIST_FIELDS = (
    "decoder_l1_ids",
    "decoder_l2_ids",
    "decoder_l3_ids",
    "decoder_positions",
    "decoder_token_types",
    "decoder_mask",
)
LABEL_LIST_FIELDS = ("labels_l1", "labels_l2", "labels_l3")
RECOMMEND_FIELDS = ("user_id",) + ENCODER_LIST_FIELDS + DECODER_LIST_FIELDS + LABEL_LIST_FIELDS

# ---- PreferenceDataset 记录（规格 5.1）----
PREFERENCE_SEQUENCE_FIELDS = ENCODER_LIST_FIELDS  # user_sequence 内的字段
ITEM_TRIPLE_FIELDS = ("l1_id", "l2_id", "l3_id")  # chosen_item / rejected_item 内的字段
PREFERENCE_FIELDS = ("user_id", "user_sequence", "chosen_item", "rejected_item")  # preference_score 可选

# ---- 物品表 ----
ITEMS_COLUMNS = ("item_id", "item_index", "l1", "l2", "l3", "title")

# ---- 产物文件名 ----
ITEMS_FILE = "items.parquet"
META_FILE = "meta.json"
SPLITS = ("train", "valid", "test")
PREFERENCE_SPLITS = ("preference_train", "preference_test")
