"""The evaluation suite: probes, label manipulations and corruptions on synthetic data with known
answers; checkpoint loading and its errors; the whole suite on a small checkpoint; and (slow) a
short real Fashion-MNIST run evaluated from the command line and from Python."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from dogo import cli
from dogo.config import from_dict
from dogo.errors import CheckpointError, ConfigError, DataError
from dogo.evaluate import (
    COLUMNS,
    PROTOCOLS,
    clear_cache,
    evaluate_run,
    format_summary,
    peer_features,
    tsne_plot,
)
from dogo.features import extract_features, knn_accuracy, topk_accuracy
from dogo.models import build_model
from dogo.probes import (
    DEFAULT_WEIGHT_DECAY,
    asymmetric_label_noise,
    class_balanced_subset,
    linear_probe,
    stratified_split,
    symmetric_label_noise,
)
from dogo.runs import load_run
from dogo.shift import adapt_channels

# ----------------------------------------------------------------------------- synthetic data


def clusters(n_per_class: int, num_classes: int = 10, dim: int = 32, spread: float = 0.3, seed: int = 0):
    """Gaussian blobs around orthogonal-ish centres 5 apart: linearly separable with margin."""
    gen = torch.Generator().manual_seed(seed)
    centres = 5 * torch.eye(num_classes, dim) if dim >= num_classes else 5 * torch.randn(num_classes, dim, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return feats[order], labels[order]


def test_topk_accuracy_known_scores():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 1, 1])
    assert topk_accuracy(scores, labels, (1,)) == {"top1": 50.0}
    scores = torch.eye(12)[:4]
    scores[3] = torch.arange(12.0)  # label 0 ranks last: not in the top 5
    assert topk_accuracy(scores, torch.tensor([0, 1, 2, 0]), (1, 5)) == {"top1": 75.0, "top5": 75.0}


@pytest.mark.parametrize("protocol", ["fast", "authors"])
def test_probe_on_separable_clusters_is_near_perfect(protocol):
    x, y = clusters(60)
    xt, yt = clusters(30, seed=1)
    result = linear_probe(x, y, xt, yt, protocol=protocol, seed=0)
    assert result["top1"] >= 99.0
    assert result["val_top1"] >= 99.0
    assert "top5" not in result  # 10 classes: top-1 only
    assert result["protocol"] == protocol
    assert protocol == "fast" or result["weight_decay"] == 1e-6  # the authors' Adam weight decay
    assert ("best_epoch" in result) == (protocol == "authors")
    assert result["n_fit"] + result["n_val"] == len(y) and result["n_val"] == 90  # 15 % of 600


def test_probe_reports_top5_above_ten_classes_and_is_seeded():
    x, y = clusters(20, num_classes=20, dim=40)
    xt, yt = clusters(5, num_classes=20, dim=40, seed=1)
    a = linear_probe(x, y, xt, yt, seed=3)
    b = linear_probe(x, y, xt, yt, seed=3)
    assert a["top5"] >= a["top1"] >= 99.0
    assert a == b


@pytest.mark.parametrize("protocol", ["fast", "authors"])
def test_probe_scores_every_test_sample(protocol):
    # 101 test samples (not a multiple of the batch size 64); the last one carries a wrong label, so
    # scoring all of them gives exactly 100/101, and dropping the last batch would give 100 %.
    x, y = clusters(100)
    xt, yt = clusters(10, seed=2)
    xt, yt = torch.cat([xt, xt[:1]]), torch.cat([yt, (yt[:1] + 1) % 10])
    result = linear_probe(x, y, xt, yt, protocol=protocol)
    assert result["top1"] == pytest.approx(100 * 100 / 101, abs=1e-4)


def test_probe_without_validation_data_uses_the_default_weight_decay():
    pool, _ = clusters(50, dim=10, seed=3)  # unlabelled features: standardisation statistics only
    x, y = clusters(1, dim=10)  # one labelled sample per class: nothing to hold out
    result = linear_probe(x, y, *clusters(5, dim=10, seed=1), unlabelled=pool)
    assert result["n_val"] == 0 and math.isnan(result["val_top1"])
    assert result["weight_decay"] == DEFAULT_WEIGHT_DECAY
    assert result["top1"] >= 95.0


def test_probe_rejects_unknown_protocol():
    x, y = clusters(5)
    with pytest.raises(ValueError, match="unknown probe protocol"):
        linear_probe(x, y, x, y, protocol="sgd")


def test_knn_with_the_bank_as_queries_is_exact():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(500, 16, generator=gen)
    labels = torch.randint(0, 15, (500,), generator=gen)  # random labels: only the self-match is right
    result = knn_accuracy(bank, labels, bank, labels, 15, k=1)
    assert result == {"top1": 100.0, "top5": 100.0}
    # The monitor's defaults (k = 200 > class size, temperature 0.1) on separated clusters: the other
    # classes' neighbours (cosine ~ 0) are outvoted by the own class (cosine ~ 1): exact again.
    x, y = clusters(50)
    assert knn_accuracy(x, y, x, y)["top1"] == 100.0


# ----------------------------------------------------------------------------- label manipulations


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 0.8])
def test_symmetric_noise_rate_is_exact(rate):
    labels = torch.arange(10).repeat(101)  # N = 1010: round(rate * N) is not a multiple of 10
    before = labels.clone()
    noisy = symmetric_label_noise(labels, rate, 10, seed=1)
    assert torch.equal(labels, before)  # the input is not modified
    assert int((noisy != labels).sum()) == round(rate * len(labels))
    assert noisy.min() >= 0 and noisy.max() <= 9
    assert torch.equal(noisy, symmetric_label_noise(labels, rate, 10, seed=1))
    if rate > 0:
        assert not torch.equal(noisy, symmetric_label_noise(labels, rate, 10, seed=2))
        # the wrong labels are spread over all other classes (every offset 1..9 occurs)
        flipped = noisy != labels
        assert set(((noisy[flipped] - labels[flipped]) % 10).tolist()) == set(range(1, 10))


def test_asymmetric_noise_flips_exactly_within_each_source_class():
    labels = torch.arange(10).repeat_interleave(50)
    mapping = {9: 1, 2: 0, 3: 5, 5: 3}
    noisy = asymmetric_label_noise(labels, 0.4, mapping, seed=0)
    for cls in range(10):
        changed = noisy[(labels == cls) & (noisy != labels)]
        if cls in mapping:
            assert len(changed) == 20 and set(changed.tolist()) == {mapping[cls]}
        else:
            assert len(changed) == 0


def test_class_balanced_subsets_are_balanced_and_reproducible():
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.arange(10).repeat(2000), torch.randint(0, 10, (1000,), generator=gen)])
    for fraction, per_class in ((0.01, 21), (0.1, 210)):
        idx = class_balanced_subset(labels, fraction, seed=0)
        assert torch.bincount(labels[idx], minlength=10).tolist() == [per_class] * 10
        assert len(torch.unique(idx)) == len(idx)
        assert torch.equal(idx, class_balanced_subset(labels, fraction, seed=0))
        assert not torch.equal(idx, class_balanced_subset(labels, fraction, seed=1))


def test_stratified_split_partitions_every_class():
    labels = torch.arange(4).repeat_interleave(torch.tensor([20, 7, 2, 1]))
    fit, val = stratified_split(labels, 0.15, seed=0)
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[val], minlength=4).tolist() == [3, 1, 1, 0]


# ----------------------------------------------------------------------------- corruptions and channels


def test_pixelate_averages_blocks_exactly():
    from dogo.shift import pixelate

    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert pixelate(x, 2).flatten().tolist() == [2.5, 2.5, 4.5, 4.5] * 2 + [10.5, 10.5, 12.5, 12.5] * 2
    # block 3 on 4 pixels: a 3-pixel block and a 1-pixel block per side
    out = pixelate(x, 3)[0, 0]
    assert out[0, 0].item() == 5.0 and out[3, 3].item() == 15.0 and out[0, 3].item() == 7.0


def test_adapt_channels():
    gray = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = adapt_channels(gray, 3)
    assert rgb.shape == (2, 3, 5, 5) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    assert torch.equal(adapt_channels(rgb, 1), gray)  # equal channels: luminance is the value itself
    pure_red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    pure_red[0, 0] = 255
    assert adapt_channels(pure_red, 1).item() == round(0.299 * 255)


# ----------------------------------------------------------------------------- checkpoints


def make_checkpoint(path, widths=(4, 8), dataset="digits", image_size=8, seed=0):
    """A dogo checkpoint of untrained peers (the format Trainer.state_dict writes), without training."""
    cfg = from_dict({"data": {"dataset": dataset, "image_size": image_size},
                     "peers": [{"name": f"w{w}", "width": w} for w in widths]})
    torch.manual_seed(seed)
    peers = {}
    for p in cfg.peers:
        model = build_model(p, 1, image_size)
        for m in model.modules():  # non-trivial BatchNorm statistics, so that folding them is tested
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        peers[p.name] = {"model": model.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "config": cfg.to_dict(), "peers": peers, "epoch": 3, "finished": True}, path)
    return path


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits-run"
    make_checkpoint(run / "checkpoints" / "last.pt")
    return run


def test_load_run_builds_every_peer_in_eval_mode(digits_run):
    run = load_run(digits_run, device="cpu")
    assert list(run) == ["w4", "w8"]
    assert all(not m.training for m in run.values())
    assert run["w8"].feature_dim == 32 and run.in_channels == 1
    assert run.epoch == 3 and run.finished and run.run_dir == digits_run and run.name == "digits-run"
    assert list(load_run(digits_run / "checkpoints" / "last.pt", device="cpu")) == ["w4", "w8"]


def test_load_run_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run(tmp_path / "empty")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(bad)
    # weights of width 4 stored under a config that says width 8
    ckpt = make_checkpoint(tmp_path / "m" / "checkpoints" / "last.pt", widths=(4,))
    state = torch.load(ckpt, weights_only=False)
    state["config"]["peers"][0]["width"] = 8
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="peer 'w4' does not match its config") as err:
        load_run(ckpt)
    assert "\n" not in str(err.value)
    state["config"]["peers"][0]["name"] = "other"
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="holds peers"):
        load_run(ckpt)


def test_features_are_cached_and_equal_the_plain_backbone(digits_run, tmp_path):
    from dogo.augment import TestTransform
    from dogo.data import load_dataset

    clear_cache()
    run = load_run(digits_run, device="cpu")
    data = load_dataset("digits", "test")
    feats = peer_features(run, "w8", data, cache_dir=tmp_path)
    plain = extract_features(run["w8"].backbone, data.images, TestTransform(8, data.mean, data.std))
    assert feats.shape == (len(data), 32)
    torch.testing.assert_close(feats, plain, atol=1e-4, rtol=1e-4)  # BatchNorm folding changes nothing
    assert peer_features(run, "w8", data, cache_dir=tmp_path) is feats  # memory cache
    assert (tmp_path / "features_w8_digits_test.pt").is_file()
    clear_cache()
    torch.testing.assert_close(peer_features(run, "w8", data, cache_dir=tmp_path), feats, atol=0, rtol=0)  # from disk


def test_tsne_plot_side_by_side(tmp_path):
    x, y = clusters(30, num_classes=4, dim=8)
    fig = tsne_plot({"alone": (x, y), "with peer": (x * 2, y)}, tmp_path / "t.png", points=80,
                    class_names=["a", "b", "c", "d"])
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert [ax.get_title() for ax in fig.axes] == ["alone", "with peer"]


# ----------------------------------------------------------------------------- the whole suite


def test_evaluate_run_writes_a_tidy_table(digits_run, tmp_path):
    out = tmp_path / "eval"
    df = evaluate_run(digits_run, limit=300, seeds=(0, 1), device="cpu", out_dir=out, label_fractions=(0.1,),
                      noise_rates=(0.4,), noise_kinds=("symmetric", "asymmetric"), corruptions=("contrast",),
                      severities=(1, 5), tsne_points=60, transfer_targets=("digits",))
    assert list(df.columns) == COLUMNS
    assert set(df["protocol"]) == set(PROTOCOLS)
    assert set(df["peer"]) == {"w4", "w8"}
    top1 = df[df["metric"] == "top1"]
    assert (top1["value"].between(0, 100)).all()
    lim = top1[top1["protocol"] == "limited"]
    assert sorted(lim["seed"].unique()) == [0, 1] and (lim["n_train"] == 30).all()  # 10 % of 300, balanced
    assert set(top1[top1["protocol"] == "noisy"]["setting"]) == {"symmetric 40%", "asymmetric 40%"}
    corr = top1[top1["protocol"] == "corruptions"]
    assert set(corr["setting"]) == {"clean", "contrast-1", "contrast-5", "mean-1", "mean-5", "mean"}
    on_disk = pd.read_csv(out / "results.csv")
    assert len(on_disk) == len(df)
    assert len(json.loads((out / "results.json").read_text())) == len(df)
    assert (out / "summary.png").is_file() and (out / "tsne.png").is_file()
    assert (out / "features_w4_digits_train_n300.pt").is_file()
    text = format_summary(df)
    assert "linear (top-1 %)" in text and "limited" in text and "±" in text


def test_evaluate_run_rejects_user_mistakes(digits_run):
    with pytest.raises(ConfigError, match="did you mean 'linear'"):
        evaluate_run(digits_run, ["lienar"])
    with pytest.raises(ConfigError, match="did you mean 'knn_k'"):
        evaluate_run(digits_run, ["knn"], knn_kk=5)
    with pytest.raises(ConfigError, match="corruptions"):
        evaluate_run(digits_run, ["corruptions"], corruptions=("fog",))


def test_cli_eval_errors_print_one_line(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "missing-run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err


# ----------------------------------------------------------------------------- end to end, real data


@pytest.mark.slow
def test_short_fashion_mnist_run_evaluated_from_cli_and_python(tmp_path, capsys):
    from dogo.config import load_config
    from dogo.data import load_dataset
    from dogo.train import Trainer

    try:
        load_dataset("fashion_mnist", "test", limit=10)
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    cfg = load_config(None, ["data.limit=1024", "train.epochs=1", "train.batch_size=256", "train.progress=false",
                             "train.knn_every=0", f"output_dir={tmp_path}",
                             "peers=[{name: small, width: 8}, {name: large, width: 16}]"])
    run_dir = Trainer(cfg).fit()["run_dir"]
    code = cli.main(["eval", run_dir, "--limit", "2000", "--seeds", "0", "1", "--fractions", "0.01,0.1",
                     "--noise-rates", "0.2,0.8", "--corruptions", "gaussian_noise,contrast,pixelate",
                     "--tsne-points", "400", "--out", str(tmp_path / "combined"), "--no-progress", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "linear (top-1 %)" in printed and "corruptions" in printed
    df = pd.read_csv(f"{run_dir}/eval/results.csv")
    assert set(df["protocol"]) == set(PROTOCOLS)
    top1 = df[df["metric"] == "top1"]
    # Chance is 10 %. A single corruption at its top severity may legitimately destroy a one-epoch
    # encoder (contrast 0.15 does), so corruptions are checked through clean and mean accuracy.
    summary = top1[(top1["protocol"] != "corruptions") | top1["group"].isin(["clean", "mean"])]
    assert (summary["value"] > 15).all(), summary[summary["value"] <= 15]
    assert (top1[top1["protocol"] == "knn"]["value"] > 30).all()  # one epoch on 1,024 images
    assert (top1[top1["protocol"] == "linear"]["value"] > 60).all()
    assert set(top1[top1["protocol"] == "transfer"]["dataset"]) == {"digits"}
    for name in ("results.csv", "results.json", "summary.png", "tsne.png"):
        assert (tmp_path / "combined" / name).is_file()
    # From Python: the same numbers (the features come from the in-memory cache), two protocols.
    again = evaluate_run(run_dir, ["knn", "linear"], limit=2000, seeds=(0, 1), device="cpu",
                         out_dir=tmp_path / "py")
    before = df[df["protocol"].isin(["knn", "linear"])].set_index(["peer", "protocol", "metric"])["value"]
    after = again.set_index(["peer", "protocol", "metric"])["value"]
    pd.testing.assert_series_equal(after.sort_index(), before.sort_index(), check_exact=False, atol=1e-6)


def test_benchmark_script_runs_on_a_small_subset(capsys):
    import sys

    from .helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_eval

    try:
        report = bench_eval.run(train_limit=400, test_limit=200, queries=100, tsne_points=60, authors=True)
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    names = [r["name"] for r in report["results"]]
    assert names == ["extraction", "linear_probe", "authors_probe", "knn", "knn", "tsne"]
    assert report["results"][0]["images"] == 600 and report["results"][0]["feature_dim"] == 128
    assert all(r["wall_s"] > 0 for r in report["results"])
    table = bench_eval.markdown(report)
    assert table.count("\n") == 7 and "| linear_probe | 400 x 512 -> 200 test |" in table


def test_corruption_rows_name_their_ladder(digits_run, tmp_path):
    kwargs = dict(limit=100, seeds=(0,), device="cpu", corruptions=("contrast",), severities=(5,), figures=False)
    default = evaluate_run(digits_run, ["corruptions"], out_dir=tmp_path / "a", **kwargs)
    strong = evaluate_run(digits_run, ["corruptions"], out_dir=tmp_path / "b", corruption_ladder="strong", **kwargs)
    assert set(default["ladder"]) == {"cifar10c"} and set(strong["ladder"]) == {"strong"}
    both = format_summary(pd.concat([default, strong]))
    assert "mean (cifar10c)" in both and "mean (strong)" in both
    with pytest.raises(ConfigError, match="corruption_ladder"):
        evaluate_run(digits_run, ["corruptions"], corruption_ladder="cifar10-c", **kwargs)


def test_eval_settings_are_validated_like_a_config_and_give_the_cli_defaults():
    from dogo.config import build_validated
    from dogo.evaluate import EvalSettings

    with pytest.raises(ConfigError, match=r"noise_rates\[1\]: must be < 1"):
        build_validated(EvalSettings, {"noise_rates": [0.2, 1.0]})
    with pytest.raises(ConfigError, match=r"severities\[0\]: unknown value 6"):
        build_validated(EvalSettings, {"severities": (6,)})
    with pytest.raises(ConfigError, match="knn_k: expected an integer"):
        build_validated(EvalSettings, {"knn_k": "many"})
    assert build_validated(EvalSettings, {"corruptions": "contrast"}).corruptions == ("contrast",)
    args = cli.build_parser().parse_args(["eval", "some-run"])
    d = EvalSettings()
    assert (args.probe, args.probe_epochs, args.knn_k, args.fractions, args.noise_rates, args.corruption_ladder,
            args.tsne_points) == (d.probe, d.probe_epochs, d.knn_k, d.label_fractions, d.noise_rates,
                                  d.corruption_ladder, d.tsne_points)
