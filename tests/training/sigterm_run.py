"""A tiny engine run of 3 epochs x 2 steps per process in OUT where only the first process gets SIGTERM, during step 3.

Run by tests/training/test_signals.py under ``accelerate launch`` with 2 CPU processes: ``sigterm_run.py OUT``.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

from mvmlm.config import OptimConfig, TrainConfig
from mvmlm.training import Engine, Loss


def main(out: str) -> None:
    engine = Engine(TrainConfig(epochs=3, device="cpu", progress=False), OptimConfig(lr=0.05), out)
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(4, generator=g), "y": torch.tensor(i % 2)} for i in range(32)]
    steps = []

    def loss(model: nn.Module, batch: dict) -> Loss:
        steps.append(1)
        if engine.is_main_process and len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return Loss(nn.functional.cross_entropy(model(batch["x"]), batch["y"]))

    engine.fit(nn.Linear(4, 2), DataLoader(data, batch_size=8), loss=loss)


if __name__ == "__main__":
    main(sys.argv[1])
