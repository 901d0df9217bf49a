"""The model card of a bundle (its ``README.md``): what the model predicts, its data with counts per split, its
metrics with CIs, the preprocessing, provenance (command line, git commit) and intended use - generated from the
facts in ``config.json`` (:class:`ModelCardInfo`), so a card edited on the Hub never changes what the model is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from mvmlm.bundle import Bundle

__all__ = ["NOTICE", "ModelCardInfo", "format_ci", "model_card"]

NOTICE = "Research use only: not a medical device, not for diagnosis or any clinical decision."


@dataclass
class ModelCardInfo:
    """The facts a model card shows: what the model predicts, its data, its metrics and where it came from."""

    title: str = "mvmlm model"
    predicts: str = ""  # one sentence: what goes in, what comes out
    counts: dict[str, int] = field(default_factory=dict)  # per split: breasts or exams it was trained / scored on
    metrics: dict[str, str] = field(default_factory=dict)  # name -> value with its CI, e.g. "0.81 [0.74, 0.88]"
    command: str = ""  # the command line of the run
    commit: str = ""  # the git commit of the code that trained it

    @classmethod
    def from_run(cls, run_dir: str | Path, **facts: Any) -> ModelCardInfo:
        """The card facts of a run directory: command line and git commit from its ``provenance.json``."""
        path = Path(run_dir) / "provenance.json"
        provenance = json.loads(path.read_text()) if path.is_file() else {}
        command = provenance.get("command", [])
        return cls(command=" ".join(map(str, command)), commit=provenance.get("git_commit") or "", **facts)


def format_ci(value: float, low: float | None = None, high: float | None = None) -> str:
    """``0.812 [0.741, 0.880]`` (or the bare value where there is no interval)."""
    if low is None or high is None or low != low or high != high:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def model_card(bundle: Bundle) -> ModelCard:
    """The model card of ``bundle``."""
    from mvmlm.bundle import FORMAT_VERSION

    card = bundle.card
    data = ModelCardData(library_name="mvmlm", tags=["mammography", "mvmlm", bundle.kind])
    heads = "\n".join(f"- `{head}`: {', '.join(classes)}" for head, classes in bundle.heads.items()) or "- none"
    counts = "\n".join(f"| {split} | {n} |" for split, n in card.counts.items())
    metrics = "\n".join(f"| {name} | {value} |" for name, value in card.metrics.items())
    prep = bundle.config.get("preprocessing", {})
    crop = "cropped to the breast, " if prep.get("crop") else ""
    vendored = bundle.config.get("text_encoder")
    encoder = bundle.frozen_text_encoder()
    text_encoder = (
        f"`{vendored['model']}` (revision `{vendored['revision']}`), included in `{vendored['vendored']}/`"
        if vendored
        else f"`{encoder.model_name}` (revision `{encoder.revision}`), read from the Hub (cache)"
        if encoder is not None
        else "none"
    )
    body = f"""
# {card.title}

**{NOTICE}**

## What it predicts
{card.predicts or "See the heads below."} Level: one prediction per {bundle.level}.

Heads and classes (columns `prob_<head>_<class>` of `mvmlm predict`):
{heads}

## Data
| split | {"exams" if bundle.level == "exam" else "breasts"} |
|---|---|
{counts or "| (not recorded) | |"}

## Metrics
Point estimate [patient-bootstrap 95 % CI] where the run computed one.

| metric | value |
|---|---|
{metrics or "| (not recorded) | |"}

## Preprocessing
DICOM -> VOI LUT / window, MONOCHROME1 inverted, chest wall on the left, {crop}resized keeping the aspect ratio
and padded to {prep.get("height")} x {prep.get("width")} (as `mvmlm preprocess`).

## Use
```python
import mvmlm
model = mvmlm.load_model("path/or/org-name")
predictions = model.predict(["exam_folder/"])
```
or `mvmlm predict --model path/or/org-name --input exam_folder/ --out predictions/`.

## Provenance
- kind: `{bundle.kind}`, bundle format {FORMAT_VERSION}
- text encoder: {text_encoder}
- command: `{card.command or "not recorded"}`
- git commit: `{card.commit or "not recorded"}`

## Intended use
{NOTICE} Trained and evaluated on the data above only; performance on other populations, devices or
acquisition protocols is unknown.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
