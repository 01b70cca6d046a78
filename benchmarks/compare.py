"""atomfinder against its peers on the same simulated test images, scored by atomfinder's evaluator.

Rows, per system and fixed dose (the stores ``DATA/<system>-test-<dose>.zarr``,
doses inside the shipped model's validity range):

* ``atomfinder``: the shipped model (``atomfinder evaluate``'s detector);
* ``AtomAI``: ``atomai.models.Segmentor("Unet")`` trained on the shipped model's
  own training store for ``--budget-min`` minutes of ``--threads`` cores (counted as
  CPU time), located with AtomAI's own
  coordinate finder (threshold, centre of mass);
* ``Atomap (conventional seeds)``: Atomap's 2-D Gaussian refinement of the
  conventional peak finder's positions;
* ``Atomap (atomfinder seeds)``: the same refinement of atomfinder's detections
  (does Gaussian refinement improve on atomfinder's sub-pixel positions?);
* ``conventional``: atomfinder's band-pass + local-maxima baseline.

A focal-series model (``mos2-focal``, ``gold-focal``) sees the three frames of each
series; the single-image methods see the middle one, and every method is scored on
the atom columns as one class (vacancy sites, which only the focal model can report,
are left out), so its rows measure finding columns, not telling species apart. The
truth and the focal model's positions (in the first frame's grid) are moved into the
middle frame's grid by the drift the simulator recorded.

All are matched one-to-one to the ground truth at 0.5 Å with the evaluator's
border band (:func:`atomfinder.analysis.evaluate.compare`). The Cramér-Rao bound
of every site's position is computed for ``--crlb-images`` of those images of
each store from the re-simulated noise-free image
(:func:`atomfinder.imaging.crlb.image_position_crlb_A`), so localisation errors
are also given as RMSE / CRLB (per coordinate).

Speed and memory: one lattice image of each ``--timing-sizes`` side to an atom
table per tool, each in a fresh process (median after one warm-up, peak RSS);
printed as ratios to atomfinder.

The peers live in their own environment ``.venv-peers`` (``--setup-peers``
creates it) and run through ``benchmarks/peers_worker.py``: atomfinder never
imports them. Writes ``--out`` (Markdown) with PNG plots and the whole result
(``result.json``) beside it in ``<out stem>/`` and ends with one JSON line;
``--keep-others`` keeps that file's rows of the systems (and timing) a run does
not redo, stamped with the date and commit of the run that made them.

    python benchmarks/compare.py --setup-peers --budget-min 30 --work runs/compare
    python benchmarks/compare.py --skip-peers --systems graphene --doses 1e4 --n-images 4
    python benchmarks/compare.py --setup-peers --systems gold-focal --timing-sizes --keep-others --work runs/compare
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("peers_worker.py")
#: The peers' environment: never atomfinder's own ``.venv``.
PEER_VENV = ROOT / ".venv-peers"
#: What goes into the peers' environment, in order (pip arguments per step).
PEER_INSTALL: tuple[tuple[str, ...], ...] = (
    ("--upgrade", "pip"),
    ("torch==2.14.1", "torchvision==0.29.1"),
    ("--no-deps", "atomai==0.8.1"),
    ("numpy", "scipy", "scikit-image", "scikit-learn", "matplotlib", "networkx", "pandas",
     "opencv-python-headless", "six", "progressbar2", "gpytorch", "mendeleev<=0.6.1", "tifffile", "atomap==0.4.2"),
)
#: Matching radius (Å) of every score here.
RADIUS_A = 0.5
#: Band along the image edge that is not scored (Å), as ``atomfinder evaluate``.
BORDER_A = 1.0
#: Method names, in table order.
ATOMFINDER = "atomfinder"
ATOMAI = "AtomAI"
ATOMAP_CONV = "Atomap (conventional seeds)"
ATOMAP_AF = "Atomap (atomfinder seeds)"
CONVENTIONAL = "conventional"
METHODS = (ATOMFINDER, ATOMAI, ATOMAP_CONV, ATOMAP_AF, CONVENTIONAL)


def log(msg: str) -> None:
    """Progress on stderr (stdout ends with the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- peers' environment


def peer_python(venv: Path = PEER_VENV) -> Path:
    """The peers' interpreter."""
    return venv / "bin" / "python"


def setup_peers(venv: Path = PEER_VENV, python: str = "python3.11") -> None:
    """Create the peers' environment at ``venv`` with AtomAI 0.8.1 and Atomap 0.4.2, unless it exists.

    AtomAI imports torchvision, gpytorch, cv2, six, progressbar and mendeleev at
    import time; they are installed explicitly (``--no-deps`` for AtomAI itself).
    """
    if venv.resolve() == (ROOT / ".venv").resolve():
        raise ValueError("the peers never go into atomfinder's own .venv")
    if peer_python(venv).exists():
        log(f"peers: {venv} exists")
        return
    log(f"peers: creating {venv} (torch, AtomAI, Atomap: several GB, minutes)")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    for step in PEER_INSTALL:
        log("peers: pip install " + " ".join(step))
        subprocess.run([str(peer_python(venv)), "-m", "pip", "install", "-q", *step], check=True)


def run_worker(args: Sequence[str], *, venv: Path = PEER_VENV, threads: int = 2) -> dict:
    """Run ``peers_worker.py`` in the peers' environment; its last stdout line (JSON) parsed."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    proc = subprocess.run([str(peer_python(venv)), str(WORKER), *args, "--threads", str(threads)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peers_worker {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- test data


def dose_tag(dose: float) -> str:
    """``2e2``, ``1e3``, ... : the dose as test stores are named."""
    exponent = int(math.floor(math.log10(dose)))
    mantissa = dose / 10**exponent
    m = f"{mantissa:.3g}".rstrip("0").rstrip(".")
    return f"{m}e{exponent}"


def test_store(data_dir: Path, system: str, dose: float) -> Path:
    """Path of the test store of ``system`` (a simulated system or a model with its own test set) at ``dose``."""
    return data_dir / f"{system}-test-{dose_tag(dose)}.zarr"


#: Overrides of the test stores per simulated system (``configs/``), and their size and seed:
#: what the models' reports use (reports/<model>/README.md).
TEST_CONFIGS = {"graphene": "configs/test-dose-{tag}.toml", "gold": "configs/test-gold-dose-{tag}.toml",
                "mos2": "configs/test-dose-{tag}.toml"}
TEST_N, TEST_SEED = 128, 1001
#: The shipped models the benchmark covers, in the order of its page.
DEFAULT_SYSTEMS = ("graphene", "gold", "mos2-focal", "gold-focal")


@dataclass(frozen=True)
class StoreRecipe:
    """Where a model's test stores come from: ``DATA/<name>-test-<dose>.zarr``, simulated as
    ``atomfinder simulate --system SYSTEM --n N --seed SEED --config CONFIG``."""

    name: str
    system: str
    config: str | None
    n: int = TEST_N
    seed: int = TEST_SEED


#: Models whose test series differ from their simulated system's (reports/<model>/README.md).
MODEL_TEST_SETS = {
    "gold-focal": StoreRecipe("gold-focal", "gold", "configs/test-gold-focal-dose-{tag}.toml", n=64, seed=1401),
}


def test_recipe(model_name: str, system: str) -> StoreRecipe:
    """The test set of shipped model ``model_name`` whose training data simulate ``system``."""
    return MODEL_TEST_SETS.get(model_name) or StoreRecipe(system, system, TEST_CONFIGS.get(system))


def simulate_store(system: str, out: Path, n: int, seed: int, config: Path | None) -> Path:
    """Make a dataset store with ``atomfinder simulate`` (same recipe and seed: the same images)."""
    cmd = [sys.executable, "-m", "atomfinder.cli", "simulate", "--system", system, "--n", str(n),
           "--seed", str(seed), "--out", str(out)] + (["--config", str(config)] if config else [])
    log(f"  simulating {out.name}: {' '.join(cmd[3:])}")
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def ensure_test_store(data_dir: Path, tests: StoreRecipe, dose: float) -> Path | None:
    """The store of test set ``tests`` at ``dose``, simulated first when missing
    (None: no recipe for it)."""
    path = test_store(data_dir, tests.name, dose)
    if path.exists() or tests.config is None:
        return path if path.exists() else None
    config = ROOT / tests.config.format(tag=dose_tag(dose))
    if not config.exists():
        return None
    return simulate_store(tests.system, path, tests.n, tests.seed, config)


def ensure_training_store(card: Any, n: int, work: Path) -> Path:
    """The model's training store, or (when absent, e.g. in a fresh clone) its first ``n`` images
    simulated again from the card's recipe and seed into ``work``."""
    data = card.training["data"]
    path = Path(data["store"])
    path = path if path.is_absolute() else ROOT / path
    if path.exists():
        return path
    config = work / "training-simulation.json"
    config.write_text(json.dumps({"simulation": data["simulation"]}))
    return simulate_store(data["simulation"]["system"], work / path.name, n, int(data["seed"]), config)


def dose_covered(card: Any, dose: float) -> bool:
    """Whether ``dose`` lies in the model card's validity range (no range: covered)."""
    span = (card.validity or {}).get("dose_e_per_A2")
    return not span or float(span[0]) <= dose <= float(span[1])


def spread_indices(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``0 .. n_total - 1`` (all of them when ``n >= n_total``).

    A store holds several images of each simulated specimen in a row (``draws_per_wave``
    microscopes per exit wave: 8 per graphene or MoS2 sheet, 2 per gold particle in the test
    stores), so the first 16 images of a graphene store show only two sheets; evenly spread
    indices show as many specimens as the store has.
    """
    if n >= n_total:
        return list(range(n_total))
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n)})


def load_samples(store: Any, n: int) -> tuple[list[int], list[Any]]:
    """``n`` samples spread over a store (:func:`spread_indices`) as :class:`EvalSample` objects,
    with their visible indices."""
    from atomfinder.analysis.evaluate import samples_from_store

    indices = spread_indices(len(store), n)
    return indices, list(samples_from_store(store, indices))


def peer_frame(card: Any) -> int:
    """The frame that single-image methods see: the middle one of a focal series (as in
    issue 14's side-by-side), the only one otherwise."""
    return int(card.in_channels) // 2


def atom_classes(class_names: Sequence[str]) -> list[int]:
    """1-based classes that are atoms: every class but vacancies (which no peer can find)."""
    return [i + 1 for i, name in enumerate(class_names) if "vacancy" not in name.lower()]


def atoms_in_frame(sample: Any, classes: Sequence[int], frame: int) -> Any:
    """``sample`` with only frame ``frame`` and only the sites of ``classes``, all as class 1:
    what the class-agnostic, single-image comparison scores. Where the sample knows each
    frame's drift (a simulation's record), the true sites move with the frame, so a method
    that sees only that frame is scored in that frame's own grid."""
    import dataclasses

    keep = np.isin(sample.labels, classes)
    positions_A = sample.positions_A[keep]
    if sample.drift_px is not None:
        positions_A = positions_A + sample.drift_px[frame] * sample.sampling_A
    return dataclasses.replace(sample, image=sample.image[frame:frame + 1], positions_A=positions_A,
                               labels=np.ones(int(keep.sum()), np.int64), heights=sample.heights[keep],
                               drift_px=None)


# --------------------------------------------------------------------------- detections


@dataclass
class Detections:
    """Positions ``(x, y)`` in pixels per sample (by order) and seconds per sample of one method."""

    xy: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    #: Images on which the method failed (e.g. Atomap raised and the seeds were kept), with the reason.
    failed: list[dict] = field(default_factory=list)


def run_local(detect: Callable[[Any], Any], samples: Sequence[Any],
              labels: Sequence[int] | None = None) -> Detections:
    """Run an in-process detector (``sample -> AtomTable``) on every sample, timed; keep only
    detections whose label is in ``labels`` (default: all)."""
    out = Detections()
    for s in samples:
        t = time.perf_counter()
        table = detect(s)
        out.seconds.append(time.perf_counter() - t)
        xy = np.asarray(table.xy, dtype=np.float64).reshape(-1, 2)
        if labels is not None:
            xy = xy[np.isin(np.asarray(table.label), labels)]
        out.xy.append(xy)
    return out


def in_frame_grid(det: Detections, samples: Sequence[Any], frame: int) -> Detections:
    """``det`` (positions in the first frame's pixel grid, as a focal-series model reports them)
    moved into frame ``frame``'s grid by each sample's recorded drift, where the single-image
    methods and the truth of :func:`atoms_in_frame` are; unchanged for samples without drift."""
    xy = [p if s.drift_px is None else p + np.asarray(s.drift_px, dtype=np.float64)[frame]
          for p, s in zip(det.xy, samples)]
    return Detections(xy, list(det.seconds), list(det.failed))


def precomputed_detector(samples: Sequence[Any], det: Detections) -> Callable[[Any], Any]:
    """A detector for :func:`atomfinder.analysis.evaluate.compare` that returns ``det``'s positions."""
    from atomfinder.detection.peaks import AtomTable

    index = {id(s): i for i, s in enumerate(samples)}

    def detect(sample: Any) -> AtomTable:
        xy = det.xy[index[id(sample)]]
        n = len(xy)
        return AtomTable(x=xy[:, 0], y=xy[:, 1], label=np.ones(n, np.int64), probability=np.ones(n),
                         height=np.full(n, -1, np.int64))

    return detect


def atom_sign(image: np.ndarray, xy: np.ndarray, sampling_A: float, atom_radius_A: float) -> float:
    """+1 when atoms at ``xy`` are brighter than the band-passed image around them, else -1.

    Falls back to the conventional rule (skewness of the band-passed image) when
    there are no positions.
    """
    from atomfinder.detection.baseline import bandpass, choose_polarity

    f = bandpass(image, sampling_A, atom_radius_A)
    if len(xy) == 0:
        return float(choose_polarity(f))
    r = np.clip(np.rint(xy[:, 1]).astype(int), 0, f.shape[0] - 1)
    c = np.clip(np.rint(xy[:, 0]).astype(int), 0, f.shape[1] - 1)
    return 1.0 if float(np.mean(f[r, c])) >= 0 else -1.0


def save_seeds(path: Path, samples: Sequence[Any], det: Detections, atom_radius_A: float) -> None:
    """Seeds for Atomap: ``img<i>`` positions and ``sign<i>`` atom contrast per sample."""
    arrays = {}
    for i, (s, xy) in enumerate(zip(samples, det.xy)):
        arrays[f"img{i}"] = xy
        arrays[f"sign{i}"] = np.float64(atom_sign(s.image[0], xy, s.sampling_A, atom_radius_A))
    np.savez(path, **arrays)


def load_peer(path: Path, n: int, seconds: Sequence[float]) -> Detections:
    """Positions written by the worker (``img<i>``) as :class:`Detections`."""
    data = np.load(path)
    return Detections([np.asarray(data[f"img{i}"], dtype=np.float64).reshape(-1, 2) for i in range(n)],
                      list(seconds))


# --------------------------------------------------------------------------- resumable stages


def stage(path: Path, settings: Mapping[str, Any], compute: Callable[[], dict]) -> dict:
    """The result of one stage of the run, computed once per ``settings``.

    ``path`` (JSON) holds ``{"settings": ..., "result": ...}``; a file whose settings
    equal ``settings`` is reused, so a killed run (``--work`` kept) redoes only the
    stages it had not finished. The file is written by rename: never half written.
    """
    from atomfinder.analysis.evaluate import to_jsonable

    wanted = json.loads(json.dumps(to_jsonable(dict(settings))))
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("settings") == wanted:
            log(f"  reusing {path.name} (finished earlier in {path.parent})")
            return saved["result"]
    result = json.loads(json.dumps(to_jsonable(compute())))  # as a rerun will read it back
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({"settings": wanted, "result": result}))
    os.replace(tmp, path)
    return result


# --------------------------------------------------------------------------- AtomAI training


def training_arrays(store: Any, n: int, seed: int = 0, frame: int = 0,
                    classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random training samples: images ``[n, 1, h, w]`` (frame ``frame``) and atom masks ``[n, 1, h, w]``.

    The mask is every pixel of the store's targets (the disks the shipped model
    learned from) that belongs to one of ``classes`` (1-based; default: every class
    but background), all merged into one.
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(store), size=min(n, len(store)), replace=False))
    idx = np.asarray(store.indices)[pick]
    channels = list(classes) if classes is not None else list(range(1, len(store.class_names) + 1))
    x, m = [], []
    for i in range(0, len(idx), 64):
        x.append(store.array("images", idx[i:i + 64])[:, frame:frame + 1])
        m.append(store.array("targets", idx[i:i + 64])[:, channels].sum(axis=1, keepdims=True))
    return np.concatenate(x).astype(np.float32), (np.concatenate(m) >= 0.5).astype(np.float32)


