"""Model fixtures: a tiny random BERT with a WordPiece tokenizer trained on the fly (once per session), tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPORTS = [
    "Scattered fibroglandular densities. No suspicious mass or calcification. BI-RADS 1.",
    "Heterogeneously dense breast. Irregular spiculated mass in the upper outer quadrant. BI-RADS 5.",
    "Grouped amorphous calcifications, segmental distribution. BI-RADS 4.",
    "Extremely dense tissue which lowers sensitivity. Oval circumscribed mass, probably benign. BI-RADS 3.",
    "Almost entirely fatty breast. Benign appearing findings. BI-RADS 2.",
]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A directory loadable with ``AutoTokenizer/AutoModel.from_pretrained(dir, local_files_only=True)``."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = tmp_path_factory.mktemp("tiny_bert")
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(REPORTS * 4, vocab_size=120, min_frequency=1, show_progress=False)
    trainer.save_model(str(directory))
    tokenizer = BertTokenizer.from_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def reports() -> list[str]:
    return list(REPORTS)


@pytest.fixture
def tiny_mvclip_config(tiny_bert_dir):
    """An MV-CLIP config small enough for CPU tests: timm's test_resnet at 64x64, the tiny BERT, 8 tokens."""
    from mvmlm.models.mvclip import ImageTowerConfig, MVCLIPConfig, TextTowerConfig, TokenConfig

    return MVCLIPConfig(
        image=ImageTowerConfig(encoder="timm:test_resnet", encoder_kwargs={"in_chans": 1}, image_size=[64, 64]),
        text=TextTowerConfig(model=str(tiny_bert_dir), revision=None, max_length=24),
        tokens=TokenConfig(num_tokens=8, width=32, depth=2, heads=4),
        embed_dim=16,
    )
