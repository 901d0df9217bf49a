"""The transformers backend with a tiny random causal LM and a tokenizer trained on the fly (CPU, offline)."""

from __future__ import annotations

import json

import pytest

from mvmlm.batch import TooManyFailuresError
from report_synthesis import read_corpus
from report_synthesis.postprocess import REASON_CATEGORIES, reason_category
from report_synthesis.run import main

CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant :{% endif %}"
)
WORDS = (
    "left right breast mass calcifications BI-RADS 1 2 3 4 5 density A B C D irregular oval spiculated "
    "findings impression no suspicious present segmental heterogeneously dense the a is of with and"
).split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 1-layer random Llama with a word-level tokenizer that has a chat template, saved like a hub model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.WordPiece()
    raw.train_from_iterator(
        [" ".join(WORDS)] * 2, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_tiny_lm_gibberish_is_rejected_and_replaced_by_the_template(tiny_lm, table_path, tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(TooManyFailuresError, match="all 6 reports failed"):  # the command exits 2
        main(
            [
                f"table={table_path}",
                f"out={out}",
                "progress=false",
                "max_attempts=2",
                "backend.name=transformers",
                f"backend.model={tiny_lm}",
                "backend.sampling.max_tokens=12",
                "backend.transformers.device=cpu",
                "backend.transformers.batch_size=4",
            ]
        )
    summary = json.loads((out / "metrics.json").read_text())  # written before the exit
    corpus = read_corpus(out)
    assert len(corpus) == 6 and summary["template_fallback"] == 6
    assert set(corpus.source) == {"template"} and (corpus.attempts == 2).all()
    assert corpus.fallback_reason.notna().all()
    assert {reason_category(r) for r in corpus.fallback_reason} <= set(REASON_CATEGORIES)
    assert sum(summary["rejections"].values()) >= 12  # every breast rejected on both attempts
    assert summary["accepted_first_try"] == summary["accepted_after_retry"] == 0
