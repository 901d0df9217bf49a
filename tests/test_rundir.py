from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import yaml

from mvmlm.rundir import RunDir, package_versions


@dataclass
class Cfg:
    out: str = "x"
    lr: float = 0.1


def test_run_dir_records_config_commit_versions_metrics_and_log(tmp_path):
    run = RunDir.create(tmp_path / "run", Cfg(lr=0.5))
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == {"out": "x", "lr": 0.5}
    provenance = json.loads((run.path / "provenance.json").read_text())
    assert "git_commit" in provenance
    assert provenance["packages"]["torch"] is not None
    assert provenance["packages"]["mamba-ssm"] is None or isinstance(provenance["packages"]["mamba-ssm"], str)
    run.write_metrics({"auc": 0.75})
    assert json.loads((run.path / "metrics.json").read_text()) == {"auc": 0.75}
    logging.getLogger("mvmlm.test").info("hello from the test")
    assert "hello from the test" in (run.path / "log.txt").read_text()


def test_package_versions_reports_absent_packages_as_none():
    versions = package_versions(("numpy", "surely-not-installed-pkg"))
    assert versions["numpy"] and versions["surely-not-installed-pkg"] is None
