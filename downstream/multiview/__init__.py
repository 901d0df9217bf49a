"""``mvmlm multiview`` / ``python -m downstream.multiview``:
four-view BI-RADS + malignancy classifier (hybrid CNN-VSSM paper)."""

from mvmlm.cli import Command

COMMAND = Command(
    name="multiview",
    summary="four-view BI-RADS + malignancy classifier (hybrid CNN-VSSM paper)",
    main="downstream.multiview.run:main",
    config="downstream.multiview.config:MultiviewConfig",
    description=(
        "Trains the four-view multi-task classifier on the table's train split, keeps the best validation\n"
        "epoch, evaluates val and test (AUC / F1-macro per task with bootstrap CIs, view attention).\n"
        "\n"
        "  mvmlm multiview --config configs/multiview/paper.yaml data.table=CACHE/table.parquet"
    ),
    flags=(("resume", "train.resume"),),
)

GRID = Command(
    name="multiview-grid",
    summary="the four-view classifier's grid of configurations (paper Tables 2-4) in one results table",
    main="downstream.multiview.grid:main",
    config="downstream.multiview.config:GridConfig",
    description=(
        "Trains every configuration of a grid (backbones x multi / single task x settings), each in its\n"
        "own run directory, and writes results.md / results.csv; a finished run is reused only with equal settings.\n"
        "\n"
        "  mvmlm multiview-grid --config configs/multiview/grid_paper.yaml \\\n"
        "      run.data.table=CACHE/table.parquet"
    ),
)
