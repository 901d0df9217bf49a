"""MV-MLM pretraining: multi-view CLIP between mammograms (CC + MLO of a breast) and synthetic reports."""
