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

GRID = Command(
    name="pretrain-grid",
    summary="the MV-MLM paper's Table 1: pretraining variants x probe / fine-tune at label fractions, one table",
    main="pretrain.grid:main",
    config="pretrain.grid_config:PretrainGridConfig",
    description=(
        "Pretrains every encoder x variant (CLIP, MV-CLIP, MV-CLIP+Tr), evaluates each model with the linear probe\n"
        "and fine-tuning on the tasks at the label fractions over the seeds, and writes OUT/results.md (tables\n"
        "shaped like the paper's: test AUC mean +- sd over seeds, and 95 % CIs) and results.csv. Rerunning it\n"
        "skips finished units with the same settings and continues interrupted ones.\n\n"
        "  mvmlm pretrain-grid --config configs/pretrain/grid_table1.yaml \\\n"
        "      table=CACHE/table.parquet corpus=runs/reports"
    ),
)
