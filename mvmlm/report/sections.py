"""The page's sections, each read from the files of one kind of run directory (found by the files it holds).

A reader takes a folder and returns the template's context for its section, or None when the folder is not of
its kind; :func:`collect` tries every reader on the run directory and on its sub-folders (a demo's stages).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mvmlm.report.evidence import Verdict, above_chance, fmt, fmt_ci, wilson_interval
from mvmlm.report.figures import file_uri, line_plot

__all__ = ["Section", "SECTIONS", "collect"]

DICOM_UID = r"\b\d+(?:\.\d+){3,}\b"  # a DICOM UID (digits and dots) as predict's skip reasons may quote it


@dataclass(frozen=True)
class Section:
    kind: str  # also the template block that draws it
    title: str
    read: Callable[[Path, Any], dict | None]


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text()) or {} if (folder / "config.yaml").is_file() else {}


def _images(folder: Path, names: list[str]) -> list[dict]:
    return [{"name": n, "uri": uri} for n in names if (uri := file_uri(folder / n))]


def read_data(folder: Path, cfg: Any) -> dict | None:
    """The demo's own summary: counts, the contact sheet, time per stage."""
    metrics = _json(folder / "metrics.json")
    if not metrics or "exams" not in metrics or "images" not in metrics:
        return None
    counts = [
        {"name": key, "text": ", ".join(f"{k}: {v}" for k, v in metrics[key].items())}
        for key in ("views", "splits", "birads", "density", "mass", "calcification", "malignant")
        if isinstance(metrics.get(key), dict)
    ]
    timings = metrics.get("timings") or {}
    return {
        "exams": metrics["exams"],
        "images": metrics["images"],
        "failures": metrics.get("failures", 0),
        "counts": counts,
        "contact_sheet": file_uri(folder / "contact_sheet.png"),
        "timings": [{"stage": k, "seconds": f"{v:.1f}"} for k, v in timings.items()],
        "total_seconds": f"{sum(timings.values()):.1f}" if timings else "",
        "checks": metrics.get("checks", []),
    }


def read_reports(folder: Path, cfg: Any) -> dict | None:
    """A report corpus: its size and example reports beside the facts they were written from."""
    manifest, parts = _json(folder / "manifest.json"), sorted((folder / "parts").glob("part-*.parquet"))
    if manifest is None or not parts:
        return None
    corpus = pd.read_parquet(parts, columns=["breast_id", "variant", "report", "facts", "source"])
    first = corpus[corpus.variant == 0].drop_duplicates("breast_id")
    facts = first.facts.map(json.loads)
    kinds = facts.map(lambda f: (bool(f.get("mass")), bool(f.get("calcification")), f.get("birads")))
    chosen = first[~kinds.duplicated()].head(cfg.examples)  # differing findings first
    examples = [
        {
            "number": i + 1,
            "report": row.report,
            "facts": [{"key": k, "value": v} for k, v in json.loads(row.facts).items() if v not in (None, [], "")],
        }
        for i, row in enumerate(chosen.itertuples())
    ]
    return {
        "reports": len(corpus),
        "breasts": int(corpus.breast_id.nunique()),
        "backend": manifest.get("backend", ""),
        "examples": examples,
    }


