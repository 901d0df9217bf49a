from __future__ import annotations

import json

import pytest

from mvmlm.config import ConfigError
from mvmlm.demo import main


def test_demo_runs_end_to_end_and_writes_its_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: the stage configs come from the source tree
    out = tmp_path / "demo"
    summary = main(
        [
            f"out={out}",
            "exams=8",
            "source_height=96",
            "source_width=64",
            "height=64",
            "width=40",
            "workers=1",
            "contact_exams=2",
            "model_stages=false",
        ]
    )
    assert summary["exams"] == 8 and summary["failures"] == 0
    assert sum(summary["views"].values()) == summary["images"]
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["images"] == summary["images"]
    assert (out / "table.parquet").is_file() and (out / "config.yaml").is_file()
    breasts = summary["reports"]["breasts"]
    assert breasts == sum(summary["density"].values()) and summary["reports"]["reports"] == 3 * breasts


def test_a_missing_stage_config_fails_before_anything_is_written(tmp_path):
    for missing in ("configs/reports/nope.yaml", str(tmp_path / "nope.yaml")):
        with pytest.raises(ConfigError, match="nope.yaml"):
            main([f"out={tmp_path / 'demo'}", f"reports_config={missing}"])
    assert not (tmp_path / "demo").exists()
