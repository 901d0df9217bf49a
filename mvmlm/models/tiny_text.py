"""A tiny random BERT with a word-level WordPiece vocabulary of given texts, for CPU tests and the demo.

Written with ``save_pretrained`` into a directory, so ``model.text.model=<directory>`` loads it offline like any
Hugging Face encoder. Every word of the texts is one token (the vocabulary is the sorted set of words plus single
characters, so it is the same on every run and machine); random weights then still give every word its own
hidden state, which is all the frozen text tower must do for the trainable token transformer on top to learn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_tiny_text_model"]


def write_tiny_text_model(
    directory: str | Path,
    texts: Sequence[str],
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
) -> Path:
    """Write the vocabulary of ``texts`` and a random ``BertModel`` (seeded) to ``directory``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    if not texts:
        raise ValueError("write_tiny_text_model needs at least one text to build the vocabulary from")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *words,
        *(c for c in chars if c not in words),
        *(f"##{c}" for c in chars),
    ]
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    tokenizer = BertTokenizer.from_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(str(directory))
    return directory
