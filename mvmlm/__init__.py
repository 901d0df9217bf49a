"""Multi-view mammography vision-language pretraining toolkit."""

__version__ = "0.1.0"
