"""Physics checks of the imaging chain (abTEM exit waves, our lens and detector)."""

from __future__ import annotations

import math

import numpy as np
import pytest

abtem = pytest.importorskip("abtem")
from ase.build import graphene  # noqa: E402
from abtem.atoms import orthogonalize_cell  # noqa: E402
from skimage.feature import peak_local_max  # noqa: E402

from atomfinder.imaging.hrtem import resample_spectrum, simulate_draw  # noqa: E402
from atomfinder.imaging.microscope import Microscope, MicroscopeRanges, scherzer_defocus_A, wavelength_A  # noqa: E402
from atomfinder.imaging.multislice import ExitWaves, _abtem, exit_waves  # noqa: E402
from atomfinder.imaging.noise import detect  # noqa: E402
from atomfinder.imaging.transfer import aberration_phase, image_intensity  # noqa: E402
from atomfinder.structures.base import Sites  # noqa: E402


def perfect_graphene(box_px: int, sampling_A: float):
    """A periodic graphene sheet in a square box of ``box_px * sampling_A`` Å (exactly periodic in x)."""
    atoms = orthogonalize_cell(graphene(a=2.46, vacuum=2.0)).repeat((8, 5, 1))
    # 8 x 2.46 = 19.68 Å along x, 5 x 4.26 = 21.3 Å along y: use a box that holds
    # a whole number of cells in x and y
    lx, ly = atoms.cell[0, 0], atoms.cell[1, 1]
    return atoms, lx, ly


@pytest.fixture(scope="module")
def sheet():
    atoms, lx, ly = perfect_graphene(0, 0)
    s = 0.05
    gpts = (int(round(ly / s)), int(round(lx / s)))
    _abtem()
    pot = abtem.Potential(atoms, gpts=(gpts[1], gpts[0]), slice_thickness=4, parametrization="lobato", projection="infinite")
    waves = abtem.PlaneWave(energy=80e3).multislice(pot, lazy=False)
    ew = ExitWaves(np.ascontiguousarray(np.asarray(waves.array).T[None]).astype(np.complex64), float(waves.sampling[0]), 80e3)
    sites = Sites(atoms.positions[:, :2].copy(), np.ones(len(atoms), int), np.ones(len(atoms), int))
    return {"atoms": atoms, "waves": waves, "exit": ew, "sites": sites, "gpts": gpts}


def test_wavelength_and_scherzer():
    # 80 kV: 0.04176 Å; 300 kV: 0.01969 Å (textbook values)
    assert wavelength_A(80e3) == pytest.approx(0.04176, rel=1e-3)
    assert wavelength_A(300e3) == pytest.approx(0.01969, rel=1e-3)
    assert scherzer_defocus_A(-20e4, 80e3) < 0 < scherzer_defocus_A(20e4, 80e3)
    from abtem.transfer import scherzer_defocus

    assert scherzer_defocus_A(1e7, 300e3) == pytest.approx(scherzer_defocus(1e7, 300e3), rel=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        dict(defocus=40.0, Cs=-20e4),
        dict(defocus=-60.0, Cs=10e4, angular_spread=0.5, astigmatism=20.0, astigmatism_angle=0.3, coma=100.0, coma_angle=1.0),
    ],
)
def test_lens_matches_abtem_ctf(sheet, kw):
    """Our lens (written for speed and varying defocus) reproduces abTEM's CTF imaging."""
    ctf = abtem.CTF(energy=80e3, semiangle_cutoff=30, **kw)
    reference = np.asarray(sheet["waves"].apply_ctf(ctf).intensity().array).T
    m = Microscope(
        energy_eV=80e3,
        sampling_A=sheet["exit"].sampling_A,
        defocus_A=kw["defocus"],
        Cs_A=kw["Cs"],
        semiangle_cutoff_mrad=30,
        angular_spread_mrad=kw.get("angular_spread", 0.0),
        astigmatism_A=kw.get("astigmatism", 0.0),
        astigmatism_angle_rad=kw.get("astigmatism_angle", 0.0),
        coma_A=kw.get("coma", 0.0),
        coma_angle_rad=kw.get("coma_angle", 0.0),
    )
    ours = image_intensity(resample_spectrum(sheet["exit"], sheet["gpts"])[0], m)
    assert np.abs(ours - reference).max() < 0.02 * reference.std()


