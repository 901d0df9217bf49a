"""The ``mvmlm reports`` command (entry point of the group ``mvmlm.commands``); a light module."""

from mvmlm.cli import Command

__all__ = ["COMMAND"]

COMMAND = Command(
    name="reports",
    summary="write synthetic per-breast radiology reports from a canonical table",
    main="report_synthesis.run:main",
    config="report_synthesis.run:ReportsConfig",
    description=(
        "Canonical image table in -> one report per breast (variants: k per breast) -> a corpus of parquet parts\n"
        "+ manifest in out. Every generation is cleaned and fact-checked; a rejected one is retried with a new\n"
        "seed up to max_attempts, then replaced by the template report with the reason recorded. Resumable;\n"
        "--shard-id / --num-shards split the breasts between processes or machines.\n\n"
        "  mvmlm reports --config configs/reports/vllm.yaml table=tables/vindr.parquet out=runs/reports"
    ),
    flags=(("shard-id", "shard_id"), ("num-shards", "num_shards")),
)
