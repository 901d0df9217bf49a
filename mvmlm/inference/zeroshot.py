"""MV-CLIP zero-shot classification: class prompt ensembles scored against breast embeddings.

A class embedding is the normalised mean of its prompts' normalised text embeddings (the text tower: frozen encoder +
token transformer). A breast's embedding is the mean of its present views' image embeddings, normalised. Class
probabilities are ``softmax(logit_scale * cosine)`` over a task's classes. ``mvmlm zeroshot`` evaluates this on a
table's split; ``mvmlm predict`` on an MV-CLIP bundle writes it as ``prob_<task>_<class>`` columns::

    prompts = prompts_for(bundle)                       # the bundle's prompt ensemble, else DEFAULT_PROMPTS
    prompts = prompts_for(bundle, "my_prompts.yaml")    # task -> class -> list of prompts
    classifier = ZeroShotClassifier(bundle, prompts)    # a bundle whose heads are the zero-shot tasks
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from mvmlm.bundle import Bundle
from mvmlm.errors import InputError

__all__ = [
    "Prompts",
    "DEFAULT_PROMPTS",
    "PromptsError",
    "prompts_for",
    "read_prompts",
    "class_embeddings",
    "zero_shot_probabilities",
    "zero_shot_scores",
    "supports_zero_shot",
    "ZeroShotClassifier",
]

#: task -> class name -> its prompt ensemble (class order = output order)
Prompts = dict[str, dict[str, list[str]]]

#: prompts in the phrasing of the synthetic reports the text tower saw (report_synthesis template backend); class
#: names are those of the evaluation tasks (downstream.common.tasks)
DEFAULT_PROMPTS: Prompts = {
    "mass": {
        "no mass": ["No mass is seen.", "No masses are identified.", "There is no suspicious mass."],
        "mass": ["There is a mass.", "A mass is seen.", "A mass is identified in the breast."],
    },
    "calcification": {
        "no calcification": [
            "No calcifications are identified.",
            "There are no calcifications.",
            "No suspicious calcifications.",
        ],
        "calcification": [
            "Calcifications are seen.",
            "There are calcifications.",
            "Calcifications are identified in the breast.",
        ],
    },
    "density": {
        "A": [
            "The breast is almost entirely fatty (ACR density A).",
            "Breast composition: almost entirely fatty, density category A.",
        ],
        "B": [
            "The breast is scattered areas of fibroglandular density (ACR density B).",
            "Breast composition: scattered areas of fibroglandular density, density category B.",
        ],
        "C": [
            "The breast is heterogeneously dense (ACR density C).",
            "Breast composition: heterogeneously dense, density category C.",
        ],
        "D": [
            "The breast is extremely dense (ACR density D).",
            "Breast composition: extremely dense, density category D.",
        ],
    },
}


class PromptsError(ValueError, InputError):
    """A prompts file or mapping that is not task -> class -> non-empty list of prompts."""


def _checked(prompts: Any, where: str) -> Prompts:
    """``prompts`` as :data:`Prompts`, a single prompt string allowed for a one-prompt ensemble."""
    if not isinstance(prompts, Mapping) or not prompts:
        raise PromptsError(f"{where}: expected a mapping task -> class -> list of prompts")
    checked: Prompts = {}
    for task, classes in prompts.items():
        if not isinstance(classes, Mapping) or len(classes) < 2:
            raise PromptsError(f"{where}: task {task!r} needs a mapping of at least two classes to their prompts")
        checked[str(task)] = {}
        for name, ensemble in classes.items():
            ensemble = [ensemble] if isinstance(ensemble, str) else ensemble
            if not isinstance(ensemble, Sequence) or not ensemble or not all(isinstance(p, str) for p in ensemble):
                raise PromptsError(f"{where}: key {task}.{name}: expected a non-empty list of prompt strings")
            checked[str(task)][str(name)] = list(ensemble)
    return checked


def read_prompts(path: str | Path) -> Prompts:
    """A YAML file ``task: {class: [prompt, ...]}`` (classes in output order).

    Raises:
        PromptsError: naming the file (and key) when it is missing or not of that shape.
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise PromptsError(f"{path}: no such prompts file") from None
    except yaml.YAMLError as exc:
        raise PromptsError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return _checked(loaded, str(path))


