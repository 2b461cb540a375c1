"""Loading runs: the encoder's input normalisation travels in the checkpoint."""

from __future__ import annotations

import torch

from dogo.config import load_config
from dogo.data import STATS, ImageDataset
from dogo.evaluate import clear_cache, peer_features
from dogo.features import extract_features
from dogo.runlog import load_checkpoint, save_checkpoint
from dogo.runs import load_run
from dogo.train import Trainer


def _own_data() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 80, (64, 1, 16, 16), dtype=torch.uint8, generator=g)  # dark images
    labels = torch.arange(64) % 4
    return ImageDataset("own", images, labels, tuple("abcd"), (0.13,), (0.07,))


def test_evaluation_uses_the_training_normalisation_stored_in_the_checkpoint(tmp_path):
    data = _own_data()
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=16", "train.epochs=1", "train.batch_size=32",
                             "train.knn_every=0", "peers.0.width=4", "device=cpu", "train.progress=false",
                             f"output_dir={tmp_path}"])
    trainer = Trainer(cfg, tmp_path / "run", train_data=data)
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["input"] == {"mean": [0.13], "std": [0.07], "channels": 1, "image_size": 16}

    run = load_run(tmp_path / "run", device="cpu")
    assert run.mean == (0.13,) and run.std == (0.07,) and run.in_channels == 1
    feats = peer_features(run, "model", data)
    trained = extract_features(trainer.peers[0].model.backbone, data.images, trainer.test_transform)
    torch.testing.assert_close(feats, trained, atol=1e-4, rtol=1e-4)  # BatchNorm folding changes nothing

    # A checkpoint from before the input was stored still loads, with the named dataset's statistics.
    del state["input"]
    save_checkpoint(state, tmp_path / "run" / "checkpoints" / "last.pt")
    clear_cache()
    old = load_run(tmp_path / "run", device="cpu")
    assert (old.mean, old.std) == (tuple(STATS["digits"][0]), tuple(STATS["digits"][1]))
    assert not torch.allclose(peer_features(old, "model", data), trained, atol=1e-2)
