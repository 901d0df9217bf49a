"""Downstream evaluation of mammography image encoders: embeddings, linear probe, fine-tuning, zero-shot."""
