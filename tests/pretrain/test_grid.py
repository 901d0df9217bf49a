"""``mvmlm pretrain-grid`` (the MV-MLM Table 1 protocol) on tiny CPU settings: the variants' configs, the table, and a
rerun that skips finished units and redoes only what changed or did not finish."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mvmlm.config import ConfigError
from pretrain import COMMAND as PRETRAIN
from pretrain.grid import main

REPO = Path(__file__).resolve().parents[2]
VARIANTS = REPO / "configs" / "pretrain" / "variants"
#: the paper encoders' configs: each variant is an overlay on them
ENCODERS = ["mvclip_resnet34.yaml", "mvclip_effnet_b5.yaml"]


def _grid_argv(inputs, out: Path, *overrides: str) -> list[str]:
    """Three variants of the tiny encoder, probe and fine-tune on mass at 50 / 100 % over 2 seeds, a few steps."""
    pretrain = [
        f"model.text.model={inputs.text_model}",
        "model.text.hidden_size=32",
        f"data.text_cache={inputs.text_cache}",
        "data.val_split=test",
        "train.epochs=1",
        "train.eval_every=0",
        "eval.train_subset=0",
    ]
    return [
        f"table={inputs.table}",
        f"corpus={inputs.corpus}",
        f"encoders=[{{key: tiny, name: Tiny, config: {REPO / 'configs/pretrain/tiny_cpu.yaml'}}}]",
        f"pretrain={json.dumps(pretrain)}",
        "evaluations.vindr.tasks=[mass]",
        "probe.overrides=[bootstrap=20, plots=false, embed.device=cpu]",
        "finetune.overrides=[train.epochs=1, data.batch_size=8, bootstrap=20, plots=false, train.device=cpu]",
        "fractions=[0.5, 1.0]",
        "seeds=[0, 1]",
        f"out={out}",
        *overrides,
    ]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_variant_overlays_switch_the_cc_mlo_term_and_the_token_transformer_layers(encoder):
    expected = {"clip": (0.0, 0), "mv_clip": (1.0, 0), "mv_clip_tr": (1.0, 4)}
    for variant, (weight, depth) in expected.items():
        files = ["--config", str(REPO / "configs/pretrain" / encoder), "--config", str(VARIANTS / f"{variant}.yaml")]
        cfg = PRETRAIN.parse([*files, "data.table=t.parquet", "data.corpus=c"])
        assert (cfg.loss.image_image_weight, cfg.model.tokens.depth) == (weight, depth), variant
        assert cfg.model.tokens.num_tokens == 256 and cfg.model.image.image_size == [1520, 912]


@pytest.fixture(scope="module")
def grid(pretrain_inputs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("grid") / "table1"
    return out, main(_grid_argv(pretrain_inputs, out))


def test_the_grid_pretrains_each_variant_and_writes_a_table_shaped_like_table_1(grid):
    out, summary = grid
    assert summary["failed"] == {} and summary["reused"] == []
    results = pd.read_csv(out / "results.csv")
    assert results.method.unique().tolist() == ["CLIP", "MV-CLIP", "MV-CLIP+Tr"]
    assert len(results) == 3 * 2 * 2  # variants x protocols x fractions (one task)
    at_half = results[results.fraction == 0.5]
    assert (at_half.runs == 2).all() and at_half.auc_std.notna().all()  # two seeds: mean and sd
    assert (results.auc_low <= results.auc_mean).all() and (results.auc_mean <= results.auc_high).all()
    text = (out / "results.md").read_text()
    assert "### Linear probe: test AUC, mean ± sd over seeds" in text and "### Fine-tune: the seeds' mean" in text
    assert "| Encoder | Method | mass 50% | mass 100% |" in text
    configs = {
        v: json.loads((out / "tiny" / v / "pretrain" / "settings.json").read_text()) for v in ("clip", "mv_clip_tr")
    }
    assert configs["clip"]["settings"]["loss"]["image_image_weight"] == 0.0
    assert configs["clip"]["settings"]["model"]["tokens"]["depth"] == 0
    assert configs["mv_clip_tr"]["settings"]["model"]["tokens"]["depth"] == 2  # the encoder config's transformer


def test_a_rerun_skips_finished_units_and_redoes_only_unfinished_or_changed_ones(grid, pretrain_inputs):
    out, first = grid
    again = main(_grid_argv(pretrain_inputs, out))
    assert again["seconds"] == {} and len(again["reused"]) == 9  # 3 x (pretrain, probe, finetune)
    assert pd.DataFrame(again["results"]).equals(pd.DataFrame(first["results"]))

    (out / "tiny" / "mv_clip" / "vindr" / "finetune" / "metrics.json").unlink()  # as if killed before the end
    resumed = main(_grid_argv(pretrain_inputs, out))
    assert list(resumed["seconds"]) == ["tiny/mv_clip/vindr/finetune"]
    # finetune's own record of its finished units: the interrupted run continues, nothing is trained again
    assert pd.read_csv(out / "results.csv").equals(pd.DataFrame(first["results"]))

    changed = main(_grid_argv(pretrain_inputs, out, "only=[tiny/clip]", "protocols=[probe]", "seeds=[0, 1, 2]"))
    assert list(changed["seconds"]) == ["tiny/clip/vindr/probe"]  # its pretraining is reused
    results = pd.read_csv(out / "results.csv")
    assert set(results.method) == {"CLIP"} and (results.runs[results.fraction == 0.5] == 3).all()

    # rows `only` leaves out are read, never run nor removed: here those finished with these settings
    back = main(_grid_argv(pretrain_inputs, out, "only=[tiny/mv_clip]"))
    assert back["seconds"] == {} and back["reused"] == [
        f"tiny/mv_clip/{u}" for u in ("pretrain", "vindr/probe", "vindr/finetune")
    ]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 12 - 2  # CLIP's probe now holds other settings (3 seeds): its 2 cells are left out
    assert (out / "tiny" / "clip" / "vindr" / "probe" / "metrics.json").is_file()


def test_a_grid_without_evaluations_or_rows_fails_before_training(pretrain_inputs, tmp_path):
    argv = _grid_argv(pretrain_inputs, tmp_path / "g")
    with pytest.raises(ConfigError, match="evaluations"):
        main([a for a in argv if not a.startswith("evaluations.")])
    with pytest.raises(ConfigError, match="only"):
        main([*argv, "only=[nothing/*]"])
    assert not (tmp_path / "g").exists()
