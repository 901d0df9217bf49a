"""``mvmlm report``: the page of a run directory, checked in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from mvmlm.cli import main as cli
from mvmlm.report.config import ReportConfig
from mvmlm.report.evidence import above_chance, wilson_interval

matplotlib.use("Agg")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
)
#: appended to a copy of the page: on load, writes "<images> <broken images>" into the title, read by --dump-dom
CHECK_IMAGES = (
    "<script>window.addEventListener('load', () => { const all = [...document.images]; "
    "const broken = all.filter(i => !(i.complete && i.naturalWidth > 0)).length; "
    "document.title = 'images ' + all.length + ' broken ' + broken; });</script>"
)


def _png(path: Path, seed: int) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.plot(np.random.default_rng(seed).random(5))
    fig.savefig(path)
    plt.close(fig)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def _ci(value: float, low: float, high: float) -> dict:
    return {"value": value, "low": low, "high": high}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A demo-shaped run directory holding each stage's files in the layout its command writes."""
    run = tmp_path_factory.mktemp("report") / "demo"
    counts = {"views": {"CC": 8, "MLO": 8}, "splits": {"train": 4, "test": 4}, "mass": {"0": 5, "1": 3}}
    timings = {"data": 1.5, "pretrain": 20.0}
    _write(run / "metrics.json", {"exams": 4, "images": 16, "failures": 0, **counts, "timings": timings})
    _png(run / "contact_sheet.png", 0)
    facts = [{"birads": b, "mass": m, "laterality": "L"} for b, m in ((1, False), (4, True), (4, True))]
    parts = pd.DataFrame(
        {
            "breast_id": ["a/1/1/L", "a/2/2/L", "a/3/3/L"],
            "variant": [0, 0, 0],
            "report": ["No mass <b>.", "A mass is seen.", "A mass is seen."],
            "facts": [json.dumps(f) for f in facts],
            "source": "template",
        }
    )
    (run / "reports" / "parts").mkdir(parents=True)
    parts.to_parquet(run / "reports" / "parts" / "part-00000-000000.parquet")
    _write(run / "reports" / "manifest.json", {"backend": "template"})
    retrieval = {"i2t_R@5": 0.8, "t2i_R@5": 0.2, "chance_R@5": 0.1, "breasts": 40}
    _write(
        run / "pretrain" / "metrics.json",
        {"losses": [4.0, 3.0], "steps": 2, "before": {"val": retrieval}, "after": {"val": retrieval}},
    )
    _write(run / "pretrain" / "train_log.jsonl", '{"step": 1, "loss": 4.0}\n{"step": 2, "loss": 3.0}\n')
    _write(run / "pretrain" / "val_log.jsonl", '{"step": 2, "val/i2t_R@5": 0.8, "val/chance_R@5": 0.1}\n')
    rows = [
        {"encoder": e, "task": "mass", "fraction": 1.0, "seed": 0, "auc": a, "auc_low": a - 0.1, "auc_high": a + 0.1}
        for e, a in (("mvmlm", 0.9), ("random", 0.55))
    ]
    (run / "probe").mkdir()
    pd.DataFrame(rows).to_csv(run / "probe" / "results.csv", index=False)
    pd.DataFrame(rows).to_csv(run / "probe" / "summary.csv", index=False)
    _write(
        run / "probe" / "config.yaml",
        "encoders:\n  mvmlm: {source: mvclip}\n  random: {source: mvclip, init: random}\n",
    )
    _png(run / "probe" / "plots" / "roc_mass_1.0.png", 1)
    pooled = {
        "n": 20,
        "auc": 0.7,
        "auc_low": 0.45,
        "auc_high": 0.9,
        "f1_macro": 0.6,
        "f1_macro_low": 0.4,
        "f1_macro_high": 0.8,
    }
    attention = {"overall": {"L_CC": 0.3, "L_MLO": 0.2, "R_CC": 0.3, "R_MLO": 0.2}}
    evaluation = {"test": {"tasks": {"label": {"pooled": pooled}}, "attention": attention}}
    _write(
        run / "multiview" / "metrics.json", {"summary_lines": [], "best_epoch": 2, "epochs_run": 3, "eval": evaluation}
    )
    _png(run / "multiview" / "plots" / "attention_test.png", 2)
    model = {"harrell_c": _ci(0.7, 0.6, 0.8), "uno_c": _ci(0.7, 0.6, 0.8)}
    _write(
        run / "risk" / "metrics.json", {"counts": {"test": {"exams": 30, "cancers": 9}}, "models": {"coxnet": model}}
    )
    comparison = [
        {"kind": "coxnet", "inputs": "image", "model": "coxnet", "harrell_c": 0.7, "harrell_c_low": 0.6,
         "harrell_c_high": 0.8, "ibs_raw": 0.2, "ibs_raw_low": 0.1, "ibs_raw_high": 0.3},
        {"kind": "coxnet", "inputs": "combined - clinical", "model": "coxnet: combined - clinical", "harrell_c": 0.05,
         "harrell_c_low": 0.01, "harrell_c_high": 0.09, "ibs_raw": None, "ibs_raw_low": None, "ibs_raw_high": None},
    ]  # fmt: skip
    pd.DataFrame(comparison).to_csv(run / "risk" / "comparison.csv", index=False)
    grid = [
        {"encoder": "tiny", "variant": v, "encoder_name": "Tiny", "method": m, "evaluation": "vindr", "protocol": p,
         "task": "mass", "fraction": f, "runs": 2, "auc_mean": 0.8, "auc_std": 0.02, "auc_low": lo, "auc_high": 0.9}
        for v, m, lo in (("clip", "CLIP", 0.45), ("mv_clip_tr", "MV-CLIP+Tr", 0.7))
        for p in ("probe", "finetune")
        for f in (0.1, 1.0)
    ]  # fmt: skip
    (run / "ablation").mkdir()
    pd.DataFrame(grid).to_csv(run / "ablation" / "results.csv", index=False)
    _write(run / "ablation" / "metrics.json", {"failed": {"tiny/mv_clip/pretrain": "ValueError: boom"}})
    predictions = [
        {"level": "exam", "exam_id": "1.2.3.77", "laterality": None, "views": "L_CC+R_CC", "missing_views": "L_MLO",
         "attention_L_CC": 0.5, "prob_label_malignant": None},
        {"level": "breast", "exam_id": "1.2.3.77", "laterality": "L", "views": "CC", "missing_views": "MLO",
         "CC_image_id": "1.2.3.88", "prob_label_malignant": 0.25},
    ]  # fmt: skip
    (run / "predict").mkdir()
    pd.DataFrame(predictions).to_csv(run / "predict" / "predictions.csv", index=False)
    skipped = [
        {"path": "a.dcm", "reason": "view XCCL is not used"},
        {"path": "b.dcm", "reason": "duplicate CC view: image 1.2.826.0.99 (smaller id) is used"},
    ]
    pd.DataFrame(skipped).to_csv(run / "predict" / "skipped.csv")
    _png(run / "risk" / "plots" / "km_quartiles_coxnet.png", 3)
    _png(run / "risk" / "plots" / "calibration_coxnet.png", 4)
    assert cli(["report", str(run)]) == 0
    return run


