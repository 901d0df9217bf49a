"""``mvmlm demo`` (``make demo``): the toolkit end to end on built-in synthetic data, on CPU, in minutes.

Stages: synthetic VinDr-format exams (real DICOM + VinDr tables) -> canonical table -> preprocessing cache ->
summary and a contact sheet PNG -> per-breast reports (template backend) -> tiny MV-CLIP pretraining -> linear
probe of the pretrained model vs random init -> tiny four-view classifier -> risk prediction on synthetic
EMBED-format follow-up. Everything lands in one run directory (``out``). Later stages run through the command
registry, as a user would run the commands.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mvmlm.cli import commands
from mvmlm.config import ConfigError
from mvmlm.data import schema
from mvmlm.data.preprocess import FAILURES_FILE, TABLE_FILE, PreprocessParams, cache_folder, preprocess_table
from mvmlm.data.sources import read_source
from mvmlm.data.synthetic import write_synthetic
from mvmlm.models.tiny_text import write_tiny_text_model
from mvmlm.rundir import RunDir

__all__ = ["DemoConfig", "main"]

log = logging.getLogger(__name__)
SOURCE_TREE = Path(__file__).resolve().parents[1]  # configs/ lives beside the packages in a source checkout
#: the config file of each model stage (found here, or else in the source tree)
STAGE_CONFIGS = {
    "pretrain": "configs/pretrain/tiny_cpu.yaml",
    "probe": "configs/probe/tiny.yaml",
    "multiview": "configs/multiview/tiny.yaml",
    "risk": "configs/risk/tiny.yaml",
}


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # run directory
    format: str = "vindr"  # native format of the synthetic dataset
    exams: int = 32
    seed: int = 0
    source_height: int = 384  # synthetic DICOM size
    source_width: int = 256
    height: int = 128  # preprocessed cache size (H x W)
    width: int = 80
    workers: int = 2
    contact_exams: int = 4  # exams drawn in the contact sheet
    reports_config: str = "configs/reports/template.yaml"  # report synthesis config (template backend)
    model_stages: bool = True  # pretraining, linear probe and four-view classifier (the slow part, ~minutes)
    pretrain_steps: int = 40
    risk_exams: int = 120  # synthetic EMBED-format exams (with risk follow-up) for the risk stage


def summarize(table: pd.DataFrame, failures: int) -> dict:
    """Counts a user checks first: exams, images, views, labels, failures."""
    breasts = table.drop_duplicates(["dataset", "patient_id", "exam_id", "laterality"])

    def counts(column: str) -> dict:
        return {str(k): int(v) for k, v in breasts[column].value_counts(dropna=False).sort_index().items()}

    return {
        "exams": int(table.exam_id.nunique()),
        "images": int(len(table)),
        "views": {str(k): int(v) for k, v in table.view.value_counts().items()},
        "splits": counts("split"),
        "birads": counts("birads"),
        "density": counts("density"),
        "mass": counts("mass"),
        "calcification": counts("calcification"),
        "malignant": counts("malignant"),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the demo; returns the summary that is also written to ``metrics.json``."""
    from mvmlm.commands import DEMO

    cfg = DEMO.parse(argv)
    # Tiny synthetic splits often hold one class: scikit-learn then warns on every confusion matrix.
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
    for name in [cfg.reports_config, *(STAGE_CONFIGS.values() if cfg.model_stages else [])]:
        config_file(name)  # fail before any stage runs
    run = RunDir.create(cfg.out, cfg)
    for stage in STAGE_CONFIGS:  # the demo rebuilds its data: an earlier demo's trained runs are replaced
        shutil.rmtree(run.file(stage), ignore_errors=True)
    root = run.file("data")
    log.info("1/9 writing %d synthetic %s exams to %s", cfg.exams, cfg.format, root)
    write_synthetic(cfg.format, root, exams=cfg.exams, seed=cfg.seed, height=cfg.source_height, width=cfg.source_width)
    log.info("2/9 reading the native tables into the canonical table")
    table = read_source(cfg.format, str(root), seed=cfg.seed)
    schema.write_table(table, run.file("table.parquet"))
    log.info("3/9 preprocessing %d images into the cache", len(table))
    params = PreprocessParams(height=cfg.height, width=cfg.width)
    cached = preprocess_table(table, root, run.file("cache"), params, workers=cfg.workers)
    failures = len(pd.read_csv(cache_folder(run.file("cache"), params) / FAILURES_FILE))
    log.info("4/9 summary and contact sheet")
    summary = summarize(table, failures)
    from mvmlm.data.contact_sheet import contact_sheet  # torch: only when the demo runs, not for --help

    sheet = contact_sheet(cached, run.file("contact_sheet.png"), exams=cfg.contact_exams)
    summary["contact_sheet"] = str(sheet)
    run.write_metrics(summary)
    print(f"\nmvmlm demo: {summary['exams']} exams, {summary['images']} images, {failures} failures")
    for key in ("views", "splits", "birads", "density", "mass", "calcification", "malignant"):
        print(f"  {key:<13} {summary[key]}")
    print(f"  contact sheet: {sheet}")
    summary["reports"] = write_reports(cfg, run)
    if cfg.model_stages:
        table = cache_folder(run.file("cache"), params) / TABLE_FILE
        summary["pretrain"] = pretrain(cfg, run, table, run.file("reports"))
        summary["probe"] = probe(run, table, summary["pretrain"]["model_dir"])
        summary["multiview"] = multiview(cfg, run, table)
        summary["risk"] = risk(cfg, run, params, summary["pretrain"]["model_dir"])
    run.write_metrics(summary)
    print(f"  run directory: {run.path}")
    return summary


