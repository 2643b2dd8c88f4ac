"""pipeline("generative-recommendation")：离线从目录加载，结果与 generation.py 相同。"""

import numpy as np
import pytest
import torch
from transformers import pipeline

from ugt_hf.auto import register
from ugt_hf.configuration_ugt import UGTConfig
from ugt_hf.generation import recommend
from ugt_hf.modeling_ugt import UGTForGenerativeRecommendation
from ugt_hf.tokenization_ugt import UGTTokenizer

V = [4, 8, 16]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    register()
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    model = UGTForGenerativeRecommendation(UGTConfig(vocab_sizes=V, d_model=32, num_heads=4, ffn_dim=48, num_experts=2,
                                                     num_experts_per_tok=1, dropout=0.0)).eval()
    g = np.random.default_rng(0)
    allt = np.stack(np.meshgrid(*[np.arange(v) for v in V], indexing="ij"), -1).reshape(-1, 3)
    triples = allt[g.permutation(len(allt))[:120]]
    tok = UGTTokenizer(item_ids=[f"item{k}" for k in range(120)], triples=triples, encoder_max_length=6, vocab_sizes=V)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


HISTORIES = [["item1", "item7", "item3"], ["item50"],
             ["item9", "item8", "item7", "item6", "item5", "item4", "item3", "item2"]]


def test_pipeline_matches_generation(checkpoint):
    d, model, tok = checkpoint
    rec = pipeline("generative-recommendation", model=str(d), device="cpu")
    for h in HISTORIES:
        out = rec(h, top_k=5, num_beams=20)
        ref = recommend(model, dict(tok(h)), tok.catalogue(), top_k=5, num_beams=20)
        assert [o["item_index"] for o in out] == ref.item_indices[0].tolist()
        assert [o["item_id"] for o in out] == tok.decode_items(ref.item_indices[0])
        assert np.allclose([o["score"] for o in out], ref.scores[0].numpy(), atol=1e-5)


def test_pipeline_batch_exclusion_and_exhaustive(checkpoint):
    d, model, tok = checkpoint
    rec = pipeline("generative-recommendation", model=str(d), device="cpu", top_k=4)
    outs = rec(HISTORIES)
    assert len(outs) == 3 and all(len(o) == 4 for o in outs)
    assert [o["item_id"] for o in outs[1]] == [o["item_id"] for o in rec(HISTORIES[1])]
    for h in HISTORIES:
        excl = rec(h, exclude_history=True, num_beams=200)
        assert not {o["item_id"] for o in excl} & set(h)
        exhaustive = rec(h, exclude_history=True, method="exhaustive")
        assert [o["item_id"] for o in excl] == [o["item_id"] for o in exhaustive]
    with pytest.raises(ValueError, match="unknown item_id"):
        rec(["item1", "missing"])
