"""Opening a trainer's run: one place for what every trainer's ``main`` does before its work."""

from __future__ import annotations

from typing import Any

from mvmlm.rundir import RunDir
from mvmlm.training.engine import check_train_config

__all__ = ["open_run"]


def open_run(cfg: Any) -> tuple[Any, RunDir]:
    """The process state (Accelerate's ``PartialState``) and the run directory of a trainer's config (``cfg.out``,
    ``cfg.train``): the train settings checked, and a folder holding another run refused unless ``train.resume``
    continues it. Only the main process writes the run directory."""
    from accelerate import PartialState

    check_train_config(cfg.train)
    state = PartialState(cpu=cfg.train.device == "cpu")
    run = RunDir.create(cfg.out, cfg, main_process=state.is_main_process, resume=cfg.train.resume)
    return state, run
