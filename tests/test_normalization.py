"""Local and global normalisation."""

import numpy as np
import pytest

from scipy.ndimage import gaussian_filter

from atomfinder.nn.normalization import apply_normalization, gaussian_blur_reflect, normalize_global, normalize_local

SAMPLING = 0.1  # Å/px


def _lattice(shape, spacing_px=25.0, sigma_px=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    k = 2 * np.pi / spacing_px
    # Smooth periodic "atoms": sharpened product of cosines, values in [0, 1].
    return ((1 + np.cos(k * xx)) * (1 + np.cos(k * yy)) / 4) ** (sigma_px / 2)


def test_contrast_that_inverts_across_the_field():
    shape = (200, 700)
    lattice = _lattice(shape)  # period 25 px = 2.5 Å
    x = np.arange(shape[1]) / shape[1]
    contrast = np.tanh((0.5 - x) / 0.02) * np.where(x < 0.5, 4.0, 1.0)  # +4 ... -1
    image = 100.0 + 20.0 * x + contrast[None, :] * lattice
    out = normalize_local(image, SAMPLING, window_A=6.0)  # Gaussian sigma 30 px
    assert out.dtype == np.float32 and out.shape == shape
    # Statistics over 4 x 4 lattice periods, >= 3 sigma from the borders and >= 5 sigma
    # from the reversal: mean ~0 and std ~1 on both sides, although the raw contrast
    # differs 4-fold in size and in sign.
    left, right = out[50:150, 100:200], out[50:150, 500:600]
    for block in (left, right):
        assert abs(block.mean()) < 0.01
        assert abs(block.std() - 1) < 0.01
    # The polarity is kept: atoms are positive on the left and negative on the right.
    atoms = lattice[50:150, 100:200] > 0.9
    assert left[atoms].mean() > 1 and right[atoms].mean() < -1
    # Global standardisation, for contrast, leaves the weak side far below unit std.
    g = normalize_global(image)
    assert g[50:150, 500:600].std() < 0.5


def test_uniform_and_flat_regions_give_no_nan():
    out = normalize_local(np.full((64, 64), 7.0), SAMPLING)
    assert np.isfinite(out).all() and np.abs(out).max() < 1e-6
    img = np.zeros((64, 128))
    img[:, 64:] = np.random.default_rng(0).normal(size=(64, 64))
    out = normalize_local(img, SAMPLING, window_A=2.0)
    assert np.isfinite(out).all()
    g = normalize_global(np.full((8, 8), 3.0))
    assert np.isfinite(g).all() and np.abs(g).max() == 0


def test_affine_invariance_and_channels():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 60))
    b = rng.normal(size=(50, 60))
    stack = np.stack([a, 1000 + 50 * b])
    out = normalize_local(stack, SAMPLING, window_A=3.0)
    assert out.shape == (2, 50, 60) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], normalize_local(a, SAMPLING, 3.0), atol=1e-5)
    np.testing.assert_allclose(out[1], normalize_local(b, SAMPLING, 3.0), atol=1e-4)
    g = normalize_global(stack)
    assert np.allclose(g.mean(axis=(1, 2)), 0, atol=1e-5)
    assert np.allclose(g.std(axis=(1, 2)), 1, atol=1e-4)
    with pytest.raises(ValueError):
        normalize_local(np.zeros(5), SAMPLING)


def test_apply_normalization_dispatch():
    img = np.random.default_rng(2).normal(size=(40, 40))
    np.testing.assert_array_equal(
        apply_normalization(img, {"kind": "local", "window_A": 5.0}, SAMPLING),
        normalize_local(img, SAMPLING, 5.0),
    )
    np.testing.assert_array_equal(apply_normalization(img, {"kind": "global"}), normalize_global(img))
    with pytest.raises(ValueError):
        apply_normalization(img, {"kind": "local"})
    with pytest.raises(ValueError):
        apply_normalization(img, {"kind": "median"})


@pytest.mark.parametrize("shape, sigma", [((300, 77), 60.0), ((64, 64), 30.0), ((120, 90), 4.0), ((611, 97), 12.5)])
def test_fft_gaussian_equals_direct_reflect_filter(shape, sigma):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 3 + np.linspace(0, 10, shape[1])[None]
    direct = gaussian_filter(x, sigma, mode="reflect")
    assert np.abs(gaussian_blur_reflect(x, sigma) - direct).max() < 1e-4 * np.ptp(x)


def test_noise_estimate_ignores_smooth_signal():
    from atomfinder.nn.normalization import estimate_noise_std

    rng = np.random.default_rng(3)
    shape = (300, 300)
    noise = rng.normal(0, 0.5, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 2 * np.pi / 12.3  # 1.23 Å fringes at 0.1 Å/px
    fringes = 2.5 * (np.cos(k * xx) + np.cos(k * yy))  # contrast std 2.5, five times the noise
    assert estimate_noise_std(100 + noise) == pytest.approx(0.5, rel=0.03)
    assert estimate_noise_std(100 + fringes + noise) == pytest.approx(0.5, rel=0.15)
    assert estimate_noise_std(100 + fringes) < 0.5  # alone, the fringes read as less than the noise
    assert estimate_noise_std(np.full(shape, 3.0)) == 0.0
    with pytest.raises(ValueError, match="3 x 3"):
        estimate_noise_std(np.zeros((2, 50)))


def test_noise_floor_keeps_vacuum_below_unit_contrast():
    """A hole of pure shot noise next to a lattice: the floor damps the hole, not the lattice."""
    rng = np.random.default_rng(4)
    shape = (256, 512)
    lattice = 4.0 * (_lattice(shape, spacing_px=12.3) - 0.25)
    lattice[:, 256:] = 0.0  # right half: vacuum
    image = 100.0 + lattice + rng.normal(0, 0.4, shape)
    plain = normalize_local(image, SAMPLING, window_A=12.0)
    floored = normalize_local(image, SAMPLING, window_A=12.0, noise_floor=2.0)
    vac = (slice(60, 200), slice(400, 480))
    lat = (slice(60, 200), slice(40, 120))
    assert plain[vac].std() == pytest.approx(1.0, abs=0.1)  # the plain scheme raises noise to unit contrast
    assert floored[vac].std() < 0.55  # at most 1 / noise_floor
    assert floored[lat].std() == pytest.approx(plain[lat].std(), rel=0.02)
    # the card's record carries the floor
    spec = {"kind": "local", "window_A": 12.0, "noise_floor": 2.0}
    np.testing.assert_array_equal(apply_normalization(image, spec, SAMPLING), floored)
    with pytest.raises(ValueError, match="noise_floor"):
        normalize_local(image, SAMPLING, noise_floor=-1.0)


def test_a_known_noise_level_sets_the_floor_per_channel():
    """Given noise (as the pipeline passes it for a resampled image) replaces the estimate."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1.0, (2, 128, 128)).astype(np.float32)
    estimated = normalize_local(noise, SAMPLING, noise_floor=2.0)
    given = normalize_local(noise, SAMPLING, noise_floor=2.0, noise_std=[1.0, 4.0])
    assert estimated[0].std() == pytest.approx(0.5, rel=0.05)
    assert given[0].std() == pytest.approx(0.5, rel=0.05) and given[1].std() == pytest.approx(0.125, rel=0.05)
    np.testing.assert_array_equal(normalize_local(noise[1], SAMPLING, noise_floor=2.0, noise_std=[4.0]), given[1])
    with pytest.raises(ValueError, match="one per channel"):
        normalize_local(noise, SAMPLING, noise_floor=2.0, noise_std=[1.0])
