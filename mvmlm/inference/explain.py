"""``mvmlm explain --model M --input PATH... --out DIR``: where a bundle looks, one heatmap per view.

Classifier bundles (``finetune``, ``multiview``) get Grad-CAM or Grad-CAM++ (the ``grad-cam`` package) on the last
feature map of their image encoder, for the predicted class (or ``target``) of each breast; a four-view model explains
each view with the head of its own side and reports its attention weight beside the map. MV-CLIP bundles get
text-prompt maps: Grad-CAM of the cosine similarity between the view's image embedding and the ``prompt``'s text
embedding, or without a prompt one map per zero-shot class (its prompt ensemble's class embedding,
:func:`mvmlm.inference.zeroshot.prompts_for`), the files then named ``<unit>_<slot>_<task>_<class>``. Every map is
``(H, W)`` in [0, 1] in the pixels of the preprocessed view (the image the model reads).

Images are read as ``mvmlm predict`` reads them (:class:`~mvmlm.inference.views.ViewsDataset`). ``OUT`` gets one
``<unit>_<slot>.png`` overlay and ``<unit>_<slot>.npy`` map per view and ``explanations.csv`` (one row per view:
unit index, slot, laterality, view, image id, target, score, attention, the two file names) plus ``skipped.csv``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from mvmlm.bundle import Bundle, BundleError, load_model
from mvmlm.inference.views import NothingPredictedError, ReadOptions, load_units, view_batches
from mvmlm.inference.zeroshot import class_embeddings, prompts_for
from mvmlm.models.image_encoders import ImageEncoder
from mvmlm.registry import Registry

__all__ = [
    "METHODS",
    "EXPLAINERS",
    "CamPass",
    "ViewMap",
    "Explanation",
    "feature_layer",
    "explain_views",
    "bundle_slots",
    "explain_paths",
    "overlay",
    "write_explanation",
    "main",
]

log = logging.getLogger(__name__)

#: CAM method name -> pytorch-grad-cam class
METHODS: Registry[type[BaseCAM]] = Registry("CAM method")
METHODS.add("gradcam", GradCAM)
METHODS.add("gradcam++", GradCAMPlusPlus)


@dataclass
class CamPass:
    """One pytorch-grad-cam run: ``model`` maps the flattened views ``(B * V, 1, H, W)`` to one output row per target,
    ``layer`` is the feature map explained; per cam row (one per image the layer saw): the ``(row, view)`` it belongs
    to (None: not kept, e.g. a view of the other side), what it explains (class name or prompt) and that score
    (probability or cosine similarity)."""

    model: nn.Module
    layer: nn.Module
    targets: list[Callable[[Tensor], Tensor]]
    views: list[tuple[int, int] | None]
    labels: list[str]
    scores: list[float]


@dataclass
class ViewMap:
    """The heatmap of one view."""

    row: int  # batch row (breast or exam)
    view: int  # slot index
    heatmap: np.ndarray  # (H, W) float32 in [0, 1]
    target: str
    score: float
    attention: float | None = None  # four-view models: the view's attention weight


class _Views(nn.Module):
    """``fn(images (B, V, 1, H, W))`` as a module of the flattened views ``(B * V, 1, H, W)`` (grad-cam reads the
    map size from the last two input dims and the device from ``module``'s parameters)."""

    def __init__(self, module: nn.Module, views: int, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.module, self.views, self.fn = module, views, fn

    def forward(self, flat: Tensor) -> Tensor:
        return self.fn(flat.view(-1, self.views, *flat.shape[1:]))


class _Similarity:
    """A grad-cam target: the cosine similarity of one output row (an image embedding) to ``concept`` (as the
    package's tutorial target ``SimilarityToConceptTarget``, which the package itself does not ship)."""

    def __init__(self, concept: Tensor) -> None:
        self.concept = concept

    def __call__(self, output: Tensor) -> Tensor:
        return torch.nn.functional.cosine_similarity(output, self.concept.to(output), dim=0)


def feature_layer(module: nn.Module) -> ImageEncoder:
    """The encoder whose output ``(N, C, h, w)`` is the last feature map of an image backbone (a timm / Mamba
    encoder, an MV-CLIP image tower, or a wrapper holding one as ``module``, ``tower`` or ``encoder``)."""
    while not isinstance(module, ImageEncoder):
        inner = next((getattr(module, name) for name in ("tower", "encoder", "module") if hasattr(module, name)), None)
        if not isinstance(inner, nn.Module):
            raise BundleError(f"{type(module).__name__} has no image encoder whose feature map could be explained")
        module = inner
    return module


def _classes(bundle: Bundle, head: str, target: str | None, probs: Tensor) -> list[int]:
    """Per row the class index explained: ``target`` (a class name of ``head``) or the most probable class."""
    names = bundle.heads[head]
    if target is None:
        return probs.argmax(dim=-1).tolist()
    if target not in names:
        raise BundleError(f"target {target!r} is not a class of head {head!r}; classes: {', '.join(names)}")
    return [names.index(target)] * len(probs)


#: bundle kind -> ``fn(bundle, images, mask, options) -> CamPass list``
EXPLAINERS: Registry[Callable[..., list[CamPass]]] = Registry("explainer")


@EXPLAINERS.register("finetune")
def _finetune(bundle: Bundle, images: Tensor, mask: Tensor, target: str | None = None, **_: Any) -> list[CamPass]:
    module = bundle.module
    (head,) = bundle.heads
    with torch.no_grad():
        probs = module(images, mask).float().softmax(dim=-1)
    classes = _classes(bundle, head, target, probs)
    model = _Views(module, images.shape[1], lambda views: module(views, mask))
    present = [tuple(v) for v in mask.nonzero().tolist()]  # the backbone embeds present views in row-major order
    names = [bundle.heads[head][classes[b]] for b, _ in present]
    scores = [float(probs[b, classes[b]]) for b, _ in present]
    targets = [ClassifierOutputTarget(k) for k in classes]
    return [CamPass(model, feature_layer(module.backbone), targets, present, names, scores)]


@EXPLAINERS.register("multiview")
def _multiview(
    bundle: Bundle, images: Tensor, mask: Tensor, target: str | None = None, head: str | None = None, **_: Any
) -> list[CamPass]:
    module = bundle.module
    head = head or next(iter(bundle.heads))
    if head not in bundle.heads:
        raise BundleError(f"head {head!r} is not a head of this bundle; heads: {', '.join(bundle.heads)}")
    with torch.no_grad():
        probs = module(images, mask)["logits"][head].float().softmax(dim=-1)  # (B, 2, K)
    slots = bundle_slots(bundle)
    passes = []
    for s, side in enumerate(("L", "R")):
        classes = _classes(bundle, head, target, probs[:, s])
        targets = [ClassifierOutputTarget(k) for k in classes]

        def side_logits(views: Tensor, s: int = s) -> Tensor:
            return module(views, mask)["logits"][head][:, s]

        model = _Views(module, images.shape[1], side_logits)
        for name, index in module.groups.items():  # one backbone per view group, each called on (B * len(index))
            rows = [(b, v) for b in range(len(images)) for v in index]
            views = [(b, v) if slots[v].startswith(side) and bool(mask[b, v]) else None for b, v in rows]
            names = [bundle.heads[head][classes[b]] for b, _ in rows]
            scores = [float(probs[b, s, classes[b]]) for b, _ in rows]
            passes.append(CamPass(model, feature_layer(module.backbones[name]), targets, views, names, scores))
    return passes


@EXPLAINERS.register("mvclip")
def _mvclip(
    bundle: Bundle, images: Tensor, mask: Tensor, prompt: str = "", prompts: str = "", **_: Any
) -> list[CamPass]:
    """One pass per text: ``prompt``, else every zero-shot class (its prompt ensemble's class embedding, labelled
    ``task: class``) of the bundle's prompts or the YAML file ``prompts``."""
    module = bundle.module
    if prompt:
        concepts = {prompt: [prompt]}
    else:
        found = prompts_for(bundle, prompts or None)
        concepts = {
            f"{task}: {name}": ensemble for task, classes in found.items() for name, ensemble in classes.items()
        }
    with torch.no_grad():
        texts = class_embeddings(module, list(concepts.values())).float()
        embeddings = module.encode_image(images[mask], normalize=True).float()
    present = [tuple(v) for v in mask.nonzero().tolist()]
    model = _Views(module, images.shape[1], lambda views: module.encode_image(views[mask]))
    layer = feature_layer(module.image)
    return [
        CamPass(
            model,
            layer,
            [_Similarity(text)] * len(present),
            present,
            [label] * len(present),
            (embeddings @ text).tolist(),
        )
        for label, text in zip(concepts, texts, strict=True)
    ]


def bundle_slots(bundle: Bundle) -> tuple[str, ...]:
    """The view slots of one item of ``bundle`` (``L_CC``, ... for exams; ``CC``, ``MLO`` for breasts)."""
    from mvmlm.data.exams import BREAST_SLOTS, EXAM_SLOTS

    return EXAM_SLOTS if bundle.level == "exam" else BREAST_SLOTS


def explain_views(
    bundle: Bundle, images: Tensor, mask: Tensor, method: str = "gradcam", **options: Any
) -> list[ViewMap]:
    """The heatmap of every present view of ``images (B, V, 1, H, W)`` (``mask (B, V)``), for ``bundle``'s kind.

    Args:
        options: ``target`` (class name; default the predicted class), ``head`` (four-view models; default the
            first), ``prompt`` (MV-CLIP bundles; default every zero-shot class of ``prompts``, a YAML file, else of
            the bundle's prompt ensemble).
    """
    cam_class = METHODS.get(method)
    explainer = EXPLAINERS.get(bundle.kind)
    mask = mask.bool()
    attention = None
    if bundle.kind == "multiview":
        with torch.no_grad():
            attention = bundle.predict_views(images, mask)["attention"].float().cpu()
    maps: list[ViewMap] = []
    with torch.enable_grad():
        for cam_pass in explainer(bundle, images, mask, **options):
            with cam_class(model=cam_pass.model, target_layers=[cam_pass.layer]) as cam:
                heatmaps = cam(input_tensor=images.flatten(0, 1), targets=cam_pass.targets)
            for i, view in enumerate(cam_pass.views):
                if view is None:
                    continue
                b, v = view
                weight = None if attention is None else float(attention[b, v])
                maps.append(
                    ViewMap(b, v, heatmaps[i].astype(np.float32), cam_pass.labels[i], cam_pass.scores[i], weight)
                )
    return sorted(maps, key=lambda m: (m.row, m.view))


def overlay(image: np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """RGB uint8 of the gray ``image`` (H, W) in [0, 1] with ``heatmap`` in the jet colormap on top."""
    rgb = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)
    return show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=weight)


@dataclass
class Explanation:
    """One row per explained view (``maps`` holds the heatmaps in the same order) and the files skipped."""

    views: pd.DataFrame
    maps: list[np.ndarray]
    images: list[np.ndarray]  # the preprocessed views the maps lie on (H, W)
    skipped: pd.DataFrame


def explain_paths(
    bundle: Bundle,
    paths: Sequence[str] | str,
    *,
    method: str = "gradcam",
    root: str = "",
    device: str = "auto",
    batch_size: int = 4,
    workers: int = 0,
    allow_for_processing: bool = False,
    progress: bool = False,
    **options: Any,
) -> Explanation:
    """Heatmaps of every view of ``paths`` (DICOM files, folders or a table); ``options`` as :func:`explain_views`."""
    units = load_units(paths, bundle.level, root)
    skipped = list(units.inputs.skipped)
    rows: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    images: list[np.ndarray] = []
    if len(units.rows):
        read = ReadOptions(device, batch_size, workers, allow_for_processing, progress)
        target = read.target()
        batches = view_batches(bundle, units, skipped, read, desc="explain")
        for batch in batches:
            batch_images = batch["images"].to(target)
            for view_map in explain_views(bundle, batch_images, batch["mask"].to(target), method, **options):
                unit = units.rows.iloc[batch["index"][view_map.row]]
                slot = units.slots[view_map.view]
                side, _, view = slot.rpartition("_")  # exam slots L_CC ...; breast slots CC, MLO
                rows.append(
                    {
                        "unit": int(batch["index"][view_map.row]),
                        "slot": slot,
                        "laterality": side or unit["laterality"],
                        "view": view,
                        "image_id": unit[f"{slot}_image_id"],
                        "method": method if bundle.kind != "mvclip" else f"{method} prompt similarity",
                        "target": view_map.target,
                        "score": view_map.score,
                        "attention": view_map.attention,
                    }
                )
                maps.append(view_map.heatmap)
                images.append(batch_images[view_map.row, view_map.view, 0].float().cpu().numpy())
    return Explanation(pd.DataFrame(rows), maps, images, pd.DataFrame(skipped, columns=["path", "reason"]))


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def write_explanation(explanation: Explanation, out: Path) -> None:
    """``<unit>_<slot>.npy`` / ``.png`` per view, ``explanations.csv`` and ``skipped.csv`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    explanation.skipped.to_csv(out / "skipped.csv", index=False)
    names = [f"{row.unit:05d}_{row.slot}" for row in explanation.views.itertuples()]
    if len(set(names)) < len(names):  # several maps per view (MV-CLIP: one per zero-shot class)
        names = [f"{n}_{_slug(t)}" for n, t in zip(names, explanation.views["target"], strict=True)]
    for name, heatmap, image in zip(names, explanation.maps, explanation.images, strict=True):
        np.save(out / f"{name}.npy", heatmap, allow_pickle=False)
        Image.fromarray(overlay(image, heatmap)).save(out / f"{name}.png")
    table = explanation.views.assign(map_file=[f"{n}.npy" for n in names], overlay_file=[f"{n}.png" for n in names])
    table.to_csv(out / "explanations.csv", index=False)


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm explain``: heatmaps and overlays per view into ``out``."""
    from mvmlm.commands import EXPLAIN

    cfg = EXPLAIN.parse(argv)
    bundle = load_model(cfg.model)
    explanation = explain_paths(
        bundle,
        cfg.input,
        method=cfg.method,
        root=cfg.root,
        device=cfg.device,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        allow_for_processing=cfg.allow_for_processing,
        progress=cfg.progress,
        **{
            k: v
            for k, v in {"target": cfg.target, "head": cfg.head, "prompt": cfg.prompt, "prompts": cfg.prompts}.items()
            if v
        },
    )
    out = Path(cfg.out)
    write_explanation(explanation, out)
    if explanation.views.empty:
        raise NothingPredictedError(
            f"nothing could be explained from {', '.join(cfg.input)}: {len(explanation.skipped)} file(s) skipped "
            f"(reasons in {out / 'skipped.csv'})"
        )
    summary = {"views": len(explanation.views), "skipped": len(explanation.skipped), "out": str(out)}
    log.info("explain: %d view(s) into %s, %d file(s) skipped", summary["views"], out, summary["skipped"])
    print(json.dumps(summary))
    return summary
