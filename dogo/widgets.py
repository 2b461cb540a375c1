"""The distillation explorer: sliders for the distillation temperature and the loss weight that
redraw the two peers' similarity distributions, the KL term and the weighted total live.

The logic is plain functions on tensors (:func:`similarity_distribution`, :func:`distill_state`,
:func:`readout_text`), testable without a browser or a kernel; :class:`DistillExplorer` only wires
them to ipywidgets and draws with :class:`dogo.viz.DistillFigure`.

For B images the student's (own) and the peer's distributions over the other view are::

    P[i, j] = softmax_j( cos(own1_i,  own2_j)  / tau )      (B x B, each row sums to 1)
    Q[i, j] = softmax_j( cos(peer1_i, peer2_j) / tau )

and the student's loss is ``ssl + w * KL(Q || P)``, with the KL exactly
:func:`dogo.losses.similarity_distill` (the peer detached).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .losses import nt_xent, similarity_distill, similarity_log_distribution

TEMPERATURE_RANGE = (0.02, 2.0)  # distillation temperature slider, log scale
WEIGHT_RANGE = (0.0, 5.0)        # loss weight slider


def similarity_distribution(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-softmax of the cross-view cosine similarities, ``softmax_j(cos(a_i, b_j) / temperature)``, (B, B).

    The same numbers the distillation loss uses (``exp`` of ``similarity_log_distribution``).
    """
    return similarity_log_distribution(a, b, temperature).exp()


@dataclass(frozen=True)
class DistillState:
    """Everything one redraw of the explorer shows.

    Attributes:
        P, Q: the student's and the peer's distributions, float64 arrays (B, B), rows sum to 1.
        row_kl: KL(Q[i] || P[i]) for every row i, (B,).
        kl: ``similarity_distill(own1, own2, peer1, peer2, temperature, reduction)`` as a float.
        entropy_P, entropy_Q: mean row entropy ``-(1/B) sum_i sum_j P_ij log P_ij`` (nats) of P and Q;
            ``log B`` for uniform rows, 0 for one-hot rows.
        weighted_kl: ``weight * kl``.
        total: ``ssl + weight * kl``, the student's loss.
    """

    temperature: float
    weight: float
    row: int
    reduction: str
    P: np.ndarray
    Q: np.ndarray
    row_kl: np.ndarray
    kl: float
    entropy_P: float
    entropy_Q: float
    ssl: float
    weighted_kl: float
    total: float


def distill_state(own1: torch.Tensor, own2: torch.Tensor, peer1: torch.Tensor, peer2: torch.Tensor,
                  temperature: float, weight: float, ssl: float, row: int = 0,
                  reduction: str = "batchmean") -> DistillState:
    """Compute P, Q, the KL term and the student's weighted total at one temperature and weight.

    Args:
        own1, own2: the student's head outputs for its two views, (B, d).
        peer1, peer2: the peer's head outputs for its own two views of the same images, (B, d').
        temperature: distillation temperature tau > 0.
        weight: the loss weight w >= 0 of the KL term.
        ssl: the student's own SSL loss (a number; it does not depend on tau or w).
        row: which row i to single out for the row plot, 0 <= row < B.
        reduction: as in ``similarity_distill``.
    """
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    batch = own1.shape[0]
    if not 0 <= row < batch:
        raise ValueError(f"row must be in [0, {batch}), got {row}")
    with torch.no_grad():
        kl = float(similarity_distill(own1, own2, peer1, peer2, temperature=temperature, reduction=reduction))
        log_p = similarity_log_distribution(own1, own2, temperature).double()
        log_q = similarity_log_distribution(peer1, peer2, temperature).double()
        row_kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)
        entropy_p = float(-(log_p.exp() * log_p).sum(dim=1).mean())
        entropy_q = float(-(log_q.exp() * log_q).sum(dim=1).mean())
    weight, ssl = float(weight), float(ssl)
    return DistillState(
        temperature=float(temperature), weight=weight, row=int(row), reduction=reduction,
        P=log_p.exp().cpu().numpy(), Q=log_q.exp().cpu().numpy(), row_kl=row_kl.cpu().numpy(),
        kl=kl, entropy_P=entropy_p, entropy_Q=entropy_q, ssl=ssl, weighted_kl=weight * kl, total=ssl + weight * kl,
    )


