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

Every dose of a system is scored on the same images: ``--n-images`` spread over the
first images that all the system's stores share, which are the recipe's (a store with
another seed, or fewer images than the recipe, is refused; of a longer one only the
recipe's first images are used, and the page says so).

All are matched one-to-one to the ground truth at 0.5 Å with the evaluator's
border band (:func:`atomfinder.analysis.evaluate.compare`). The Cramér-Rao bound
of every site's position is computed for ``--crlb-images`` of those images of
each store from the re-simulated noise-free image
(:func:`atomfinder.imaging.crlb.image_position_crlb_A`), so localisation errors
are also given as RMSE / CRLB (per coordinate).

Speed and memory: one lattice image of each ``--timing-sizes`` side to an atom
table per tool, each in a fresh process on the CPU (and on CUDA with ``--gpu``; the
device is passed explicitly and reported), median after one warm-up, peak RSS and
the RSS after the tool's imports; printed as ratios to atomfinder.

The peers live in their own environment ``.venv-peers`` (``--setup-peers``
creates it) and run through ``benchmarks/peers_worker.py``: atomfinder never
imports them. Writes ``--out`` (Markdown) with PNG plots and the whole result
(``result.json``) beside it in ``<out stem>/`` and ends with one JSON line;
``--keep-others`` keeps that file's rows of the systems (and timing) a run does
not redo, stamped with the date, commit and every setting of the run that made
them; the page gives each block's settings and warns where they differ.

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
    """Run ``peers_worker.py`` in the peers' environment; its last stdout line (JSON) parsed.

    Everything else the worker prints (AtomAI's losses during a 30-minute training, warnings)
    is passed on to stderr as it comes, each line marked ``[peers]``, so a long stage shows
    its progress; the last lines of its stderr are kept for the error message.
    """
    return stream_command([str(peer_python(venv)), str(WORKER), *args, "--threads", str(threads)],
                          env=dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                                   MPLBACKEND="Agg", PYTHONUNBUFFERED="1"),
                          what=f"peers_worker {' '.join(args)}")


def stream_command(cmd: Sequence[str], *, env: Mapping[str, str], what: str, prefix: str = "[peers]") -> dict:
    """Run ``cmd``, echoing its output lines to stderr (``prefix``) while it runs; its last stdout
    line parsed as JSON. A non-zero exit raises with the tail of its stderr."""
    import collections
    import threading

    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env),
                            bufsize=1)
    tails = {"out": collections.deque(maxlen=200), "err": collections.deque(maxlen=200)}

    def pump(stream: Any, key: str) -> None:
        for line in stream:
            line = line.rstrip("\n")
            tails[key].append(line)
            # the JSON result line is the caller's, not progress
            if line.strip() and not (key == "out" and line.lstrip().startswith("{")):
                log(f"    {prefix} {line[-300:]}")

    readers = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for r in readers:
        r.start()
    code = proc.wait()
    for r in readers:
        r.join()
    if code != 0:
        raise RuntimeError(f"{what} failed (exit {code}):\n" + "\n".join(tails["err"])[-3000:])
    lines = [line for line in tails["out"] if line.strip()]
    if not lines:
        raise RuntimeError(f"{what} printed no result line")
    return json.loads(lines[-1])


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
    return MODEL_TEST_SETS.get(model_name) or StoreRecipe(system, system, TEST_CONFIGS.get(system), TEST_N, TEST_SEED)


def recipe_images(path: Path, store: Any, tests: StoreRecipe) -> tuple[int, str | None]:
    """How many of the store's first images are the recipe's, and a note when not all of them are.

    A store made with another seed, or with fewer images than the recipe, is not the
    harness's test set: refused in one line (SystemExit). A longer store with the recipe's
    seed holds the recipe's images first (each job is seeded by ``(seed, job)``), so only
    those ``tests.n`` are used, and the note says so.
    """
    seed, n = int(store.meta["seed"]), len(store)
    make = f"atomfinder simulate --system {tests.system} --n {tests.n} --seed {tests.seed}" + (
        f" --config {tests.config.format(tag='<dose>')}" if tests.config else "")
    if seed != tests.seed:
        raise SystemExit(f"{path}: made with seed {seed}, but the harness's test set is `{make}`: "
                         "move the store aside (it is made again) or pass another --data-dir")
    if n < tests.n:
        raise SystemExit(f"{path}: holds {n} finished images, the harness's test set {tests.n} (`{make}`): "
                         "finish it (simulate resumes) or move it aside")
    if n > tests.n:
        return tests.n, (f"{path.name} holds {n} images (seed {seed}); the recipe's {tests.n} "
                         f"(`{make}`) are its first {tests.n}, and only those are used")
    return n, None


def store_identity(path: Path, store: Any) -> dict[str, Any]:
    """What a store stage's result depends on: the store's path, its finished images, seed and
    a fingerprint of its attributes (config, seed, size: the zarr attrs)."""
    import hashlib

    attrs = json.dumps(store.meta, sort_keys=True, default=str)
    return {"path": str(Path(path).resolve()), "images": len(store), "seed": int(store.meta["seed"]),
            "attrs_sha1": hashlib.sha1(attrs.encode()).hexdigest()[:16]}


