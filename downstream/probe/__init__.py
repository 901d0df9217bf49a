"""``mvmlm probe`` / ``python -m downstream.probe``:
linear probe of frozen encoders (checkpoint, random init, ImageNet) at label fractions."""

from mvmlm.cli import Command

COMMAND = Command(
    name="probe",
    summary="linear probe of frozen encoders (checkpoint, random init, ImageNet) at label fractions",
    main="downstream.probe.run:main",
    config="downstream.probe.config:ProbeConfig",
    description=(
        "Embeds every breast with each configured encoder (frozen), fits a logistic-regression probe per task,\n"
        "label fraction and seed on the table's train split, selects C on val and scores test once.\n"
        "\n"
        "  mvmlm probe --config configs/probe/vindr.yaml data.table=CACHE/table.parquet \\\n"
        "      encoders.mvmlm.checkpoint=runs/pretrain/model"
    ),
)
