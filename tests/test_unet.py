"""U-Net shapes, losses, a few optimisation steps, and tiled inference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atomfinder.nn.infer import predict, tile_plan
from atomfinder.nn.losses import (
    class_weights_from_targets,
    height_cross_entropy,
    segmentation_loss,
    weighted_cross_entropy,
)
from atomfinder.nn.unet import NORMS, UNet, UNetConfig, build_model, count_parameters, fused_for_inference

torch.set_num_threads(2)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("height_head", [False, True])
def test_output_shapes_odd_size(norm, height_head):
    torch.manual_seed(0)
    model = UNet(in_channels=2, n_classes=3, depth=4, width=4, norm=norm,
                 height_head=height_head, max_height=5)
    model.train()
    out = model(torch.randn(2, 2, 97, 131))
    assert out["logits"].shape == (2, 3, 97, 131)
    assert torch.isfinite(out["logits"]).all()
    if height_head:
        assert out["height_logits"].shape == (2, 6, 97, 131)
    else:
        assert "height_logits" not in out


def test_tiny_input_and_wrong_channels():
    model = UNet(depth=3, width=4, norm="instance").eval()
    assert model(torch.randn(1, 1, 5, 7))["logits"].shape == (1, 2, 5, 7)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 3, 16, 16))


def test_config_round_trip_and_param_count():
    cfg = UNetConfig(in_channels=3, n_classes=4, depth=2, width=8, norm="group",
                     height_head=True, max_height=7)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg.to_dict())
    assert model.config == cfg and model.size_multiple == 4
    n = count_parameters(model)
    assert n == sum(p.numel() for p in model.parameters()) and n > 0
    # Doubling the width roughly quadruples the conv parameters.
    assert count_parameters(build_model(UNetConfig(depth=2, width=16))) > 3 * count_parameters(
        build_model(UNetConfig(depth=2, width=8)))
    with pytest.raises(ValueError):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError):
        UNetConfig(height_head=True, max_height=0)
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"depht": 3})


def test_class_weights_and_cross_entropy():
    torch.manual_seed(0)
    labels = (torch.rand(2, 16, 16) < 0.1).long()
    targets = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    w = class_weights_from_targets(targets)
    freq = targets.sum(dim=(0, 2, 3)) / targets[:, 0].numel()
    assert torch.allclose((w * freq).sum(), torch.tensor(1.0))
    assert torch.allclose(w[0] * freq[0], w[1] * freq[1])  # equal total weight per class
    logits = torch.randn(2, 2, 16, 16)
    for weights in (None, w):
        ours = weighted_cross_entropy(logits, targets, weights)
        ref = F.cross_entropy(logits, labels, weight=weights)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_height_loss_ignores_unlabelled_pixels():
    torch.manual_seed(0)
    hl = torch.randn(1, 4, 8, 8)
    heights = torch.full((1, 8, 8), -1)
    heights[0, 2:4, 2:4] = 3
    base = height_cross_entropy(hl, heights)
    hl2 = hl.clone()
    hl2[0, :, 6:, 6:] += 10 * torch.randn(4, 2, 2)  # change only unlabelled pixels
    assert torch.allclose(base, height_cross_entropy(hl2, heights))
    assert height_cross_entropy(hl, torch.full((1, 8, 8), -1)).item() == 0.0
    with pytest.raises(ValueError, match="max_height"):
        height_cross_entropy(hl, torch.full((1, 8, 8), 4))


def _blob_problem(n=4, size=40, seed=0):
    """Gaussian blobs (brightness ~ height) in noise -> disk targets and height maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs = np.zeros((n, 1, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int64)
    heights = np.full((n, size, size), -1, np.int64)
    for i in range(n):
        for _ in range(6):
            cy, cx = rng.uniform(4, size - 4, 2)
            h = rng.integers(1, 4)
            r2 = (yy - cy) ** 2 + (xx - cx) ** 2
            imgs[i, 0] += h * np.exp(-r2 / (2 * 1.5**2))
            disk = r2 <= 2.5**2
            labels[i][disk] = 1
            heights[i][disk] = h
        imgs[i, 0] += rng.normal(0, 0.3, (size, size))
    targets = F.one_hot(torch.from_numpy(labels), 2).permute(0, 3, 1, 2).float()
    return torch.from_numpy(imgs), targets, torch.from_numpy(heights)


def test_few_steps_reduce_loss():
    torch.manual_seed(0)
    x, targets, heights = _blob_problem()
    model = UNet(depth=2, width=8, norm="batch", height_head=True, max_height=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        loss, parts = segmentation_loss(model(x), targets, heights, dice_weight=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(parts)
    assert set(history[0]) == {"ce", "dice", "height", "total"}
    assert history[-1]["total"] < 0.5 * history[0]["total"]
    assert history[-1]["ce"] < 0.5 * history[0]["ce"]
    assert history[-1]["height"] < history[0]["height"]


def _calibrated_model(seed=0):
    """A depth-2 eval-mode model with non-trivial BatchNorm stats and O(1) logits."""
    torch.manual_seed(seed)
    model = UNet(depth=2, width=4, norm="batch", height_head=True, max_height=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    probe = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, 1, 64, 64)).astype(np.float32))
    with torch.no_grad():
        model.head.bias.zero_()
        d = model(probe)["logits"]
        d = d[:, 1] - d[:, 0]
        model.head.weight.mul_(2.0 / d.std())
        d = model(probe)["logits"]
        model.head.bias[1] -= (d[:, 1] - d[:, 0]).mean()
    return model


def test_tiled_predict_matches_whole_image():
    model = _calibrated_model()
    image = np.random.default_rng(1).normal(size=(1, 203, 171)).astype(np.float32)
    exact = {"device": "cpu", "precision": "float32"}  # tiling, not rounding, is under test
    whole = predict(model, image, tile=1024, overlap=64, **exact)
    tiled = predict(model, image, tile=128, overlap=64, batch_size=3, **exact)
    p = whole["probabilities"]
    assert p.shape == (2, 203, 171) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=0), 1.0, atol=1e-5)
    assert p[1].std() > 0.1  # the comparison is not between two constant maps
    assert np.abs(tiled["probabilities"] - p).max() < 1e-4
    assert tiled["height"].shape == (203, 171)
    assert np.abs(tiled["height"] - whole["height"]).max() < 1e-3
    assert 0 <= whole["height"].min() and whole["height"].max() <= 3
    # Without the zero-weight margin the tile borders do show up.
    seamy = predict(model, image, tile=128, overlap=64, margin=0, **exact)
    assert np.abs(seamy["probabilities"] - p).max() > 1e-4
    assert model.training is False


