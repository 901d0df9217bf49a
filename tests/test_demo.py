"""``mvmlm demo``: the stage wiring on tiny seeded data (the figures are checked by running the demo, not here)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mvmlm.config import ConfigError
from mvmlm.demo import main, shuffled_follow_up
from mvmlm.demo_checks import check

TINY = ["exams=8", "source_height=96", "source_width=64", "height=64", "width=40", "workers=1", "contact_exams=2"]
#: every model stage at its smallest: the wiring, not the figures
TINY_STAGES = """
pretrain_steps: 2
risk_exams: 38  # the EMBED writer keeps 24 (a screening cohort)
overrides:
  pretrain: [train.eval_every=2, eval.train_subset=0, data.batch_size=8]
  probe: ["fractions=[1.0]", "seeds=[0]", "tasks=[density]", "bootstrap=20", "plots=false"]
  multiview: [train.epochs=1, eval.bootstrap=20, eval.plots=false]
  risk: [train.epochs=1, bootstrap=20, "models=[coxnet]"]
  risk_shuffled: [train.epochs=1, bootstrap=20, "models=[coxnet]", "risk.inputs=[image]"]
  ablation: ["protocols=[probe]", "fractions=[1.0]", "seeds=[0]", "evaluations.vindr.tasks=[density]",
             "probe.overrides=[bootstrap=20, plots=false]"]
