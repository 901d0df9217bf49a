"""``mvmlm dual-stream`` / ``python -m downstream.dual_stream``:
Mammo-Mamba dual-stream (lesion crop + whole image) benign vs malignant."""

from mvmlm.cli import Command

COMMAND = Command(
    name="dual-stream",
    summary="Mammo-Mamba dual-stream (lesion crop + whole image) benign vs malignant",
    main="downstream.dual_stream.run:main",
    config="downstream.dual_stream.config:MammoMambaConfig",
    description=(
        "Trains the Mammo-Mamba dual-stream classifier (lesion crops made by preprocessing + whole images,\n"
        "CC + MLO) on the table's train split, keeps the best validation AUC, reports test metrics with CIs.\n"
        "\n"
        "  mvmlm dual-stream --config configs/dual_stream/dual_stream.yaml \\\n"
        "      data.table=CACHE/table.parquet"
    ),
    flags=(("resume", "train.resume"),),
)
