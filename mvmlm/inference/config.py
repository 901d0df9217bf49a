"""Configs of ``mvmlm predict``, ``mvmlm embed`` and ``mvmlm push``; torch-free (``--help`` reads only this)."""

from __future__ import annotations

from dataclasses import dataclass

from mvmlm.config import MISSING

__all__ = ["InputConfig", "PredictConfig", "EmbedConfig", "PushConfig"]


@dataclass
class InputConfig:
    """What is read: DICOM files, folders (searched recursively) or a table, preprocessed as the bundle says."""

    model: str = MISSING  # bundle directory or Hub repo id (org/name; read through the Hub cache)
    input: list[str] = MISSING  # DICOM files / folders, or a canonical table / `mvmlm preprocess` table.parquet
    root: str = ""  # a canonical table's image paths are relative to this folder ('' = the table's folder)
    out: str = MISSING  # output folder
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:1 ...
    batch_size: int = 8  # breasts (or exams) per forward pass
    workers: int = 2  # DataLoader worker processes decoding DICOM while the model runs (0 = in this process)
    allow_for_processing: bool = False  # FOR PROCESSING images are skipped unless this is true
    progress: bool = True


@dataclass
class PredictConfig(InputConfig):
    """``mvmlm predict``: probabilities per breast (and per exam for four-view models)."""

    # table (predictions.csv + .parquet) | json (also predictions.json) | mirai (risk models: also
    # predictions_mirai.csv in Mirai's layout)
    format: str = "table"
    rois: str = ""  # lesion boxes CSV (image, xmin, ymin, xmax, ymax): needed by bundles predicting from crops
    # risk and co-attention models: clinical values CSV (a column per covariate / metadata field, e.g. age, density),
    # a row per exam_id (StudyInstanceUID) or image_id (SOPInstanceUID); its values win over the DICOM header's
    covariates: str = ""
    explain: bool = False  # also a Grad-CAM heatmap per view into OUT/heatmaps (columns <slot>_heatmap)
    prompts: str = ""  # MV-CLIP bundles: zero-shot prompts YAML (task: {class: [prompt, ...]}); '' = the bundle's


@dataclass
class EmbedConfig(InputConfig):
    """``mvmlm embed``: per-view and per-breast embeddings of the bundle's image tower."""

    out: str = MISSING  # output parquet file


@dataclass
class PushConfig:
    """``mvmlm push``: upload a bundle (checked first) to a Hugging Face Hub model repository."""

    model: str = MISSING  # bundle directory
    repo_id: str = MISSING  # org/name
    private: bool = False
    include_text_encoder: bool = False  # first copy the frozen text encoder into the bundle (loads without the Hub)
    commit_message: str = "Upload mvmlm model bundle"  # the token: HF_TOKEN or `hf auth login`, as huggingface_hub