def prompts_for(bundle: Bundle, prompts_file: str | Path | None = None) -> Prompts:
    """The zero-shot prompts of an MV-CLIP bundle: ``prompts_file`` when given, else the prompt ensemble the bundle
    records (``config.json`` key ``prompts``), else :data:`DEFAULT_PROMPTS`."""
    if prompts_file:
        return read_prompts(prompts_file)
    recorded = bundle.config.get("prompts")
    if recorded:
        return _checked(recorded, f"bundle config key 'prompts' ({bundle.kind})")
    return {task: {name: list(p) for name, p in classes.items()} for task, classes in DEFAULT_PROMPTS.items()}


@torch.no_grad()
def class_embeddings(model: Any, prompts: Sequence[Sequence[str]]) -> Tensor:
    """``(k, D)`` normalised class embeddings of an MV-CLIP ``model``: per class the normalised mean of its
    normalised prompt embeddings."""
    classes = []
    for ensemble in prompts:
        embedded = model.encode_text(list(ensemble), normalize=True)
        classes.append(F.normalize(embedded.mean(dim=0), dim=-1))
    return torch.stack(classes)


def zero_shot_probabilities(images: Tensor | np.ndarray, classes: Tensor, logit_scale: float | Tensor) -> Tensor:
    """``(n, k)`` ``softmax(logit_scale * cos(image, class))`` of ``(n, D)`` image and ``(k, D)`` class embeddings."""
    image = F.normalize(torch.as_tensor(images, dtype=torch.float32, device=classes.device), dim=-1)
    return (logit_scale * image @ classes.float().T).softmax(dim=-1)


def zero_shot_scores(images: np.ndarray, classes: Tensor, logit_scale: float) -> np.ndarray:
    """:func:`zero_shot_probabilities` as the evaluation scores them: ``(n, k)``, or ``(n,)`` positive-class
    probabilities when k = 2."""
    probs = zero_shot_probabilities(images, classes, logit_scale).cpu().numpy()
    return probs[:, 1] if probs.shape[1] == 2 else probs


def supports_zero_shot(bundle: Bundle) -> bool:
    """Whether ``bundle`` has a text tower to embed class prompts with (an MV-CLIP bundle)."""
    return callable(getattr(bundle.module, "encode_text", None)) and callable(
        getattr(bundle.module, "encode_image", None)
    )


class ZeroShotClassifier(Bundle):
    """An MV-CLIP bundle whose heads are zero-shot tasks: :meth:`predict_views` gives per task the class
    probabilities of each breast (the mean of its present views' image embeddings against the class embeddings).

    Args:
        bundle: the MV-CLIP bundle (its module, config and input transform are used as they are).
        prompts: task -> class -> prompt ensemble (:func:`prompts_for`).
    """

    kind = "mvclip"
    level = "breast"

    def __init__(self, bundle: Bundle, prompts: Prompts) -> None:
        heads = {task: list(classes) for task, classes in prompts.items()}
        super().__init__(bundle.module, {**bundle.config, "heads": heads})
        self.input_transform = bundle.input_transform
        self.prompts = prompts
        self._classes: dict[str, Tensor] = {}

    def class_embeddings(self) -> dict[str, Tensor]:
        """Task -> ``(k, D)`` class embeddings on the module's device (computed once per device)."""
        device = next(self.module.parameters()).device
        if not self._classes or next(iter(self._classes.values())).device != device:
            self._classes = {
                task: class_embeddings(self.module, list(classes.values())) for task, classes in self.prompts.items()
            }
        return self._classes

    def predict_views(self, images: Tensor, mask: Tensor, crops: tuple[Tensor, Tensor] | None = None) -> dict:
        flat = self.module.encode_image(images[mask]).float()
        views = flat.new_zeros(*mask.shape, flat.shape[-1])
        views[mask] = flat
        weights = mask.unsqueeze(-1).float()
        pooled = (views * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        scale = self.module.logit_scale_exp()
        return {
            task: zero_shot_probabilities(pooled, classes, scale) for task, classes in self.class_embeddings().items()
        }
