"""The typed config of ``mvmlm pretrain-grid`` (the MV-MLM paper's Table 1 protocol); torch-free.

Rows are encoders x pretraining variants; each row is pretrained with ``mvmlm pretrain`` (the encoder's config, then
the variant's overlay, then ``pretrain``), then evaluated with ``mvmlm probe`` and ``mvmlm finetune`` on each of
``evaluations`` (a table and its tasks) at ``fractions`` over ``seeds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mvmlm.config import MISSING

__all__ = ["PROTOCOLS", "GridEncoder", "GridVariant", "GridEvaluation", "StageArgs", "PretrainGridConfig"]

#: evaluation protocol -> the command that runs it
PROTOCOLS = {"probe": "probe", "finetune": "finetune"}


@dataclass
class GridEncoder:
    """An image encoder: its pretraining config file (which also sets the image size and the text tower)."""

    key: str = MISSING  # folder name, e.g. resnet34
    name: str = ""  # shown in the table ('' = key)
    config: str = MISSING  # e.g. configs/pretrain/mvclip_resnet34.yaml


@dataclass
class GridVariant:
    """A pretraining variant: a config overlay given after the encoder's config."""

    key: str = MISSING  # folder name, e.g. mv_clip_tr
    name: str = ""  # shown in the table ('' = key)
    config: str = MISSING  # e.g. configs/pretrain/variants/mv_clip_tr.yaml


@dataclass
class GridEvaluation:
    """A table the rows are evaluated on and its tasks (MV-MLM: mass and calcification on VinDr, malignancy on RSNA)."""

    table: str = ""  # cached image table; '' = the pretraining table
    tasks: list[str] = field(default_factory=list)
    task_classes: dict[str, list[str]] = field(default_factory=dict)  # e.g. {birads: ["1,2,3", "4,5"]}; unused: ignored


@dataclass
class StageArgs:
    """One evaluation command's arguments: config files (in order), then ``key=value`` overrides."""

    configs: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def _variants() -> list[GridVariant]:
    return [
        GridVariant("clip", "CLIP", "configs/pretrain/variants/clip.yaml"),
        GridVariant("mv_clip", "MV-CLIP", "configs/pretrain/variants/mv_clip.yaml"),
        GridVariant("mv_clip_tr", "MV-CLIP+Tr", "configs/pretrain/variants/mv_clip_tr.yaml"),
    ]


@dataclass
class PretrainGridConfig:
    """``mvmlm pretrain-grid``: pretrain every encoder x variant, probe and fine-tune each, one results table."""

    table: str = MISSING  # cached image table (table.parquet of `mvmlm preprocess`): pretraining and evaluation
    corpus: str = MISSING  # report corpus folder of `mvmlm reports`
    encoders: list[GridEncoder] = field(default_factory=list)
    variants: list[GridVariant] = field(default_factory=_variants)
    pretrain: list[str] = field(default_factory=list)  # key=value for every pretraining (after encoder + variant)
    probe: StageArgs = field(default_factory=StageArgs)  # `mvmlm probe` settings (its encoder is set by the grid)
    finetune: StageArgs = field(default_factory=StageArgs)  # `mvmlm finetune` settings (ditto)
    evaluations: dict[str, GridEvaluation] = field(default_factory=dict)  # name -> table and tasks
    protocols: list[str] = field(default_factory=lambda: ["probe", "finetune"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])  # of the training patients
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # label-fraction draws (and fine-tuning seeds)
    only: list[str] = field(default_factory=list)  # globs on <encoder>/<variant>, e.g. ['resnet34/*']
    out: str = "runs/pretrain_grid"
