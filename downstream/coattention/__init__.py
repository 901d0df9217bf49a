"""``mvmlm coattention`` / ``python -m downstream.coattention``:
co-attention of images and metadata text vs image/text-only baselines."""

from mvmlm.cli import Command

COMMAND = Command(
    name="coattention",
    summary="co-attention of images and metadata text vs image/text-only baselines",
    main="downstream.coattention.run:main",
    config="downstream.coattention.config:CoAttentionConfig",
    description=(
        "Trains every configured fusion (co-attention, image-only, text-only, late concatenation) of a breast's\n"
        "images and its clinical metadata written as text, and scores them in one table.\n"
        "\n"
        "  mvmlm coattention --config configs/coattention/vindr.yaml data.table=CACHE/table.parquet"
    ),
    flags=(("resume", "train.resume"),),
)
