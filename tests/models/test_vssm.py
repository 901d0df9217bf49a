"""SS2D, VSSM blocks, the SeqMoE gate, and the ``vssm`` / ``hybrid_resnet_vssm`` registry encoders (tiny sizes)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mvmlm.models.image_encoders import create_image_encoder, image_encoder_names
from mvmlm.models.ss2d import SS2D, cross_merge, cross_scan, no_weight_decay_names
from mvmlm.models.vssm import PatchMerging, SeqMoEGate, SSConvSSM, VSSBlock, VSSStage, channel_shuffle

TINY = {
    "vssm": dict(depths=[1, 2], dims=[8, 16], d_state=4, patch_size=4),
    "hybrid_resnet_vssm": dict(resnet_until="layer2", depths=[2], d_state=4, ssm_ratio=1.0),
}


def test_cross_merge_of_cross_scan_is_four_times_the_input():
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cross_merge(cross_scan(x), 5, 7), 4 * x)


def test_cross_scan_paths_are_rows_columns_and_their_reversals():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    paths = cross_scan(x)[0, :, 0].tolist()
    assert paths == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    with pytest.raises(ValueError, match="cross_merge"):
        cross_merge(cross_scan(x), 4, 2)


def test_ss2d_mamba_initialisation():
    torch.manual_seed(0)
    layer = SS2D(40, d_state=6, ssm_ratio=2.0)
    assert layer.dt_rank == math.ceil(40 / 16) and layer.d_inner == 80
    torch.testing.assert_close(layer.A_logs[5], torch.log(torch.arange(1.0, 7.0)))
    assert layer.A_logs.shape == (4 * 80, 6) and torch.equal(layer.Ds, torch.ones(320))
    dt = nn.functional.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert layer.dt_projs_weight.abs().max() <= layer.dt_rank**-0.5
    assert no_weight_decay_names(layer) == {"A_logs", "Ds"}


def test_ss2d_keeps_the_map_shape_and_sees_the_whole_map():
    torch.manual_seed(0)
    layer = SS2D(8, d_state=4)
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    (grad,) = torch.autograd.grad(y[0, 0, 0].sum(), x)  # one corner output depends on every position: global
    assert (grad[0].abs().sum(-1) > 0).all() and grad[1].abs().sum() == 0


def test_channel_shuffle_interleaves_the_two_halves():
    x = torch.tensor([0.0, 1, 2, 10, 11, 12]).view(1, 1, 1, 6)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 10, 1, 11, 2, 12]


def test_ss_conv_ssm_block_shape_params_and_bad_width():
    torch.manual_seed(0)
    block = SSConvSSM(16, d_state=4)
    x = torch.randn(2, 4, 5, 16)
    assert block(x).shape == x.shape
    # the hybrid paper's recipe: about 0.134 M parameters per block at 128 channels (vssm-anchors.md section 3)
    assert round(sum(p.numel() for p in SSConvSSM(128).parameters()) / 1e6, 3) == 0.134
    with pytest.raises(ValueError, match="even"):
        SSConvSSM(15)


def test_vss_block_with_mlp():
    block = VSSBlock(8, d_state=4, mlp_ratio=2.0)
    assert block.mlp is not None and block(torch.randn(1, 3, 3, 8)).shape == (1, 3, 3, 8)


def test_patch_merging_pads_odd_maps_and_doubles_channels():
    merge = PatchMerging(4)
    assert merge(torch.randn(2, 5, 7, 4)).shape == (2, 3, 4, 8)
    x = torch.zeros(1, 2, 2, 1)
    x[0, 1, 0, 0] = 1.0  # sub-grid x[1::2, 0::2] is the second group of the concatenation
    merge = PatchMerging(1, 4)
    merge.norm = nn.Identity()
    merge.reduction.weight.data = torch.eye(4)
    assert merge(x).flatten().tolist() == [0, 1, 0, 0]


def test_seqmoe_gate_interpolates_block_output_and_previous():
    gate = SeqMoEGate(3)
    out, prev = torch.randn(2, 4, 4, 3), torch.randn(2, 4, 4, 3)
    nn.init.zeros_(gate.proj.weight)
    nn.init.constant_(gate.proj.bias, 30.0)
    torch.testing.assert_close(gate(out, prev), out)
    nn.init.constant_(gate.proj.bias, -30.0)
    torch.testing.assert_close(gate(out, prev), prev)
    nn.init.zeros_(gate.proj.bias)
    torch.testing.assert_close(gate(out, prev), (out + prev) / 2)
    assert gate.last_gate.shape == (2, 3) and torch.allclose(gate.last_gate, torch.full((2, 3), 0.5))
    gate.proj.weight.data[0, 0] = 5.0  # gate of channel 0 now depends on the pooled block output: per sample
    gate(out, prev)
    assert gate.last_gate[0, 0] != gate.last_gate[1, 0]


def test_stage_refuses_unknown_block():
    with pytest.raises(ValueError, match="unknown VSSM block 'attention'"):
        VSSStage(8, 1, block="attention")


def test_registry_lists_the_vssm_encoders():
    assert {"vssm", "hybrid_resnet_vssm"} <= set(image_encoder_names())


@pytest.mark.parametrize("seqmoe", [False, True])
@pytest.mark.parametrize("name", ["vssm", "hybrid_resnet_vssm"])
def test_encoder_forward_backward_reaches_every_parameter(name, seqmoe):
    torch.manual_seed(0)
    encoder = create_image_encoder(name, seqmoe=seqmoe, **TINY[name])
    x = torch.randn(2, 1, 32, 24)
    features = encoder(x)
    assert features.shape == (2, encoder.out_channels, 32 // encoder.stride, 24 // encoder.stride)
    features.square().mean().backward()
    assert [n for n, p in encoder.named_parameters() if p.grad is None] == []
    # every VSSM parameter learns (timm zero-inits the ResNet blocks' last BN, so those convs start at zero grad)
    assert [n for n, p in encoder.stages.named_parameters() if not p.grad.abs().sum() > 0] == []
    gates = encoder.seqmoe_gates()
    assert (len(gates) == sum(TINY[name]["depths"])) if seqmoe else gates == {}
    assert all(0 < g < 1 for g in gates.values())
    assert {n.rsplit(".", 1)[-1] for n in no_weight_decay_names(encoder)} == {"A_logs", "Ds"}


@pytest.mark.parametrize("name", ["vssm", "hybrid_resnet_vssm"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    plain = create_image_encoder(name, seqmoe=True, drop_path_rate=0.2, **TINY[name])
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 1, 32, 24)
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same drop-path draws
        model(x).square().mean().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_medmamba_t_size_matches_the_published_model():
    encoder = create_image_encoder("vssm", in_chans=3)  # MedMamba-T: 14.45 M parameters with a 2-class head
    assert (encoder.out_channels, encoder.stride) == (768, 32)
    assert round((sum(p.numel() for p in encoder.parameters()) + 768 * 2 + 2) / 1e6, 2) == 14.45


def test_hybrid_loads_a_local_timm_resnet18_state_dict(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    encoder = create_image_encoder("hybrid_resnet_vssm", in_chans=3, pretrained_path=str(path), d_state=4)
    assert (encoder.out_channels, encoder.stride) == (256, 16)
    assert torch.equal(encoder.cnn.conv1.weight, state["conv1.weight"])
    assert torch.equal(encoder.cnn.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert not hasattr(encoder.cnn, "layer4")
    gray = create_image_encoder("hybrid_resnet_vssm", in_chans=1, pretrained_path=str(path), d_state=4)
    torch.testing.assert_close(gray.cnn.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))  # RGB summed


def test_encoders_refuse_bad_configuration_and_input():
    with pytest.raises(ValueError, match="resnet_until must be one of layer2, layer3"):
        create_image_encoder("hybrid_resnet_vssm", resnet_until="layer4")
    with pytest.raises(ValueError, match="one positive depth per width"):
        create_image_encoder("vssm", depths=[1, 1], dims=[8])
    encoder = create_image_encoder("vssm", **TINY["vssm"])
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\)"):
        encoder(torch.randn(1, 3, 32, 32))


def test_scan_backend_reaches_the_selective_scan(monkeypatch):
    from mvmlm.models import selective_scan as ss

    monkeypatch.setattr(ss, "_kernel", lambda: (None, "ModuleNotFoundError: selective_scan_cuda"))
    encoder = create_image_encoder("vssm", scan_backend="cuda", **TINY["vssm"])
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[cuda\]'"):
        encoder(torch.randn(1, 1, 32, 32))
