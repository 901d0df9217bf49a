"""Inference fixtures: the tiny fine-tuning run of tests/test_bundle.py (saved bundles)."""

from ..test_bundle import finetune_run  # noqa: F401
