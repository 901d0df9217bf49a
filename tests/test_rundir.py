from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

import pytest
import yaml

from mvmlm.cli import Command
from mvmlm.config import ConfigError, TrainConfig
from mvmlm.rundir import RunDir, confirm_runs, overwrite_run, package_versions


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


def test_a_continued_run_writes_its_records_only_once_confirmed(tmp_path):
    first = RunDir.create(tmp_path / "run", Cfg(lr=0.5))
    logging.getLogger("mvmlm.test").info("first invocation")
    log_before = (first.path / "log.txt").read_text()
    files_before = sorted(p.relative_to(first.path) for p in first.path.rglob("*"))
    run = RunDir.create(tmp_path / "run", Cfg(lr=0.5), resume="latest")
    logging.getLogger("mvmlm.test").info("second invocation")
    assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == files_before
    assert (run.path / "log.txt").read_text() == log_before
    confirm_runs(run.path / "units" / "a")  # an engine in a folder inside the run accepted its checkpoint
    resumed = list(run.path.glob("resumes/*/config.yaml"))
    assert len(resumed) == 1 and yaml.safe_load(resumed[0].read_text()) == {"out": "x", "lr": 0.5}
    assert (run.path / "log.txt").read_text().startswith(log_before)
    assert "second invocation" in (run.path / "log.txt").read_text()


def test_a_continued_run_writes_its_records_before_its_first_output(tmp_path):
    RunDir.create(tmp_path / "run", Cfg())
    run = RunDir.create(tmp_path / "run", Cfg(), resume="latest")
    run.write_metrics({"auc": 0.5})
    assert len(list(run.path.glob("resumes/*/provenance.json"))) == 1


@dataclass
class TrainerCfg:
    out: str = "x"
    train: TrainConfig = field(default_factory=TrainConfig)


TRAINER = Command(name="trainer", summary="a trainer's config", main="", config=f"{__name__}:TrainerCfg")


def test_overwrite_moves_the_earlier_run_aside_and_deletes_nothing(tmp_path, caplog):
    out = tmp_path / "run"
    RunDir.create(out, TrainerCfg(out=str(out)))
    (out / "checkpoints" / "step_00000004").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds a training run"):
        RunDir.create(out, TRAINER.parse([f"out={out}"]), resume="none")
    cfg = TRAINER.parse([f"out={out}", "--overwrite", "train.epochs=2"])
    assert cfg.train.epochs == 2 and not out.exists()
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "checkpoints" / "step_00000004").is_dir() and (old / "config.yaml").is_file()
    assert str(old) in caplog.text
    RunDir.create(out, cfg, resume="none")  # a new run in the freed folder
    TRAINER.parse([f"out={out}", "--overwrite"])  # and again: the second old run goes beside the first
    assert len(list(tmp_path.glob("run.old-*"))) == 2


def test_overwrite_cannot_continue_a_run(tmp_path):
    RunDir.create(tmp_path / "run", TrainerCfg())
    with pytest.raises(ConfigError, match="--overwrite starts a new run"):
        TRAINER.parse([f"out={tmp_path / 'run'}", "--overwrite", "train.resume=latest"])
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_overwrite_in_other_processes_of_a_launch_waits_for_the_first(tmp_path, monkeypatch):
    out = tmp_path / "run"
    RunDir.create(out, TrainerCfg())
    monkeypatch.setenv("RANK", "1")
    mover = threading.Timer(0.3, lambda: out.rename(tmp_path / "moved-by-rank-0"))
    mover.start()
    assert overwrite_run(TrainerCfg(out=str(out)), wait_s=30) is None
    mover.join()
    assert not out.exists() and (tmp_path / "moved-by-rank-0" / "config.yaml").is_file()
    assert not list(tmp_path.glob("run.old-*"))  # only the first process moves


@pytest.mark.parametrize("out", ["", "."])
def test_overwrite_never_moves_the_current_directory(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("kept")
    with pytest.raises(ConfigError, match="--overwrite: "):
        overwrite_run(TrainerCfg(out=out))
    assert (tmp_path / "data.txt").read_text() == "kept"


def test_preprocess_offers_no_overwrite_its_out_is_a_root_of_caches(tmp_path, capsys):
    from mvmlm.commands import PREPROCESS

    (tmp_path / "cache" / "48x32-abc").mkdir(parents=True)
    with pytest.raises(SystemExit):
        PREPROCESS.parse([f"out={tmp_path / 'cache'}", "--overwrite", "table=t.parquet", "root=r"])
    assert "unrecognized arguments: --overwrite" in capsys.readouterr().err
    assert (tmp_path / "cache" / "48x32-abc").is_dir()