def readout_text(state: DistillState) -> str:
    """The one-line readout, e.g. ``τ = 0.100 | KL(Q‖P) = 0.1234 | w·KL = 0.1234 | SSL = 4.5678 |
    total = 4.6912 | H(P) = 1.2345 | H(Q) = 0.9876 | log B = 2.7726``.

    H is the mean row entropy in nats: ``log B`` when every row is uniform, 0 when every row is one-hot.
    """
    batch = state.P.shape[0]
    return (f"τ = {state.temperature:.3f} | KL(Q‖P) = {state.kl:.4f} | w·KL = {state.weighted_kl:.4f} | "
            f"SSL = {state.ssl:.4f} | total = {state.total:.4f} | H(P) = {state.entropy_P:.4f} | "
            f"H(Q) = {state.entropy_Q:.4f} | log B = {math.log(batch):.4f}")


def readout_html(state: DistillState) -> str:
    """:func:`readout_text` as the HTML the readout widget shows."""
    return f'<span style="font-family: monospace">{html.escape(readout_text(state))}</span>'


@dataclass
class ExplorerBatch:
    """Head outputs of a student and its peer for one batch of labelled images, each peer on its own two views.

    Attributes:
        own1, own2, peer1, peer2: what ``similarity_distill`` compares for the student, (B, d) and (B, d').
        images, labels: the uint8 images (B, C, H, W) and their classes (B,), sorted by class.
        classes: the class names.
        own_name, peer_name: labels for the two peers, e.g. ``"small (cnn w16)"``.
        ssl_temperature: the student's NT-Xent temperature.
        source: where the networks come from, e.g. ``"published run 'fmnist_quick'"``.
        trained: False when the published run was unavailable and random networks stand in.
    """

    own1: torch.Tensor
    own2: torch.Tensor
    peer1: torch.Tensor
    peer2: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple
    own_name: str
    peer_name: str
    ssl_temperature: float
    source: str
    trained: bool


def explorer_batch(batch: int = 16, seed: int = 0, published: str = "fmnist_quick",
                   directory: str | Path | None = None) -> ExplorerBatch:
    """A batch for the explorer from the trained pair of published run ``published`` (its first peer is
    the student, its second the peer), or, if that run is unavailable, from random networks of the quick
    config. The images are ``ceil(batch / C)`` test images of each class, the first ``batch`` of them.
    ``directory``: where the published runs are (default: the kit's ``pretrained/``)."""
    from .augment import view_augment_for
    from .config import load_config
    from .data import load_dataset
    from .errors import CheckpointError
    from .models import build_model
    from .objective import distill_pair
    from .published import PUBLISHED_DIR, load_published
    from .quickstart import DEFAULT_CONFIG

    try:
        models = load_published(published, directory=directory or PUBLISHED_DIR)
        cfg, trained, source = models.config, True, f"published run {published!r}"
    except CheckpointError as exc:  # PublishedError included
        cfg = load_config(DEFAULT_CONFIG)
        with torch.random.fork_rng():  # seeded initialisation, without touching the caller's random state
            torch.manual_seed(seed)
            models = {p.name: build_model(p, 1, cfg.data.image_size).eval() for p in cfg.peers}
        trained, source = False, f"random networks (the published run is unavailable: {exc})"
    data = load_dataset(cfg.data.dataset, "test", cfg.data.root, seed=seed)
    per_class = math.ceil(batch / data.num_classes)
    picked = torch.cat([(data.labels == c).nonzero().flatten()[:per_class] for c in range(data.num_classes)])
    picked = picked[:batch]  # grouped by class
    images, labels = data.images[picked], data.labels[picked]
    student_cfg, peer_cfg = cfg.peers[0], cfg.peers[1]
    student, peer = models[student_cfg.name], models[peer_cfg.name]
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for model, spec in ((student, student_cfg), (peer, peer_cfg)):
        augment = view_augment_for(spec.objective, cfg.data.image_size, data.mean, data.std, cfg.augment)
        with torch.no_grad():
            outputs.append(model(augment(images, generator), augment(images, generator)))
    own1, own2, peer1, peer2 = distill_pair(student, outputs[0], peer, outputs[1])

    def describe(spec) -> str:
        return f"{spec.name} ({spec.backbone}" + (f" w{spec.width})" if spec.backbone == "cnn" else ")")

    return ExplorerBatch(own1, own2, peer1, peer2, images, labels, tuple(data.classes), describe(student_cfg),
                         describe(peer_cfg), student_cfg.temperature, source, trained)


