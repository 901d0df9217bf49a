"""``mvmlm push --model DIR --repo-id ORG/NAME [--private] [--include-text-encoder]``: check a bundle and upload it
with huggingface_hub; ``--include-text-encoder`` first vendors the frozen text encoder into the bundle
(:func:`mvmlm.bundle.include_text_encoder`)."""

from __future__ import annotations

import logging

from mvmlm.bundle import include_text_encoder, load_model

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> str:
    """Load the bundle (every file checked against its manifest), then ``push_to_hub``; returns the commit URL."""
    from mvmlm.commands import PUSH

    cfg = PUSH.parse(argv)
    if cfg.include_text_encoder:
        log.info("including the text encoder in %s: %s", cfg.model, include_text_encoder(cfg.model))
    bundle = load_model(cfg.model)
    url = bundle.push_to_hub(cfg.repo_id, private=cfg.private, commit_message=cfg.commit_message)
    log.info("pushed %s (%s bundle) to %s: %s", cfg.model, bundle.kind, cfg.repo_id, url)
    print(url)
    return str(url)
