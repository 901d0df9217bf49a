"""``mvmlm risk`` / ``python -m downstream.risk``:
breast-cancer risk: Coxnet and additive-hazard head; C-index, 2y/5y AUC."""

from mvmlm.cli import Command

COMMAND = Command(
    name="risk",
    summary="breast-cancer risk: Coxnet and additive-hazard head; C-index, 2y/5y AUC",
    main="downstream.risk.run:main",
    config="downstream.risk.config:RiskConfig",
    description=(
        "Embeds each exam with an encoder and fits the configured risk models (Coxnet, Mirai's additive-hazard\n"
        "head) on image embeddings, clinical covariates (risk.covariates) or both (risk.inputs) on the train split,\n"
        "calibrates them per horizon on validation and reports on test: C-index, time-dependent AUC, calibration\n"
        "before / after, the three-way table image / clinical / combined (comparison.md, comparison.csv) and\n"
        "bundles that `mvmlm predict` runs on DICOM exams (models/<model>/).\n"
        "\n"
        "  mvmlm risk --config configs/risk/embed.yaml data.table=CACHE/table.parquet"
    ),
)
