"""Co-attention fusion: token shapes and masks, gradients, the text-only baseline, the leakage guard, and one table
holding every baseline."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from downstream.coattention import check_leakage, main, metadata_texts
from downstream.coattention_model import CoAttentionModelConfig, FusionClassifier, HierarchicalImageTokens
from downstream.tasks import get_task
from mvmlm.config import ConfigError
from mvmlm.models.image_encoders import create_image_encoder

CFG = CoAttentionModelConfig(width=16, heads=2, depth=2, fine_grid=[2, 2], coarse_grid=[1, 1], text_depth=1,
                             dropout=0.0)  # fmt: skip
TEXT_DIM = 12


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
    table = pd.DataFrame({
        "dataset": "d", "patient_id": "p", "exam_id": "e", "image_id": ["a", "b"], "path": ["a", "b"],
        "laterality": "L", "view": ["CC", "MLO"], "split": "train", "age": 61.0, "density": "C", "birads": 5,
        "malignant": 1, "pathology": "malignant",
    })  # fmt: skip
    (text,) = metadata_texts(table, ["d/p/e/L"], ["age", "density"], seed=0)
    assert "61" in text and "BI-RADS" not in text and "malignan" not in text.lower()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT + WordPiece tokenizer (as tests/models/conftest.py builds one)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = tmp_path_factory.mktemp("coatt_bert")
    words = [
        "FINDINGS: Standard CC and MLO views of the left right breast. The patient is 61 years old.",
        "Heterogeneously dense scattered fibroglandular extremely fatty tissue. IMPRESSION: findings as described.",
    ]
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(words * 4, vocab_size=150, min_frequency=1, show_progress=False)
    trainer.save_model(str(directory))
    BertTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=150, hidden_size=TEXT_DIM, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def embed_cache(synthetic_dataset, tmp_path_factory):
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table

    root, table = synthetic_dataset("embed", exams=24, seed=0)
    out = tmp_path_factory.mktemp("coatt_cache")
    preprocess_table(table, root, out, PreprocessParams(32, 32), progress=False)
    return cache_folder(out, PreprocessParams(32, 32)) / "table.parquet"


def test_command_reports_coattention_and_all_baselines_in_one_table(embed_cache, tiny_bert, tmp_path):
    out = tmp_path / "run"
    result = main(["--config", "configs/downstream/coattention/tiny.yaml", f"data.table={embed_cache}",
                   f"text.model={tiny_bert}", f"text.cache={tmp_path}/text", f"out={out}",
                   "train.epochs=1"])  # fmt: skip
    models = [r["model"] for r in result["results"]]
    assert models == ["coattention", "image_only", "text_only", "late_concat"]
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in models)
    assert all(0.0 <= r["auc"] <= 1.0 or r["auc"] != r["auc"] for r in result["results"])


def test_command_rejects_leaking_metadata_before_training(embed_cache, tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="leakage"):
        main(["--config", "configs/downstream/coattention/tiny.yaml", f"data.table={embed_cache}",
              f"text.model={tiny_bert}", f"out={tmp_path}", "metadata_fields=[age,birads]"])  # fmt: skip


def test_command_names_a_split_without_labels(embed_cache, tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="split 'nowhere'"):
        main(["--config", "configs/downstream/coattention/tiny.yaml", f"data.table={embed_cache}",
              f"text.model={tiny_bert}", f"out={tmp_path}", "data.val_split=nowhere"])  # fmt: skip


def test_resume_reuses_finished_fusions_and_retrains_changed_ones(embed_cache, tiny_bert, tmp_path, monkeypatch):
    import downstream.coattention as coattention

    argv = ["--config", "configs/downstream/coattention/tiny.yaml", f"data.table={embed_cache}", "train.epochs=1",
            f"text.model={tiny_bert}", f"text.cache={tmp_path}/text", f"out={tmp_path / 'run'}", "bootstrap=0",
            "fusions=[text_only,late_concat]", "plots=false"]  # fmt: skip
    first = main(argv)
    trained, original = [], coattention._train_one

    def recorded(fusion, *args):
        trained.append(fusion)
        return original(fusion, *args)

    monkeypatch.setattr(coattention, "_train_one", recorded)
    again = main([*argv, "resume=true"])
    assert trained == [] and [r["auc"] for r in again["results"]] == [r["auc"] for r in first["results"]]
    (tmp_path / "run" / "finished" / "late_concat.json").unlink()  # interrupted while training the second fusion
    resumed = pd.read_parquet(tmp_path / "run" / "predictions.parquet")  # (from the run just before)
    main([*argv, "resume=true"])
    assert trained == ["late_concat"]  # trained again on the same batches as in the uninterrupted run
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "predictions.parquet"), resumed)
    main([*argv, "resume=true", "train.lr=0.01"])
    assert trained == ["late_concat", "text_only", "late_concat"]
