"""Co-attention fusion: token shapes and masks, gradients, the text-only baseline, the leakage guard, the encoder
weights ``encoder.init`` names, one table holding every baseline, resume per fusion, and a run whose validation AUC
is never defined."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch

from downstream.coattention.config import CoAttentionConfig, CoAttentionModelConfig
from downstream.coattention.data import check_leakage, metadata_texts
from downstream.coattention.model import FusionClassifier, HierarchicalImageTokens
from downstream.coattention.run import build_model, main
from downstream.common.config import EncoderConfig
from downstream.common.tasks import get_task
from mvmlm.config import ConfigError
from mvmlm.errors import RunFinished
from mvmlm.models.image_encoders import create_image_encoder

from .conftest import REPO, tiny_config

TINY = str(REPO / "configs/coattention/tiny.yaml")

CFG = CoAttentionModelConfig(
    width=16, heads=2, depth=2, fine_grid=[2, 2], coarse_grid=[1, 1], text_depth=1, dropout=0.0
)
TEXT_DIM = 12
#: truth exams of the synthetic EMBED set: its screening cohort keeps 25, with a malignant breast in the test split
EMBED_EXAMS = 40


def _model(fusion: str) -> FusionClassifier:
    torch.manual_seed(0)
    return FusionClassifier(fusion, CFG, 2, create_image_encoder("timm:test_resnet", in_chans=1), TEXT_DIM).eval()


def _inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    images = torch.rand(3, 2, 1, 32, 32)
    view_mask = torch.tensor([[True, True], [True, False], [False, True]])
    hidden = torch.randn(3, 5, TEXT_DIM)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    return images, view_mask, hidden, text_mask


def test_hierarchical_tokens_cover_both_scales_and_mask_absent_views():
    tokens = HierarchicalImageTokens(create_image_encoder("timm:test_resnet", in_chans=1), CFG)
    images, view_mask, _, _ = _inputs()
    out, mask = tokens(images, view_mask)
    assert tokens.tokens_per_view == 4 + 1
    assert out.shape == (3, 2 * 5, 16) and mask.shape == (3, 10)
    assert mask[1].tolist() == [True] * 5 + [False] * 5 and mask[2].tolist() == [False] * 5 + [True] * 5


def test_coattention_forward_backward_and_padding_is_ignored():
    model = _model("coattention")
    assert len(model.blocks) == 2
    images, view_mask, hidden, text_mask = _inputs()
    logits = model(images, view_mask, hidden, text_mask)
    assert logits.shape == (3, 2)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.image.encoder.parameters())
    assert next(model.image.encoder.parameters()).grad.abs().sum() > 0
    assert model.text.channel_map.weight.grad.abs().sum() > 0
    with torch.no_grad():
        changed_images, changed_hidden = images.clone(), hidden.clone()
        changed_images[1, 1] = torch.rand(1, 32, 32)  # item 1's absent MLO
        changed_hidden[2, 1:] = torch.randn(4, TEXT_DIM)  # item 2's padded text positions
        again = model(changed_images, view_mask, changed_hidden, text_mask)
        torch.testing.assert_close(again, model(images, view_mask, hidden, text_mask))
        changed_images[0, 0] = 0.0  # a present view does matter
        assert not torch.allclose(model(changed_images, view_mask, hidden, text_mask)[0], again[0])


def test_text_only_baseline_sees_only_metadata():
    model = _model("text_only")
    assert model.image is None and len(model.blocks) == 0
    images, view_mask, hidden, text_mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(images, view_mask, hidden, text_mask), model(None, None, hidden, text_mask))
    late = _model("late_concat")
    assert len(late.blocks) == 0 and late.image is not None and late.text is not None


def test_leakage_guard_rejects_target_and_determining_fields():
    check_leakage(["age", "density"], get_task("malignancy"))
    with pytest.raises(ConfigError, match="pathology"):
        check_leakage(["age", "pathology"], get_task("malignancy"))
    with pytest.raises(ConfigError, match="calc_morphology"):
        check_leakage(["calc_morphology"], get_task("calcification"))
    with pytest.raises(ConfigError, match="calcification"):
        check_leakage(["calcification"], get_task("calcification"))


def test_metadata_text_states_selected_fields_only():
    table = pd.DataFrame(
        {
            "dataset": "d",
            "patient_id": "p",
            "exam_id": "e",
            "image_id": ["a", "b"],
            "path": ["a", "b"],
            "laterality": "L",
            "view": ["CC", "MLO"],
            "split": "train",
            "age": 61.0,
            "density": "C",
            "birads": 5,
            "malignant": 1,
            "pathology": "malignant",
        }
    )
    (text,) = metadata_texts(table, ["d/p/e/L"], ["age", "density"], seed=0)
    assert "61" in text and "BI-RADS" not in text and "malignan" not in text.lower()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT whose vocabulary holds the words of the metadata texts."""
    from mvmlm.models.tiny_text import write_tiny_text_model

    words = [
        "FINDINGS: Standard CC and MLO views of the left right breast. The patient is 61 years old.",
        "Heterogeneously dense scattered fibroglandular extremely fatty tissue. IMPRESSION: findings as described.",
    ]
    directory = tmp_path_factory.mktemp("coatt_bert")
    return write_tiny_text_model(directory, words, hidden_size=TEXT_DIM, layers=1, heads=2, max_positions=64)


