"""Model bundles: a trained model saved by its command loads anywhere with ``mvmlm.load_model`` (directory or Hub
cache, offline), predicts what the run predicted, is refused when a file is missing or altered, and pushes with
huggingface_hub (a stand-in API, never the network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mvmlm
from mvmlm.bundle import BundleError, ModelCardInfo, preprocessing_of

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finetune_run(text_image_set, tmp_path_factory) -> Path:
    """A tiny fine-tuning run (random-init timm encoder) with save_models=true."""
    from downstream.finetune.run import main as finetune

    data = text_image_set(64, test_fraction=0.35)
    out = tmp_path_factory.mktemp("finetune") / "run"
    finetune(
        [
            "--config", str(REPO / "configs/finetune/tiny.yaml"), f"data.table={data.table}", f"out={out}",
            "encoders.mvmlm.source=timm", "encoders.mvmlm.name=timm:test_resnet", "encoders.mvmlm.init=random",
            "encoders.mvmlm.checkpoint=''",
            "save_models=true", "train.epochs=1", "bootstrap=20", "plots=false", "fractions=[1.0]",
        ]
    )  # fmt: skip
    return out


def _bundle(finetune_run: Path, tmp_path: Path) -> Path:
    (saved,) = (finetune_run / "models").iterdir()
    return Path(shutil.copytree(saved, tmp_path / "moved"))


def test_a_moved_finetune_bundle_predicts_what_the_run_predicted(finetune_run, text_image_set, tmp_path):
    from downstream.common.tasks import DataConfig, load_breasts
    from mvmlm.data.exams import BreastDataset

    model = mvmlm.load_model(_bundle(finetune_run, tmp_path))
    assert model.kind == "finetune" and model.heads == {"mass": ["no mass", "mass"]}
    expected = pd.read_parquet(finetune_run / "predictions.parquet")
    table = text_image_set(64, test_fraction=0.35).table
    breasts = load_breasts(DataConfig(table=str(table))).set_index("breast_id").loc[expected["id"]].reset_index()
    items = list(BreastDataset(breasts, labels=()))
    with torch.no_grad():
        probs = model.predict_views(torch.stack([i["images"] for i in items]), torch.stack([i["mask"] for i in items]))
    np.testing.assert_allclose(probs["mass"][:, 1].numpy(), [s[0] for s in expected["scores"]], atol=1e-5)
    assert model.preprocessing.height == 64 and model.preprocessing == _params(table)


def _params(table):
    from mvmlm.data.preprocess import PreprocessParams

    return PreprocessParams(**{k: v for k, v in preprocessing_of(table).items() if k != "roi"})


def test_the_model_card_holds_the_runs_counts_command_and_commit(finetune_run, tmp_path):
    directory = _bundle(finetune_run, tmp_path)
    card = (directory / "README.md").read_text()
    config = json.loads((directory / "config.json").read_text())
    counts = config["card"]["counts"]
    assert counts["train"] > 0 and counts["test"] > 0 and f"| test | {counts['test']} |" in card
    assert "val/auc (best epoch 1)" in card and "not a medical device" in card
    provenance = json.loads((finetune_run / "provenance.json").read_text())
    assert provenance["git_commit"] is None or provenance["git_commit"] in card


@pytest.mark.parametrize("damage", ["remove", "alter"])
def test_a_missing_or_altered_file_is_refused_naming_it(finetune_run, tmp_path, damage):
    directory = _bundle(finetune_run, tmp_path)
    target = directory / "model.safetensors"
    if damage == "remove":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match=f"model.safetensors: {'missing' if damage == 'remove' else 'altered'}"):
        mvmlm.load_model(directory)


def test_a_newer_format_version_is_refused(finetune_run, tmp_path):
    directory = _bundle(finetune_run, tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="manifest.json: bundle format 99"):
        mvmlm.load_model(directory)


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: missing; not an mvmlm model bundle"):
        mvmlm.load_model(tmp_path)


@pytest.mark.parametrize("name", ["/no/such/bundle", "./no-such-bundle", "no-such-bundle"])
def test_a_missing_path_is_named_not_sent_to_the_hub(name):
    with pytest.raises(BundleError, match="neither a bundle directory nor a Hub repo id"):
        mvmlm.load_model(name)


def test_a_repo_id_missing_from_the_offline_cache_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BundleError, match="org/absent: not on the Hub nor in its cache"):
        mvmlm.load_model("org/absent", cache_dir=tmp_path / "hub")


class _StandInApi:
    """What push_to_hub calls on ``HfApi``, writing into a local folder instead of the Hub."""

    remote: Path
    calls: list

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **_):
        type(self).calls.append(("create_repo", repo_id, private))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **_):
        type(self).calls.append(("upload_folder", repo_id))
        shutil.copytree(folder_path, type(self).remote / repo_id, dirs_exist_ok=True)
        return f"https://huggingface.co/{repo_id}/commit/0"


def _hub_cache(home: Path, repo_id: str, files: Path) -> None:
    """Lay ``files`` out as huggingface_hub's cache snapshot of ``repo_id`` at revision main."""
    commit = "0" * 40
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_push_uploads_a_checked_bundle_that_loads_offline_from_the_hub_cache(finetune_run, tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin

    from mvmlm.cli import main as cli

    directory = _bundle(finetune_run, tmp_path)
    _StandInApi.remote, _StandInApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", _StandInApi)
    assert cli(["push", "--model", str(directory), "--repo-id", "org/tiny-mass", "--private"]) == 0
    assert _StandInApi.calls == [("create_repo", "org/tiny-mass", True), ("upload_folder", "org/tiny-mass")]
    uploaded = tmp_path / "remote" / "org/tiny-mass"
    assert {p.name for p in uploaded.iterdir()} >= {"model.safetensors", "config.json", "manifest.json", "README.md"}
    assert (uploaded / "README.md").read_text() == (directory / "README.md").read_text()

    _hub_cache(tmp_path / "hf_home", "org/tiny-mass", uploaded)
    script = (
        "import mvmlm, torch; m = mvmlm.load_model('org/tiny-mass'); "
        "print(m.kind, float(sum(p.double().sum() for p in m.module.state_dict().values())))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    local = mvmlm.load_model(directory)
    kind, total = out.stdout.split()
    assert kind == "finetune"
    assert float(total) == pytest.approx(float(sum(p.double().sum() for p in local.module.state_dict().values())))


def test_card_facts_come_from_the_runs_provenance(tmp_path):
    (tmp_path / "provenance.json").write_text(json.dumps({"command": ["mvmlm", "risk", "x=1"], "git_commit": "abc"}))
    card = ModelCardInfo.from_run(tmp_path, counts={"test": 3})
    assert card.command == "mvmlm risk x=1" and card.commit == "abc" and card.counts == {"test": 3}