def test_the_page_holds_every_stage_and_needs_no_other_file(run_dir):
    html = (run_dir / "report.html").read_text()
    for table in ("counts", "timings", "facts", "retrieval", "probe", "multiview", "attention", "risk"):
        assert f'<table class="{table}"' in html, table
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "No mass &lt;b&gt;." in html  # report text is escaped, never markup
    assert "a/1/1/L" not in html  # identifiers are not copied into the page


def test_the_grid_table_is_shaped_like_table_1_and_marks_cis_above_chance(run_dir):
    html = (run_dir / "report.html").read_text()
    grid = html[html.index('<table class="grid"') :]
    grid = grid[: grid.index("</table>")]
    assert "<th>mass 10%</th><th>mass 100%</th>" in grid
    assert '<td class="num ok">0.800 ± 0.020 [0.700, 0.900]</td>' in grid  # MV-CLIP+Tr: CI above 0.5
    assert '<td class="num no">0.800 ± 0.020 [0.450, 0.900]</td>' in grid  # CLIP: CI includes 0.5
    assert html.count('<table class="grid"') == 2 and "tiny/mv_clip/pretrain: ValueError: boom" in html


def test_the_risk_comparison_and_the_predictions_are_shown_without_identifiers(run_dir):
    html = (run_dir / "report.html").read_text()
    assert '<table class="risk-comparison"' in html and "0.050 [0.010, 0.090]" in html
    assert '<table class="predict"' in html and '<td class="num">0.250</td>' in html
    assert "skipped: view XCCL is not used" in html
    assert "skipped: duplicate CC view: image &lt;UID&gt; (smaller id) is used" in html
    assert not any(uid in html for uid in ("1.2.3.77", "1.2.3.88", "1.2.826.0.99"))


def test_each_number_has_its_verdict_in_words(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "above random init by +0.350" in html  # probe: pretrained 0.9 vs random 0.55
    assert "signal NOT shown: above chance (0.500) but the 95 % CI includes it" in html  # four-view AUC 0.7 [0.45, 0.9]


@needs_chromium
def test_the_page_renders_in_headless_chromium_without_a_broken_image(run_dir, tmp_path):
    checked = tmp_path / "checked.html"
    checked.write_text((run_dir / "report.html").read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert re.search(r"<title>images (\d+) broken 0</title>", dom), dom[:300]
    assert int(re.search(r"<title>images (\d+)", dom).group(1)) == 7  # sheet + 4 PNG files + 2 pretraining curves
    assert dom.count("<table") >= 8
    shot = tmp_path / "page.png"
    subprocess.run(
        [*flags, "--window-size=1000,1400", f"--screenshot={shot}", checked.as_uri()], capture_output=True, timeout=60
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1000) and pixels.std() > 10  # drawn, not blank


def test_a_folder_without_run_outputs_is_a_one_line_error(tmp_path, capsys):
    assert cli(["report", str(tmp_path)]) == 2
    assert "no run outputs found" in capsys.readouterr().err


def test_verdicts_compare_the_interval_with_chance():
    assert above_chance(0.7, 0.6, 0.8, 0.5).ok
    assert not above_chance(0.7, 0.45, 0.9, 0.5).ok
    assert not above_chance(float("nan"), float("nan"), float("nan"), 0.5).ok
    low, high = wilson_interval(8, 40)
    assert 0.09 < low < 0.2 < high < 0.36


def test_report_config_defaults_to_a_page_inside_the_run():
    assert ReportConfig(run_dir="x").out == ""
