"""pretrain.step with a live frozen text encoder: one encoding per micro-batch, the gradients of cached features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import Accelerator

from mvmlm.losses import MultiViewClipLoss, text_group_ids
from mvmlm.models.mvclip import MVCLIP, ImageTowerConfig, MVCLIPConfig, TextTowerConfig, TokenConfig
from mvmlm.models.text_encoders import FrozenTextEncoder
from mvmlm.models.tiny_text import write_tiny_text_model
from pretrain.step import contrastive_backward, with_text_features

REPORTS = [
    "Scattered fibroglandular densities. BI-RADS 1.",
    "Irregular spiculated mass in the upper outer quadrant. BI-RADS 5.",
    "Grouped amorphous calcifications. BI-RADS 4.",
    "Oval circumscribed mass, probably benign. BI-RADS 3.",
]


class CountingEncoder(FrozenTextEncoder):
    """Counts the texts it encodes."""

    encoded = 0

    def encode(self, texts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        self.encoded += len(texts)
        return super().encode(texts, device)


def test_accumulation_encodes_each_report_once_and_matches_cached_features(tmp_path):
    encoder = CountingEncoder(str(write_tiny_text_model(tmp_path / "bert", REPORTS)), None, 32)
    config = MVCLIPConfig(
        image=ImageTowerConfig(encoder="timm:test_resnet", encoder_kwargs={"in_chans": 1}, image_size=[64, 64]),
        text=TextTowerConfig(model=encoder.model_name, revision=None, max_length=32),
        tokens=TokenConfig(num_tokens=8, width=32, depth=2, heads=4),
        embed_dim=16,
    )
    torch.manual_seed(0)
    model = MVCLIP(config, text_encoder=encoder)
    images = torch.rand(2, 4, 1, 64, 64)
    micro_batches = [
        {
            "cc": images[0, part],
            "mlo": images[1, part],
            "cc_present": torch.ones(2, dtype=torch.bool),
            "mlo_present": torch.tensor([True, part.start == 0]),
            "texts": REPORTS[part],
            "text_ids": text_group_ids(REPORTS[part]),
            "ids": [str(i) for i in range(part.start, part.stop)],
        }
        for part in (slice(0, 2), slice(2, 4))
    ]
    accelerator, loss_fn = Accelerator(cpu=True), MultiViewClipLoss()

    def gradients(batches: list[dict]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        contrastive_backward(accelerator, model, loss_fn, batches, step=1, text_encoder=encoder)
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    live = gradients(micro_batches)
    assert encoder.encoded == len(REPORTS)  # not once per pass
    cached = gradients([with_text_features(b, encoder) for b in micro_batches])
    assert live.keys() == cached.keys()
    for name, grad in live.items():
        torch.testing.assert_close(grad, cached[name], rtol=1e-5, atol=1e-7, msg=name)
    assert live["text.channel_map.weight"].abs().sum() > 0
