"""Models: image encoders (timm CNNs, VSSM), selective scan, token transformers, frozen text tower, MV-CLIP.

Import the submodules directly (``from mvmlm.models.image_encoders import create_image_encoder``); this package
imports nothing heavy on its own.
"""
