"""``mvmlm zeroshot`` / ``python -m downstream.zeroshot``:
zero-shot breast classification with class prompt ensembles."""

from mvmlm.cli import Command

COMMAND = Command(
    name="zeroshot",
    summary="zero-shot breast classification with class prompt ensembles",
    main="downstream.zeroshot.run:main",
    config="downstream.zeroshot.config:ZeroShotConfig",
    description=(
        "Scores every breast of the table's test split against the text embeddings of each class's prompts\n"
        "with a pretrained MV-CLIP model; no training.\n"
        "\n"
        "  mvmlm zeroshot --config configs/zeroshot/vindr.yaml data.table=CACHE/table.parquet \\\n"
        "      checkpoint=runs/pretrain/model"
    ),
)