def config_file(name: str) -> str:
    """``name`` as given when it exists, else (if relative) resolved in the source tree; ConfigError if neither."""
    path = Path(name)
    if path.is_file():
        return str(path)
    found = SOURCE_TREE / path
    if path.is_absolute() or not found.is_file():
        raise ConfigError(f"config file not found: {name} (neither here nor in the source tree {SOURCE_TREE})")
    return str(found)


def run_command(name: str, argv: list[str]):
    """Run an ``mvmlm`` command by name, as the umbrella CLI does (found through its entry point: the core imports
    no application package)."""
    return commands()[name].run(argv)


def write_reports(cfg: DemoConfig, run: RunDir) -> dict:
    """Stage 5: reports per breast with the template backend; prints a few."""
    out = run.file("reports")
    log.info("5/9 writing per-breast reports (%s)", cfg.reports_config)
    metrics = run_command(
        "reports",
        [
            "--config",
            config_file(cfg.reports_config),
            f"table={run.file('table.parquet')}",
            f"out={out}",
            "progress=false",
        ],
    )
    corpus = pd.read_parquet(sorted((out / "parts").glob("part-*.parquet")))
    print(f"\nreports: {len(corpus)} for {corpus.breast_id.nunique()} breasts, e.g.")
    for _, row in corpus.drop_duplicates("breast_id").head(2).iterrows():
        print(f"  [{row.breast_id}] {row.report}")
    return {
        "reports": int(len(corpus)),
        "breasts": int(corpus.breast_id.nunique()),
        "corpus": str(out),
        "rejections": metrics["rejections"],
    }


def pretrain(cfg: DemoConfig, run: RunDir, table: Path, corpus: Path) -> dict:
    """Stage 6: a tiny MV-CLIP on the synthetic breasts and reports (tiny random text encoder: no download)."""
    log.info("6/9 pretraining a tiny MV-CLIP (%d steps)", cfg.pretrain_steps)
    texts = sorted(set(pd.read_parquet(sorted((corpus / "parts").glob("part-*.parquet"))).report))
    bert = write_tiny_text_model(run.file("tiny_text_model"), texts)
    res = run_command(
        "pretrain",
        [
            "--config",
            config_file(STAGE_CONFIGS["pretrain"]),
            f"data.table={table}",
            f"data.corpus={corpus}",
            f"model.text.model={bert}",
            "model.text.hidden_size=32",
            f"out={run.file('pretrain')}",
            f"model.image.image_size=[{cfg.height},{cfg.width}]",
            "model.image.encoder=timm:test_resnet",
            f"train.max_steps={cfg.pretrain_steps}",
            "optim.lr=1e-2",
            "optim.warmup_steps=3",
            "data.val_split=test",
        ],
    )
    before, after = res["before"]["train"], res["after"]["train"]
    print(
        f"\npretraining: loss {res['losses'][0]:.2f} -> {res['losses'][-1]:.2f}; train image->text R@5 "
        f"{before['i2t_R@5']:.2f} -> {after['i2t_R@5']:.2f} (chance {after['chance_R@5']:.2f})"
    )
    return {
        "loss_first": res["losses"][0],
        "loss_last": res["losses"][-1],
        "before": before,
        "after": after,
        "model_dir": res["model_dir"],
    }


def probe(run: RunDir, table: Path, model_dir: str) -> dict:
    """Stage 7: linear probe of the pretrained tiny model vs its random init at 1 / 10 / 100 % (prints the table)."""
    log.info("7/9 linear probe: pretrained vs random init")
    metrics = run_command(
        "probe",
        [
            "--config",
            config_file(STAGE_CONFIGS["probe"]),
            f"data.table={table}",
            f"encoders.mvmlm.checkpoint={model_dir}",
            f"out={run.file('probe')}",
            f"embed.cache={run.file('embeddings')}",
        ],
    )
    return {"run": str(run.file("probe")), "summary": metrics["summary"]}


def multiview(cfg: DemoConfig, run: RunDir, table: Path) -> dict:
    """Stage 8: a tiny four-view classifier (BI-RADS 4-5 stands in for malignancy: VinDr has no pathology)."""
    log.info("8/9 four-view classifier")
    results = run_command(
        "multiview",
        [
            "--config",
            config_file(STAGE_CONFIGS["multiview"]),
            f"data.table={table}",
            "data.label_from=birads_4_5",
            f"data.image_size=[{cfg.height},{cfg.width}]",
            f"out={run.file('multiview')}",
        ],
    )
    print("\n" + "\n".join(results["summary_lines"]))
    return {"run": str(run.file("multiview")), "best_epoch": results["best_epoch"]}


def risk(cfg: DemoConfig, run: RunDir, params: PreprocessParams, model_dir: str) -> dict:
    """Stage 9: risk prediction on synthetic EMBED-format exams (VinDr has no follow-up), pretrained embeddings."""
    log.info("9/9 risk prediction on %d synthetic EMBED-format exams", cfg.risk_exams)
    root = run.file("data_embed")
    write_synthetic(
        "embed", root, exams=cfg.risk_exams, seed=cfg.seed, height=cfg.source_height, width=cfg.source_width
    )
    table = read_source("embed", str(root), seed=cfg.seed)
    preprocess_table(table, root, run.file("cache_embed"), params, workers=cfg.workers)
    print("\nrisk prediction on synthetic EMBED follow-up (test split, patient-bootstrap 95 % CIs):")
    result = run_command(
        "risk",
        [
            "--config",
            config_file(STAGE_CONFIGS["risk"]),
            f"out={run.file('risk')}",
            f"data.table={cache_folder(run.file('cache_embed'), params) / TABLE_FILE}",
            "encoder.source=mvclip",
            f"encoder.checkpoint={model_dir}",
        ],
    )
    return {"run": str(run.file("risk")), "models": result["models"]}
