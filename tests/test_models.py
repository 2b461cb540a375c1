"""Backbones, heads, the SSL model and the choice of distilled head outputs.

ResNets are kept tiny (batch 2 at 32 px); the 224 px stem is checked on the modules, without a forward.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from dogo import ConfigError, nt_xent, simsiam_loss
from dogo.config import PeerConfig
from dogo.models import (
    ResNetBackbone,
    SmallCNN,
    SSLModel,
    build_backbone,
    build_model,
    simclr_projector,
    simsiam_predictor,
    simsiam_projector,
)
from dogo.objective import ViewOutputs, distill_pair, ssl_loss


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@functools.cache
def _resnet(depth: int, in_channels: int = 3, image_size: int = 28) -> ResNetBackbone:
    """Each ResNet is built once per test session (building a ResNet-50 takes about half a second)."""
    return ResNetBackbone(depth, in_channels, image_size).eval()


def _linear_shapes(head: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("channels,size,width", [(1, 28, 8), (3, 32, 4), (1, 8, 2)])
def test_small_cnn_output_shape(channels, size, width):
    net = SmallCNN(channels, width)
    assert net.feature_dim == 4 * width
    assert net(_images(3, channels, size)).shape == (3, 4 * width)


def test_small_cnn_blocks_have_widths_w_2w_4w():
    convs = [m for m in SmallCNN(3, 5).modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 5), (5, 10), (10, 20)]


@pytest.mark.parametrize("depth,feature_dim,blocks,block_type", [
    (18, 512, [2, 2, 2, 2], BasicBlock),
    (34, 512, [3, 4, 6, 3], BasicBlock),  # the authors' code returned a ResNet-18 here
    (50, 2048, [3, 4, 6, 3], Bottleneck),
])
def test_resnet_depth_and_feature_dim(depth, feature_dim, blocks, block_type):
    net = _resnet(depth)
    layers = [net.net.layer1, net.net.layer2, net.net.layer3, net.net.layer4]
    assert [len(layer) for layer in layers] == blocks
    assert all(isinstance(block, block_type) for layer in layers for block in layer)
    assert net.feature_dim == feature_dim
    assert isinstance(net.net.fc, nn.Identity)  # the feature is the pooled vector, not a random fc output


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_resnet_cifar_stem_below_100_px(depth):
    net = _resnet(depth).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_standard_stem_at_224_px(depth):
    net = _resnet(depth, 3, 224).net
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)


def test_resnet_grayscale_input_channels():
    assert _resnet(18, 1).net.conv1.in_channels == 1
    stem_224 = _resnet(18, 1, 224).net.conv1
    assert stem_224.in_channels == 1 and stem_224.kernel_size == (7, 7)


def test_resnet_forward_gives_pooled_features():
    # One forward (ResNet-18, batch 2, 32 px); the other depths are checked on their modules above and
    # below, since a first forward of a ResNet-50 costs seconds on a busy 2-core CPU.
    with torch.no_grad():
        assert _resnet(18)(_images(2, 3, 32)).shape == (2, 512)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_resnet_feature_dim_is_the_last_block_width(depth):
    last = _resnet(depth).net.layer4[-1]
    width = last.bn3.num_features if isinstance(last, Bottleneck) else last.bn2.num_features
    assert width == _resnet(depth).feature_dim


def test_build_backbone_names():
    assert isinstance(build_backbone("cnn", 1, 28, width=3), SmallCNN)
    resnet = build_backbone("resnet34", 1, 28)
    assert isinstance(resnet, ResNetBackbone) and len(resnet.net.layer3) == 6 and resnet.net.conv1.in_channels == 1


def test_build_backbone_rejects_unknown_names_and_tiny_images():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 3, 32)
    with pytest.raises(ConfigError, match="resnet101 is not available"):
        build_backbone("resnet101", 3, 32)
    with pytest.raises(ConfigError, match="data.image_size: resnet18 needs at least 16 px, got 8"):
        build_backbone("resnet18", 3, 8)


# ------------------------------------------------------------------------------- heads


def test_simclr_projector_shapes():
    head = simclr_projector(512)
    assert _linear_shapes(head) == [(512, 512), (512, 128)]
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_simsiam_projector_and_predictor_shapes():
    projector = simsiam_projector(512)
    assert _linear_shapes(projector) == [(512, 2048), (2048, 2048), (2048, 2048)]
    assert isinstance(projector[-1], nn.BatchNorm1d)  # the last layer has BN and no ReLU
    predictor = simsiam_predictor()
    assert _linear_shapes(predictor) == [(2048, 512), (512, 2048)]
    assert predictor[0].bias is None and predictor[-1].bias is not None


def test_unknown_objective():
    with pytest.raises(ConfigError, match="unknown objective 'byol'"):
        SSLModel(SmallCNN(1, 2), objective="byol")


# ------------------------------------------------------------------------------- SSL model


def _tiny_model(objective: str, width: int = 4, **kwargs) -> SSLModel:
    torch.manual_seed(0)
    dims = dict(projection_dim=16, hidden_dim=8, predictor_hidden_dim=4) | kwargs
    return SSLModel(SmallCNN(1, width), objective, **dims)


def test_simclr_forward_shapes_and_loss():
    model = _tiny_model("simclr")
    x1, x2 = _images(5, 1, 12, seed=1), _images(5, 1, 12, seed=2)
    out = model(x1, x2)
    assert isinstance(out, ViewOutputs)
    assert out.h1.shape == out.h2.shape == (5, 16)
    assert out.z1.shape == out.z2.shape == (5, 16)
    assert out.p1 is None and out.p2 is None
    # The two views go through the backbone together: each half equals its own view's features.
    model.eval()
    out = model(x1, x2)
    assert torch.allclose(out.h1, model.backbone(x1), atol=1e-6)
    assert torch.allclose(out.z2, model.projector(model.backbone(x2)), atol=1e-6)
    assert torch.equal(ssl_loss("simclr", out, model.temperature), nt_xent(out.z1, out.z2, model.temperature))


def test_simsiam_forward_shapes_and_loss():
    model = _tiny_model("simsiam")
    out = model(_images(4, 1, 12, seed=3), _images(4, 1, 12, seed=4))
    assert out.h1.shape == (4, 16) and out.z1.shape == out.z2.shape == (4, 16)
    assert out.p1.shape == out.p2.shape == (4, 16)
    assert torch.equal(ssl_loss("simsiam", out), simsiam_loss(out.p1, out.p2, out.z1, out.z2))


def _fake_outputs(tag: float) -> ViewOutputs:
    """Outputs whose every tensor is distinct, so the test can see which one was picked."""
    return ViewOutputs(*(torch.full((2, 3), tag + k) for k in range(6)))  # h1 h2 z1 z2 p1 p2


@pytest.mark.parametrize("own_objective,peer_objective,own_key,peer_key", [
    ("simclr", "simclr", "z", "z"),
    ("simclr", "simsiam", "z", "p"),
    ("simsiam", "simclr", "p", "z"),
    ("simsiam", "simsiam", "p", "z"),  # own prediction against the peer's projection
])
def test_distill_pair_picks_the_head_outputs(own_objective, peer_objective, own_key, peer_key):
    own, peer = _tiny_model(own_objective), _tiny_model(peer_objective)
    own_out, peer_out = _fake_outputs(0.0), _fake_outputs(100.0)
    picked = distill_pair(own, own_out, peer, peer_out)
    assert all(torch.equal(a, b) for a, b in zip(picked, distill_pair(own_objective, own_out, peer_objective, peer_out)))
    expected = (getattr(own_out, own_key + "1"), getattr(own_out, own_key + "2"),
                getattr(peer_out, peer_key + "1"), getattr(peer_out, peer_key + "2"))
    assert len(picked) == 4
    for got, want in zip(picked, expected):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------- build_model


def test_build_model_honours_the_peer_config():
    simclr = build_model(PeerConfig(width=6, temperature=0.2, projection_dim=32, hidden_dim=24), 1, 28)
    assert isinstance(simclr.backbone, SmallCNN) and simclr.feature_dim == 24
    assert simclr.objective == "simclr" and simclr.temperature == 0.2 and simclr.predictor is None
    assert _linear_shapes(simclr.projector) == [(24, 24), (24, 32)]

    simsiam = build_model(PeerConfig(width=2, objective="simsiam", projection_dim=64, predictor_hidden_dim=16), 3, 32)
    assert simsiam.backbone.features[0].in_channels == 3
    assert _linear_shapes(simsiam.projector) == [(8, 64), (64, 64), (64, 64)]
    assert _linear_shapes(simsiam.predictor) == [(64, 16), (16, 64)]


def test_build_model_default_projection_dims():
    assert _linear_shapes(build_model(PeerConfig(width=2), 1, 28).projector)[-1] == (512, 128)
    simsiam = build_model(PeerConfig(width=2, objective="simsiam"), 1, 28)
    assert _linear_shapes(simsiam.projector)[-1] == (2048, 2048)
    assert _linear_shapes(simsiam.predictor) == [(2048, 512), (512, 2048)]


def test_build_model_resnet():
    model = build_model(PeerConfig(backbone="resnet18"), 3, 32)
    assert isinstance(model.backbone, ResNetBackbone) and model.feature_dim == 512
    assert isinstance(model.backbone.net.maxpool, nn.Identity)
    assert _linear_shapes(model.projector) == [(512, 512), (512, 128)]


@pytest.mark.parametrize("objective", ["simclr", "simsiam"])
def test_bn_views_per_view_runs_each_view_separately_and_joint_concatenates(objective):
    import copy

    peer = PeerConfig(backbone="cnn", width=4, objective=objective, projection_dim=16, predictor_hidden_dim=8,
                      hidden_dim=16)
    x1, x2 = _images(6, 1, 12, seed=1), _images(6, 1, 12, seed=2)
    torch.manual_seed(0)
    per_view = build_model(peer, 1, 12, bn_views="per_view").train()
    joint = copy.deepcopy(per_view)
    joint.bn_views = "joint"
    reference = copy.deepcopy(per_view)

    def heads(model, x):
        z = model.projector(model.backbone(x))
        return z, (model.predictor(z) if model.predictor is not None else None)

    out = per_view(x1, x2)
    (z1, p1), (z2, p2) = heads(reference, x1), heads(reference, x2)
    torch.testing.assert_close(out.z1, z1, rtol=0, atol=0)
    torch.testing.assert_close(out.z2, z2, rtol=0, atol=0)
    if objective == "simsiam":
        torch.testing.assert_close(out.p1, p1, rtol=0, atol=0)
        torch.testing.assert_close(out.p2, p2, rtol=0, atol=0)
    # running statistics: updated twice per call per view, once when joint
    bn = [m for m in per_view.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert bn.num_batches_tracked.item() == 2
    torch.testing.assert_close(bn.running_mean, [m for m in reference.modules()
                                                 if isinstance(m, nn.BatchNorm2d)][0].running_mean)
    joint(x1, x2)
    assert [m for m in joint.modules() if isinstance(m, nn.BatchNorm2d)][0].num_batches_tracked.item() == 1
    with pytest.raises(ConfigError, match="bn_views"):
        build_model(peer, 1, 12, bn_views="separate")


def test_bn_views_joint_equals_one_pass_over_both_views():
    import copy

    peer = PeerConfig(backbone="cnn", width=4, objective="simclr", projection_dim=16, hidden_dim=16)
    x1, x2 = _images(5, 1, 12, seed=3), _images(5, 1, 12, seed=4)
    torch.manual_seed(0)
    model = build_model(peer, 1, 12).train()
    reference = copy.deepcopy(model)
    out = model(x1, x2)
    z = reference.projector(reference.backbone(torch.cat([x1, x2])))
    torch.testing.assert_close(torch.cat([out.z1, out.z2]), z, rtol=0, atol=0)