@pytest.fixture(scope="module")
def embed_cache(synthetic_dataset, tmp_path_factory):
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table

    root, table = synthetic_dataset("embed", exams=EMBED_EXAMS, seed=0)
    out = tmp_path_factory.mktemp("coatt_cache")
    preprocess_table(table, root, out, PreprocessParams(32, 32), progress=False)
    return cache_folder(out, PreprocessParams(32, 32)) / "table.parquet"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _encoder_digest(encoder: EncoderConfig) -> str:
    model = build_model("image_only", CoAttentionConfig(encoder=encoder, model=CFG), TEXT_DIM)
    return _digest(model.image.encoder.state_dict())


def _seeded_encoder_digest(seed: int) -> str:
    torch.manual_seed(seed)
    return _digest(create_image_encoder("timm:test_resnet", in_chans=1).state_dict())


@pytest.fixture(scope="module")
def mvclip_checkpoint(tmp_path_factory):
    """A saved tiny MV-CLIP whose image encoder is not any seeded init (its weights are shifted)."""
    from mvmlm.models.mvclip import MVCLIP

    torch.manual_seed(7)
    model = MVCLIP(tiny_config(tmp_path_factory.mktemp("no_text_model")))
    with torch.no_grad():
        for param in model.image.encoder.parameters():
            param.add_(0.5)
    return model.save(tmp_path_factory.mktemp("coatt_mvclip") / "model")


def test_mvclip_encoder_init_pretrained_is_the_checkpoint_and_random_is_a_seeded_init(mvclip_checkpoint):
    from safetensors.torch import load_file

    saved = load_file(str(mvclip_checkpoint / "model.safetensors"))
    prefix = "image.encoder."
    checkpoint = _digest({k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)})
    pretrained = _encoder_digest(EncoderConfig(source="mvclip", checkpoint=str(mvclip_checkpoint), init="pretrained"))
    random = _encoder_digest(EncoderConfig(source="mvclip", checkpoint=str(mvclip_checkpoint), init="random", seed=3))
    assert pretrained == checkpoint
    assert random != checkpoint and random == _seeded_encoder_digest(3)


