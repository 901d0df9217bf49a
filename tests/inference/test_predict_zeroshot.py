"""``mvmlm predict`` on an MV-CLIP bundle: zero-shot class probabilities equal to ``mvmlm zeroshot``'s on the same
images, prompts from the bundle or ``--prompts FILE.yaml``; a bad prompts file is one error line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mvmlm
from mvmlm.bundle import bundle_config, preprocessing_of
from mvmlm.cli import main as cli
from mvmlm.data.ids import breast_id
from mvmlm.inference.zeroshot import DEFAULT_PROMPTS, prompts_for

from ..downstream.conftest import tiny_config

EXAMS = 64


@pytest.fixture(scope="module")
def mvclip_bundle(text_image_set, tmp_path_factory) -> Path:
    """A seeded, untrained tiny MV-CLIP saved as a bundle (text tower: the tiny BERT)."""
    from mvmlm.models.mvclip import MVCLIP, MVCLIPBundle
    from mvmlm.models.text_encoders import FrozenTextEncoder

    data = text_image_set(EXAMS, test_fraction=0.35)
    torch.manual_seed(0)
    model = MVCLIP(tiny_config(data.text_model), FrozenTextEncoder(str(data.text_model), None))
    directory = tmp_path_factory.mktemp("mvclip_bundle") / "model"
    MVCLIPBundle(model, bundle_config({}, {}, preprocessing_of(data.table))).save_pretrained(directory)
    return directory


def _predict(bundle: Path, table: Path, out: Path, *extra: str) -> pd.DataFrame:
    assert cli(["predict", "--model", str(bundle), "--input", str(table), "--out", str(out), "workers=0",
                "progress=false", *extra]) == 0  # fmt: skip
    frame = pd.read_parquet(out / "predictions.parquet")
    ids = [breast_id(*row) for row in frame[["dataset", "patient_id", "exam_id", "laterality"]].to_numpy()]
    return frame.set_index(pd.Index(ids))


def test_predict_on_an_mvclip_bundle_equals_the_zeroshot_command(mvclip_bundle, text_image_set, tmp_path):
    from downstream.zeroshot.run import main as zeroshot

    table = text_image_set(EXAMS, test_fraction=0.35).table
    predicted = _predict(mvclip_bundle, table, tmp_path / "pred")
    zeroshot([f"data.table={table}", f"checkpoint={mvclip_bundle}", f"out={tmp_path / 'zs'}",
              f"embed.cache={tmp_path / 'emb'}", "embed.device=cpu", "tasks=[mass,density]", "bootstrap=10",
              "plots=false"])  # fmt: skip
    expected = pd.read_parquet(tmp_path / "zs" / "predictions.parquet")
    mass = expected[expected["task"] == "mass"]
    np.testing.assert_allclose(predicted.loc[mass["id"], "prob_mass_mass"], [s[0] for s in mass["scores"]], atol=1e-5)
    density = expected[expected["task"] == "density"]
    columns = [f"prob_density_{c.lower()}" for c in DEFAULT_PROMPTS["density"]]
    np.testing.assert_allclose(predicted.loc[density["id"], columns], np.stack(density["scores"]), atol=1e-5)
    assert [c for c in predicted.columns if c.startswith("prob_")] == [
        "prob_mass_no_mass", "prob_mass_mass", "prob_calcification_no_calcification",
        "prob_calcification_calcification", *columns,
    ]  # fmt: skip


def test_prompts_file_sets_the_tasks_and_classes(mvclip_bundle, text_image_set, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("lesion:\n  none: [No mass is seen.]\n  suspicious: [There is a mass., A mass is seen.]\n")
    table = text_image_set(EXAMS, test_fraction=0.35).table
    predicted = _predict(mvclip_bundle, table, tmp_path / "pred", "--prompts", str(prompts))
    probs = predicted[["prob_lesion_none", "prob_lesion_suspicious"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert not any(c.startswith("prob_mass") for c in predicted.columns)
    assert probs.std(axis=0).min() > 0  # the images differ, so do their scores
    model = mvmlm.load_model(mvclip_bundle)
    assert prompts_for(model, prompts)["lesion"]["suspicious"] == ["There is a mass.", "A mass is seen."]
    assert prompts_for(model) == DEFAULT_PROMPTS


def test_a_bad_prompts_file_is_refused_naming_it(mvclip_bundle, text_image_set, tmp_path, capsys):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("lesion:\n  none: []\n  suspicious: [There is a mass.]\n")
    table = text_image_set(EXAMS, test_fraction=0.35).table
    code = cli(["predict", "--model", str(mvclip_bundle), "--input", str(table), "--out", str(tmp_path / "o"),
                "--prompts", str(prompts)])  # fmt: skip
    assert code == 2
    assert f"{prompts}: key lesion.none: expected a non-empty list" in capsys.readouterr().err