def read_pretrain(folder: Path, cfg: Any) -> dict | None:
    """Pretraining: loss and retrieval curves, retrieval before / after with a Wilson interval against chance."""
    metrics = _json(folder / "metrics.json")
    if not metrics or "losses" not in metrics or "before" not in metrics:
        return None
    steps = _jsonl(folder / "train_log.jsonl")
    loss_series = [
        (key, [s["step"] for s in steps if key in s], [s[key] for s in steps if key in s])
        for key in ("loss", "image_text", "image_image")
    ]
    vals = _jsonl(folder / "val_log.jsonl")
    k = 5
    retrieval = [
        (label, [v["step"] for v in vals], [v.get(f"val/{key}@{k}", float("nan")) for v in vals])
        for label, key in (("image->text", "i2t_R"), ("text->image", "t2i_R"), ("chance", "chance_R"))
    ]
    rows = []
    for split in ("val", "train"):
        before, after = metrics["before"].get(split), (metrics.get("after") or {}).get(split)
        if not before or not after:
            continue
        n = int(after.get("breasts", 0))
        for key in ("i2t_R", "t2i_R"):
            value, chance = after[f"{key}@{k}"], after[f"chance_R@{k}"]
            low, high = wilson_interval(round(value * n), n)
            rows.append(
                {
                    "split": split,
                    "direction": "image->text" if key == "i2t_R" else "text->image",
                    "before": fmt(before[f"{key}@{k}"]),
                    "after": fmt_ci(value, low, high),
                    "chance": fmt(chance),
                    "breasts": n,
                    "verdict": above_chance(value, low, high, chance),
                }
            )
    losses = metrics["losses"]
    return {
        "k": k,
        "steps": metrics.get("steps", len(losses)),
        "loss_first": fmt(losses[0]) if losses else "n/a",
        "loss_last": fmt(losses[-1]) if losses else "n/a",
        "loss_plot": line_plot("training loss", "step", loss_series) if steps else None,
        "retrieval_plot": line_plot(f"validation R@{k}", "step", retrieval) if vals else None,
        "rows": rows,
    }


def read_probe(folder: Path, cfg: Any) -> dict | None:
    """Linear probe: AUC per task, fraction and encoder (mean over seeds; the seeds' mean 95 % CI), ROC plots."""
    if not (folder / "results.csv").is_file() or not (folder / "summary.csv").is_file():
        return None
    results = pd.read_csv(folder / "results.csv")
    if not {"encoder", "task", "fraction", "auc", "auc_low", "auc_high"} <= set(results.columns):
        return None
    encoders = _config(folder).get("encoders") or {}
    random = [name for name, enc in encoders.items() if (enc or {}).get("init") == "random"]
    table = results.groupby(["task", "fraction", "encoder"], sort=False)[["auc", "auc_low", "auc_high"]]
    mean, sd = table.mean(), table.std()
    rows = []
    for (task, fraction, encoder), row in mean.iterrows():
        baseline = next(
            (mean.loc[key, "auc"] for r in random if (key := (task, fraction, r)) in mean.index and r != encoder), None
        )
        verdict = above_chance(row.auc, row.auc_low, row.auc_high, 0.5)
        if verdict.ok and baseline is not None and not row.auc > baseline:
            verdict = Verdict(False, f"signal NOT shown: not above random init ({fmt(baseline)})")
        elif verdict.ok and baseline is not None:
            verdict = Verdict(True, f"{verdict.words}; above random init by {row.auc - baseline:+.3f}")
        spread = sd.loc[(task, fraction, encoder), "auc"]
        rows.append(
            {
                "task": task,
                "fraction": f"{fraction:g}",
                "encoder": encoder + (" (random init)" if encoder in random else ""),
                "auc": fmt_ci(row.auc, row.auc_low, row.auc_high),
                "sd": fmt(spread) if spread == spread else "",
                "seeds": int(table.size().loc[(task, fraction, encoder)]),
                "verdict": verdict,
            }
        )
    plots = sorted((folder / "plots").glob("roc_*.png"))
    return {"rows": rows, "plots": _images(folder / "plots", [p.name for p in plots])}