def test_timm_encoder_init_pretrained_loads_its_weights_and_random_does_not(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(11)
    trunk = create_image_encoder("timm:test_resnet", in_chans=1).trunk.state_dict()
    weights = {k: v + 0.5 if v.is_floating_point() else v for k, v in trunk.items()}
    path = tmp_path / "weights.safetensors"
    save_file(weights, str(path))
    kwargs = {"in_chans": 1, "pretrained_path": str(path)}
    pretrained = _encoder_digest(EncoderConfig(source="timm", name="timm:test_resnet", kwargs=kwargs))
    random = _encoder_digest(
        EncoderConfig(source="timm", name="timm:test_resnet", kwargs=kwargs, init="random", seed=3)
    )
    assert pretrained == _digest({f"trunk.{k}": v for k, v in weights.items()})
    assert random != pretrained and random == _seeded_encoder_digest(3)


def _argv(table, tiny_bert, tmp_path, *extra: str) -> list[str]:
    return ["--config", TINY, f"data.table={table}", f"text.model={tiny_bert}", f"text.cache={tmp_path}/text", *extra]


def test_command_reports_coattention_and_all_baselines_in_one_table(embed_cache, tiny_bert, tmp_path):
    out = tmp_path / "run"
    result = main(_argv(embed_cache, tiny_bert, tmp_path, f"out={out}", "train.epochs=1"))
    models = [r["model"] for r in result["results"]]
    assert models == ["coattention", "image_only", "text_only", "late_concat"]
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in models)
    assert all(0.0 <= r["auc"] <= 1.0 or r["auc"] != r["auc"] for r in result["results"])
    assert all((out / "units" / m / "val_log.jsonl").is_file() for m in models)
    assert not any((out / "units" / m / "checkpoints").exists() for m in models)  # a finished fusion keeps none


def test_command_rejects_leaking_metadata_before_training(embed_cache, tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="leakage"):
        main(_argv(embed_cache, tiny_bert, tmp_path, f"out={tmp_path}/run", "metadata_fields=[age,birads]"))


def test_command_names_a_split_without_labels(embed_cache, tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="split 'nowhere'"):
        main(_argv(embed_cache, tiny_bert, tmp_path, f"out={tmp_path}/run", "data.val_split=nowhere"))


@pytest.mark.parametrize(
    ("old", "new"),
    [("train.lr=0.01", "optim.lr"), ("train.batch_size=4", "data.batch_size"), ("resume=true", "train.resume")],
)
def test_old_keys_name_their_new_place(old, new):
    from downstream.coattention import COMMAND

    with pytest.raises(ConfigError, match=new.replace(".", r"\.")) as error:
        COMMAND.parse(["--config", TINY, "data.table=t.parquet", old])
    assert "\n" not in str(error.value)


def test_resume_reuses_finished_fusions_and_retrains_changed_ones(embed_cache, tiny_bert, tmp_path, monkeypatch):
    import downstream.coattention.run as coattention

    argv = _argv(
        embed_cache,
        tiny_bert,
        tmp_path,
        "train.epochs=1",
        f"out={tmp_path / 'run'}",
        "bootstrap=0",
        "fusions=[text_only,late_concat]",
        "plots=false",
    )
    first = main(argv)
    trained, original = [], coattention.train_fusion

    def recorded(fusion, *args):
        trained.append(fusion)
        return original(fusion, *args)

    monkeypatch.setattr(coattention, "train_fusion", recorded)
    with pytest.raises(RunFinished):  # finished with these settings: nothing to do, nothing touched
        main([*argv, "train.resume=latest"])
    assert trained == []
    uninterrupted = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    (tmp_path / "run" / "finished" / "late_concat.json").unlink()  # interrupted while training the second fusion
    (tmp_path / "run" / "metrics.json").unlink()
    again = main([*argv, "train.resume=latest"])
    assert [r["auc"] for r in again["results"]] == [r["auc"] for r in first["results"]]
    assert trained == ["late_concat"]  # trained again on the same batches as in the uninterrupted run
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "predictions.parquet"), uninterrupted)
    main([*argv, "train.resume=latest", "optim.lr=0.01"])
    assert trained == ["late_concat", "text_only", "late_concat"]