def specimen_ids(meta: Mapping[str, Any], indices: Sequence[int]) -> list[tuple[int, int]]:
    """The simulated specimen (job, structure within the job) of each store index: a job of
    ``samples_per_job`` images draws one structure per ``draws_per_wave`` images."""
    per_job = int(meta["samples_per_job"])
    per_wave = int((meta.get("config") or {}).get("draws_per_wave") or per_job)
    return [(int(i) // per_job, (int(i) % per_job) // per_wave) for i in indices]


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


def load_samples(store: Any, n: int, first: int | None = None) -> tuple[list[int], list[Any]]:
    """``n`` samples spread over the store's first ``first`` images (default: all;
    :func:`spread_indices`) as :class:`EvalSample` objects, with their visible indices.

    The comparison passes the number of images that every store of a system shares (the
    recipe's), so that each dose is scored on the same specimens."""
    from atomfinder.analysis.evaluate import samples_from_store

    indices = spread_indices(min(len(store), first if first is not None else len(store)), n)
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


def stage(path: Path, settings: Mapping[str, Any], compute: Callable[[], dict],
          provenance: Mapping[str, Any] | None = None) -> dict:
    """The result of one stage of the run, computed once per ``settings``.

    ``path`` (JSON) holds ``{"settings": ..., "result": ..., "computed": ...}``; a file
    whose settings equal ``settings`` is reused, so a killed run (``--work`` kept) redoes
    only the stages it had not finished. ``settings`` must hold everything the result
    depends on. ``computed`` is ``provenance`` (the commit and date of the run that
    computed the stage), kept when the stage is reused (:func:`computed_by`). The file
    is written by rename: never half written.
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
    tmp.write_text(json.dumps({"settings": wanted, "result": result, "computed": dict(provenance or {})}))
    os.replace(tmp, path)
    return result


def computed_by(path: Path) -> dict[str, Any]:
    """The commit and date of the run that computed the stage in ``path`` (empty: not recorded)."""
    try:
        return dict(json.loads(path.read_text()).get("computed") or {})
    except (OSError, ValueError):
        return {}


def git_commit() -> str:
    """The short commit of the checkout now, ``+dirty`` when the harness or the package has
    uncommitted changes (``?`` outside git)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = head.stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "benchmarks", "src"], cwd=ROOT,
                           capture_output=True, text=True)
    return commit + ("+dirty" if commit != "?" and dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- AtomAI training


def training_arrays(store: Any, n: int, seed: int = 0, frame: int = 0,
                    classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random training samples: images ``[n, 1, h, w]`` (frame ``frame``) and atom masks ``[n, 1, h, w]``.

    The mask is every pixel of the store's targets (the disks the shipped model
    learned from) that belongs to one of ``classes`` (1-based; default: every class
    but background), all merged into one. The store's targets lie in the first frame's
    grid; for a later frame of a focal series the disks are drawn again at the ground
    truth moved by that frame's recorded drift (:func:`frame_mask`), so that the mask
    lies on the atoms of the image it is trained with.
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(store), size=min(n, len(store)), replace=False))
    idx = np.asarray(store.indices)[pick]
    channels = list(classes) if classes is not None else list(range(1, len(store.class_names) + 1))
    x, m = [], []
    for i in range(0, len(idx), 64):
        x.append(store.array("images", idx[i:i + 64])[:, frame:frame + 1])
        masks = store.array("targets", idx[i:i + 64])[:, channels].sum(axis=1, keepdims=True)
        if frame:
            drift = store.array("drift_px", idx[i:i + 64])[:, frame]
            masks = np.stack([frame_mask(store, int(p), mask[0], d, channels)[None]
                              for p, mask, d in zip(pick[i:i + 64], masks, drift)])
        m.append(masks)
    return np.concatenate(x).astype(np.float32), (np.concatenate(m) >= 0.5).astype(np.float32)


def frame_mask(store: Any, i: int, first_frame_mask: np.ndarray, drift_px: np.ndarray,
               channels: Sequence[int]) -> np.ndarray:
    """The atom mask of visible sample ``i`` in the grid of a frame drifted by ``drift_px`` ``(x, y)``.

    The disks of ``channels`` (1-based classes) are drawn again as the simulator drew the
    store's targets (:func:`atomfinder.datasets.labels.class_maps`: same radius, kind and
    nearest-site rule, every class present) at the ground truth plus the drift. The ground
    truth holds only the sites whose centre lies in the first frame's image, while the
    targets also paint sites just outside it; within reach of the edge (label radius plus
    the drift plus one pixel) the first frame's mask shifted by the drift fills in those.
    """
    from scipy import ndimage

    from atomfinder.datasets.labels import class_maps

    config = store.meta["config"]
    gt = store.ground_truth(i)
    radius_px = float(config.get("label_radius_A", 0.4)) / gt["sampling_A"]
    drift = np.asarray(drift_px, dtype=np.float64).reshape(2)
    shape = first_frame_mask.shape
    maps = class_maps(gt["positions_px"] + drift, gt["labels"], shape, len(store.class_names), radius_px,
                      config.get("label_kind", "disk"))
    drawn = maps[list(channels)].sum(axis=0)
    shifted = ndimage.shift(np.asarray(first_frame_mask, dtype=np.float64), (drift[1], drift[0]), order=1,
                            mode="constant", cval=0.0)
    band = int(math.ceil(radius_px + np.abs(drift).max() + 1))
    edge = np.ones(shape, bool)
    edge[band:shape[0] - band, band:shape[1] - band] = False
    return np.where(edge, np.maximum(drawn, shifted), drawn).astype(np.float32)


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
                       str(60 * args.budget_min * args.threads), "--device", "cpu"], threads=args.threads)
    for name in ("train_X.npy", "train_y.npy"):
        (work / name).unlink()
    frame = peer_frame(card)
    return info | {"store": path.name, "frame": frame,
                   "masks": f"ground truth + drift of frame {frame}" if frame else "the store's targets (frame 0)"}


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
              args: argparse.Namespace, atomai_ready: bool, first: int | None = None) -> dict[str, Any]:
    """Every method and the bound on ``--n-images`` images spread over the first ``first`` images
    of one test store (default: all of them), the images that all the system's stores share."""
    from atomfinder.analysis.evaluate import baseline_detector, network_detector
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(path)
    first = len(store) if first is None else min(first, len(store))
    indices, samples = load_samples(store, args.n_images, first)
    shown = len(set(specimen_ids(store.meta, indices)))
    total = len(set(specimen_ids(store.meta, range(first))))
    # every method is scored on the atoms (vacancies left out) as one class; single-image
    # methods see one frame of a focal series, atomfinder's focal model all of them
    classes = atom_classes(store.class_names)
    scored = [atoms_in_frame(s, classes, peer_frame(card)) for s in samples]
    radius = float(store.meta["config"].get("label_radius_A", 0.4))
    log(f"{system} {dose_tag(dose)}: {len(samples)} images spread over the first {first} of {path.name} "
        f"({len(store)} images): {indices}, {shown} of {total} specimens")
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
    return {"store": path.name, "n_images": len(samples), "indices": indices,
            "selection": {"first": first, "store_images": len(store), "specimens_shown": shown,
                          "specimens_total": total},
            "crlb_images": len(bounds), "crlb_indices": [indices[i] for i in sorted(bounds)],
            "crlb_median_pm": 100 * float(np.median(finite)) if len(finite) else math.nan, "methods": scores,
            "atomai_predict": ATOMAI_PREDICT}


def run_peers(samples: Sequence[Any], dets: Mapping[str, Detections], work: Path, radius_A: float,
              args: argparse.Namespace, atomai_ready: bool) -> dict[str, Detections]:
    """AtomAI's detections and Atomap's refinements of both seed sets, through the worker."""
    np.save(work / "images.npy", np.stack([s.image[0] for s in samples]))
    out: dict[str, Detections] = {}
    n = len(samples)
    if atomai_ready:
        info = run_worker(["atomai-predict", "--work", str(work), "--threshold", str(args.atomai_threshold),
                           "--device", "cpu"], threads=args.threads)
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

