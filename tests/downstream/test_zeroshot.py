"""Zero-shot: the shipped template prompts end to end, class scores from cosine similarity, prompt validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from downstream.common.tasks import get_tasks
from downstream.zeroshot.config import ZeroShotConfig
from downstream.zeroshot.run import main, task_prompts
from mvmlm.config import ConfigError, build_config
from mvmlm.inference.zeroshot import zero_shot_scores

from .conftest import REPO

VINDR = str(REPO / "configs/zeroshot/vindr.yaml")


def test_template_prompts_run_end_to_end(downstream_data, random_checkpoint, tmp_path):
    out = tmp_path / "run"
    metrics = main(
        [
            "--config",
            VINDR,
            f"data.table={downstream_data.table}",
            f"checkpoint={random_checkpoint}",
            f"out={out}",
            f"embed.cache={tmp_path / 'emb'}",
            "embed.device=cpu",
            "bootstrap=20",
        ]
    )
    results = pd.DataFrame(metrics["results"]).set_index("task")
    assert list(results.index) == ["mass", "calcification", "density"]
    assert results.auc.between(0, 1).all() and (results.split == "test").all()
    assert results.loc["mass", "prompts"] == 6 and results.loc["density", "prompts"] == 8
    predictions = pd.read_parquet(out / "predictions.parquet")
    density = np.stack(predictions[predictions.task == "density"].scores)
    np.testing.assert_allclose(density.sum(1), 1.0, rtol=1e-5)
    assert (out / "plots" / "roc_density.png").is_file()


def test_scores_are_a_softmax_over_cosine_similarities():
    classes = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    images = np.array([[0.1, 3.0, 0.0], [5.0, 0.0, 0.2]])
    scores = zero_shot_scores(images, classes, logit_scale=10.0)
    assert scores.argmax(1).tolist() == [1, 0]
    cosine = images / np.linalg.norm(images, axis=1, keepdims=True)
    expected = np.exp(10 * cosine) / np.exp(10 * cosine).sum(1, keepdims=True)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    binary = zero_shot_scores(images, classes[:2], logit_scale=10.0)  # negative, positive prompts
    assert binary.shape == (2,) and binary[0] > 0.5 > binary[1]


def test_prompts_must_match_the_classes(downstream_data, random_checkpoint, tmp_path):
    base = [
        "--config",
        VINDR,
        f"data.table={downstream_data.table}",
        f"checkpoint={random_checkpoint}",
        f"out={tmp_path}",
        f"embed.cache={tmp_path / 'emb'}",
        "tasks=[mass]",
    ]
    with pytest.raises(ConfigError, match="prompts.mass.*2 classes"):
        main([*base, "prompts.mass=[[no mass]]"])
    with pytest.raises(ConfigError, match="no prompts for task 'malignancy'"):
        main([*base, "tasks=[malignancy]"])


@pytest.mark.parametrize("name", ["vindr", "rsna"])
def test_shipped_configs_give_every_task_its_prompts(name):
    cfg = build_config(ZeroShotConfig, [REPO / f"configs/zeroshot/{name}.yaml"], ["data.table=t", "checkpoint=c"])
    for task in get_tasks(cfg.tasks, cfg.task_classes):  # the config's prompts, else the core's defaults
        assert len(task_prompts(task, cfg)) == task.num_classes, task.name