def test_undefined_validation_auc_keeps_the_final_weights(embed_cache, tiny_bert, tmp_path):
    from mvmlm.data import schema

    table = schema.read_table(embed_cache)
    one_class = embed_cache.parent / "val_one_class.parquet"
    schema.write_table(table.assign(malignant=table.malignant.where(table.split != "val", 0)), one_class)
    argv = ["train.epochs=2", "fusions=[text_only]", "bootstrap=0"]
    undefined = main(_argv(one_class, tiny_bert, tmp_path, f"out={tmp_path}/nan", *argv))
    # the same training validated once, after the last step: its best are the final weights
    final = main(_argv(embed_cache, tiny_bert, tmp_path, f"out={tmp_path}/final", "train.eval_every=1000", *argv))
    log = (tmp_path / "nan/units/text_only/val_log.jsonl").read_text()
    evaluations = [json.loads(line) for line in log.splitlines()]
    assert len(evaluations) == 2 and all(e["val/auc"] != e["val/auc"] for e in evaluations)
    pd.testing.assert_frame_equal(
        *(pd.read_parquet(tmp_path / run / "predictions.parquet") for run in ("nan", "final"))
    )
    assert undefined["results"][0]["auc"] == final["results"][0]["auc"]


@pytest.fixture
def interrupted(embed_cache, tiny_bert, tmp_path, monkeypatch):
    """argv of a text-only run into ``tmp_path/run`` that died validating its second epoch (its first epoch's
    checkpoint is on disk)."""
    import downstream.coattention.run as coattention

    argv = _argv(
        embed_cache, tiny_bert, tmp_path, "train.epochs=2", "fusions=[text_only]", "bootstrap=0", f"out={tmp_path}/run"
    )
    calls, auc = [], coattention.auc

    def dies_on_second_call(labels, probs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return auc(labels, probs)

    with monkeypatch.context() as patch:
        patch.setattr(coattention, "auc", dies_on_second_call)
        with pytest.raises(RuntimeError, match="killed"):
            main(argv)
    assert list((tmp_path / "run/units/text_only/checkpoints").iterdir())
    return argv


def test_resume_continues_an_interrupted_fusion_from_its_checkpoint(interrupted, tmp_path, caplog):
    with pytest.raises(ConfigError, match="already holds a training run"):
        main(interrupted)  # train.resume=none would start over the interrupted run
    with caplog.at_level("INFO", logger="mvmlm.training.engine"):
        main([*interrupted, "train.resume=latest"])
    assert "resumed from" in caplog.text
    main([*interrupted[:-1], f"out={tmp_path}/whole"])
    pd.testing.assert_frame_equal(
        *(pd.read_parquet(tmp_path / run / "predictions.parquet") for run in ("run", "whole"))
    )


def test_resume_trains_an_interrupted_fusion_again_when_its_settings_changed(interrupted, caplog):
    with caplog.at_level("INFO"):
        main([*interrupted, "train.resume=latest", "optim.lr=0.01"])
    assert "trained with other settings" in caplog.text and "resumed from" not in caplog.text


def test_device_augmentation_trains_as_loader_augmentation(embed_cache, tiny_bert, tmp_path, monkeypatch):
    from mvmlm.data.device_augment import DeviceAugment

    hooked, images = [], DeviceAugment.images
    monkeypatch.setattr(DeviceAugment, "images", lambda self, batch: hooked.append(1) or images(self, batch))
    argv = ["train.epochs=1", "fusions=[coattention]", "bootstrap=0", "data.augment.enabled=true"]
    losses = {}
    for where in ("loader", "device"):
        main(_argv(embed_cache, tiny_bert, tmp_path, f"out={tmp_path}/{where}", f"data.augment_on={where}", *argv))
        log = (tmp_path / where / "units" / "coattention" / "train_log.jsonl").read_text().splitlines()
        losses[where] = [json.loads(line)["loss"] for line in log]
    assert len(hooked) == len(losses["device"])  # one batch per step, augmented on the device
    assert losses["device"] and losses["device"] == pytest.approx(losses["loader"], rel=1e-4)
