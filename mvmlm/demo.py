"""``mvmlm demo`` (``make demo``): the toolkit end to end on built-in synthetic data, on CPU, in minutes.

Stages: synthetic VinDr-format exams (real DICOM + VinDr tables) -> canonical table -> preprocessing cache ->
summary and a contact sheet PNG -> per-breast reports (template backend) -> tiny MV-CLIP pretraining -> linear
probe of the pretrained model vs random init -> a four-view classifier on the pretrained image tower -> risk
prediction on synthetic EMBED-format follow-up (and the same with each exam paired with another exam's follow-up:
the shuffled control) -> with ``ablation=true``, a tiny MV-MLM Table 1 (``mvmlm pretrain-grid``: CLIP, MV-CLIP,
MV-CLIP+Tr, each probed and fine-tuned) -> the four-view classifier saved as a bundle predicts exams it has never
seen (synthetic DICOM files of another dataset's format, its tables deleted: ``mvmlm predict``) -> ``report.html``.
Everything lands in one run directory (``out``). Later stages run through the command registry, as a user would run
the commands; each stage's config is ``configs/<stage>/demo.yaml`` (the ablation's
``configs/pretrain/grid_demo.yaml``) plus ``overrides.<stage>``.
The checks (``metrics.json`` ``checks``, the page's first table) say for each planted signal whether its 95 %
interval excludes chance.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.cli import commands
from mvmlm.config import config_file
from mvmlm.data import schema
from mvmlm.data.preprocess import FAILURES_FILE, TABLE_FILE, PreprocessParams, cache_folder, preprocess_table
from mvmlm.data.sources import read_source
from mvmlm.data.synthetic import write_synthetic
from mvmlm.demo_checks import checks, print_checks
from mvmlm.models.tiny_text import write_tiny_text_model
from mvmlm.rundir import RunDir

__all__ = ["DemoConfig", "main"]

log = logging.getLogger(__name__)
#: the config file of each model stage (found here, or else in the source tree)
STAGE_CONFIGS = {
    "pretrain": "configs/pretrain/demo.yaml",
    "probe": "configs/probe/demo.yaml",
    "multiview": "configs/multiview/demo.yaml",
    "risk": "configs/risk/demo.yaml",
    "ablation": "configs/pretrain/grid_demo.yaml",
}
STAGE_RUNS = [*STAGE_CONFIGS, "risk_shuffled", "bundle", "predict", "data_predict"]  # run folders the demo replaces


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
    risk_exams: int = 120  # truth exams of the risk stage (the EMBED writer keeps a screening cohort of ~70 %)
    ablation: bool = False  # also run a tiny MV-MLM Table 1 grid (configs/pretrain/grid_demo.yaml; minutes more)
    predict_format: str = "rsna"  # native format of the unseen exams the saved bundle predicts (tables deleted)
    predict_exams: int = 12
    show_predictions: int = 5  # first prediction rows printed
    overrides: dict[str, list[str]] = field(default_factory=dict)  # stage -> extra key=value for its command


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


class Timer:
    """Seconds per demo stage, printed as each stage ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        # CPU time too: on a machine shared with other work, wall time says little about an idle one
        print(f"[{name}: {self.seconds[name]:.1f} s, {time.process_time() - cpu:.1f} s CPU]")


