"""Training state checkpointed with the model and optimizer: the step counter and the validation history."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mvmlm.config import ConfigError

__all__ = ["Best", "TrainState", "check_layout"]


#: layout keys added after checkpoints were first written, with the value an older checkpoint implies
LATER_KEYS: dict[str, Any] = {"lr_scales": {}}


def check_layout(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to continue a training state written with another ``layout`` (the data position would mean other
    batches; other optimizer groups would take the saved learning rates), naming what changed. A checkpoint written
    before a key of :data:`LATER_KEYS` existed counts as holding that key's value there."""
    saved = {**LATER_KEYS, **saved}
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
        raise ConfigError(
            f"cannot resume: the checkpoint was written with another layout ({detail}); "
            "resume with the number of processes, batch size, accumulation and optim.lr_scales it was written with"
        )


@dataclass
class Best:
    """Validation history and the best evaluation so far, checkpointed with the training state."""

    score: float = -math.inf
    epoch: int = -1  # epochs completed when the best was evaluated (-1: none yet)
    step: int = -1  # optimizer steps done then
    stale: int = 0  # evaluations since the best
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluation

    def state_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "epoch": self.epoch,
            "step": self.step,
            "stale": self.stale,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch, self.stale = float(state["score"]), int(state["epoch"]), int(state["stale"])
        self.step = int(state.get("step", -1))
        self.history = list(state["history"])


@dataclass
class TrainState:
    """Optimizer steps done, checkpointed through ``accelerator.register_for_checkpointing``.

    ``layout`` holds what must not change across a resume for the data position to mean the same batches
    (e.g. processes, batch size, accumulation); loading a checkpoint written with another layout raises.
    """

    step: int = 0
    layout: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "layout": dict(self.layout)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_layout(state.get("layout", {}), self.layout)
        self.step = int(state["step"])