def train_atomai(card: Any, work: Path, args: argparse.Namespace) -> dict:
    """Train AtomAI on the shipped model's training store (``work/atomai.pt``)."""
    from atomfinder.datasets.store import DatasetStore

    path = ensure_training_store(card, args.atomai_train_images, work)
    store = DatasetStore(path)
    x, y = training_arrays(store, args.atomai_train_images, frame=peer_frame(card),
                           classes=atom_classes(card.class_names))
    np.save(work / "train_X.npy", x)
    np.save(work / "train_y.npy", y)
    log(f"  AtomAI: training on {len(x)} images of {path.name} for {args.budget_min} min of {args.threads} "
        "threads (counted as CPU time)")
    info = run_worker(["atomai-train", "--work", str(work), "--budget-cpu-s",
                       str(60 * args.budget_min * args.threads)], threads=args.threads)
    for name in ("train_X.npy", "train_y.npy"):
        (work / name).unlink()
    return info | {"store": path.name}


# --------------------------------------------------------------------------- Cramér-Rao bound


def crop_origin_px(structure_sites_A: np.ndarray, truth_A: np.ndarray, sampling_A: float) -> tuple[int, int] | None:
    """The crop's top-left ``(x0, y0)`` in the cell's pixel grid, from its ground truth.

    A store keeps sites in the crop's frame (Å from the crop's first pixel
    centre); the structure has them in the cell's frame. The one integer pixel
    shift that maps every ground-truth site onto a structure site is the origin.
    """
    from scipy.spatial import cKDTree

    truth = np.asarray(truth_A, dtype=np.float64).reshape(-1, 2) / sampling_A
    sites = np.asarray(structure_sites_A, dtype=np.float64).reshape(-1, 2) / sampling_A
    if len(truth) == 0 or len(sites) == 0:
        return None
    tree = cKDTree(sites)
    for shift in np.rint(sites - truth[0]):
        d, _ = tree.query(truth + shift)
        if np.all(d < 0.05):
            return int(shift[0]), int(shift[1])
    return None