def test_predict_restores_training_mode_and_checks_args():
    model = UNet(depth=1, width=4).train()
    out = predict(model, np.zeros((40, 50), np.float32), tile=32, overlap=8)
    assert out["probabilities"].shape == (2, 40, 50) and model.training
    with pytest.raises(ValueError):
        predict(model, np.zeros((1, 40, 50), np.float32), tile=32, overlap=32)


@pytest.mark.parametrize("size", [1, 100, 576, 577, 1024, 1500, 4096])
def test_tile_plan_covers_evenly_with_the_overlap(size):
    starts, length = tile_plan(size, tile=576, overlap=64, align=16)
    assert starts[0] == 0 and all(s % 16 == 0 for s in starts)
    assert length <= 576
    assert starts[-1] + length >= size  # covered
    assert len(starts) == 1 or starts[-2] + length < size  # no redundant last tile
    if len(starts) > 1:
        step = starts[1] - starts[0]
        assert all(b - a == step for a, b in zip(starts, starts[1:]))
        assert length - step >= 64 and size - starts[-1] > length - step  # last tile overlaps fully
    if size == 1024:
        assert (starts, length) == ([0, 480], 544)  # two even tiles, not 576 + a thin one


def test_fused_inference_copy_matches_and_leaves_model_alone():
    torch.manual_seed(0)
    model = UNet(depth=2, width=8, height_head=True, max_height=3).train()
    x = torch.randn(4, 1, 64, 64)
    for _ in range(3):  # move the BatchNorm running statistics away from (0, 1)
        model(x * 3 + 1)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        net = fused_for_inference(model)
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == (3 + 2) * 2  # 3 encoder + 2 decoder blocks
    for key in ("logits", "height_logits"):
        assert torch.allclose(out[key], ref[key], atol=1e-4, rtol=1e-4)


def test_precision_choice():
    from atomfinder.nn.infer import autocast_dtype

    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    assert autocast_dtype(torch.device("cpu"), "float32") is None
    assert autocast_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError):
        autocast_dtype(torch.device("cpu"), "half")
    image = np.random.default_rng(2).normal(size=(1, 96, 80)).astype(np.float32)
    reduced = predict(_calibrated_model(), image, device="cpu", precision="bfloat16")["probabilities"]
    assert reduced.dtype == np.float32 and np.allclose(reduced.sum(axis=0), 1.0, atol=1e-5)