def read_multiview(folder: Path, cfg: Any) -> dict | None:
    """Four-view classifier: AUC / F1-macro per task and split (pooled sides, 95 % CIs), view attention."""
    metrics = _json(folder / "metrics.json")
    if not metrics or "summary_lines" not in metrics or "eval" not in metrics:
        return None
    rows, attention = [], []
    for split, result in metrics["eval"].items():
        for task, sides in result.get("tasks", {}).items():
            pooled = sides.get("pooled", {})
            rows.append(
                {
                    "split": split,
                    "task": task,
                    "n": pooled.get("n", ""),
                    "auc": fmt_ci(pooled.get("auc"), pooled.get("auc_low"), pooled.get("auc_high")),
                    "f1": fmt_ci(pooled.get("f1_macro"), pooled.get("f1_macro_low"), pooled.get("f1_macro_high")),
                    "verdict": above_chance(pooled.get("auc"), pooled.get("auc_low"), pooled.get("auc_high"), 0.5),
                }
            )
        overall = (result.get("attention") or {}).get("overall")
        if overall:
            attention.append({"split": split, "views": {k: fmt(v, 2) for k, v in overall.items()}})
    names = [f"attention_{split}.png" for split in metrics["eval"]]
    names += [f"roc_{split}_{task}.png" for split in metrics["eval"] for task in metrics["eval"][split]["tasks"]]
    return {
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "rows": rows,
        "attention": attention,
        "views": list(attention[0]["views"]) if attention else [],
        "plots": _images(folder / "plots", names),
    }


def read_risk(folder: Path, cfg: Any) -> dict | None:
    """Risk: C-index and time-dependent AUCs with 95 % CIs per model, Kaplan-Meier by quartile and calibration."""
    metrics = _json(folder / "metrics.json")
    if not metrics or "models" not in metrics or "counts" not in metrics:
        return None
    columns = ["harrell_c", "uno_c", "td_auc_2y", "td_auc_5y"]
    rows = []
    for model, values in metrics["models"].items():
        harrell = values.get("harrell_c", {})
        rows.append(
            {
                "model": model,
                "cells": [fmt_ci(*(values.get(c, {}).get(k) for k in ("value", "low", "high"))) for c in columns],
                "verdict": above_chance(harrell.get("value"), harrell.get("low"), harrell.get("high"), 0.5),
            }
        )
    counts = [{"split": s, **c} for s, c in metrics["counts"].items()]
    names = [f"{kind}_{model}.png" for model in metrics["models"] for kind in ("km_quartiles", "calibration")]
    return {
        "columns": columns,
        "rows": rows,
        "counts": counts,
        "comparison": _comparison(folder / "comparison.csv"),
        "plots": _images(folder / "plots", names),
    }


def _comparison(path: Path) -> dict | None:
    """The risk command's three-way table (image-only / clinical-only / combined, calibration before and after, the
    paired combined - clinical difference): each metric with its 95 % CI, empty where undefined."""
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    metrics = [c for c in table.columns if c not in ("kind", "inputs", "model") and not c.endswith(("_low", "_high"))]
    rows = [
        {
            "model": r["model"],
            "inputs": r["inputs"],
            "cells": ["" if r[m] != r[m] else fmt_ci(r[m], r.get(f"{m}_low"), r.get(f"{m}_high")) for m in metrics],
        }
        for _, r in table.iterrows()
    ]
    return {"columns": metrics, "rows": rows}


def read_grid(folder: Path, cfg: Any) -> dict | None:
    """The MV-MLM Table 1 grid (``mvmlm pretrain-grid``): per protocol, rows encoder x method, columns task x label
    fraction; each cell test AUC mean ± sd over seeds and the seeds' mean 95 % CI, marked where it lies above 0.5."""
    if not (folder / "results.csv").is_file():
        return None
    results = pd.read_csv(folder / "results.csv")
    if not {"variant", "protocol", "method", "auc_mean", "auc_low", "auc_high"} <= set(results.columns):
        return None
    titles = {"probe": "Linear probe", "finetune": "Fine-tune"}
    tables = []
    for protocol, block in results.groupby("protocol", sort=False):
        columns = list(dict.fromkeys(f"{t} {f:.0%}" for t, f in zip(block.task, block.fraction, strict=True)))
        rows = []
        for (encoder, method), cells in block.groupby(["encoder_name", "method"], sort=False):
            by_column = {f"{r.task} {r.fraction:.0%}": r for r in cells.itertuples()}
            row = []
            for column in columns:
                r = by_column.get(column)
                if r is None:
                    row.append({"text": "", "ok": False})
                    continue
                spread = "" if r.auc_std != r.auc_std else f" ± {r.auc_std:.3f}"
                verdict = above_chance(r.auc_mean, r.auc_low, r.auc_high, 0.5)
                text = f"{r.auc_mean:.3f}{spread} [{fmt(r.auc_low)}, {fmt(r.auc_high)}]"
                row.append({"text": text, "ok": verdict.ok})
            rows.append({"encoder": encoder, "method": method, "cells": row})
        tables.append({"title": titles.get(protocol, protocol), "columns": columns, "rows": rows})
    failed = (_json(folder / "metrics.json") or {}).get("failed") or {}
    return {"tables": tables, "failed": [{"unit": k, "reason": v} for k, v in failed.items()]}