def frame_microscope(fields: Mapping[str, float]) -> Any:
    """A :class:`Microscope` from a store's per-frame parameter dict."""
    from atomfinder.imaging.microscope import Microscope

    d = dict(fields)
    gradient = (d.pop("defocus_gradient_x", 0.0), d.pop("defocus_gradient_y", 0.0))
    return Microscope(**d, defocus_gradient=gradient)


def sample_crlb_A(store: Any, i: int) -> np.ndarray | None:
    """Per-site Cramér-Rao bound (Å) of visible sample ``i``'s ground truth; None if not reproducible.

    The structure is rebuilt from the store's config and seed
    (:func:`atomfinder.datasets.generate.job_structure`, stores with one
    structure per job) and re-imaged without noise at the sample's microscope.
    """
    from atomfinder.datasets.generate import SimulationConfig, job_structure
    from atomfinder.imaging.crlb import image_position_crlb_A

    config = SimulationConfig.from_dict(dict(store.meta["config"]))
    if config.draws_per_wave < config.samples_per_job or config.frames != 1:
        return None
    j = int(store.indices[i])
    structure = job_structure(config, int(store.meta["seed"]), j // config.samples_per_job)
    gt = store.ground_truth(i)
    origin = crop_origin_px(structure.sites.positions_A, gt["positions_A"], gt["sampling_A"])
    if origin is None:
        return None
    sites_cell_A = gt["positions_A"] + np.asarray(origin, dtype=np.float64) * gt["sampling_A"]
    microscope = frame_microscope(store.microscope(i)[0])
    return image_position_crlb_A(structure.atoms, sites_cell_A, microscope, origin, config.image_px,
                                 wave_oversampling=config.wave_oversampling,
                                 slice_thickness_A=config.slice_thickness_A)


def matched_errors(sample: Any, pred_A: np.ndarray, crlb_A: np.ndarray, radius_A: float = RADIUS_A,
                   border_A: float = BORDER_A) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate squared errors (Å²) of the detections matched to interior sites with a
    finite bound, and those sites' bounds (Å).

    Parameters
    ----------
    sample : EvalSample
        A test image with its ground truth.
    pred_A : ndarray, shape (n, 2)
        Detected ``(x, y)`` in Å.
    crlb_A : ndarray, shape (m,)
        Per-site bound of the sample's sites (Å).
    """
    from atomfinder.analysis.evaluate import interior_mask
    from atomfinder.analysis.matching import match_positions

    pi, ti = match_positions(pred_A, sample.positions_A, radius_A)
    inside = interior_mask(sample.positions_A[ti], sample.shape, sample.sampling_A, border_A) & np.isfinite(crlb_A[ti])
    pi, ti = pi[inside], ti[inside]
    return np.sum((pred_A[pi] - sample.positions_A[ti]) ** 2, axis=1) / 2.0, crlb_A[ti]


def rmse_over_crlb(samples: Sequence[Any], det: Detections, bounds: Mapping[int, np.ndarray],
                   radius_A: float = RADIUS_A, border_A: float = BORDER_A) -> dict[str, float]:
    """Per-coordinate RMSE of matched interior detections against the RMS bound of the same sites.

    Parameters
    ----------
    samples : sequence of EvalSample
        Test images with ground truth.
    det : Detections
        One method's positions per sample (pixels).
    bounds : mapping of int to ndarray
        Per-site bound (Å) by sample index (samples without one are skipped).

    Returns
    -------
    dict
        ``n`` pairs, ``rmse_axis_pm``, ``crlb_rms_pm`` and their ratio ``rmse_over_crlb``
        (NaN without pairs).
    """
    err2, bound2 = [], []
    for i, crlb in bounds.items():
        e2, b = matched_errors(samples[i], det.xy[i] * samples[i].sampling_A, crlb, radius_A, border_A)
        err2.append(e2)
        bound2.append(b**2)
    e, b = (np.concatenate(a) if a else np.zeros(0) for a in (err2, bound2))
    if len(e) == 0:
        return {"n": 0, "rmse_axis_pm": math.nan, "crlb_rms_pm": math.nan, "rmse_over_crlb": math.nan}
    rmse, rms_bound = 100 * math.sqrt(float(e.mean())), 100 * math.sqrt(float(b.mean()))
    return {"n": int(len(e)), "rmse_axis_pm": rmse, "crlb_rms_pm": rms_bound,
            "rmse_over_crlb": rmse / rms_bound if rms_bound > 0 else math.nan}


# --------------------------------------------------------------------------- one store


def score_methods(samples: Sequence[Any], dets: Mapping[str, Detections], class_names: Sequence[str],
                  bounds: Mapping[int, np.ndarray]) -> dict[str, dict[str, Any]]:
    """F1, precision, recall, RMSE (pm), time per image and RMSE/CRLB of each method, same matching."""
    from atomfinder.analysis.evaluate import compare, radius_key

    detectors = {name: precomputed_detector(samples, d) for name, d in dets.items()}
    report = compare(samples, detectors, radii_A=(RADIUS_A,), border_A=BORDER_A, n_classes=1,
                     class_names=list(class_names)[:1])
    out = {}
    for name, d in dets.items():
        m = report["detectors"][name]["overall"][radius_key(RADIUS_A)]
        out[name] = {k: m[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1", "rmse_pm")}
        out[name]["seconds_per_image"] = float(np.mean(d.seconds)) if d.seconds else math.nan
        out[name]["failed_images"] = list(d.failed)
        out[name] |= {"crlb": rmse_over_crlb(samples, d, bounds)}
    return out


def run_store(system: str, dose: float, path: Path, net: Any, card: Any, work: Path,
              args: argparse.Namespace, atomai_ready: bool) -> dict[str, Any]:
    """Every method and the bound on ``--n-images`` images spread over one test store."""
    from atomfinder.analysis.evaluate import baseline_detector, network_detector
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(path)
    indices, samples = load_samples(store, args.n_images)
    # every method is scored on the atoms (vacancies left out) as one class; single-image
    # methods see one frame of a focal series, atomfinder's focal model all of them
    classes = atom_classes(store.class_names)
    scored = [atoms_in_frame(s, classes, peer_frame(card)) for s in samples]
    radius = float(store.meta["config"].get("label_radius_A", 0.4))
    log(f"{system} {dose_tag(dose)}: {len(samples)} images from {path.name}")
    found = run_local(network_detector(net, card), samples, labels=classes)  # in frame 0's grid
    dets: dict[str, Detections] = {
        ATOMFINDER: in_frame_grid(found, samples, peer_frame(card)),
        CONVENTIONAL: run_local(baseline_detector(atom_radius_A=radius,
                                                  min_distance_A=card.detection.get("min_distance_A", 1.0)), scored),
    }
    if not args.skip_peers:
        dets |= run_peers(scored, dets, work, radius, args, atomai_ready)
    bounds: dict[int, np.ndarray] = {}
    for i in spread_indices(len(samples), args.crlb_images):
        t = time.perf_counter()
        b = sample_crlb_A(store, indices[i])
        if b is not None and len(b) == len(scored[i].positions_A):
            bounds[i] = b
            log(f"  CRLB image {indices[i]}: median {100 * float(np.median(b[np.isfinite(b)])):.1f} pm "
                f"({len(b)} sites, {time.perf_counter() - t:.0f} s)")
    finite = np.concatenate([b[np.isfinite(b)] for b in bounds.values()]) if bounds else np.zeros(0)
    scores = score_methods(scored, dets, ["atom"], bounds)
    for name, sc in scores.items():
        log(f"  {name:28s} F1 {sc['f1']:.3f}  RMSE {sc['rmse_pm'] or math.nan:.1f} pm  "
            f"RMSE/CRLB {sc['crlb']['rmse_over_crlb']:.2f}  {sc['seconds_per_image']:.2f} s/image")
    return {"store": path.name, "n_images": len(samples), "indices": indices, "crlb_images": len(bounds),
            "crlb_median_pm": 100 * float(np.median(finite)) if len(finite) else math.nan, "methods": scores}


def run_peers(samples: Sequence[Any], dets: Mapping[str, Detections], work: Path, radius_A: float,
              args: argparse.Namespace, atomai_ready: bool) -> dict[str, Detections]:
    """AtomAI's detections and Atomap's refinements of both seed sets, through the worker."""
    np.save(work / "images.npy", np.stack([s.image[0] for s in samples]))
    out: dict[str, Detections] = {}
    n = len(samples)
    if atomai_ready:
        info = run_worker(["atomai-predict", "--work", str(work), "--threshold", str(args.atomai_threshold)],
                          threads=args.threads)
        out[ATOMAI] = load_peer(work / "atomai_xy.npz", n, info["seconds"])
    for name, source in ((ATOMAP_CONV, CONVENTIONAL), (ATOMAP_AF, ATOMFINDER)):
        seeds = "seeds_" + ("conventional" if source == CONVENTIONAL else "atomfinder")
        save_seeds(work / f"{seeds}.npz", samples, dets[source], radius_A)
        info = run_worker(["atomap-refine", "--work", str(work), "--seeds", seeds], threads=args.threads)
        # the time of a refined row includes its seeds' own detection time
        seconds = [a + b for a, b in zip(info["seconds"], dets[source].seconds)]
        out[name] = load_peer(work / f"{seeds}_refined.npz", n, seconds)
        out[name].failed = list(info.get("failed", []))
        for f in out[name].failed:
            log(f"  {name}: image {f['image']} ({f['seeds']} seeds) not refined: {f['error']}")
    return out


# --------------------------------------------------------------------------- speed and memory

ATOMFINDER_TIMING = r"""
import json, sys, time
import numpy as np, torch
sys.path.insert(0, {bench_dir!r})
from peers_worker import peak_rss_mb
from atomfinder.detection.pipeline import detect_array
from atomfinder.nn.card import load_model, resolve_model
torch.set_num_threads({threads})
net, card = load_model(resolve_model({model!r}))
image = np.load({image!r})
times = []
for _ in range({repeats} + 1):
    t = time.perf_counter()
    n = len(detect_array(net, card, image, {sampling}, device={device!r}).atoms.x)
    times.append(time.perf_counter() - t)
print(json.dumps({{"tool": "atomfinder", "times_s": times, "atoms": n,
                  "peak_rss_mb": peak_rss_mb(), "device": {device!r} or "cpu"}}))
"""


def lattice(size: int, sampling_A: float, seed: int = 0) -> np.ndarray:
    """A noisy honeycomb (graphene-like, 1.42 Å bonds) of ``size`` x ``size`` pixels (benchmarks/bench_infer.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_infer import lattice_image

    return lattice_image(size, sampling_A, np.random.default_rng(seed))


def median_after_warmup(times: Sequence[float]) -> float:
    """Median of the timings after the first (warm-up) one."""
    rest = list(times[1:]) or list(times)
    return float(np.median(rest))


def time_atomfinder(image_path: Path, sampling_A: float, args: argparse.Namespace, device: str | None) -> dict:
    """atomfinder's image -> atom table in a fresh process."""
    code = ATOMFINDER_TIMING.format(bench_dir=str(WORKER.parent), threads=args.threads, model=args.timing_model,
                                    image=str(image_path), repeats=args.repeats, sampling=sampling_A, device=device)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"atomfinder timing failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_timing(work: Path, args: argparse.Namespace, atomai_ready: bool) -> dict[str, Any]:
    """Per image side: median seconds and peak RSS of each tool, and ratios to atomfinder."""
    from atomfinder.detection.baseline import conventional_atoms

    sampling = 0.1
    devices: list[str | None] = [None]
    if args.gpu:
        devices.append("cuda")
    out: dict[str, Any] = {}
    projected_atomap = math.nan
    for size in args.timing_sizes:
        image = lattice(size, sampling)
        image_path = work / f"timing{size}.npy"
        np.save(image_path, image)
        rows: dict[str, dict] = {}
        for device in devices:
            key = ATOMFINDER if device is None else f"{ATOMFINDER} (cuda)"
            log(f"timing {size}²: {key}")
            rows[key] = time_atomfinder(image_path, sampling, args, device)
        if not args.skip_peers:
            if atomai_ready or args.timing_untrained_atomai:
                log(f"timing {size}²: AtomAI")
                rows[ATOMAI] = run_worker(["time", "--work", str(work), "--tool", "atomai", "--image",
                                           image_path.name, "--repeats", str(args.repeats)], threads=args.threads)
            seeds = conventional_atoms(image, sampling)
            np.savez(work / f"timing{size}_seeds.npz", xy=np.asarray(seeds.xy), sign=np.float64(1.0))
            if math.isfinite(projected_atomap) and projected_atomap * (args.repeats + 1) > args.atomap_max_s:
                rows["Atomap"] = {"skipped": f"projected {projected_atomap:.0f} s per image from the smaller size"}
            else:
                log(f"timing {size}²: Atomap ({len(seeds.x)} seeds)")
                rows["Atomap"] = run_worker(["time", "--work", str(work), "--tool", "atomap", "--image",
                                             image_path.name, "--repeats", str(args.repeats)], threads=args.threads)
                per_atom = median_after_warmup(rows["Atomap"]["times_s"]) / max(len(seeds.x), 1)
                projected_atomap = per_atom * len(seeds.x) * 16  # the next size is 4x the side
        for name, r in rows.items():
            if "times_s" in r:
                r["median_s"] = median_after_warmup(r["times_s"])
        base = rows[ATOMFINDER]
        for name, r in rows.items():
            if "median_s" in r:
                r["time_ratio"] = r["median_s"] / base["median_s"]
                r["rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
                log(f"  {name:12s} {r['median_s']:.3f} s ({r['time_ratio']:.2f}x), peak RSS "
                    f"{r['peak_rss_mb']:.0f} MB ({r['rss_ratio']:.2f}x), {r['atoms']} atoms")
        out[str(size)] = rows
    return out


# --------------------------------------------------------------------------- report


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.{digits}f}"


def accuracy_table(system: str, per_dose: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown rows: one per dose and method."""
    lines = [f"### {system}", "",
             "| dose (e/Å²) | method | F1 | precision | recall | RMSE (pm) | RMSE/axis (pm) | CRLB (pm) | "
             "RMSE / CRLB | s / image |", "|---|---|---|---|---|---|---|---|---|---|"]
    for tag, res in per_dose.items():
        for name in METHODS:
            m = res["methods"].get(name)
            if m is None:
                continue
            c = m["crlb"]
            lines.append(f"| {tag} | {name} | {_f(m['f1'])} | {_f(m['precision'])} | {_f(m['recall'])} | "
                         f"{_f(m['rmse_pm'], 1)} | {_f(c['rmse_axis_pm'], 1)} | {_f(c['crlb_rms_pm'], 1)} | "
                         f"{_f(c['rmse_over_crlb'], 2)} | {_f(m['seconds_per_image'], 3)} |")
    lines.append("")
    for tag, res in per_dose.items():
        for name in METHODS:
            failed = (res["methods"].get(name) or {}).get("failed_images") or []
            if failed:
                lines.append(f"- {tag}, {name}: failed on {len(failed)} of {res['n_images']} images, scored with "
                             "their seeds unrefined (" + "; ".join(
                                 f"image {f['image']}, {f['seeds']} seeds: {f['error']}" for f in failed) + ")")
    return lines + [""]


def timing_table(timing: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown rows: one per image side and tool, with ratios to atomfinder."""
    lines = ["| image | tool | device | median s | × atomfinder | peak RSS (MB) | × atomfinder | atoms |",
             "|---|---|---|---|---|---|---|---|"]
    for size, rows in timing.items():
        for name, r in rows.items():
            if "skipped" in r:
                lines.append(f"| {size}² | {name} | – | not run: {r['skipped']} | – | – | – | – |")
                continue
            lines.append(f"| {size}² | {name} | {r.get('device', 'cpu')} | {_f(r['median_s'], 3)} | "
                         f"{_f(r['time_ratio'], 2)} | {_f(r['peak_rss_mb'], 0)} | {_f(r['rss_ratio'], 2)} | "
                         f"{r['atoms']} |")
    return lines + [""]


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """Ratios worth quoting: time and memory of each peer over atomfinder's at the first size,
    and the mean F1 over doses of each method per system."""
    out: dict[str, float] = {}
    timing = result.get("timing") or {}
    if timing:
        first = timing[next(iter(timing))]
        for name, r in first.items():
            if name != ATOMFINDER and "time_ratio" in r:
                out[f"time_{name}_over_atomfinder"] = round(r["time_ratio"], 2)
                out[f"rss_{name}_over_atomfinder"] = round(r["rss_ratio"], 2)
    for system, per_dose in (result.get("systems") or {}).items():
        for name in METHODS:
            f1 = [d["methods"][name]["f1"] for d in per_dose.values() if name in d["methods"]]
            if f1:
                out[f"mean_f1_{system}_{name}"] = round(float(np.mean(f1)), 3)
    return out


def plots(result: Mapping[str, Any], folder: Path) -> list[Path]:
    """F1 vs dose, RMSE/CRLB vs dose (one panel per system) and time per image (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    systems = result.get("systems") or {}
    for metric, label, fname in (("f1", "F1 at 0.5 Å", "f1_vs_dose.png"),
                                 ("rmse_over_crlb", "RMSE / CRLB (per coordinate)", "rmse_crlb_vs_dose.png")):
        if not systems:
            break
        if metric == "rmse_over_crlb" and not any(
                isinstance(m["crlb"]["rmse_over_crlb"], float) and math.isfinite(m["crlb"]["rmse_over_crlb"])
                for per_dose in systems.values() for d in per_dose.values() for m in d["methods"].values()):
            continue  # no bound anywhere (e.g. focal series only): no empty figure
        fig, axes = plt.subplots(1, len(systems), figsize=(4.5 * len(systems), 3.6), squeeze=False)
        for ax, (system, per_dose) in zip(axes[0], systems.items()):
            doses = [d["dose"] for d in per_dose.values()]
            for name in METHODS:
                ys = [(d["methods"][name]["crlb"]["rmse_over_crlb"] if metric == "rmse_over_crlb"
                       else d["methods"][name][metric]) if name in d["methods"] else math.nan
                      for d in per_dose.values()]
                if any(isinstance(y, float) and math.isfinite(y) for y in ys):
                    ax.plot(doses, ys, "o-", label=name)
            ax.set_xscale("log")
            ax.set_xlabel("dose (e/Å²)")
            ax.set_ylabel(label)
            ax.set_title(system)
            if metric == "rmse_over_crlb":
                ax.axhline(1.0, color="k", lw=0.8, ls=":")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / fname, dpi=110)
        plt.close(fig)
        paths.append(folder / fname)
    timing = result.get("timing") or {}
    if timing:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        names = list(dict.fromkeys(n for rows in timing.values() for n, r in rows.items() if "median_s" in r))
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            ys = [rows.get(name, {}).get("median_s", math.nan) for rows in timing.values()]
            ax.bar(np.arange(len(timing)) + k * width, ys, width, label=name)
        ax.set_xticks(np.arange(len(timing)) + 0.4 - width / 2, [f"{s}²" for s in timing])
        ax.set_yscale("log")
        ax.set_ylabel("seconds per image (median)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "time_per_image.png", dpi=110)
        plt.close(fig)
        paths.append(folder / "time_per_image.png")
    return paths


def peer_wins(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (system, dose, peer) whose F1 is above atomfinder's on the same images, with both
    methods' true positives and RMSE (the issue's target is atomfinder ahead everywhere)."""
    wins = []
    for system, per_dose in (result.get("systems") or {}).items():
        for dose, row in per_dose.items():
            methods = row.get("methods") or {}
            ours = methods.get("atomfinder") or {}
            for name, m in methods.items():
                if name != "atomfinder" and m.get("f1", -1.0) > ours.get("f1", math.inf):
                    wins.append({"system": system, "dose": dose, "peer": name, "f1": m["f1"], "atomfinder_f1": ours["f1"],
                                 "tp": m.get("tp"), "atomfinder_tp": ours.get("tp"), "rmse_pm": m.get("rmse_pm"),
                                 "atomfinder_rmse_pm": ours.get("rmse_pm")})
    return wins


def peer_wins_lines(wins: Sequence[Mapping[str, Any]]) -> list[str]:
    """The page's section on where a peer's F1 is above atomfinder's."""
    if not wins:
        return ["atomfinder's F1 is the highest at every dose of every system in this result.", ""]
    lines = ["| system | dose | peer | peer F1 (TP) | atomfinder F1 (TP) | peer RMSE | atomfinder RMSE |",
             "|---|---|---|---|---|---|---|"]
    for w in wins:
        lines.append(f"| {w['system']} | {w['dose']} | {w['peer']} | {w['f1']:.3f} ({w['tp']}) | "
                     f"{w['atomfinder_f1']:.3f} ({w['atomfinder_tp']}) | {w['rmse_pm']:.1f} pm | "
                     f"{w['atomfinder_rmse_pm']:.1f} pm |")
    return lines + [""]


def markdown(result: Mapping[str, Any], figures: Sequence[Path], out: Path) -> str:
    """The whole ``docs/benchmarks.md`` text."""
    s = result["settings"]
    lines = [
        "# Benchmarks: atomfinder and its peers", "",
        "Generated by `make compare` (`benchmarks/compare.py`); do not edit by hand.", "",
        f"Same independent simulated test images for every method ({s['n_images']} per dose and system, "
        f"`{s['data_dir']}/<system>-test-<dose>.zarr`, spread evenly over each store so that they show every "
        "simulated specimen of it: a store holds 8 microscopes of each graphene or MoS2 sheet, 2 of each gold "
        "particle, in a row), scored by atomfinder's evaluator: one-to-one matching "
        f"at {RADIUS_A} Å, a {BORDER_A} Å band along the image edge neither required nor penalised. "
        "RMSE is the 2-D error of matched atoms; RMSE/axis is per coordinate, compared with the "
        "Cramér-Rao bound (CRLB, 1 σ per coordinate) of the same sites, computed on "
        f"{s['crlb_images']} of those images per store (spread likewise) from the re-simulated noise-free image "
        "(finite differences of the image with respect to every site's position, all sites' "
        "coordinates unknown together, Poisson noise at the dose, ideal detector without MTF: "
        "`atomfinder.imaging.crlb.image_position_crlb_A`). RMSE / CRLB = 1 would be an efficient "
        "estimator on an ideal detector. Where the bound comes near the matching radius (low dose), the "
        "errors of matched atoms are cut off at the radius and RMSE / CRLB falls below 1: the ratio "
        "means something only where the bound is well below the radius. The tables' s / image is the "
        "wall time of each method in this run, which may have shared the machine with other work: the "
        "speed section below is the controlled measurement.", "",
        "Methods:", "",
        "- **atomfinder**: the shipped model of the system.",
        f"- **AtomAI** {s.get('peer_versions', {}).get('atomai', '0.8.1')}: `Segmentor(\"Unet\")` trained on the "
        f"shipped model's own training store for {s['budget_min']} min of {s['threads']} CPU threads (counted as "
        "the process's CPU time, so other work on the machine does not shorten it) "
        "(batch 8, AtomAI's rotation augmentation, images scaled to [0, 1] per image), atoms from its own "
        f"coordinate finder (`Locator`, threshold {s['atomai_threshold']}, centre of mass).",
        f"- **Atomap** {s.get('peer_versions', {}).get('atomap', '0.4.2')}: `Sublattice` 2-D Gaussian refinement "
        "(`refine_atom_positions_using_2d_gaussian`) seeded by the conventional peak finder, and, as a second row, "
        "seeded by atomfinder's detections (does Gaussian refinement improve on atomfinder's sub-pixel "
        "positions?). Atomap's time includes its seeds' detection.",
        "- **conventional**: atomfinder's band-pass + local-maxima baseline (`atomfinder.detection.baseline`).",
        "",
    ]
    lines += [f"Systems in this run: {', '.join(s['systems'])}; doses {', '.join(dose_tag(d) for d in s['doses'])} "
              "e/Å² where the model covers them.", ""]
    runs = result.get("runs") or {}
    if len({json.dumps(r, sort_keys=True) for r in runs.values()}) > 1:  # rows kept from earlier runs
        lines += ["Not every row comes from the same run (`--keep-others`): " + "; ".join(
            f"{k}: {r.get('date', '?')} at commit {r.get('commit', '?')}, {r.get('n_images', '?')} images per "
            f"store, " + ("no peers" if r.get("skip_peers") else f"AtomAI {r.get('budget_min', '?')} min")
            for k, r in runs.items()) + ".", ""]
    without_peers = [k for k in result.get("systems") or {} if (runs.get(k) or {}).get("skip_peers")]
    if without_peers or (s.get("skip_peers") and not runs):
        lines += ["Peers were not run (`--skip-peers`)"
                  + (f" for: {', '.join(without_peers)}." if without_peers else "."), ""]
    if result.get("atomai_training"):
        lines += ["AtomAI training: " + ", ".join(
            f"{k}: {v['cycles']} mini-batches of {v['batch_size']} in {v['seconds'] / 60:.1f} min "
            f"({v.get('cpu_seconds', math.nan) / 60:.0f} CPU-min) on "
            f"{v['train_images']} images of {v['store']}" for k, v in result["atomai_training"].items()), ""]
    lines += ["## Accuracy", ""]
    for system, per_dose in (result.get("systems") or {}).items():
        lines += accuracy_table(system, per_dose)
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    lines += ["### Where a peer is ahead", ""] + peer_wins_lines(peer_wins(result))
    rel = lambda p: os.path.relpath(p, out.parent)  # noqa: E731
    for p in figures:
        lines += [f"![{p.stem}]({rel(p)})", ""]
    if result.get("timing"):
        lines += ["## Speed and memory", "",
                  "Image to atom table on a synthetic graphene-like lattice at 0.1 Å/px, each tool in a "
                  f"fresh process with {s['threads']} threads: median of {s['repeats']} runs after one warm-up, "
                  "peak resident memory of the process. Ratios to atomfinder on the same machine are the "
                  "result; the absolute figures belong to this machine "
                  f"({result.get('machine', '?')}). Atomap's figure is the Gaussian refinement of the "
                  "conventional peak finder's seeds.", ""]
        lines += timing_table(result["timing"])
    lines += ["## Headline ratios", "", "```json", json.dumps(result.get("headline", {}), indent=1), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup-peers", action="store_true", help="Create .venv-peers (AtomAI, Atomap) if absent.")
    ap.add_argument("--skip-peers", action="store_true",
                    help="Only atomfinder, the conventional baseline and the bound.")
    ap.add_argument("--keep-others", action="store_true",
                    help="Keep the rows of the last run (<out stem>/result.json) for systems (and timing) "
                         "this run does not make, e.g. to add one model's rows.")
    ap.add_argument("--render-only", action="store_true",
                    help="Run nothing: write --out and its figures again from its saved result.json.")
    ap.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS),
                    help="Shipped models to compare (each scored on its own test stores).")
    ap.add_argument("--doses", nargs="+", type=float, default=[2e2, 1e3, 1e4, 1e5])
    ap.add_argument("--n-images", type=int, default=16, help="Test images per store, spread evenly over it.")
    ap.add_argument("--crlb-images", type=int, default=4, help="Images per store whose bound is computed.")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="AtomAI training per system: minutes of --threads cores, counted as CPU time.")
    ap.add_argument("--atomai-train-images", type=int, default=1500)
    ap.add_argument("--atomai-threshold", type=float, default=0.5)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--timing-sizes", nargs="*", type=int, default=[1024, 4096])
    ap.add_argument("--timing-model", default="graphene")
    ap.add_argument("--timing-untrained-atomai", action="store_true",
                    help="Time AtomAI with an untrained network when none was trained (no systems run).")
    ap.add_argument("--repeats", type=int, default=3, help="Timed runs after the warm-up.")
    ap.add_argument("--atomap-max-s", type=float, default=1800.0,
                    help="Skip Atomap at a size whose projected time for all runs exceeds this.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", default=None,
                    help="Also time atomfinder on CUDA (default: if present).")
    ap.add_argument("--work", type=Path,
                    help="Work folder kept between runs: finished stages (AtomAI training, each store, the "
                         "timing) are reused when their settings match, so a killed run resumes "
                         "(default: a temporary folder).")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The whole comparison (see the module docs); the result dict that :func:`markdown` renders."""
    import torch

    from atomfinder.nn.card import load_model, resolve_model

    torch.set_num_threads(args.threads)
    if args.gpu is None:
        args.gpu = bool(torch.cuda.is_available())
    result: dict[str, Any] = {"systems": {}, "atomai_training": {}, "notes": [],
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    peer_versions = {} if args.skip_peers else run_worker(["versions"], threads=args.threads)
    for system in args.systems:
        net, card = load_model(resolve_model(system))
        doses = []
        for dose in args.doses:
            if not dose_covered(card, dose):
                result["notes"].append(f"{system} {dose_tag(dose)}: outside the model's dose range; not scored")
                continue
            path = ensure_test_store(args.data_dir, test_recipe(card.name, card.training["data"]["simulation"]["system"]),
                                     dose)
            if path is None:
                result["notes"].append(f"{system} {dose_tag(dose)}: no test store and no recipe to simulate one")
            else:
                doses.append((dose, path))
        if not doses:
            continue
        if card.in_channels > 1:
            result["notes"].append(
                f"{system}: a focal-series model (atomfinder sees the {card.in_channels} frames); the other methods "
                f"see frame {peer_frame(card)} (0-based), and every method is scored on the atom columns as one "
                "class (vacancy sites left out). No Cramér-Rao bound (focal stores are not re-simulated).")
        sys_work = work / system
        sys_work.mkdir(parents=True, exist_ok=True)
        model = {"name": card.name, "version": card.version}
        atomai_ready = False
        if not args.skip_peers:
            # AtomAI learns from the model's training data, not from the model: a new version
            # trained on the same store reuses it
            training = {"data": {k: card.training["data"].get(k) for k in ("store", "seed", "simulation")},
                        "frame": peer_frame(card), "budget_min": args.budget_min, "threads": args.threads,
                        "train_images": args.atomai_train_images}
            if not (sys_work / "atomai.pt").exists():
                (sys_work / "atomai_training.json").unlink(missing_ok=True)
            result["atomai_training"][system] = stage(sys_work / "atomai_training.json", training,
                                                      lambda: train_atomai(card, sys_work, args))
            atomai_ready = True
        result["systems"][system] = {}
        for dose, path in doses:
            settings = {"model": model, "store": path.name, "n_images": args.n_images, "selection": "spread",
                        "crlb_images": args.crlb_images, "skip_peers": args.skip_peers,
                        "atomai_threshold": args.atomai_threshold,
                        "atomai": result["atomai_training"].get(system)}
            res = stage(sys_work / f"store-{dose_tag(dose)}.json", settings,
                        lambda: run_store(system, dose, path, net, card, sys_work, args, atomai_ready))
            result["systems"][system][dose_tag(dose)] = res | {"dose": dose}
    if args.timing_sizes:
        timing_work = work / "timing"
        timing_work.mkdir(parents=True, exist_ok=True)
        trained = work / args.timing_model / "atomai.pt"
        if trained.exists():
            (timing_work / "atomai.pt").write_bytes(trained.read_bytes())
        settings = {"sizes": args.timing_sizes, "model": args.timing_model, "repeats": args.repeats,
                    "threads": args.threads, "gpu": args.gpu, "skip_peers": args.skip_peers,
                    "atomai_trained": trained.exists(), "untrained_atomai": args.timing_untrained_atomai,
                    "atomai": result["atomai_training"].get(args.timing_model)}
        result["timing"] = stage(timing_work / "timing.json", settings,
                                 lambda: run_timing(timing_work, args, trained.exists()))
    result["settings"] = {
        "systems": args.systems, "doses": args.doses, "n_images": args.n_images, "crlb_images": args.crlb_images,
        "budget_min": args.budget_min, "threads": args.threads, "atomai_threshold": args.atomai_threshold,
        "repeats": args.repeats, "data_dir": os.path.relpath(args.data_dir, ROOT), "skip_peers": args.skip_peers,
        "peer_versions": peer_versions,
    }
    stamp = run_stamp(args)
    result["runs"] = {system: stamp for system in result["systems"]} | ({"timing": stamp} if "timing" in result else {})
    result["headline"] = headline(result)
    return result


def run_stamp(args: argparse.Namespace) -> dict[str, Any]:
    """When, at which commit and with which settings this run's rows were made."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"date": time.strftime("%Y-%m-%d"), "commit": proc.stdout.strip() or "?", "n_images": args.n_images,
            "crlb_images": args.crlb_images, "budget_min": args.budget_min, "threads": args.threads,
            "skip_peers": args.skip_peers}


