"""``mvmlm finetune`` / ``python -m downstream.finetune``:
fine-tune an image tower + linear head at label fractions."""

from mvmlm.cli import Command

COMMAND = Command(
    name="finetune",
    summary="fine-tune an image tower + linear head at label fractions",
    main="downstream.finetune.run:main",
    config="downstream.finetune.config:FinetuneConfig",
    description=(
        "Fine-tunes each configured encoder with a linear head per task, label fraction and seed on the table's\n"
        "train split (the one training engine: best validation epoch kept, early stop), then scores test once.\n"
        "Finished units are recorded; --resume latest reuses them after an interruption.\n"
        "\n"
        "  mvmlm finetune --config configs/finetune/vindr.yaml data.table=CACHE/table.parquet"
    ),
    flags=(("resume", "train.resume"),),
)