def test_labels_coincide_with_intensity_maxima(sheet):
    """Noise-free, high-resolution, Cs = 0, slight overfocus: every atom is a bright peak on its label."""
    s = sheet["exit"].sampling_A
    m = Microscope(energy_eV=80e3, sampling_A=s, defocus_A=-20.0, semiangle_cutoff_mrad=60)
    image = image_intensity(resample_spectrum(sheet["exit"], sheet["gpts"])[0], m)
    labels_xy = sheet["sites"].positions_A / s
    # the brightest local maxima, one per atom, all lie on the atoms' labels
    peaks = peak_local_max(image, min_distance=int(0.6 / s), num_peaks=len(labels_xy), exclude_border=False)
    peaks_xy = peaks[:, ::-1].astype(float)
    from scipy.spatial import cKDTree

    d_label, _ = cKDTree(peaks_xy).query(labels_xy)
    d_peak, _ = cKDTree(labels_xy).query(peaks_xy)
    assert np.max(d_label) * s < 0.06  # every atom has a peak within 0.06 Å (about one pixel)
    assert np.max(d_peak) * s < 0.06  # and no peak lies off an atom


def test_defocus_sign_follows_the_ctf(sheet):
    """Weak-phase object: intensity at the atoms is 1 + 2 sigma (V * F^-1[sin chi]); underfocus with
    Cs = 0 gives sin chi < 0 (dark atoms), overfocus sin chi > 0 (bright atoms)."""
    s = sheet["exit"].sampling_A
    spectrum = resample_spectrum(sheet["exit"], sheet["gpts"])[0]
    xy = np.round(sheet["sites"].positions_A / s).astype(int)
    # the two strongest graphene reflections: {100} at 1/2.13 Å and {110} at 1/1.23 Å
    k = np.array([1 / 2.13, 1 / 1.23])
    for defocus in (+30.0, -30.0):
        m = Microscope(energy_eV=80e3, sampling_A=s, defocus_A=defocus, semiangle_cutoff_mrad=40)
        chi = aberration_phase(k, np.zeros_like(k), m, defocus)
        predicted_bright = bool(np.all(np.sin(chi) > 0))
        assert bool(np.all(np.sin(chi) < 0)) != predicted_bright  # both reflections agree in sign
        image = image_intensity(spectrum, m)
        contrast = image[xy[:, 1] % image.shape[0], xy[:, 0] % image.shape[1]].mean() - image.mean()
        assert (contrast > 0) == predicted_bright
        assert abs(contrast) > 0.02
    # and the textbook statement itself
    assert aberration_phase(k[:1], np.zeros(1), m, +30.0)[0] < 0


@pytest.mark.parametrize("dose", [1e2, 1e4])
def test_noise_variance_follows_dose(dose):
    rng = np.random.default_rng(1)
    s = 0.1
    m = Microscope(sampling_A=s, dose_e_per_A2=dose)  # perfect detector, gain 1, offset 0
    counts = detect(np.ones((256, 256), np.float32), m, rng)
    electrons = dose * s * s
    assert counts.mean() == pytest.approx(electrons, rel=0.02)
    # Poisson: variance = mean, so the relative variance is 1 / (dose * pixel area)
    assert (counts / electrons).var() == pytest.approx(1 / electrons, rel=0.05)


def test_gain_offset_and_mtf():
    rng = np.random.default_rng(2)
    base = Microscope(sampling_A=0.1, dose_e_per_A2=1e4)
    plain = detect(np.ones((128, 128), np.float32), base, np.random.default_rng(3))
    scaled = detect(np.ones((128, 128), np.float32), base.replace(gain=3.0, offset=0.5), np.random.default_rng(3))
    np.testing.assert_allclose(scaled, 3.0 * plain + 0.5 * 3.0 * plain.mean(), rtol=1e-5)
    # an MTF spreads each electron over neighbours: the white noise loses variance
    blurred = detect(np.ones((128, 128), np.float32), base.replace(mtf_c0=0.1, mtf_c1=0.4, mtf_c2=2.0), rng)
    assert blurred.var() < 0.7 * plain.var()


