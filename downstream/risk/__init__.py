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
        "head) on the table's train split; reports C-index and time-dependent AUC on test.\n"
        "\n"
        "  mvmlm risk --config configs/risk/embed.yaml data.table=CACHE/table.parquet"
    ),
)
