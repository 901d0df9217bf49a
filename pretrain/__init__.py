"""MV-MLM pretraining: ``mvmlm pretrain`` / ``python -m pretrain`` / ``accelerate launch -m pretrain``."""

from mvmlm.cli import Command

COMMAND = Command(
    name="pretrain",
    summary="MV-CLIP pretraining on breasts + reports (also `accelerate launch -m pretrain`)",
    main="pretrain.train:main",
    config="pretrain.config:PretrainConfig",
    description=(
        "Aligns an image encoder (CC and MLO views of a breast) with a frozen text tower (its report) on the\n"
        "table's train split, with image-text and CC-vs-MLO contrastive losses; negatives span every process\n"
        "and accumulation micro-batch. Saves the training state every train.save_every steps; --resume latest\n"
        "continues at the same place. The model lands in OUT/model (model.safetensors + config.yaml).\n\n"
        "  accelerate launch -m pretrain --config configs/pretrain/mvclip_resnet34.yaml \\\n"
        "      data.table=CACHE/table.parquet data.corpus=runs/reports"
    ),
    flags=(("resume", "train.resume"),),
)