def test_microscope_round_trip_and_sampler():
    r = MicroscopeRanges()
    assert MicroscopeRanges.from_dict(r.to_dict()) == r
    a = r.sample(np.random.default_rng(5))
    b = r.sample(np.random.default_rng(5))
    assert a == b
    assert Microscope.from_dict(a.to_dict()) == a
    assert Microscope.from_dict(Microscope().to_dict()) == Microscope()  # infinite dose survives
    draws = [r.sample(np.random.default_rng(i)) for i in range(300)]
    offsets = np.array([d.defocus_A - scherzer_defocus_A(d.Cs_A, d.energy_eV) for d in draws])
    assert offsets.min() < -200 and offsets.max() > 200  # through contrast reversal
    doses = np.array([d.dose_e_per_A2 for d in draws])
    assert 1e2 <= doses.min() < 3e2 and 3e4 < doses.max() <= 1e5
    assert {d.energy_eV for d in draws} == set(r.energies_eV)
    # no objective aperture in most images; where there is one, it cuts at 0.6-1.1 Å at any voltage
    apertures = [d for d in draws if np.isfinite(d.semiangle_cutoff_mrad)]
    assert 0.15 < len(apertures) / len(draws) < 0.45
    cut_A = np.array([1e3 * wavelength_A(d.energy_eV) / d.semiangle_cutoff_mrad for d in apertures])
    assert cut_A.min() >= 0.6 - 1e-9 and cut_A.max() <= 1.1 + 1e-9
    no_aperture = next(d for d in draws if not np.isfinite(d.semiangle_cutoff_mrad))
    assert Microscope.from_dict(no_aperture.to_dict()) == no_aperture
    with pytest.raises(ValueError, match="unknown"):
        MicroscopeRanges.from_dict({"voltage": 1})


def test_corrected_defocus_range_is_absolute_and_uncorrected_stays_near_scherzer():
    """The gold recipe: corrected lenses at any focus in -150..+150 Å, uncorrected 300 kV near Scherzer."""
    r = MicroscopeRanges(energies_eV=(200e3, 300e3), p_corrected=0.8, uncorrected_min_energy_eV=300e3,
                         Cs_corrected_A=(-40e4, 40e4), corrected_defocus_A=(-150.0, 150.0),
                         defocus_around_scherzer_A=(-60.0, 60.0))
    assert MicroscopeRanges.from_dict(r.to_dict()) == r
    draws = [r.sample(np.random.default_rng(i)) for i in range(400)]
    corrected = [d for d in draws if abs(d.Cs_A) <= 40e4]
    uncorrected = [d for d in draws if abs(d.Cs_A) >= 0.5e7]
    assert len(corrected) + len(uncorrected) == len(draws) and uncorrected
    df = np.array([d.defocus_A for d in corrected])
    assert df.min() >= -150 and df.max() <= 150 and df.min() < -120 and df.max() > 120
    cs = np.array([d.Cs_A for d in corrected])
    assert (cs < 0).any() and (cs > 0).any()  # both contrast signs
    assert {d.energy_eV for d in uncorrected} == {300e3}
    off = np.array([d.defocus_A - scherzer_defocus_A(d.Cs_A, d.energy_eV) for d in uncorrected])
    assert np.abs(off).max() <= 60
    with pytest.raises(ValueError, match="corrected_defocus_A"):
        MicroscopeRanges(corrected_defocus_A=(1.0,))


