"""Breast-level pretraining samples: CC image, MLO image (either may be missing), one report, ids.

Inputs are files: the image table of a ``mvmlm preprocess`` cache folder (``table.parquet`` with ``cache_path``)
and a report corpus (``parts/part-*.parquet`` with ``breast_id``, ``variant``, ``report``; ``breast_id`` is
``dataset/patient_id/exam_id/laterality``). With ``k`` report variants per breast, one is drawn per epoch.

Every random choice (sample order, report variant, augmentation) is a function of ``(seed, epoch, index)``, not
of a global random state, so the batches are the same with any number of processes or workers and after a
resume in the middle of an epoch. Training loaders drop the last incomplete batch: Accelerate would otherwise
pad it with repeated samples, which a contrastive loss treats as false negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mvmlm.data.device_augment import IDENTITY, DeviceAugment
from mvmlm.data.exams import BreastDataset, build_breasts
from mvmlm.data.leakage import check_patient_splits
from mvmlm.data.preprocess import read_cached_table
from mvmlm.data.transforms import AugmentConfig, RandomAffine, derive_seed
from mvmlm.losses import text_group_ids
from mvmlm.models.text_encoders import TextFeatureCache

__all__ = [
    "read_reports",
    "load_breasts",
    "derive_seed",
    "EpochSampler",
    "PretrainDataset",
    "Collate",
    "device_hook",
    "make_loader",
]

log = logging.getLogger(__name__)


def read_reports(corpus: str | Path) -> dict[str, list[str]]:
    """``breast_id -> [report of variant 0, variant 1, ...]`` from a report corpus folder."""
    parts = sorted((Path(corpus) / "parts").glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(
            f"{corpus}: no report corpus (parts/part-*.parquet); write one with `python -m report_synthesis`"
        )
    frames = []
    for path in parts:
        frame = pd.read_parquet(path)
        missing = {"breast_id", "variant", "report"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: not a report corpus part, lacks column(s) {sorted(missing)}")
        frames.append(frame[["breast_id", "variant", "report"]])
    corpus_rows = pd.concat(frames).drop_duplicates(["breast_id", "variant"]).sort_values(["breast_id", "variant"])
    empty = corpus_rows["report"].isna() | (corpus_rows["report"].str.strip() == "")
    if empty.any():
        first = corpus_rows.loc[empty].iloc[0]
        raise ValueError(f"{corpus}: {int(empty.sum())} empty report(s), e.g. {first.breast_id}#{first.variant}")
    return corpus_rows.groupby("breast_id", sort=True)["report"].agg(list).to_dict()


def load_breasts(table: str | Path, split: str, reports: dict[str, list[str]]) -> pd.DataFrame:
    """Breasts (CC + MLO slots) of ``split`` that have at least one view and a report, sorted by id.

    Adds ``breast_id`` and ``reports`` (the list of variants). Breasts without a report are left out with a
    warning, so a corpus written for a subset of the data can be used.

    Raises:
        SplitError: a patient with images in two splits (validation would see what training saw).
    """
    images = read_cached_table(table)
    check_patient_splits(images, str(table))
    breasts = build_breasts(images)
    breasts = breasts[breasts["split"] == split].reset_index(drop=True)
    has_report = breasts["breast_id"].isin(reports)
    if (~has_report).any():
        log.warning(
            "%s split %r: %d of %d breasts have no report in the corpus and are left out (e.g. %s)",
            table,
            split,
            int((~has_report).sum()),
            len(breasts),
            breasts.loc[~has_report, "breast_id"].iloc[0],
        )
    breasts = breasts[has_report].reset_index(drop=True)
    breasts["reports"] = [reports[b] for b in breasts["breast_id"]]
    return breasts


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` determined by ``(seed, epoch)`` (identity order when not shuffling)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0))
        return iter(torch.randperm(self.n, generator=generator).tolist())


class PretrainDataset(Dataset):
    """Items ``{"images" (2, 1, H, W) CC/MLO, "mask" (2,), "text", "id", "index"}`` over :func:`load_breasts` rows.

    Args:
        breasts: rows from :func:`load_breasts`.
        seed: drives the variant and augmentation draws together with the epoch and the index.
        train: draw a report variant per epoch (else always variant 0).
        augment: random affine parameters (training only; None = no augmentation).
        device: augment on the training device instead: items hold the stored uint16 images and their ``affine``
            ``(2, 5)`` parameters, drawn as the loader would draw them (``augment`` is then unused).
    """

    def __init__(
        self,
        breasts: pd.DataFrame,
        seed: int,
        train: bool,
        augment: AugmentConfig | None = None,
        device: DeviceAugment | None = None,
    ) -> None:
        self.device = device if train else None
        self.views = BreastDataset(breasts, labels=(), device=DeviceAugment(None) if self.device else None)
        self.reports: list[list[str]] = list(breasts["reports"])
        self.seed, self.train, self.augment, self.epoch = seed, train, augment if train else None, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.views)

    def texts(self) -> list[str]:
        """Every report variant of every breast (what the text cache must hold)."""
        return [text for variants in self.reports for text in variants]

    def __getitem__(self, index: int) -> dict:
        item = self.views[index]
        variants = self.reports[index]
        images, text = item["images"], variants[0]
        extra = {}
        if self.train:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index + 1))
            text = variants[int(torch.randint(len(variants), (), generator=generator))]
            present = item["mask"].tolist()
            if self.device is not None:
                draws = [
                    self.device.draw(v.shape, generator) if p else torch.tensor(IDENTITY)
                    for v, p in zip(images, present, strict=True)
                ]
                extra["affine"] = torch.stack(draws)
            elif self.augment is not None:
                affine = RandomAffine(self.augment, generator)
                images = torch.stack([affine(v) if p else v for v, p in zip(images, present, strict=True)])
        return {"images": images, "mask": item["mask"], "text": text, "id": item["id"], "index": index, **extra}


@dataclass
class Collate:
    """Stack items into ``cc, mlo (B, 1, H, W)``, ``cc_present, mlo_present (B,)``, ``texts``, ``text_ids``,
    ``ids``; with a text cache also ``text_hidden (B, L, C)`` and ``text_mask (B, L)`` read from disk."""

    text_cache: TextFeatureCache | None = None

    def __call__(self, items: Sequence[dict]) -> dict:
        images = default_collate([item["images"] for item in items])  # in a worker: straight into shared memory
        masks = torch.stack([item["mask"] for item in items])
        texts = [item["text"] for item in items]
        batch = {
            "cc": images[:, 0],
            "mlo": images[:, 1],
            "cc_present": masks[:, 0],
            "mlo_present": masks[:, 1],
            "texts": texts,
            "text_ids": text_group_ids(texts),
            "ids": [item["id"] for item in items],
            "index": torch.tensor([item["index"] for item in items]),
        }
        if "affine" in items[0]:
            batch["affine"] = torch.stack([item["affine"] for item in items])
        if self.text_cache is not None:
            batch["text_hidden"], batch["text_mask"] = self.text_cache(texts)
        return batch


def device_hook(device: DeviceAugment) -> Callable[[dict], dict]:
    """The engine's batch hook of device augmentation for :class:`Collate` batches (``cc``, ``mlo``, ``affine``)."""

    def on_device(batch: dict) -> dict:
        return {
            **batch,
            "cc": device(batch["cc"], batch["affine"][:, 0]),
            "mlo": device(batch["mlo"], batch["affine"][:, 1]),
        }

    return on_device


def make_loader(
    dataset: PretrainDataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    num_workers: int,
    text_cache: TextFeatureCache | None,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader, shuffled by an :class:`EpochSampler` (the engine sets its epoch) with ``drop_last`` for training,
    in order for evaluation."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, shuffle=train),
        drop_last=train,
        num_workers=num_workers,
        collate_fn=Collate(text_cache),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        pin_memory=pin_memory,
    )
    if train and len(loader) == 0:
        raise ValueError(f"{len(dataset)} training breasts are fewer than one batch of {batch_size}")
    return loader