def result_path(out: Path) -> Path:
    """Where the whole result of the run that wrote ``out`` is kept: ``<out stem>/result.json``."""
    return out.parent / out.stem / "result.json"


def keep_others(result: dict[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with the rows of ``previous`` that this run did not make: other systems (their
    accuracy, AtomAI training, notes and run stamp) and, when this run timed nothing, the timing.

    A system rerun here replaces its earlier rows whole; nothing is averaged across runs.
    """
    merged = dict(result)
    merged["systems"] = dict(result["systems"])
    merged["atomai_training"] = dict(result.get("atomai_training") or {})
    merged["runs"] = dict(result.get("runs") or {})
    notes = list(result.get("notes") or [])
    ran = set(result.get("settings", {}).get("systems") or result["systems"])
    for system, rows in (previous.get("systems") or {}).items():
        if system in ran:
            continue
        merged["systems"][system] = rows
        if system in (previous.get("atomai_training") or {}):
            merged["atomai_training"][system] = previous["atomai_training"][system]
        merged["runs"][system] = (previous.get("runs") or {}).get(system, {})
        notes += [n for n in previous.get("notes") or [] if n.split(" ", 1)[0].rstrip(":") == system]
    if "timing" not in result and previous.get("timing"):
        merged["timing"] = previous["timing"]
        merged["runs"]["timing"] = (previous.get("runs") or {}).get("timing", {})
    merged["notes"] = notes
    order = {name: i for i, name in enumerate(DEFAULT_SYSTEMS)}  # the default order, whatever ran last
    merged["systems"] = dict(sorted(merged["systems"].items(), key=lambda kv: order.get(kv[0], len(order))))
    merged["headline"] = headline(merged)
    return merged


def render(out: Path) -> dict[str, Any]:
    """Write ``out`` and its figures again from its saved ``result.json``; nothing is run."""
    saved = result_path(out)
    if not saved.exists():
        raise SystemExit(f"--render-only: no saved result at {saved}")
    result = json.loads(saved.read_text())
    figures = plots(result, out.parent / out.stem)
    out.write_text(markdown(result, figures, out))
    log(f"wrote {out} and {len(figures)} figures from {saved.name}")
    return {"out": str(out), "headline": result.get("headline")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from atomfinder.analysis.evaluate import to_jsonable

    args = parse_args(argv)
    if args.render_only:
        return render(args.out)
    if args.setup_peers and not args.skip_peers:
        setup_peers()
    if not args.skip_peers and not peer_python().exists():
        raise SystemExit(f"no peers' environment at {PEER_VENV}: run with --setup-peers (or --skip-peers)")
    with tempfile.TemporaryDirectory(prefix="atomfinder-compare-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    saved = result_path(args.out)
    if args.keep_others and saved.exists():
        result = keep_others(result, json.loads(saved.read_text()))
        log(f"kept the rows of {saved} that this run did not make")
    figures = plots(result, args.out.parent / args.out.stem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result, figures, args.out))
    saved.write_text(json.dumps(to_jsonable(result), indent=1))
    log(f"wrote {args.out}, {saved.name} and {len(figures)} figures")
    summary = to_jsonable({"out": str(args.out), "headline": result["headline"], "systems": result["systems"],
                           "timing": result.get("timing"), "atomai_training": result["atomai_training"],
                           "notes": result["notes"]})
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