def test_augmented_predict_is_equivariant_and_averages_the_eight_views():
    """With ``augment=True`` the maps of a turned or mirrored image are the turned or mirrored maps,
    and they are the mean of the eight single predictions mapped back; plain stays plain."""
    from atomfinder.nn.infer import SQUARE_SYMMETRIES, _transform

    model = _calibrated_model()
    image = np.random.default_rng(3).normal(size=(1, 64, 80)).astype(np.float32)
    exact = {"device": "cpu", "precision": "float32", "tile": 1024, "overlap": 64}
    aug = predict(model, image, augment=True, **exact)
    p = aug["probabilities"]
    assert p.shape == (2, 64, 80) and p.dtype == np.float32 and np.allclose(p.sum(axis=0), 1.0, atol=1e-5)
    assert len(SQUARE_SYMMETRIES) == 8 and SQUARE_SYMMETRIES[0] == (0, False)
    views = [predict(model, _transform(image, k, m), **exact) for k, m in SQUARE_SYMMETRIES]
    mean = np.mean([_transform(v["probabilities"], k, m, inverse=True)
                    for v, (k, m) in zip(views, SQUARE_SYMMETRIES)], axis=0)
    assert np.abs(mean - p).max() < 1e-5
    plain = predict(model, image, **exact)["probabilities"]
    assert np.abs(plain - views[0]["probabilities"]).max() == 0  # the identity view is the plain map
    assert np.abs(plain - p).max() > 1e-3  # an untrained net is not symmetric: the average differs
    for k, m in ((1, False), (2, True), (3, True)):
        turned = predict(model, _transform(image, k, m), augment=True, **exact)
        assert np.abs(_transform(turned["probabilities"], k, m, inverse=True) - p).max() < 1e-5
        assert np.abs(_transform(turned["height"], k, m, inverse=True) - aug["height"]).max() < 1e-4


def test_transform_views_are_the_square_symmetries_and_round_trip():
    """Each of the eight views is the mirror (columns reversed) and then ``turns`` quarter turns of
    np.rot90 (a pixel at (r, c) of an H x W image goes to (W-1-c, r) per turn); the inverse undoes it."""
    from atomfinder.nn.infer import SQUARE_SYMMETRIES, _transform

    assert sorted(SQUARE_SYMMETRIES) == [(k, m) for k in range(4) for m in (False, True)]
    a = np.random.default_rng(4).normal(size=(2, 3, 5, 7)).astype(np.float32)  # non-square, leading axes
    for turns, mirror in SQUARE_SYMMETRIES:
        view = _transform(a, turns, mirror)
        expected = np.flip(a, axis=-1) if mirror else a  # left-right: the last axis reversed
        for _ in range(turns):
            expected = np.rot90(expected, 1, axes=(-2, -1))
        assert np.array_equal(view, expected), (turns, mirror)
        assert view.flags.c_contiguous
        assert np.array_equal(_transform(view, turns, mirror, inverse=True), a), (turns, mirror)
        # where one pixel goes, by hand
        one = np.zeros((5, 7))
        one[1, 2] = 1.0
        r, c, h, w = 1, 2, 5, 7
        if mirror:
            c = w - 1 - c
        for _ in range(turns):
            r, c, h, w = w - 1 - c, r, w, h
        moved = _transform(one, turns, mirror)
        assert moved.shape == (h, w) and moved[r, c] == 1.0 and moved.sum() == 1.0, (turns, mirror)
    # two views whose inverse differs from the forward view: a quarter turn back, not forward
    square = np.arange(9.0).reshape(3, 3)
    assert np.array_equal(_transform(square, 1, False), [[2, 5, 8], [1, 4, 7], [0, 3, 6]])
    assert np.array_equal(_transform(square, 1, False, inverse=True), [[6, 3, 0], [7, 4, 1], [8, 5, 2]])
    assert np.array_equal(_transform(square, 1, True), [[0, 3, 6], [1, 4, 7], [2, 5, 8]])


class _SquareSymmetricNet(torch.nn.Module):
    """A stand-in network equivariant under the eight symmetries of the square: a convolution with a
    kernel of that symmetry (zero padding, which has it too), then pointwise logits."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([[0.5, 1.0, 0.5], [1.0, -6.0, 1.0], [0.5, 1.0, 0.5]])
        self.register_buffer("kernel", k[None, None])

    def forward(self, x):
        y = F.conv2d(x, self.kernel, padding=1)
        return {"logits": torch.cat([-y, y, 0.5 * y * y], dim=1),
                "height_logits": torch.cat([y, -y, torch.tanh(y)], dim=1)}


def test_augmented_prediction_of_a_symmetric_network_is_its_plain_prediction():
    """Averaging the eight views maps each back exactly: for an equivariant network every view, mapped
    back, is the plain map, so the average is too (a view mapped back by the wrong turn is not)."""
    image = np.random.default_rng(5).normal(size=(1, 48, 64)).astype(np.float32)
    net = _SquareSymmetricNet()
    exact = {"device": "cpu", "precision": "float32", "tile": 1024, "overlap": 64}
    plain = predict(net, image, **exact)
    aug = predict(net, image, augment=True, **exact)
    assert plain["probabilities"].shape == (3, 48, 64)
    assert plain["probabilities"][1].std() > 0.05  # not a constant map: a wrong turn would show
    assert np.abs(aug["probabilities"] - plain["probabilities"]).max() < 1e-5
    assert np.abs(aug["height"] - plain["height"]).max() < 1e-5
    # the stand-in is equivariant: its plain map of a turned, mirrored image is the turned, mirrored map
    turned = predict(net, np.ascontiguousarray(np.rot90(image[:, :, ::-1], 1, axes=(1, 2))), **exact)
    assert np.abs(turned["probabilities"] - np.rot90(plain["probabilities"][:, :, ::-1], 1, axes=(1, 2))).max() < 1e-5