#: atomfinder's timing process: ``device`` is passed explicitly (detect_array would take CUDA
#: whenever present) and the device it resolves to is reported; ``import_rss_mb`` is the
#: process's memory after the imports, before the model is loaded.
ATOMFINDER_TIMING = r"""
import json, sys, time
import numpy as np, torch
sys.path.insert(0, {bench_dir!r})
from peers_worker import peak_rss_mb, rss_mb
from atomfinder.detection.pipeline import detect_array
from atomfinder.nn.card import load_model, resolve_model
from atomfinder.nn.infer import _auto_device
import_rss = rss_mb()
torch.set_num_threads({threads})
net, card = load_model(resolve_model({model!r}))
image = np.load({image!r})
times = []
for _ in range({repeats} + 1):
    t = time.perf_counter()
    n = len(detect_array(net, card, image, {sampling}, device={device!r}).atoms.x)
    times.append(time.perf_counter() - t)
print(json.dumps({{"tool": "atomfinder", "times_s": times, "atoms": n, "peak_rss_mb": peak_rss_mb(),
                  "import_rss_mb": import_rss, "device": str(_auto_device({device!r}))}}))
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


def time_atomfinder(image_path: Path, sampling_A: float, args: argparse.Namespace, device: str) -> dict:
    """atomfinder's image -> atom table in a fresh process on ``device`` (``cpu`` or ``cuda``)."""
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
    devices = ["cpu"] + (["cuda"] if args.gpu else [])
    out: dict[str, Any] = {}
    projected_atomap = math.nan
    for size in args.timing_sizes:
        image = lattice(size, sampling)
        image_path = work / f"timing{size}.npy"
        np.save(image_path, image)
        rows: dict[str, dict] = {}
        for device in devices:
            key = ATOMFINDER if device == "cpu" else f"{ATOMFINDER} ({device})"
            log(f"timing {size}²: {key}")
            rows[key] = time_atomfinder(image_path, sampling, args, device)
        if not args.skip_peers:
            if atomai_ready or args.timing_untrained_atomai:
                for device in devices:
                    key = ATOMAI if device == "cpu" else f"{ATOMAI} ({device})"
                    log(f"timing {size}²: {key}")
                    rows[key] = run_worker(["time", "--work", str(work), "--tool", "atomai", "--image",
                                            image_path.name, "--repeats", str(args.repeats), "--device", device,
                                            "--threshold", str(args.atomai_threshold)], threads=args.threads)
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