def main(argv: list[str] | None = None) -> dict:
    """Run the demo; returns the summary that is also written to ``metrics.json``."""
    from mvmlm.commands import DEMO

    cfg = DEMO.parse(argv)
    # Tiny synthetic splits often hold one class: scikit-learn then warns on every confusion matrix.
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
    stages = [s for s in STAGE_CONFIGS if cfg.model_stages and (s != "ablation" or cfg.ablation)]
    for name in [cfg.reports_config, *(STAGE_CONFIGS[s] for s in stages)]:
        config_file(name)  # fail before any stage runs
    run = RunDir.create(cfg.out, cfg)
    for stage in STAGE_RUNS:  # the demo rebuilds its data: an earlier demo's trained runs are replaced
        shutil.rmtree(run.file(stage), ignore_errors=True)
    timer = Timer()
    root = run.file("data")
    params = PreprocessParams(height=cfg.height, width=cfg.width)
    with timer.stage("data"):
        log.info("1/10 writing %d synthetic %s exams to %s", cfg.exams, cfg.format, root)
        write_synthetic(
            cfg.format, root, exams=cfg.exams, seed=cfg.seed, height=cfg.source_height, width=cfg.source_width
        )
        log.info("2/10 reading the native tables into the canonical table")
        table = read_source(cfg.format, str(root), seed=cfg.seed)
        schema.write_table(table, run.file("table.parquet"))
        log.info("3/10 preprocessing %d images into the cache", len(table))
        cached = preprocess_table(table, root, run.file("cache"), params, workers=cfg.workers)
        folder = cache_folder(run.file("cache"), params, table)  # this table's: an earlier demo's may lie beside it
        failures = len(pd.read_csv(folder / FAILURES_FILE))
        log.info("4/10 summary and contact sheet")
        summary = summarize(table, failures)
        from mvmlm.data.contact_sheet import contact_sheet  # torch: only when the demo runs, not for --help

        sheet = contact_sheet(cached, run.file("contact_sheet.png"), exams=cfg.contact_exams)
    summary["contact_sheet"] = str(sheet)
    print(f"\nmvmlm demo: {summary['exams']} exams, {summary['images']} images, {failures} failures")
    for key in ("views", "splits", "birads", "density", "mass", "calcification", "malignant"):
        print(f"  {key:<13} {summary[key]}")
    print(f"  contact sheet: {sheet}")
    with timer.stage("reports"):
        summary["reports"] = write_reports(cfg, run)
    if cfg.model_stages:
        table = folder / TABLE_FILE
        with timer.stage("pretrain"):
            summary["pretrain"] = pretrain(cfg, run, table, run.file("reports"))
        with timer.stage("probe"):
            summary["probe"] = probe(cfg, run, table, summary["pretrain"]["model_dir"])
        with timer.stage("multiview"):
            summary["multiview"] = multiview(cfg, run, table, summary["pretrain"]["model_dir"])
        with timer.stage("risk"):
            summary["risk"] = risk(cfg, run, params, summary["pretrain"]["model_dir"])
        if cfg.ablation:
            with timer.stage("ablation"):
                summary["ablation"] = ablation(cfg, run, table, run.file("reports"))
        with timer.stage("predict"):
            summary["predict"] = predict(cfg, run, Path(summary["multiview"]["run"]) / "best")
        summary["checks"] = checks(summary)
        print_checks(summary["checks"])
    summary["timings"] = timer.seconds
    run.write_metrics(summary)
    print("\ntime per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in timer.seconds.items()))
    print(f"  total {sum(timer.seconds.values()):.1f} s; run directory: {run.path}")
    summary["report"] = str(run_command("report", [str(run.path)]))  # prints the page's path, the last line
    return summary


def run_command(name: str, argv: list[str]):
    """Run an ``mvmlm`` command by name, as the umbrella CLI does (found through its entry point: the core imports
    no application package)."""
    return commands()[name].run(argv)


def write_reports(cfg: DemoConfig, run: RunDir) -> dict:
    """Stage 5: reports per breast with the template backend; prints a few."""
    out = run.file("reports")
    log.info("5/10 writing per-breast reports (%s)", cfg.reports_config)
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
        print(f"  [{row.laterality} breast, {row.split} split] {row.report}")  # no identifiers
    return {
        "reports": int(len(corpus)),
        "breasts": int(corpus.breast_id.nunique()),
        "corpus": str(out),
        "rejections": metrics["rejections"],
    }


def stage_args(cfg: DemoConfig, stage: str, args: list[str]) -> list[str]:
    """The command line of a model stage: its demo config, the demo's settings, then ``overrides.<stage>``."""
    return ["--config", config_file(STAGE_CONFIGS[stage.split("_")[0]]), *args, *cfg.overrides.get(stage, [])]


def pretrain_settings(cfg: DemoConfig, run: RunDir) -> list[str]:
    """What the demo sets in every pretraining (its own and the ablation's): text model, image size, steps and
    ``overrides.pretrain``."""
    return [
        f"model.text.model={run.file('tiny_text_model')}",
        f"model.image.image_size=[{cfg.height},{cfg.width}]",
        f"train.max_steps={cfg.pretrain_steps}",
        *cfg.overrides.get("pretrain", []),
    ]


def pretrain(cfg: DemoConfig, run: RunDir, table: Path, corpus: Path) -> dict:
    """Stage 6: a tiny MV-CLIP on the synthetic breasts and reports (tiny random text encoder: no download)."""
    log.info("6/10 pretraining a tiny MV-CLIP (%d steps)", cfg.pretrain_steps)
    texts = sorted(set(pd.read_parquet(sorted((corpus / "parts").glob("part-*.parquet"))).report))
    write_tiny_text_model(run.file("tiny_text_model"), texts)
    args = [f"data.table={table}", f"data.corpus={corpus}", f"out={run.file('pretrain')}", *pretrain_settings(cfg, run)]
    res = run_command("pretrain", ["--config", config_file(STAGE_CONFIGS["pretrain"]), *args])
    before, after = res["before"]["val"], res["after"]["val"]
    print(
        f"\npretraining: loss {res['losses'][0]:.2f} -> {res['losses'][-1]:.2f}; held-out image->text R@5 "
        f"{before['i2t_R@5']:.2f} -> {after['i2t_R@5']:.2f} (chance {after['chance_R@5']:.2f})"
    )
    return {
        "loss_first": res["losses"][0],
        "loss_last": res["losses"][-1],
        "before": before,
        "after": after,
        "model_dir": res["model_dir"],
    }


def probe(cfg: DemoConfig, run: RunDir, table: Path, model_dir: str) -> dict:
    """Stage 7: linear probe of the pretrained tiny model vs its random init (prints the table)."""
    log.info("7/10 linear probe: pretrained vs random init")
    args = [
        f"data.table={table}",
        f"encoders.mvmlm.checkpoint={model_dir}",
        f"out={run.file('probe')}",
        f"embed.cache={run.file('embeddings')}",
    ]
    metrics = run_command("probe", stage_args(cfg, "probe", args))
    return {"run": str(run.file("probe")), "summary": metrics["summary"], "results": metrics["results"]}


def multiview(cfg: DemoConfig, run: RunDir, table: Path, model_dir: str) -> dict:
    """Stage 8: a tiny four-view classifier on the pretrained image tower (BI-RADS 4-5 stands in for malignancy:
    VinDr has no pathology)."""
    log.info("8/10 four-view classifier on the pretrained image tower")
    args = [
        f"data.table={table}",
        f"data.image_size=[{cfg.height},{cfg.width}]",
        f"model.checkpoint={model_dir}",
        f"out={run.file('multiview')}",
    ]
    results = run_command("multiview", stage_args(cfg, "multiview", args))
    print("\n" + "\n".join(results["summary_lines"]))
    return {"run": str(run.file("multiview")), "best_epoch": results["best_epoch"], "test": results["eval"]["test"]}


def shuffled_follow_up(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``table`` with each exam given the follow-up of another exam of its split: images and outcomes unpaired."""
    keys = ["dataset", "patient_id", "exam_id"]
    follow_up = ["years_to_cancer", "years_to_last_followup"]
    exams = table.drop_duplicates(keys)[[*keys, "split", *follow_up]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    for _, rows in exams.groupby("split").groups.items():
        exams.loc[rows, follow_up] = exams.loc[rng.permutation(rows), follow_up].to_numpy()
    return table.drop(columns=follow_up).merge(exams[[*keys, *follow_up]], on=keys, how="left")[table.columns]


def risk(cfg: DemoConfig, run: RunDir, params: PreprocessParams, model_dir: str) -> dict:
    """Stage 9: risk prediction on synthetic EMBED-format exams (VinDr has no follow-up) from the pretrained
    embeddings, then the same with shuffled follow-up (the control a real signal must beat)."""
    log.info("9/10 risk prediction on a synthetic EMBED-format screening cohort of %d truth exams", cfg.risk_exams)
    root = run.file("data_embed")
    write_synthetic(
        "embed", root, exams=cfg.risk_exams, seed=cfg.seed, height=cfg.source_height, width=cfg.source_width
    )
    table = read_source("embed", str(root), seed=cfg.seed)
    preprocess_table(table, root, run.file("cache_embed"), params, workers=cfg.workers)
    cached = cache_folder(run.file("cache_embed"), params, table) / TABLE_FILE
    shuffled = cached.with_name("table_shuffled_follow_up.parquet")  # beside the cached images it points at
    shuffled_follow_up(pd.read_parquet(cached), cfg.seed).to_parquet(shuffled, index=False)
    results = {}
    for name, path in (("risk", cached), ("risk_shuffled", shuffled)):
        print(f"\n{name}: synthetic EMBED follow-up (test split, patient-bootstrap 95 % CIs):")
        args = [
            f"out={run.file(name)}",
            f"data.table={path}",
            f"encoder.checkpoint={model_dir}",
            f"embed.cache={run.file('embeddings')}",
        ]
        results[name] = run_command("risk", stage_args(cfg, name, args))["models"]
    return {"run": str(run.file("risk")), "models": results["risk"], "shuffled": results["risk_shuffled"]}


def ablation(cfg: DemoConfig, run: RunDir, table: Path, corpus: Path) -> dict:
    """A tiny MV-MLM Table 1 (``mvmlm pretrain-grid``): CLIP, MV-CLIP and MV-CLIP+Tr pretrained as in stage 6, each
    probed and fine-tuned on the demo's breasts (prints the table)."""
    log.info("9b/10 ablation: MV-MLM Table 1 protocol (CLIP, MV-CLIP, MV-CLIP+Tr)")
    args = [
        f"table={table}",
        f"corpus={corpus}",
        f"pretrain={json.dumps(pretrain_settings(cfg, run))}",
        f"out={run.file('ablation')}",
    ]
    result = run_command("pretrain-grid", stage_args(cfg, "ablation", args))
    return {"run": str(run.file("ablation")), "failed": result["failed"], "results": result["results"]}


def predict(cfg: DemoConfig, run: RunDir, model: Path) -> dict:
    """Last stage: the four-view classifier saved as a bundle (``bundle/``) predicts exams it has never seen: synthetic
    DICOM files in another dataset's layout with its tables deleted, grouped into exams from their headers alone."""
    import mvmlm

    log.info("10/10 saving the four-view classifier as a bundle; predicting unseen %s DICOM files", cfg.predict_format)
    bundle = run.file("bundle")
    mvmlm.load_model(model).save_pretrained(bundle)
    root = run.file("data_predict")
    write_synthetic(
        cfg.predict_format,
        root,
        exams=cfg.predict_exams,
        seed=cfg.seed + 1,
        height=cfg.source_height,
        width=cfg.source_width,
    )
    for path in [p for p in root.rglob("*") if p.is_file() and p.suffix != ".dcm"]:
        path.unlink()  # the dataset's tables and the synthetic truth: only DICOM files are left
    out = run.file("predict")
    args = ["--model", str(bundle), "--input", str(root), "--out", str(out), f"workers={cfg.workers}", "progress=false"]
    args.append("--explain")  # a Grad-CAM heatmap per view in predict/heatmaps/, shown in the report
    run_command("predict", args)
    rows = pd.read_csv(out / "predictions.csv")
    skipped = pd.read_csv(out / "skipped.csv")
    breasts = rows[rows.level == "breast"]
    columns = ["laterality", "views", "missing_views", *(c for c in rows.columns if c.startswith("prob_"))]
    levels = ", ".join(f"{n} {level}s" for level, n in rows.level.value_counts().items())
    print(f"\npredict: {levels} from unseen {cfg.predict_format}-format DICOM files; {len(skipped)} files skipped")
    print(f"  ({out / 'skipped.csv'}); the first breasts of {out / 'predictions.csv'} (ids left out):")
    print(breasts[columns].head(cfg.show_predictions).to_string(index=False, na_rep="", float_format="{:.3f}".format))
    print(f"  heatmaps of every view: {out / 'heatmaps'}")
    return {"run": str(out), "bundle": str(bundle), "rows": int(len(rows)), "skipped": int(len(skipped))}
