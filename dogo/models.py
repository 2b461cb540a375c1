"""Backbones, projection heads, and one model class that pairs a backbone with an SSL objective.

Every backbone returns a pooled feature vector (the representation that is evaluated) and has a
``feature_dim`` attribute. Below 100 px the ResNets use the "CIFAR stem" (3x3 stride-1 first conv,
no max-pool); without it SimCLR on 32 px images loses more than 10 points.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PeerConfig
from .errors import ConfigError
from .objective import ViewOutputs

CIFAR_STEM_BELOW = 100  # px


class SmallCNN(nn.Module):
    """Three conv blocks (widths w, 2w, 4w) and global average pooling: fast CPU work on small images.

    Input (N, C, H, W) with H, W >= 8; output (N, 4w).
    """

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(
            *block(in_channels, width, pool=True),
            *block(width, 2 * width, pool=True),
            *block(2 * width, 4 * width, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet whose output is the pooled vector before ``fc`` (512 or 2048 values)."""

    def __init__(self, depth: int, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        # Imported here: torchvision's import pulls in torch._dynamo (about 2 s of a CLI call that builds no ResNet).
        import torchvision

        constructors = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
        if depth not in constructors:
            raise ConfigError(f"backbone: resnet{depth} is not available; choose resnet18, resnet34 or resnet50")
        net = constructors[depth](weights=None)
        if image_size < CIFAR_STEM_BELOW:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()  # the feature is the pooled vector, never a random fc's output
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_backbone(name: str, in_channels: int, image_size: int, width: int = 32) -> nn.Module:
    if name == "cnn":
        return SmallCNN(in_channels, width)
    if name.startswith("resnet") and name[6:].isdigit():
        if image_size < 16:
            raise ConfigError(f"data.image_size: {name} needs at least 16 px, got {image_size}")
        return ResNetBackbone(int(name[6:]), in_channels, image_size)
    raise ConfigError(f"backbone: unknown backbone {name!r}; choose cnn, resnet18, resnet34 or resnet50")


def simclr_projector(in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> nn.Sequential:
    """Linear-BN-ReLU-Linear, as in SimCLR."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def simsiam_projector(in_dim: int, dim: int = 2048) -> nn.Sequential:
    """Three Linear-BN layers (ReLU between), the last BN without ReLU, as in SimSiam."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
        nn.BatchNorm1d(dim),
    )


def simsiam_predictor(dim: int = 2048, hidden_dim: int = 512) -> nn.Sequential:
    """The bottleneck predictor dim -> hidden -> dim."""
    return nn.Sequential(
        nn.Linear(dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, dim),
    )


BN_VIEWS = ("joint", "per_view")


class SSLModel(nn.Module):
    """A backbone with the heads of one self-supervised objective (``simclr`` or ``simsiam``).

    ``bn_views`` decides how the two views of a batch of B images pass through the network:
    ``"joint"`` concatenates them into one pass of 2B images (BatchNorm statistics over 2B, running
    statistics updated once per call; one pass is faster), ``"per_view"`` runs each view separately
    as the authors' code does (statistics over each view's B images, running statistics updated twice).
    """

    def __init__(self, backbone: nn.Module, objective: str = "simclr", temperature: float = 0.5,
                 projection_dim: int = 128, hidden_dim: int = 512, predictor_hidden_dim: int = 512,
                 bn_views: str = "joint"):
        super().__init__()
        if bn_views not in BN_VIEWS:
            raise ConfigError(f"train.bn_views: must be one of {', '.join(BN_VIEWS)}, got {bn_views!r}")
        self.backbone = backbone
        self.objective = objective
        self.temperature = temperature
        self.bn_views = bn_views
        if objective == "simclr":
            self.projector = simclr_projector(backbone.feature_dim, hidden_dim, projection_dim)
            self.predictor = None
        elif objective == "simsiam":
            self.projector = simsiam_projector(backbone.feature_dim, projection_dim)
            self.predictor = simsiam_predictor(projection_dim, predictor_hidden_dim)
        else:
            raise ConfigError(f"objective: unknown objective {objective!r}; choose simclr or simsiam")

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = self.backbone(x)
        z = self.projector(h)
        return h, z, (self.predictor(z) if self.predictor is not None else None)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> ViewOutputs:
        """Features, projections and (SimSiam) predictions of both views, each (B, .)."""
        if self.bn_views == "per_view":
            (h1, z1, p1), (h2, z2, p2) = self._heads(x1), self._heads(x2)
            return ViewOutputs(h1, h2, z1, z2, p1, p2)
        batch = x1.shape[0]
        h, z, p = self._heads(torch.cat([x1, x2]))
        return ViewOutputs(
            h[:batch], h[batch:], z[:batch], z[batch:],
            None if p is None else p[:batch], None if p is None else p[batch:],
        )


def build_model(peer: PeerConfig, in_channels: int, image_size: int, bn_views: str = "joint") -> SSLModel:
    """The model one peer config describes, for images with ``in_channels`` channels of ``image_size`` px
    (``bn_views``: see ``SSLModel``)."""
    backbone = build_backbone(peer.backbone, in_channels, image_size, peer.width)
    projection_dim = peer.projection_dim or (128 if peer.objective == "simclr" else 2048)
    return SSLModel(backbone, peer.objective, peer.temperature, projection_dim,
                    peer.hidden_dim, peer.predictor_hidden_dim, bn_views)