def accuracy_table(system: str, per_dose: Mapping[str, Mapping[str, Any]],
                   flags: Mapping[tuple[str, str], str] | None = None) -> list[str]:
    """Markdown rows: one per dose and method; ``flags`` marks rows ``(dose tag, method)`` (e.g. † for
    rows measured under an old behaviour, explained below the table by the caller).

    RMSE is over the matched atoms of all the store's images; RMSE/axis, the bound and their
    ratio only over the sites of the CRLB images (the column "CRLB pairs" counts them)."""
    flags = flags or {}
    lines = [f"### {system}", "",
             "| dose (e/Å²) | method | F1 | precision | recall | RMSE (pm), all images | CRLB pairs | "
             "RMSE/axis (pm), CRLB images | CRLB (pm) | RMSE / CRLB | s / image |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, res in per_dose.items():
        for name in METHODS:
            m = res["methods"].get(name)
            if m is None:
                continue
            c = m["crlb"]
            pairs = c.get("n") if isinstance(c.get("n"), int) else None
            mark = flags.get((tag, name), "")
            lines.append(f"| {tag} | {name}{mark} | {_f(m['f1'])} | {_f(m['precision'])} | {_f(m['recall'])} | "
                         f"{_f(m['rmse_pm'], 1)} | {pairs if pairs else '–'} | {_f(c['rmse_axis_pm'], 1)} | "
                         f"{_f(c['crlb_rms_pm'], 1)} | {_f(c['rmse_over_crlb'], 2)} | "
                         f"{_f(m['seconds_per_image'], 3)} |")
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
    """Markdown rows: one per image side and tool, with ratios to atomfinder; the RSS after the
    tool's imports (before any work) where it was measured."""
    lines = ["| image | tool | device | median s | × atomfinder | peak RSS (MB) | × atomfinder | "
             "RSS after imports (MB) | atoms |", "|---|---|---|---|---|---|---|---|---|"]
    for size, rows in timing.items():
        for name, r in rows.items():
            if "skipped" in r:
                lines.append(f"| {size}² | {name} | – | not run: {r['skipped']} | – | – | – | – | – |")
                continue
            base = _f(r["import_rss_mb"], 0) if "import_rss_mb" in r else "not recorded"
            lines.append(f"| {size}² | {name} | {r.get('device', 'not recorded')} | {_f(r['median_s'], 3)} | "
                         f"{_f(r['time_ratio'], 2)} | {_f(r['peak_rss_mb'], 0)} | {_f(r['rss_ratio'], 2)} | "
                         f"{base} | {r['atoms']} |")
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
    for metric, label, fname in (("f1", "F1 at 0.5 Å", "f1_vs_dose.png"),
                                 ("rmse_over_crlb", "RMSE / CRLB (per coordinate)", "rmse_crlb_vs_dose.png")):
        systems = dict(result.get("systems") or {})
        if metric == "rmse_over_crlb":
            # a panel per system with a bound: none for focal series, whose stores are not re-simulated
            systems = {k: v for k, v in systems.items() if any(
                isinstance(m["crlb"]["rmse_over_crlb"], float) and math.isfinite(m["crlb"]["rmse_over_crlb"])
                for d in v.values() for m in d["methods"].values())}
        if not systems:
            (folder / fname).unlink(missing_ok=True)  # no empty figure, and none left from an earlier run
            continue
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


def peer_wins_lines(wins: Sequence[Mapping[str, Any]],
                    flags: Mapping[str, Mapping[tuple[str, str], str]] | None = None) -> list[str]:
    """The page's section on where a peer's F1 is above atomfinder's (rows marked as in the tables)."""
    if not wins:
        return ["atomfinder's F1 is the highest at every dose of every system in this result.", ""]
    flags = flags or {}
    lines = ["| system | dose | peer | peer F1 (TP) | atomfinder F1 (TP) | peer RMSE | atomfinder RMSE |",
             "|---|---|---|---|---|---|---|"]
    for w in wins:
        mark = (flags.get(w["system"]) or {}).get((w["dose"], w["peer"]), "")
        lines.append(f"| {w['system']} | {w['dose']} | {w['peer']}{mark} | {w['f1']:.3f} ({w['tp']}) | "
                     f"{w['atomfinder_f1']:.3f} ({w['atomfinder_tp']}) | {w['rmse_pm']:.1f} pm | "
                     f"{w['atomfinder_rmse_pm']:.1f} pm |")
    return lines + [""]


NOT_RECORDED = "not recorded"
#: How the page names each stamp field.
FIELD_NAMES = {
    "n_images": "images per store", "selection": "selection", "crlb_images": "CRLB images per store",
    "doses": "doses asked", "data_dir": "test stores in", "skip_peers": "peers skipped",
    "budget_min": "AtomAI budget (min of the threads, CPU time)", "atomai_train_images": "AtomAI training images",
    "atomai_threshold": "AtomAI threshold", "threads": "threads", "timing_sizes": "image sides",
    "timing_model": "atomfinder model timed", "repeats": "timed runs after the warm-up", "gpu": "CUDA rows",
    "atomap_max_s": "Atomap time limit (s)", "machine": "machine", "atomfinder_torch": "atomfinder's torch",
    "peer_versions": "peers' environment",
}


def block_settings(block: str, result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings of block ``block`` (a system, or ``timing``) as its run stamp records them, with
    :data:`NOT_RECORDED` for what it does not, and where a value came from when it is not the stamp.

    A stamp of a run before every setting was recorded (no ``stamp_version``) is completed only
    with what is known: for the blocks made by the last run (its ``settings.systems``), that
    run's saved settings and machine; for the timing, the number of timed runs counted from the
    saved times. Everything else is "not recorded"."""
    stamp = dict((result.get("runs") or {}).get(block) or {})
    fields = ("date", "commit") + tuple(dict.fromkeys(SYSTEM_FIELDS + TIMING_FIELDS + COMMON_FIELDS))
    values = {k: stamp.get(k, NOT_RECORDED) for k in fields}
    origin: dict[str, str] = dict(stamp.get("origin") or {})
    if stamp.get("stamp_version"):
        return values, origin
    settings = result.get("settings") or {}
    if block != "timing" and block in (settings.get("systems") or []):
        for key in ("atomai_threshold", "doses", "data_dir", "peer_versions"):
            if values.get(key) == NOT_RECORDED and key in settings:
                values[key], origin[key] = settings[key], "from the saved settings of that run"
        if values["machine"] == NOT_RECORDED and result.get("machine"):
            values["machine"], origin["machine"] = result["machine"], "from the saved result of that run"
    if block == "timing" and result.get("timing"):
        counts = {len(r["times_s"]) - 1 for rows in result["timing"].values() for r in rows.values() if "times_s" in r}
        if len(counts) == 1:
            values["repeats"], origin["repeats"] = counts.pop(), "counted from the saved timings"
        values["timing_sizes"] = [int(k) for k in result["timing"]]
        origin["timing_sizes"] = "from the saved timings"
    return values, origin


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items()) if v else "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(dose_tag(x) if isinstance(x, float) else str(x) for x in v)
    return str(v)


def settings_line(block: str, result: Mapping[str, Any], fields: Sequence[str]) -> str:
    """One line: the date, commit and ``fields`` of block ``block``'s run."""
    values, origin = block_settings(block, result)
    stamp = (result.get("runs") or {}).get(block) or {}
    if stamp.get("stamp_version"):
        commits = sorted({c.get("commit") or NOT_RECORDED for c in (stamp.get("stages") or {}).values()})
        when = (f"run of {values['date']} at commit {values['commit']} (its stages computed at commit "
                f"{', '.join(commits) or NOT_RECORDED})")
    else:
        when = (f"run of {values['date']}, commit {values['commit']} (the checkout's when that run ended; the "
                "commits that computed its stages were not recorded)")
    parts = []
    for key in fields:
        v = values.get(key, NOT_RECORDED)
        text = NOT_RECORDED if v == NOT_RECORDED else _value(v)
        if key in origin:
            text += f" ({origin[key]})"
        parts.append(f"{FIELD_NAMES.get(key, key)}: {text}")
    return f"Settings of these rows: {when}; " + "; ".join(parts) + "."


def settings_differences(result: Mapping[str, Any]) -> list[str]:
    """One line per setting that differs between the page's blocks, or that some blocks did
    not record: the rows are then not comparable on that setting."""
    blocks = {k: block_settings(k, result)[0] for k in result.get("systems") or {}}
    if result.get("timing"):
        blocks["timing"] = block_settings("timing", result)[0]
    out = []
    for key in tuple(dict.fromkeys(SYSTEM_FIELDS + COMMON_FIELDS)):
        which = [k for k in blocks if k != "timing" or key in TIMING_FIELDS + COMMON_FIELDS]
        if len(which) < 2:
            continue
        seen = {k: json.dumps(blocks[k].get(key, NOT_RECORDED), sort_keys=True) for k in which}
        if len(set(seen.values())) > 1:
            by_value: dict[str, list[str]] = {}
            for k, v in seen.items():
                by_value.setdefault(v, []).append(k)
            out.append(f"- {FIELD_NAMES.get(key, key)}: " + "; ".join(
                f"{', '.join(ks)}: {_value(json.loads(v))}" for v, ks in by_value.items()))
    return out


#: How AtomAI's predictions are made; store results without it (or with another value) were
#: predicted with the network in training mode (``peers_worker._trained_segmentor``).
ATOMAI_PREDICT = "network in evaluation mode"


def legacy_flags(result: Mapping[str, Any]) -> tuple[dict[str, dict[tuple[str, str], str]], list[str]]:
    """Rows measured under a behaviour the harness has since corrected, per system: ``{system:
    {(dose tag, method): mark}}``, and the footnotes that explain the marks.

    * † a dose's images spread over a whole store that holds more images than the system's other
      stores (gold-focal 1e4 was made with ``--n 128``, the others with 64): other specimens than
      the other doses' rows (results before ``selection`` was recorded);
    * ‡ AtomAI on a focal series trained with the first frame's masks on a later frame's images
      (training results without ``masks``);
    * § AtomAI predicted with its network in training mode (store results without
      ``atomai_predict``).
    """
    flags: dict[str, dict[tuple[str, str], str]] = {}
    notes: list[str] = []
    for system, per_dose in (result.get("systems") or {}).items():
        marks: dict[tuple[str, str], str] = {}
        old = {tag: res for tag, res in per_dose.items() if "selection" not in res and res.get("indices")}
        if len(old) > 1 and len({tuple(r["indices"]) for r in old.values()}) > 1:
            shared = min(max(r["indices"]) + 1 for r in old.values())
            for tag, res in old.items():
                if max(res["indices"]) + 1 > shared:
                    marks.update({(tag, name): "†" for name in res["methods"]})
                    held = (res.get("selection_derived") or {}).get("store_images")
                    notes.append(
                        f"† {system} {tag}: measured under the old selection, images spread over all "
                        f"{held if held else 'the'} images of {res['store']} (indices {res['indices'][0]}.."
                        f"{res['indices'][-1]}), while the system's other stores hold {shared}: other specimens "
                        "than its other doses' rows (the harness now spreads over the images all the system's "
                        "stores share, the recipe's). To be replaced by a rerun.")
        training = (result.get("atomai_training") or {}).get(system)
        focal = any(n.startswith(f"{system}: a focal-series model") for n in result.get("notes") or [])
        if focal and training and "masks" not in training:
            for tag, res in per_dose.items():
                if ATOMAI in res["methods"]:
                    marks[(tag, ATOMAI)] = marks.get((tag, ATOMAI), "") + "‡"
            notes.append(
                f"‡ {system}, AtomAI: trained on the middle frame of the training series with the masks of "
                "the first frame (the store's targets lie in the first frame's grid; the middle frame "
                "drifted about 2 px from it on average), by the harness before the masks were drawn at the drifted ground truth. "
                "To be replaced by a rerun.")
        stale = [tag for tag, res in per_dose.items()
                 if ATOMAI in (res.get("methods") or {}) and res.get("atomai_predict") != ATOMAI_PREDICT]
        for tag in stale:
            marks[(tag, ATOMAI)] = marks.get((tag, ATOMAI), "") + "§"
        if stale:
            notes.append(
                f"§ {system}, AtomAI: predicted by the harness before 2026-12-07's fix, with AtomAI's network left "
                "in training mode for the first test image: its BatchNorm took that image's statistics and "
                "overwrote its running statistics, so every later prediction was off as well (on mos2-focal's "
                "own training images the mean output on the atoms fell from 0.61-0.86 to 0.004-0.24). AtomAI's "
                "figures in these rows are likely too low. To be replaced by a rerun.")
        if marks:
            flags[system] = marks
    return flags, notes


def selection_line(system: str, per_dose: Mapping[str, Mapping[str, Any]]) -> str:
    """Which images of each store the rows of ``system`` score, and how many of the simulated
    specimens they show (doses with the same description share one clause)."""
    described: dict[str, list[str]] = {}
    for tag, res in per_dose.items():
        sel, idx = res.get("selection"), res.get("indices") or []
        if sel:
            text = (f"{res['n_images']} image(s) spread over the store's first {sel['first']} (of its "
                    f"{sel['store_images']}), showing {sel['specimens_shown']} of the {sel['specimens_total']} "
                    "specimens those hold")
        elif idx:
            old = res.get("selection_derived")
            text = (f"{res['n_images']} image(s) spread over the whole store (indices {idx[0]}..{idx[-1]}), "
                    + (f"showing {old['specimens_shown']} of the {old['specimens_total']} specimens of its "
                       f"{old['store_images']} images" if old else "specimens shown not recorded"))
        else:
            text = f"{res.get('n_images', '?')} images, which ones not recorded"
        described.setdefault(text, []).append(tag)
    same = len({json.dumps(r.get("indices")) for r in per_dose.values()}) == 1 and all(
        r.get("indices") for r in per_dose.values())
    head = "Images, the same at every dose: " if same else "Images, **not the same at every dose**: "
    return head + "; ".join(f"{', '.join(tags)}: {text}" for text, tags in described.items()) + "."


def describe_old_selections(result: dict[str, Any], data_dir: Path) -> None:
    """For rows of runs before the selection was recorded, the store's size and the specimens
    their images show, read from the store's attributes where it is at ``data_dir`` (nothing
    is scored again); rows whose store is not there are left as they are ("not recorded")."""
    from atomfinder.datasets.store import DatasetStore, StoreError

    for per_dose in (result.get("systems") or {}).values():
        for res in per_dose.values():
            if "selection" in res or "selection_derived" in res or not res.get("indices"):
                continue
            path = Path(data_dir) / res["store"]
            try:
                store = DatasetStore(path)
            except StoreError:
                continue
            res["selection_derived"] = {
                "store_images": len(store),
                "specimens_shown": len(set(specimen_ids(store.meta, res["indices"]))),
                "specimens_total": len(set(specimen_ids(store.meta, range(len(store))))),
            }


def markdown(result: Mapping[str, Any], figures: Sequence[Path], out: Path) -> str:
    """The whole ``docs/benchmarks.md`` text: every run-dependent setting is given per block (each
    system's rows, the timing) from that block's own run stamp, never from the last run's."""
    s = result.get("settings") or {}
    runs = result.get("runs") or {}
    systems = result.get("systems") or {}
    versions = {json.dumps(block_settings(k, result)[0].get("peer_versions"), sort_keys=True) for k in runs}
    peer = [json.loads(v) for v in versions if json.loads(v) not in (NOT_RECORDED, {}, None)]
    atomai_v = ", ".join(sorted({v.get("atomai", "?") for v in peer})) or NOT_RECORDED
    atomap_v = ", ".join(sorted({v.get("atomap", "?") for v in peer})) or NOT_RECORDED
    lines = [
        "# Benchmarks: atomfinder and its peers", "",
        "Generated by `make compare` (`benchmarks/compare.py`); do not edit by hand.", "",
        "Same independent simulated test images for every method (`<data>/<system>-test-<dose>.zarr`; per "
        "system, the same images of every dose's store, spread evenly over the images that all its stores share, "
        "so that each dose shows the same specimens: a store holds 8 microscopes of each graphene or MoS2 sheet, "
        "2 of each gold particle, in a row; how many specimens the rows see is given per system, and rows of runs "
        "before this rule say how their images were chosen), scored by "
        "atomfinder's evaluator: one-to-one matching "
        f"at {RADIUS_A} Å, a {BORDER_A} Å band along the image edge neither required nor penalised. "
        "RMSE is the 2-D error of the matched atoms of all the images. RMSE/axis is per coordinate and only over "
        "the sites of the CRLB images, a few of those images per store (spread likewise; the column "
        "CRLB pairs counts their matched sites), compared with the Cramér-Rao bound (CRLB, 1 σ per coordinate) "
        "of the same sites, computed from the re-simulated noise-free image "
        "(finite differences of the image with respect to every site's position, all sites' "
        "coordinates unknown together, Poisson noise at the dose, ideal detector without MTF: "
        "`atomfinder.imaging.crlb.image_position_crlb_A`); so RMSE and RMSE/axis cover different images, "
        "and RMSE/axis can differ from RMSE / √2 either way, even exceed RMSE. RMSE / CRLB = 1 would be an efficient "
        "estimator on an ideal detector. Where the bound comes near the matching radius (low dose), the "
        "errors of matched atoms are cut off at the radius and RMSE / CRLB falls below 1: the ratio "
        "means something only where the bound is well below the radius. The tables' s / image is the "
        "wall time of each method in its run, which may have shared the machine with other work: the "
        "speed section below is the controlled measurement.", "",
        "Methods (each block's settings are given above its table):", "",
        "- **atomfinder**: the shipped model of the system.",
        f"- **AtomAI** {atomai_v}: `Segmentor(\"Unet\")` trained on the shipped model's own training store for "
        "the block's budget of CPU time (minutes of its threads, counted as the process's CPU time, so other "
        "work on the machine does not shorten it; the first 10 mini-batches, which measure the time per "
        "mini-batch, always run, so a budget shorter than those is overrun) "
        "(batch 8, AtomAI's rotation augmentation, images scaled to [0, 1] per image, on the CPU, passed explicitly"
        + ("; the training results of earlier runs do not record the device"
           if any("device" not in v for v in (result.get("atomai_training") or {}).values()) else "")
        + "), atoms from its own coordinate finder (`Locator`, the block's threshold, centre of mass).",
        f"- **Atomap** {atomap_v}: `Sublattice` 2-D Gaussian refinement "
        "(`refine_atom_positions_using_2d_gaussian`) seeded by the conventional peak finder, and, as a second row, "
        "seeded by atomfinder's detections (does Gaussian refinement improve on atomfinder's sub-pixel "
        "positions?). Atomap's time includes its seeds' detection.",
        "- **conventional**: atomfinder's band-pass + local-maxima baseline (`atomfinder.detection.baseline`).",
        "",
    ]
    last = ", ".join(s.get("systems") or []) or "none"
    lines += [f"Systems on this page: {', '.join(systems) or 'none'}. The last run made: {last}"
              + (f" (doses asked: {', '.join(dose_tag(d) for d in s['doses'])} e/Å², scored where the model "
                 "covers them)" if s.get("doses") else "")
              + ("; the rows of the others are kept from earlier runs (`--keep-others`), each with its own "
                 "settings." if set(systems) - set(s.get("systems") or []) else "."), ""]
    differences = settings_differences(result)
    if differences:
        lines += ["**Settings differ between the blocks of this page** (or were not recorded by some), so "
                  "their rows are not comparable on these:", ""] + differences + [""]
    without_peers = [k for k in systems if block_settings(k, result)[0].get("skip_peers") is True]
    if without_peers:
        lines += [f"Peers were not run (`--skip-peers`) for: {', '.join(without_peers)}.", ""]
    if result.get("atomai_training"):
        lines += ["AtomAI training: " + ", ".join(
            f"{k}: {v['cycles']} mini-batches of {v['batch_size']} in {v['seconds'] / 60:.1f} min "
            f"({v.get('cpu_seconds', math.nan) / 60:.1f} CPU-min"
            + (f" of a budget of {v['budget_cpu_s'] / 60:.1f}" if "budget_cpu_s" in v else "")
            + f") on {v['train_images']} images of {v['store']}" for k, v in result["atomai_training"].items()), ""]
    flags, flag_notes = legacy_flags(result)
    lines += ["## Accuracy", ""]
    for system, per_dose in systems.items():
        table = accuracy_table(system, per_dose, flags.get(system))
        lines += table[:2] + [settings_line(system, result, SYSTEM_FIELDS + COMMON_FIELDS), "",
                              selection_line(system, per_dose), ""] + table[2:]
        lines += [n for n in flag_notes if n.split(" ", 2)[1].rstrip(",") == system] + [""]
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    lines += ["### Where a peer is ahead", ""] + peer_wins_lines(peer_wins(result), flags)
    rel = lambda p: os.path.relpath(p, out.parent)  # noqa: E731
    for p in figures:
        lines += [f"![{p.stem}]({rel(p)})", ""]
    if figures and flags:
        lines += ["The figures include the rows marked † and ‡ above.", ""]
    if result.get("timing"):
        t, _ = block_settings("timing", result)
        repeats = t.get("repeats")
        lines += ["## Speed and memory", "",
                  "Image to atom table on a synthetic graphene-like lattice at 0.1 Å/px, each tool in a fresh "
                  "process with the block's threads: the median of the timed runs after one warm-up"
                  + (f" ({repeats})" if repeats != NOT_RECORDED else "") + ", and the peak resident memory of "
                  "the process. Every row runs on the device in its device column (passed explicitly; the "
                  "CUDA rows only with `--gpu`). Ratios to atomfinder on the same machine are the "
                  "result; the absolute figures belong to the block's machine. Atomap's figure is the Gaussian "
                  "refinement of the conventional peak finder's seeds. A process's memory includes its "
                  "imports: the column RSS after imports is each process's resident memory after importing "
                  "its tool (torch and atomfinder; torch and AtomAI; Atomap, which does not use torch) and "
                  "before any work, so the memory ratios are read against those baselines.", "",
                  settings_line("timing", result, TIMING_FIELDS + COMMON_FIELDS), ""]
        lines += timing_table(result["timing"])
        lines += timing_notes(result["timing"])
    lines += ["## Headline ratios", "", "```json", json.dumps(result.get("headline", {}), indent=1), "```", ""]
    flagged = sorted({f"{system}" for system in flags})
    if flagged:
        lines += [f"The means of {', '.join(flagged)} include rows marked † or ‡ above.", ""]
    return "\n".join(lines)


def timing_notes(timing: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the timing rows of a run before the device, the import baseline and torch-free Atomap
    were recorded can and cannot say."""
    rows = [(name, r) for per_size in timing.values() for name, r in per_size.items() if "times_s" in r]
    old = [(name, r) for name, r in rows if "import_rss_mb" not in r]
    if not old:
        return []
    lines = ["Rows without an import baseline come from a run before it was measured: "]
    if any(name == "Atomap" for name, _ in old):
        lines[0] += ("its worker imported torch for every tool, so Atomap's peak RSS there includes a torch import "
                     "that Atomap does not use. ")
    devices = {r.get("device") for _, r in old}
    if devices <= {"cpu"} and not any("(cuda)" in name for name, _ in rows):
        lines[0] += ("Their devices were labelled by that harness (atomfinder: `cpu` whenever no device was "
                     "passed; the peers: `cuda` whenever CUDA was present); no CUDA row was made and the peers "
                     "reported `cpu`, so CUDA was absent and every row ran on the CPU.")
    else:
        lines[0] += ("Their devices were labelled by that harness, which could call a run on CUDA `cpu` "
                     "(atomfinder, no device passed) or a CPU run `cuda` (the peers, CUDA present).")
    return lines + [""]


# --------------------------------------------------------------------------- main


def _positive(kind: type, *, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` above 0 (or at least 0 with ``zero``), finite; anything else is
    refused in one line (exit code 2)."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number")
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"{text} must be {'0 or more' if zero else 'above 0'}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; every count, dose, size and budget checked (argparse's one-line refusal, exit 2)."""
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
    ap.add_argument("--doses", nargs="+", type=_positive(float), default=[2e2, 1e3, 1e4, 1e5])
    ap.add_argument("--n-images", type=_positive(int), default=16,
                    help="Test images per store, spread evenly over the images that all the system's "
                         "stores share (the same specimens at every dose).")
    ap.add_argument("--crlb-images", type=_positive(int, zero=True), default=4,
                    help="Images per store whose bound is computed (0: none).")
    ap.add_argument("--budget-min", type=_positive(float), default=30.0,
                    help="AtomAI training per system: minutes of --threads cores, counted as CPU time. Its first "
                         "10 mini-batches (which measure the time per mini-batch) always run, so a budget shorter "
                         "than those is overrun; the page gives the CPU time spent.")
    ap.add_argument("--atomai-train-images", type=_positive(int), default=1500)
    ap.add_argument("--atomai-threshold", type=float, default=0.5,
                    help="AtomAI Locator threshold (0-1), in the accuracy rows and in the timing.")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--timing-sizes", nargs="*", type=_positive(int), default=[1024, 4096],
                    help="Image sides (px) of the speed and memory table; none: no timing.")
    ap.add_argument("--timing-model", default="graphene")
    ap.add_argument("--timing-untrained-atomai", action="store_true",
                    help="Time AtomAI with an untrained network when none was trained (no systems run).")
    ap.add_argument("--repeats", type=_positive(int), default=3,
                    help="Timed runs after the warm-up (at least 1: the warm-up is never the figure).")
    ap.add_argument("--atomap-max-s", type=_positive(float), default=1800.0,
                    help="Skip Atomap at a size whose projected time for all runs exceeds this.")
    ap.add_argument("--threads", type=_positive(int), default=2)
    ap.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                    help="Also time atomfinder and AtomAI on CUDA (--no-gpu: CPU only; default: if CUDA is "
                         "present). Every other row runs on the CPU, device passed explicitly.")
    ap.add_argument("--work", type=Path,
                    help="Work folder kept between runs: finished stages (AtomAI training, each store, the "
                         "timing) are reused when their settings match, so a killed run resumes "
                         "(default: a temporary folder).")
    args = ap.parse_args(argv)
    if not 0 <= args.atomai_threshold <= 1:
        ap.error(f"argument --atomai-threshold: {args.atomai_threshold} must lie in 0..1")
    if small := [size for size in args.timing_sizes if size < 32]:
        ap.error(f"argument --timing-sizes: {small[0]} px is too small an image (32 px or more)")
    if not args.render_only:
        for option, names in (("--systems", args.systems), ("--timing-model", [args.timing_model] * bool(args.timing_sizes))):
            for name in names:
                if (why := _unknown_model(name)) is not None:
                    ap.error(f"argument {option}: {why}")
        if args.timing_sizes and _channels(args.timing_model) != 1:
            ap.error(f"argument --timing-model: {args.timing_model} sees a focal series of "
                     f"{_channels(args.timing_model)} frames; the timing images are single frames")
    return args


def _channels(name: str) -> int:
    """Input frames of model ``name``."""
    from atomfinder.nn.card import load_card, resolve_model

    return int(load_card(resolve_model(name)).in_channels)


def _unknown_model(name: str) -> str | None:
    """Why ``name`` is no model (the first line of :func:`resolve_model`'s refusal); None for a model."""
    from atomfinder.nn.card import resolve_model

    try:
        resolve_model(name)
    except ValueError as exc:
        return str(exc).splitlines()[0]
    return None


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The whole comparison (see the module docs); the result dict that :func:`markdown` renders."""
    import torch

    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.card import load_model, resolve_model

    torch.set_num_threads(args.threads)
    if args.gpu is None:
        args.gpu = bool(torch.cuda.is_available())
    peer_versions = {} if args.skip_peers else run_worker(["versions"], threads=args.threads)
    stamp = run_stamp(args, peer_versions, torch.__version__)
    provenance = {"commit": stamp["commit"], "date": stamp["date"]}
    result: dict[str, Any] = {"systems": {}, "atomai_training": {}, "notes": [], "machine": stamp["machine"],
                              "runs": {}}
    for system in args.systems:
        net, card = load_model(resolve_model(system))
        recipe = test_recipe(card.name, card.training["data"]["simulation"]["system"])
        doses = []
        for dose in args.doses:
            if not dose_covered(card, dose):
                result["notes"].append(f"{system} {dose_tag(dose)}: outside the model's dose range; not scored")
                continue
            path = ensure_test_store(args.data_dir, recipe, dose)
            if path is None:
                result["notes"].append(f"{system} {dose_tag(dose)}: no test store and no recipe to simulate one")
            else:
                doses.append((dose, path))
        if not doses:
            continue
        # every dose is scored on the same specimens: images spread over the first images that
        # all the system's stores hold, and of those only the recipe's (a longer store, e.g. one
        # made with --n 128 where the recipe makes 64, holds other specimens after them)
        usable = []
        for _, path in doses:
            n, note = recipe_images(path, DatasetStore(path), recipe)
            usable.append(n)
            if note:
                result["notes"].append(f"{system}: {note}")
        first = min(usable)
        log(f"{system}: images spread over the first {first} images of each of its stores")
        if card.in_channels > 1:
            result["notes"].append(
                f"{system}: a focal-series model (atomfinder sees the {card.in_channels} frames); the other methods "
                f"see frame {peer_frame(card)} (0-based), and every method is scored on the atom columns as one "
                "class (vacancy sites left out). AtomAI is trained on the same frame of its training series, with "
                "masks drawn at the ground truth moved by that frame's recorded drift. No Cramér-Rao bound (focal "
                "stores are not re-simulated).")
        sys_work = work / system
        sys_work.mkdir(parents=True, exist_ok=True)
        model = {"name": card.name, "version": card.version, "weights_sha1": file_sha1(resolve_model(system))}
        atomai_ready = False
        stages: dict[str, Any] = {}
        if not args.skip_peers:
            training = atomai_training_key(card, args)
            if not (sys_work / "atomai.pt").exists():
                (sys_work / "atomai_training.json").unlink(missing_ok=True)
            result["atomai_training"][system] = stage(sys_work / "atomai_training.json", training,
                                                      lambda: train_atomai(card, sys_work, args), provenance)
            stages["atomai_training"] = computed_by(sys_work / "atomai_training.json")
            atomai_ready = True
        result["systems"][system] = {}
        for dose, path in doses:
            settings = {"model": model, "store": store_identity(path, DatasetStore(path)), "first": first,
                        "n_images": args.n_images, "selection": "spread over the first images all stores share",
                        "crlb_images": args.crlb_images, "skip_peers": args.skip_peers,
                        "atomai_threshold": args.atomai_threshold, "threads": args.threads,
                        "atomai": result["atomai_training"].get(system),
                        "atomai_predict": ATOMAI_PREDICT}
            stage_path = sys_work / f"store-{dose_tag(dose)}.json"
            res = stage(stage_path, settings,
                        lambda: run_store(system, dose, path, net, card, sys_work, args, atomai_ready, first),
                        provenance)
            stages[f"store-{dose_tag(dose)}"] = computed_by(stage_path)
            result["systems"][system][dose_tag(dose)] = res | {"dose": dose}
        result["runs"][system] = stamp | {"block": "system", "stages": stages}
    if args.timing_sizes:
        timing_work = work / "timing"
        timing_work.mkdir(parents=True, exist_ok=True)
        trained = work / args.timing_model / "atomai.pt"
        if trained.exists():
            (timing_work / "atomai.pt").write_bytes(trained.read_bytes())
        settings = {"sizes": args.timing_sizes, "model": args.timing_model,
                    "weights_sha1": file_sha1(resolve_model(args.timing_model)), "repeats": args.repeats,
                    "threads": args.threads, "gpu": args.gpu, "skip_peers": args.skip_peers,
                    "atomai_trained": trained.exists(), "untrained_atomai": args.timing_untrained_atomai,
                    "atomai_threshold": args.atomai_threshold, "atomap_max_s": args.atomap_max_s,
                    "peer_versions": peer_versions, "atomfinder_torch": torch.__version__,
                    "atomai": result["atomai_training"].get(args.timing_model)}
        result["timing"] = stage(timing_work / "timing.json", settings,
                                 lambda: run_timing(timing_work, args, trained.exists()), provenance)
        result["runs"]["timing"] = stamp | {"block": "timing",
                                            "stages": {"timing": computed_by(timing_work / "timing.json")}}
    result["settings"] = {
        "systems": args.systems, "doses": args.doses, "n_images": args.n_images, "crlb_images": args.crlb_images,
        "budget_min": args.budget_min, "threads": args.threads, "atomai_threshold": args.atomai_threshold,
        "repeats": args.repeats, "data_dir": stamp["data_dir"], "skip_peers": args.skip_peers,
        "peer_versions": peer_versions,
    }
    result["headline"] = headline(result)
    return result


#: Stamp fields that bear on a system's accuracy rows, and on the timing rows (the rest of a
#: stamp: date, commit, machine, versions, apply to both).
SYSTEM_FIELDS = ("n_images", "selection", "crlb_images", "doses", "data_dir", "skip_peers", "budget_min",
                 "atomai_train_images", "atomai_threshold", "threads")
TIMING_FIELDS = ("timing_sizes", "timing_model", "repeats", "threads", "gpu", "atomap_max_s", "atomai_threshold",
                 "skip_peers")
COMMON_FIELDS = ("machine", "atomfinder_torch", "peer_versions")


def atomai_training_key(card: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The settings AtomAI's training stage is computed once per (:func:`stage`).

    AtomAI learns from the model's training data, not from the model: a new version trained
    on the same store reuses it. A focal series's network, trained on a later frame, carries
    how its masks were made: the harness once trained it with the first frame's masks, and
    such a cached ``atomai.pt`` must not be reused. A single-frame model's key is unchanged
    (its masks are the store's targets, as before).
    """
    key = {"data": {k: card.training["data"].get(k) for k in ("store", "seed", "simulation")},
           "frame": peer_frame(card), "budget_min": args.budget_min, "threads": args.threads,
           "train_images": args.atomai_train_images}
    if peer_frame(card):
        key["masks"] = f"ground truth + drift of frame {peer_frame(card)}"
    return key


def run_stamp(args: argparse.Namespace, peer_versions: Mapping[str, Any] | None = None,
              atomfinder_torch: str | None = None) -> dict[str, Any]:
    """When, at which commit (the checkout's at the start of the run) and with which settings
    this run's rows were made: every option that changes a row, so that rows kept from
    earlier runs (``--keep-others``) are shown with their own settings."""
    return {"stamp_version": 2, "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
            "n_images": args.n_images, "selection": "spread over the first images all of a system's stores share",
            "crlb_images": args.crlb_images, "doses": list(args.doses),
            "data_dir": os.path.relpath(args.data_dir, ROOT), "skip_peers": args.skip_peers,
            "budget_min": args.budget_min, "atomai_train_images": args.atomai_train_images,
            "atomai_threshold": args.atomai_threshold, "threads": args.threads,
            "timing_sizes": list(args.timing_sizes), "timing_model": args.timing_model, "repeats": args.repeats,
            "gpu": args.gpu, "atomap_max_s": args.atomap_max_s,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "atomfinder_torch": atomfinder_torch, "peer_versions": dict(peer_versions or {})}


def file_sha1(stem: Path) -> str:
    """First 16 hex digits of the SHA-1 of a model's weights (``<stem>.safetensors``) and card."""
    import hashlib

    h = hashlib.sha1()
    for suffix in (".safetensors", ".json"):
        f = Path(str(stem) + suffix)
        if f.exists():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


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
        merged["runs"][system] = kept_stamp(system, previous)
        notes += [n for n in previous.get("notes") or [] if n.split(" ", 1)[0].rstrip(":") == system]
    if "timing" not in result and previous.get("timing"):
        merged["timing"] = previous["timing"]
        merged["runs"]["timing"] = kept_stamp("timing", previous)
    merged["notes"] = notes
    order = {name: i for i, name in enumerate(DEFAULT_SYSTEMS)}  # the default order, whatever ran last
    merged["systems"] = dict(sorted(merged["systems"].items(), key=lambda kv: order.get(kv[0], len(order))))
    merged["headline"] = headline(merged)
    return merged


def kept_stamp(block: str, previous: Mapping[str, Any]) -> dict[str, Any]:
    """The run stamp of block ``block`` of ``previous`` to keep beside another run's rows: as
    recorded, and for a stamp of a run before every setting was recorded, completed with what
    ``previous`` knows of it (:func:`block_settings`, with where each value came from), since
    the merged result's settings are no longer that run's."""
    stamp = dict((previous.get("runs") or {}).get(block) or {})
    if stamp.get("stamp_version"):
        return stamp
    values, origin = block_settings(block, previous)
    return stamp | {k: v for k, v in values.items() if k in origin} | ({"origin": origin} if origin else {})


def render(out: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Write ``out`` and its figures again from its saved ``result.json``; nothing is run (rows of
    runs before the selection was recorded get their specimen counts from the stores' attributes
    at ``data_dir`` where those are there)."""
    saved = result_path(out)
    if not saved.exists():
        raise SystemExit(f"--render-only: no saved result at {saved}")
    result = json.loads(saved.read_text())
    if data_dir is not None:
        describe_old_selections(result, data_dir)
    figures = plots(result, out.parent / out.stem)
    out.write_text(markdown(result, figures, out))
    log(f"wrote {out} and {len(figures)} figures from {saved.name}")
    summary = {"out": str(out), "rendered_from": str(saved), "figures": [str(p) for p in figures],
               "headline": result.get("headline")}
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from atomfinder.analysis.evaluate import to_jsonable

    args = parse_args(argv)
    if args.render_only:
        return render(args.out, args.data_dir)
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
        describe_old_selections(result, args.data_dir)
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
