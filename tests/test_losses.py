from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from mvmlm.losses import MultiViewClipLoss, PairClipLoss, text_group_ids

from .conftest import free_port


def _features(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_pair_loss_equals_open_clip_without_masks_or_duplicates():
    a, b = _features(6)
    scale = torch.tensor(10.0)
    assert PairClipLoss()(a, b, scale).item() == pytest.approx(ClipLoss()(a, b, scale).item(), rel=1e-6)


def test_missing_rows_are_removed_exactly():
    a, b = _features(6)
    scale = torch.tensor(5.0)
    valid = torch.tensor([True, False, True, True, False, True])
    masked = PairClipLoss()(a, b, scale, valid)
    subset = ClipLoss()(a[valid], b[valid], scale)
    assert masked.item() == pytest.approx(subset.item(), rel=1e-6)
    garbage = a.clone()
    garbage[~valid] = F.normalize(torch.randn(2, 8), dim=1)
    assert PairClipLoss()(garbage, b, scale, valid).item() == pytest.approx(masked.item(), rel=1e-6)


def test_identical_reports_are_positives_of_each_other():
    e1, e2 = torch.eye(2)
    images = torch.stack([e1, F.normalize(e1 + e2, dim=0)])
    # One report text for both breasts; its features differ slightly (dropout in the text token transformer).
    texts = torch.stack([e1, F.normalize(e1 + 0.2 * e2, dim=0)])
    groups = text_group_ids(["BI-RADS 1.  Negative.", "BI-RADS 1. Negative."])
    assert groups[0] == groups[1]
    loss = PairClipLoss()(images, texts, torch.tensor(1.0), groups=groups)
    logits = images @ texts.T  # every row's target is [0.5, 0.5] in both directions
    expected = (-(0.5 * torch.log_softmax(logits, 1)).sum(1) - (0.5 * torch.log_softmax(logits.T, 1)).sum(1)).mean() / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    one_hot = (F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.T, torch.arange(2))) / 2
    assert PairClipLoss()(images, texts, torch.tensor(1.0)).item() == pytest.approx(one_hot.item(), rel=1e-6)
    assert one_hot.item() != pytest.approx(expected.item(), rel=1e-3)


def test_multi_view_loss_combines_terms_and_masks_single_view_breasts():
    cc, mlo = _features(5, seed=1)
    text, _ = _features(5, seed=2)
    cc_present = torch.tensor([1, 1, 0, 1, 1]).bool()
    mlo_present = torch.tensor([1, 0, 1, 1, 1]).bool()
    ids = torch.arange(5)
    scale = torch.tensor(3.0)
    out = MultiViewClipLoss(image_image_weight=0.5)(cc, mlo, text, scale, cc_present, mlo_present, ids)
    both = cc_present & mlo_present
    expected_it = 0.5 * (
        ClipLoss()(cc[cc_present], text[cc_present], scale) + ClipLoss()(mlo[mlo_present], text[mlo_present], scale)
    )
    expected_ii = ClipLoss()(cc[both], mlo[both], scale)
    assert out["image_text"].item() == pytest.approx(expected_it.item(), rel=1e-6)
    assert out["image_image"].item() == pytest.approx(expected_ii.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((expected_it + 0.5 * expected_ii).item(), rel=1e-6)


def test_no_valid_pair_gives_zero_loss_with_a_graph():
    a, b = _features(3)
    a.requires_grad_(True)
    loss = PairClipLoss()(a, b, torch.tensor(2.0), torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(a.grad == 0)


def _worker(rank: int, world: int, port: int, a, b, valid, groups, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = a.shape[0] // world
    local = slice(rank * n, (rank + 1) * n)
    a_local = a[local].clone().requires_grad_(True)
    b_local = b[local].clone().requires_grad_(True)
    loss = PairClipLoss(rank=rank, world_size=world)(a_local, b_local, torch.tensor(4.0), valid[local], groups[local])
    loss.backward()
    # all_gather's backward sums every process's loss gradient into the local features; DDP then averages
    # parameter gradients over processes, hence the division by the world size.
    out[rank] = (loss.detach(), torch.cat([a_local.grad, b_local.grad], dim=1) / world)
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_gradient():
    import torch.multiprocessing as mp

    a, b = _features(8, seed=3)
    valid = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1]).bool()  # unequal valid counts per process
    groups = torch.tensor([0, 1, 2, 0, 4, 5, 1, 7])
    ref_a, ref_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = PairClipLoss()(ref_a, ref_b, torch.tensor(4.0), valid, groups)
    ref.backward()
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, free_port(), a, b, valid, groups, out), nprocs=2, join=True)
    grads = torch.cat([out[0][1], out[1][1]])
    torch.testing.assert_close(grads, torch.cat([ref_a.grad, ref_b.grad], dim=1), rtol=1e-5, atol=1e-6)
    assert ((out[0][0] + out[1][0]) / 2).item() == pytest.approx(ref.item(), rel=1e-5)