def _cell(value: Any) -> str:
    """A predictions cell: probabilities to 3 decimals, missing values empty."""
    if isinstance(value, float):
        return "" if value != value else fmt(value)
    return str(value)


def _heatmaps(folder: Path, breasts: pd.DataFrame) -> list[dict]:
    """The heatmap overlays (``predict --explain``) of ``breasts``' views as data URIs, captioned by side and view."""
    shown = []
    for row in breasts.itertuples(index=False):
        for column in (c for c in breasts.columns if c.endswith("_heatmap")):
            files = getattr(row, column)
            if isinstance(files, str) and files:
                uri = file_uri(folder / files.split(";")[0])
                if uri is not None:
                    shown.append({"name": f"{row.laterality}-{column.removesuffix('_heatmap')}", "uri": uri})
    return shown


def read_predict(folder: Path, cfg: Any) -> dict | None:
    """``mvmlm predict`` output: counts, skipped files by reason, the first rows' views and probabilities."""
    if not (folder / "predictions.csv").is_file() or not (folder / "skipped.csv").is_file():
        return None
    rows = pd.read_csv(folder / "predictions.csv")
    skipped = pd.read_csv(folder / "skipped.csv")
    columns = ["level", "laterality", "views", "missing_views", *(c for c in rows.columns if c.startswith("prob_"))]
    head = rows[[c for c in columns if c in rows.columns]].head(cfg.examples + 3)  # identifiers are left out
    reasons = skipped["reason"].astype(str).str.replace(DICOM_UID, "<UID>", regex=True)  # reasons may name an image
    return {
        "heatmaps": _heatmaps(folder, rows[rows["level"] == "breast"].head(cfg.examples)),
        "counts": [{"level": k, "rows": int(v)} for k, v in rows["level"].value_counts().items()],
        "skipped": [{"reason": k, "files": int(v)} for k, v in reasons.value_counts().items()],
        "columns": list(head.columns),
        "rows": [[_cell(v) for v in r] for r in head.itertuples(index=False)],
    }


SECTIONS = [
    Section("data", "Overview: evidence, data, time", read_data),
    Section("reports", "The reports", read_reports),
    Section("pretrain", "Pretraining", read_pretrain),
    Section("probe", "Linear probe", read_probe),
    Section("multiview", "Four-view classifier", read_multiview),
    Section("risk", "Risk prediction", read_risk),
    Section("grid", "MV-MLM Table 1: pretraining variants", read_grid),
    Section("predict", "Predictions on unseen exams (mvmlm predict)", read_predict),
]


def collect(run_dir: Path, cfg: Any) -> list[dict]:
    """Every section found in ``run_dir`` and its sub-folders, in the order of :data:`SECTIONS`."""
    folders = [run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())]
    found = []
    for section in SECTIONS:
        for folder in folders:
            context = section.read(folder, cfg)
            if context is not None:
                where = folder.relative_to(run_dir).as_posix() if folder != run_dir else "."
                found.append({"kind": section.kind, "title": section.title, "folder": where, **context})
    return found
