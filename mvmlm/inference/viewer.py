"""What the web viewer (``mvmlm serve``) shows for one exam, computed without the web: the four views in the
radiologist's layout with their heatmaps, the probabilities per head and side, the nearest reports of a corpus and
the files that could not be used, with their reasons.

Everything comes from the bundle API (:meth:`~mvmlm.bundle.Bundle.predict`, :meth:`~mvmlm.bundle.Bundle.explain`,
:meth:`~mvmlm.bundle.Bundle.embed`); this module only arranges it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.bundle import Bundle
from mvmlm.data.exams import SLOT_VIEWS
from mvmlm.errors import InputError
from mvmlm.inference.explain import Explanation, overlay
from mvmlm.inference.inputs import collect
from mvmlm.inference.zeroshot import prompts_for, supports_zero_shot

__all__ = ["LAYOUT", "ViewPanel", "ExamResult", "ReportIndex", "analyse_exam", "example_exams"]

#: the radiologist's hanging: row 1 R-CC, L-CC; row 2 R-MLO, L-MLO (chest walls facing each other)
LAYOUT: tuple[tuple[str, str], ...] = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_PROB = "prob_"


@dataclass
class ViewPanel:
    """One view of the layout: the preprocessed image (chest wall on the left, as the model reads it), its heatmap
    and a caption (what the map explains, or why the view is missing)."""

    laterality: str
    view: str
    caption: str
    image: np.ndarray | None = None  # (H, W) in [0, 1]
    heatmap: np.ndarray | None = None  # (H, W) in [0, 1]

    @property
    def name(self) -> str:
        return f"{self.laterality}-{self.view}"

    def picture(self, heatmap: bool = True) -> np.ndarray | None:
        """RGB uint8 as hung: a right breast mirrored so that its chest wall faces the left breast's."""
        if self.image is None:
            return None
        if heatmap and self.heatmap is not None:
            rgb = overlay(self.image, self.heatmap)
        else:
            rgb = np.repeat((np.clip(self.image, 0.0, 1.0) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
        return np.ascontiguousarray(rgb[:, ::-1] if self.laterality == "R" else rgb)


@dataclass
class ExamResult:
    """Everything the viewer shows for one exam."""

    panels: list[ViewPanel]  # in LAYOUT order
    probabilities: pd.DataFrame  # head, class, R, L (zero-shot scores for MV-CLIP bundles)
    skipped: pd.DataFrame  # file (name only), reason
    reports: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # side -> (similarity, report)
    notes: list[str] = field(default_factory=list)  # what could not be shown and why


class ReportIndex:
    """The reports of a corpus folder (``parts/part-*.parquet``, column ``report``) embedded once by an MV-CLIP
    bundle's text tower, searched by cosine similarity. Only report texts are kept, never their breast ids."""

    def __init__(self, bundle: Bundle, corpus: str | Path, batch_size: int = 64) -> None:
        import torch

        parts = sorted((Path(corpus) / "parts").glob("part-*.parquet"))
        if not parts:
            raise InputError(f"{corpus}: no report corpus (parts/part-*.parquet); write one with `mvmlm reports`")
        self.texts = sorted(set(pd.concat(pd.read_parquet(p, columns=["report"]) for p in parts)["report"].dropna()))
        with torch.no_grad():
            chunks = [
                bundle.module.encode_text(self.texts[i : i + batch_size], normalize=True).float().cpu()
                for i in range(0, len(self.texts), batch_size)
            ]
        self.embeddings = torch.cat(chunks).numpy()

    def nearest(self, embedding: np.ndarray, k: int = 3) -> list[tuple[float, str]]:
        """The ``k`` reports most similar to an image embedding, with their cosine similarity."""
        query = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        similarity = self.embeddings @ query
        return [(float(similarity[i]), self.texts[i]) for i in np.argsort(-similarity)[:k]]


def _one_exam(paths: Sequence[str]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The images of the first exam among ``paths`` and every file not used, with its reason."""
    inputs = collect(list(paths))
    skipped = list(inputs.skipped)
    if inputs.images.empty:
        return inputs.images, skipped
    keys = inputs.images[["patient_id", "exam_id"]].apply(tuple, axis=1)
    first = keys == keys.iloc[0]
    skipped += [
        {"path": p, "reason": "another exam than the first one uploaded; the viewer shows one exam at a time"}
        for p in inputs.images.loc[~first, "path"]
    ]
    return inputs.images[first].reset_index(drop=True), skipped


def _probabilities(predictions: pd.DataFrame, heads: dict[str, list[str]]) -> pd.DataFrame:
    """One row per head and class, one column per side (R, L), from ``predict``'s breast rows (whose ``prob_``
    columns follow the heads' class order)."""
    breasts = predictions[predictions["level"] == "breast"].set_index("laterality")
    columns = [c for c in breasts.columns if c.startswith(_PROB)]
    pairs = [(head, name) for head, classes in heads.items() for name in classes]
    if len(pairs) != len(columns):  # e.g. zero-shot tasks of an MV-CLIP bundle: the column names tell
        pairs = [(c.removeprefix(_PROB), "") for c in columns]
    rows = [
        {"head": head, "class": name} | {side: round(float(breasts.at[side, column]), 3) for side in breasts.index}
        for (head, name), column in zip(pairs, columns, strict=True)
    ]
    return pd.DataFrame(rows, columns=["head", "class", "R", "L"])


def _panels(images: pd.DataFrame, explanation: Explanation, skipped: pd.DataFrame) -> list[ViewPanel]:
    """The four panels of the layout: a view's map and caption, or the reason it is missing."""
    reasons = dict(zip(skipped["path"], skipped["reason"], strict=True))
    views = explanation.views
    panels = []
    for side, view in LAYOUT:
        found = views.index[(views["laterality"] == side) & (views["view"] == view)] if len(views) else []
        if len(found):  # several maps (MV-CLIP: one per zero-shot class): the most similar text's
            best = views.loc[found, "score"].idxmax()
            row = views.loc[best]
            caption = f"{side}-{view} · {row['method']}: {row['target']} ({row['score']:.2f})"
            if pd.notna(row.get("attention")):
                caption += f" · attention {row['attention']:.2f}"
            panels.append(ViewPanel(side, view, caption, explanation.images[best], explanation.maps[best]))
            continue
        files = images.loc[(images["laterality"] == side) & images["view"].isin(SLOT_VIEWS[view]), "path"]
        reason = next((reasons[p] for p in files if p in reasons), "not in the upload")
        panels.append(ViewPanel(side, view, f"{side}-{view}: {reason}"))
    return panels


def _explained(bundle: Bundle, prompt: str) -> dict[str, str]:
    """What the maps explain: ``prompt`` (MV-CLIP; '' = every zero-shot class); for a two-class head the finding
    (its second class) on every view, so that both sides show where the model sees it; else the predicted class."""
    if supports_zero_shot(bundle):
        return {"prompt": prompt} if prompt else {}
    classes = next(iter(bundle.heads.values()), [])
    return {"target": classes[1]} if len(classes) == 2 else {}


def analyse_exam(
    bundle: Bundle,
    paths: Sequence[str],
    *,
    method: str = "gradcam",
    prompt: str = "",
    reports: ReportIndex | None = None,
    device: str = "auto",
) -> ExamResult:
    """The viewer's content for the first exam among ``paths`` (DICOM files); bad files are listed, not raised."""
    images, skipped = _one_exam(paths)
    result = ExamResult([], pd.DataFrame(columns=["head", "class", "R", "L"]), pd.DataFrame())
    explanation = Explanation(pd.DataFrame(columns=["laterality", "view"]), [], [], pd.DataFrame())
    chosen, common = images["path"].tolist(), {"device": device, "workers": 0}
    if chosen:
        try:
            heads = {t: list(c) for t, c in prompts_for(bundle).items()} if supports_zero_shot(bundle) else bundle.heads
            result.probabilities = _probabilities(bundle.predict(chosen, **common), heads)
        except InputError as exc:
            result.notes.append(f"no probabilities: {exc}")
        try:
            explanation = bundle.explain(chosen, method=method, **common, **_explained(bundle, prompt))
        except InputError as exc:
            result.notes.append(f"no heatmaps: {exc}")
        if reports is not None:
            breasts = bundle.embed(chosen, **common)
            for row in breasts[breasts["level"] == "breast"].itertuples():
                result.reports[row.laterality] = reports.nearest(np.asarray(row.embedding))
    table = pd.DataFrame(skipped + explanation.skipped.to_dict("records"), columns=["path", "reason"])
    table = table.drop_duplicates("path").reset_index(drop=True)
    result.panels = _panels(images, explanation, table)
    result.skipped = pd.DataFrame({"file": [Path(p).name for p in table["path"]], "reason": table["reason"]})
    return result


def example_exams(folder: str | Path, count: int = 2, seed: int = 0, size: tuple[int, int] = (256, 160)) -> dict:
    """``count`` synthetic exams (real DICOM files, :func:`mvmlm.data.synthetic.write_synthetic`) written into
    ``folder``, exams with all four views first: a display name (its planted findings, no identifier) -> the
    exam's file paths."""
    from mvmlm.data.synthetic import write_synthetic

    table = write_synthetic("vindr", folder, exams=2 * count, seed=seed, height=size[0], width=size[1])
    exams = sorted((exam for _, exam in table.groupby("exam_id", sort=False)), key=len, reverse=True)[:count]
    examples = {}
    for number, exam in enumerate(exams, start=1):
        findings = [
            f"{side}: {', '.join(found)}"
            for side, breast in exam.groupby("laterality")
            if (found := [f for f in ("mass", "calcification") if (breast[f] == 1).any()])
        ]
        name = f"example {number} ({len(exam)} views): {'; '.join(findings) or 'no finding'}"
        examples[name] = [str(Path(folder) / p) for p in exam["path"]]
    return examples