def test_varying_defocus_inverts_contrast_across_the_field(sheet):
    """A defocus gradient from overfocus to underfocus turns bright atoms (left) into dark ones (right)."""
    s = sheet["exit"].sampling_A
    spectrum = resample_spectrum(sheet["exit"], sheet["gpts"])[0]
    n_rows, n_cols = spectrum.shape
    width_A = n_cols * s
    m = Microscope(energy_eV=80e3, sampling_A=s, defocus_A=0.0, semiangle_cutoff_mrad=40,
                   defocus_gradient=(60.0 / width_A, 0.0), focal_spread_A=5.0)
    from atomfinder.imaging.transfer import defocus_map_A

    df = defocus_map_A(spectrum.shape, m, ((n_cols - 1) / 2, (n_rows - 1) / 2))
    assert df[0, 0] == pytest.approx(-30, abs=1) and df[0, -1] == pytest.approx(30, abs=1)
    image = image_intensity(spectrum, m, df)
    xy = np.round(sheet["sites"].positions_A / s).astype(int)
    at = image[xy[:, 1] % n_rows, xy[:, 0] % n_cols]
    left = xy[:, 0] < 0.2 * n_cols
    right = xy[:, 0] > 0.8 * n_cols
    assert at[left].mean() > image[:, : int(0.2 * n_cols)].mean()
    assert at[right].mean() < image[:, int(0.8 * n_cols) :].mean()


def test_focal_series_drift_and_crop(sheet):
    """Frames of a focal series are shifted by their drift; labels belong to frame 0."""
    s = sheet["exit"].sampling_A
    spectra = resample_spectrum(sheet["exit"], sheet["gpts"])
    m = Microscope(energy_eV=80e3, sampling_A=s, defocus_A=-20.0, semiangle_cutoff_mrad=60)
    drift = np.array([[0.0, 0.0], [3.0, -2.0]])
    out = simulate_draw(spectra, sheet["sites"], [m, m], drift, (10, 20), 128, np.random.default_rng(0))
    assert out.image.shape == (2, 128, 128)
    f0, f1 = out.image
    # frame 1 is frame 0 moved by (+3, -2) pixels
    np.testing.assert_allclose(f1[10:100, 10:100], f0[12:102, 7:97], atol=1e-3)
    # labels in crop pixels: the atom at (X, Y) Å is at X / s - 10, Y / s - 20
    inside = (out.positions_px >= 0).all(1) & (out.positions_px < 127).all(1)
    xy = np.round(out.positions_px[inside]).astype(int)
    assert f0[xy[:, 1], xy[:, 0]].mean() > f0.mean() + 0.05


def test_exit_waves_vacuum_and_determinism():
    _abtem()
    atoms = orthogonalize_cell(graphene(a=2.46, vacuum=2.0)).repeat((4, 2, 1))
    lx = atoms.cell[0, 0]
    atoms.set_cell([lx, lx, atoms.cell[2, 2]])
    n = 96
    a = exit_waves(atoms, 80e3, (n, n))
    b = exit_waves(atoms, 80e3, (n, n))
    assert a.array.shape == (1, n, n) and a.sampling_A == pytest.approx(lx / n)
    np.testing.assert_array_equal(a.array, b.array)
    assert abs(np.abs(a.array).mean() - 1) < 0.01  # a weak phase object: |psi| ~ 1
    with pytest.raises(ValueError, match="non-square"):
        exit_waves(atoms, 80e3, (n, n + 10))
    empty = atoms[:0]
    vac = exit_waves(empty, 80e3, (n, n))
    assert np.allclose(np.abs(vac.array), 1, atol=1e-5)
    assert math.isclose(vac.energy_eV, 80e3)


def test_frozen_phonons_give_distinct_configurations():
    _abtem()
    atoms = orthogonalize_cell(graphene(a=2.46, vacuum=2.0)).repeat((4, 2, 1))
    lx = atoms.cell[0, 0]
    atoms.set_cell([lx, lx, atoms.cell[2, 2]])
    waves = exit_waves(atoms, 80e3, (96, 96), frozen_phonons=3, seed=1)
    again = exit_waves(atoms, 80e3, (96, 96), frozen_phonons=3, seed=1)
    assert waves.array.shape == (3, 96, 96)
    np.testing.assert_array_equal(waves.array, again.array)  # seeded
    assert not np.allclose(waves.array[0], waves.array[1])  # the atoms moved