class DistillExplorer:
    """Interactive view of the distillation term for one batch of head outputs.

    Sliders: ``temperature`` (log scale, 0.02 to 2), ``weight`` (0 to 5) and ``row`` (the row shown
    as a curve). Every change calls :meth:`update`, which recomputes :attr:`state` with
    :func:`distill_state`, rewrites :attr:`readout` and redraws :attr:`image` (a PNG of the figure,
    so the same code works in JupyterLab, under papermill and in plain Python).

    >>> explorer = DistillExplorer(z1_small, z2_small, z1_large, z2_large)   # doctest: +SKIP
    >>> explorer                                   # in a notebook: shows sliders, readout and plot
    >>> explorer.temperature.value = 0.5           # same effect as moving the slider
    >>> explorer.state.kl                          # == similarity_distill(..., temperature=0.5)
    """

    def __init__(self, own1: torch.Tensor, own2: torch.Tensor, peer1: torch.Tensor, peer2: torch.Tensor,
                 ssl: float | None = None, ssl_temperature: float = 0.5, temperature: float = 0.1,
                 weight: float = 1.0, row: int = 0, reduction: str = "batchmean", own_name: str = "student",
                 peer_name: str = "peer", dpi: int = 72):
        import ipywidgets as widgets
        from matplotlib.figure import Figure

        from .viz import DistillFigure

        # The explorer only looks: it holds detached copies and never builds a graph.
        self.own1, self.own2 = own1.detach(), own2.detach()
        self.peer1, self.peer2 = peer1.detach(), peer2.detach()
        if ssl is None:
            ssl = float(nt_xent(self.own1, self.own2, ssl_temperature))
        self.ssl = float(ssl)
        self.reduction = reduction
        self.own_name, self.peer_name = own_name, peer_name
        self.dpi = dpi
        self.source = "given head outputs"  # from_published says which run
        self.batch: ExplorerBatch | None = None
        batch = self.own1.shape[0]

        # continuous_update: redraw while dragging. The ipywidgets front end keeps at most one update
        # in flight and merges the rest, so a slow redraw never builds up a backlog of old values.
        low, high = TEMPERATURE_RANGE
        self.temperature = widgets.FloatLogSlider(
            value=temperature, base=10, min=math.log10(low), max=math.log10(high), step=0.01,
            description="τ (distill)", readout_format=".3f", continuous_update=True,
            style={"description_width": "initial"})
        self.weight = widgets.FloatSlider(
            value=weight, min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1], step=0.05, description="weight w",
            readout_format=".2f", continuous_update=True, style={"description_width": "initial"})
        self.row = widgets.IntSlider(value=row, min=0, max=batch - 1, description="row i",
                                     continuous_update=True, style={"description_width": "initial"})
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png")
        # Stable class names, so a browser test can find the parts.
        self.temperature.add_class("dogo-temperature")
        self.weight.add_class("dogo-weight")
        self.row.add_class("dogo-row")
        self.readout.add_class("dogo-distill-readout")
        self.image.add_class("dogo-distill-plot")
        # A figure not registered with pyplot: Jupyter never shows it on its own, only as the image.
        self.drawing = DistillFigure(Figure(figsize=(13, 3.3)), own_name, peer_name)
        self.redraws = 0
        self.state: DistillState | None = None
        for slider in (self.temperature, self.weight, self.row):
            slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.temperature, self.weight, self.row]),
            self.readout,
            self.image,
        ])
        self.update()

    @classmethod
    def from_published(cls, published: str = "fmnist_quick", batch: int = 16, seed: int = 0,
                       directory: str | Path | None = None, **kwargs) -> DistillExplorer:
        """The explorer on a trained pair: :func:`explorer_batch` of published run ``published`` (random
        networks only when it is unavailable; ``explorer.source`` says which)."""
        data = explorer_batch(batch, seed, published, directory)
        kwargs.setdefault("own_name", f"student: {data.own_name}")
        kwargs.setdefault("peer_name", f"peer: {data.peer_name}")
        kwargs.setdefault("ssl_temperature", data.ssl_temperature)
        explorer = cls(data.own1, data.own2, data.peer1, data.peer2, **kwargs)
        explorer.batch = data
        explorer.source = data.source
        return explorer

    def _on_change(self, change) -> None:
        self.update()

    def compute(self) -> DistillState:
        """The state for the sliders' current values (pure: draws nothing)."""
        return distill_state(self.own1, self.own2, self.peer1, self.peer2, self.temperature.value,
                             self.weight.value, self.ssl, self.row.value, self.reduction)

    def update(self) -> DistillState:
        """Recompute the state, rewrite the readout and redraw the figure; returns the new state."""
        from .viz import figure_png

        self.state = self.compute()
        self.readout.value = readout_html(self.state)
        self.drawing.draw(self.state)
        self.image.value = figure_png(self.drawing.fig, dpi=self.dpi)
        self.redraws += 1
        return self.state

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