ablation: true
predict_exams: 4
"""


def test_demo_data_stages_write_their_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the checkout: the stage configs come from the source tree
    out = tmp_path / "demo"
    summary = main([f"out={out}", *TINY, "model_stages=false"])
    assert summary["exams"] == 8 and summary["failures"] == 0
    assert sum(summary["views"].values()) == summary["images"]
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["images"] == summary["images"]
    assert (out / "table.parquet").is_file() and (out / "config.yaml").is_file()
    breasts = summary["reports"]["breasts"]
    assert breasts == sum(summary["density"].values()) and summary["reports"]["reports"] == 3 * breasts
    assert set(summary["timings"]) == {"data", "reports"} and summary["report"] == str(out / "report.html")
    printed, table = capsys.readouterr().out, pd.read_parquet(out / "table.parquet")
    assert "FINDINGS" in printed and not [i for i in table.patient_id.astype(str) if i in printed]  # no identifiers
    # a rerun with other data into the same folder: the earlier cache lies beside the new one and is not read
    again = main([f"out={out}", *TINY, "exams=10", "model_stages=false"])
    assert again["exams"] == 10 and len(list((out / "cache").glob("64x40-*"))) == 2


def test_demo_runs_every_stage_into_one_run_directory_and_its_report(tmp_path, capsys):
    config = tmp_path / "tiny_demo.yaml"
    config.write_text(TINY_STAGES)
    out = tmp_path / "demo"
    summary = main(["--config", str(config), f"out={out}", *TINY, "exams=12"])
    stages = ["data", "reports", "pretrain", "probe", "multiview", "risk", "ablation", "predict"]
    assert list(summary["timings"]) == stages
    for stage in ("pretrain", "probe", "multiview", "risk", "risk_shuffled", "ablation"):
        assert (out / stage / "metrics.json").is_file(), stage
    assert {c["stage"] for c in summary["checks"]} == {"pretrain", "probe", "multiview", "risk"}
    risk = {c["claim"]: c["words"] for c in summary["checks"] if c["stage"] == "risk"}
    assert list(risk) == [f"coxnet{inputs} Harrell's C" for inputs in ("", "_clinical", "_combined")]
    assert "shuffled control" in risk["coxnet Harrell's C"] and "shuffled" not in risk["coxnet_clinical Harrell's C"]
    ablation = pd.read_csv(out / "ablation" / "results.csv")
    assert ablation.method.tolist() == [
        "CLIP",
        "CLIP (random)",
        "MV-CLIP",
        "MV-CLIP (random)",
        "MV-CLIP+Tr",
        "MV-CLIP+Tr (random)",
    ]
    html = (out / "report.html").read_text()
    tables = ("checks", "timings", "probe", "multiview", "risk", "risk-comparison", "grid", "predict-counts", "predict")
    assert all(f'<table class="{t}"' in html for t in tables)
    # the bundle predicted the unseen RSNA-format DICOM files (tables deleted) and the first rows were printed
    assert not [p for p in (out / "data_predict").rglob("*") if p.is_file() and p.suffix != ".dcm"]
    predicted = pd.read_csv(out / "predict" / "predictions.csv")
    assert summary["predict"]["rows"] == len(predicted) > 0 and (out / "bundle" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    shown = printed.split("\npredict: ")[1]
    assert "from unseen rsna-format DICOM files" in shown and "prob_label_malignant" in shown
    uids = [v for v in predicted.filter(like="_id").to_numpy().ravel() if isinstance(v, str)]
    assert uids and not any(uid in shown for uid in uids)  # identifiers are left out
    # predict --explain wrote a heatmap per view of the unseen exams, and the page shows the first ones
    cells = [v for v in predicted.filter(like="_heatmap").to_numpy().ravel() if isinstance(v, str)]
    heatmaps = [name for cell in cells for name in cell.split(";")]
    assert heatmaps and all((out / "predict" / h).is_file() for h in heatmaps)
    assert 'alt="L-CC"' in html or 'alt="R-CC"' in html


def test_the_shuffled_control_keeps_images_and_splits_and_moves_follow_up_within_a_split():
    exams = [(f"p{i}", "train" if i < 6 else "test", float(i)) for i in range(10)]
    table = pd.DataFrame(
        [
            {
                "dataset": "d",
                "patient_id": p,
                "exam_id": "e",
                "split": s,
                "cache_path": f"{p}_{v}",
                "years_to_cancer": y,
                "years_to_last_followup": y + 1,
            }
            for p, s, y in exams
            for v in ("CC", "MLO")
        ]
    )
    shuffled = shuffled_follow_up(table, seed=0)
    assert shuffled.columns.tolist() == table.columns.tolist()
    assert shuffled.cache_path.tolist() == table.cache_path.tolist()
    assert (shuffled.years_to_cancer != table.years_to_cancer).any()
    for split, rows in shuffled.groupby("split"):
        assert sorted(rows.years_to_cancer) == sorted(table[table.split == split].years_to_cancer)
    assert (shuffled.groupby("patient_id").years_to_cancer.nunique() == 1).all()  # one follow-up per exam


def test_a_missing_stage_config_fails_before_anything_is_written(tmp_path):
    for missing in ("configs/reports/nope.yaml", str(tmp_path / "nope.yaml")):
        with pytest.raises(ConfigError, match="nope.yaml"):
            main([f"out={tmp_path / 'demo'}", f"reports_config={missing}"])
    assert not (tmp_path / "demo").exists()


def test_a_check_says_whether_the_pretrained_encoder_beats_its_baseline_and_names_a_tie_at_the_ceiling():
    above = check("probe", "mass AUC", 0.9, 0.8, 0.97, 0.5, ("random init", 0.7))
    assert above["ok"] and "above random init (0.700)" in above["words"]
    below = check("probe", "mass AUC", 0.7, 0.6, 0.8, 0.5, ("random init", 0.9))
    assert not below["ok"] and "NOT above random init (0.900)" in below["words"]
    tie = check("probe", "density AUC", 0.99, 0.97, 1.0, 0.5, ("random init", 1.0))
    assert not tie["ok"] and "both at the ceiling" in tie["words"]
    noisy = check("probe", "mass AUC", 0.62, 0.45, 0.8, 0.5, ("random init", 0.55))
    assert not noisy["ok"] and "includes it" in noisy["words"] and "above random init" in noisy["words"]
