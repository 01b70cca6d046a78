"""`kill -9` anywhere: every long command, killed at random moments and run again, ends with the
outputs of an uninterrupted run and never leaves a partial output published.

Each test runs the real ``atomfinder`` command line in a subprocess: once without interruption
(the reference), then, for each seed, killed with SIGKILL after a random delay drawn from that
seed (somewhere between start-up and the reference's duration), then run again as a user would
(the same command, with ``--resume`` where the command has one); a run that finished before its
kill is run again with a shorter delay, so every test checks a killed run. The default set kills
train, detect and track at one random moment; ``-m slow`` adds simulate (killed at a fixed point in
the default set: test_datasets.py), more seeds and the fine-tuning workflow.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import lattice_image, save_untrained_model, tiny_config

SAMPLING = 0.2  # Å/px of the detection inputs and of the tiny model
FAST_SEEDS = [0]
SLOW_SEEDS = [1, 2, 3]
CLI = [sys.executable, "-m", "atomfinder.cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """The command line, to the end; fails the test on a non-zero exit."""
    done = subprocess.run(CLI + args, capture_output=True, text=True, env=ENV, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def timed(args: list[str]) -> float:
    """Seconds the command takes, uninterrupted."""
    t = time.perf_counter()
    run_cli(args)
    return time.perf_counter() - t


def kill_after(args: list[str], delay_s: float) -> bool:
    """Start the command and SIGKILL it (its whole process group) after ``delay_s``; True if it was
    still running then."""
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay_s)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    print(f"{args[0]}: {'killed' if killed else 'finished before the kill'} at {delay_s:.2f} s")
    return killed


def kill_during(args: list[str], out: Path, delay_s: float, tries: int = 5) -> float:
    """Kill the command (``kill_after``) while it runs: if it had finished before ``delay_s`` (a run
    faster than the reference), its outputs ``out`` are removed and it is run again with half the delay,
    at most ``tries`` times. Returns the delay that killed it; fails the test when no try did."""
    import shutil

    for _ in range(tries):
        if kill_after(args, delay_s):
            return delay_s
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        delay_s /= 2
    pytest.fail(f"{args[0]} always finished before it was killed (last delay {delay_s * 2:.3f} s)")


def kill_delay(seed: int, duration_s: float) -> float:
    """A random moment of a run that takes ``duration_s``: start-up, work and the writing of outputs."""
    return random.Random(seed).uniform(0.05, 0.95) * duration_s


def leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders of writers (hidden ``*.tmp*`` / ``*.partial*``) under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") and (".tmp" in p.name or ".partial" in p.name)]


def same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --------------------------------------------------------------------------- simulate


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(path)
    return {k: store.array(k) for k in ("images", "targets", "sites_A", "sites_label", "microscope", "n_sites")}


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """A tiny graphene config on disk and its uninterrupted 8-sample store (with the time it took)."""
    pytest.importorskip("abtem")
    work = tmp_path_factory.mktemp("simulate")
    config = work / "tiny.toml"
    config.write_text(tiny_config().to_toml())
    args = ["simulate", "--system", "graphene", "--n", "8", "--seed", "5", "--config", str(config), "--workers", "0"]
    duration = timed(args + ["--out", str(work / "ref.zarr")])
    return args, work / "ref.zarr", duration


def _kill_simulate(simulation, seed: int, tmp_path: Path) -> None:
    from atomfinder.datasets.store import DatasetStore

    args, reference, duration = simulation
    out = tmp_path / f"killed{seed}.zarr"
    kill_during(args + ["--out", str(out)], out, kill_delay(seed, duration))
    if out.exists():  # published stores are whole: every visible sample is a finished one
        store = DatasetStore(out)
        part = _store_arrays(out)
        ref = _store_arrays(reference)
        for k in part:
            np.testing.assert_array_equal(part[k][store.indices], ref[k][store.indices], err_msg=k)
    run_cli(args + ["--out", str(out)])
    a, b = _store_arrays(reference), _store_arrays(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not leftovers(out) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # ~24 s (the reference store through the CLI, then a killed run and its rerun); the default
# set kills a store's writer at a fixed point instead: test_datasets::test_store_survives_kill_9
@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_simulate_killed_anywhere(simulation, seed, tmp_path):
    _kill_simulate(simulation, seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_simulate_killed_anywhere_more_seeds(simulation, seed, tmp_path):
    _kill_simulate(simulation, seed, tmp_path)


# --------------------------------------------------------------------------- train

TRAIN_TOML = """[train]
name = "tiny"
depth = 2
width = 4
crop_px = 32
batch_size = 4
epochs = 3
warmup_steps = 2
checkpoint_every = 1
validation_fraction = 0.0
num_threads = 1
"""


@pytest.fixture(scope="module")
def training(tiny_graphene_store, tmp_path_factory):
    """A tiny recipe and its uninterrupted run (6 steps, a checkpoint after each)."""
    work = tmp_path_factory.mktemp("train")
    (work / "tiny.toml").write_text(TRAIN_TOML)
    args = ["train", "--config", str(work / "tiny.toml"), "--data", str(tiny_graphene_store)]
    duration = timed(args + ["--out", str(work / "ref")])
    return args, work / "ref", duration


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _kill_train(training, seed: int, tmp_path: Path) -> None:
    import torch

    from atomfinder.nn.card import load_model

    args, reference, duration = training
    out = tmp_path / f"run{seed}"
    kill_during(args + ["--out", str(out)], out, kill_delay(seed, duration))
    if (out / "model.json").exists():  # a published model is whole: its card's hash matches its weights
        load_model(out / "model")
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    run_cli(args + ["--out", str(out)] + resume)
    ref, got = _weights(reference / "model.safetensors"), _weights(out / "model.safetensors")
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k  # bit-identical: CPU, one thread, same random streams
    a = torch.load(reference / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not leftovers(out)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_train_killed_anywhere(training, seed, tmp_path):
    _kill_train(training, seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_train_killed_anywhere_more_seeds(training, seed, tmp_path):
    _kill_train(training, seed, tmp_path)


# --------------------------------------------------------------------------- detect (a batch)


def _lattice(seed: int, shape=(64, 64), spacing_px: float = 7.0) -> np.ndarray:
    return lattice_image(shape, spacing_px, seed)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Eight calibrated TIFFs, a tiny model and the uninterrupted batch's outputs."""
    from atomfinder.detection.io import write_tiff_calibrated

    work = tmp_path_factory.mktemp("detect")
    model = save_untrained_model(work / "tiny", SAMPLING)
    inputs = [str(write_tiff_calibrated(work / f"img{i}.tif", _lattice(i), SAMPLING)) for i in range(8)]
    args = ["detect", *inputs, "--model", str(model)]
    duration = timed(args + ["--out", str(work / "ref")])
    names = [f"img{i}{ext}" for i in range(8) for ext in (".csv", ".json", ".png")]
    return args, work / "ref", duration, names


def _kill_detect(batch, seed: int, tmp_path: Path) -> None:
    args, reference, duration, names = batch
    out = tmp_path / "out"
    kill_during(args + ["--out", str(out)], out, kill_delay(seed, duration))
    before = {}
    for i in range(8):  # an input has all its outputs or (but in the instant of the renames) none
        present = [(out / f"img{i}{ext}").exists() for ext in (".csv", ".json", ".png")]
        assert not present[1] or all(present), i  # the sidecar is renamed into place last
        if all(present):
            before |= {f"img{i}{ext}": (out / f"img{i}{ext}").stat().st_mtime_ns for ext in (".csv", ".json", ".png")}
    done = run_cli(args + ["--out", str(out), "--resume"])
    same_files(reference, out, names)
    # what was finished before the kill was not done again
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before
    assert not leftovers(out), done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_detect_batch_killed_anywhere(batch, seed, tmp_path):
    _kill_detect(batch, seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_detect_batch_killed_anywhere_more_seeds(batch, seed, tmp_path):
    _kill_detect(batch, seed, tmp_path)


def test_detect_resume_skips_finished_inputs_and_redoes_partial_ones(batch, tmp_path):
    """The state a kill leaves (one input finished, one caught between its renames, temporary files),
    resumed in-process: only the unfinished inputs are detected, the stale temporaries go."""
    from atomfinder.detection.batch import detect_files, finished_inputs

    args, reference, _, names = batch
    inputs, model = args[1:9], args[10]
    out = tmp_path / "out"
    out.mkdir()
    for ext in (".csv", ".json", ".png"):
        (out / f"img0{ext}").write_bytes((reference / f"img0{ext}").read_bytes())
    (out / "img1.csv").write_bytes((reference / "img1.csv").read_bytes())  # killed between its renames
    (out / ".img2.csv.0badc0de.partial.csv").write_text("x,y\n1,")  # killed while writing
    assert finished_inputs(inputs, out) == [(inputs[0],)]
    seen = []
    written = detect_files(inputs, model, out, resume=True, progress=lambda done, total, rep: seen.append(done))
    assert seen == list(range(2, 9))  # the finished input counts as done
    assert out / "img0.csv" not in written and out / "img1.json" in written
    same_files(reference, out, names)
    assert not leftovers(out)


# --------------------------------------------------------------------------- track


TRACK_OUTPUTS = ["sites.csv", "presence.csv", "events.csv", "drift.csv", "occupancy.csv", "presence.png",
                 "occupancy.png", "overlay.gif", "provenance.json"]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A six-frame drifting lattice (calibrated TIFF stack), a tiny model and the uninterrupted outputs."""
    from atomfinder.detection.io import write_tiff_calibrated

    work = tmp_path_factory.mktemp("track")
    model = save_untrained_model(work / "tiny", SAMPLING, class_names=("Au",))
    big = _lattice(0, shape=(80, 80))
    frames = np.stack([big[i : i + 64, 2 * i : 2 * i + 64] + np.random.default_rng(i).normal(0, 1, (64, 64))
                       for i in range(6)]).astype(np.float32)
    src = write_tiff_calibrated(work / "series.tif", frames, SAMPLING)
    args = ["track", str(src), "--model", str(model)]
    duration = timed(args + ["--out", str(work / "ref")])
    return args, work / "ref", duration


def _kill_track(series, seed: int, tmp_path: Path) -> None:
    args, reference, duration = series
    out = tmp_path / "out"
    kill_during(args + ["--out", str(out)], out, kill_delay(seed, duration))
    present = [name for name in TRACK_OUTPUTS if (out / name).exists()]
    assert present in ([], TRACK_OUTPUTS)  # published together at the end, or not at all
    run_cli(args + ["--out", str(out)] + (["--overwrite"] if present else []))
    same_files(reference, out, [n for n in TRACK_OUTPUTS if n.endswith(".csv")])
    assert not leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(TRACK_OUTPUTS)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_track_killed_anywhere(series, seed, tmp_path):
    _kill_track(series, seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_track_killed_anywhere_more_seeds(series, seed, tmp_path):
    _kill_track(series, seed, tmp_path)


def test_track_stages_its_outputs_and_clears_stale_staging(tmp_path):
    """Nothing of a track run appears before all of it; a killed run's staging folder is removed."""
    import pandas as pd

    from atomfinder.analysis.timeseries import STAGING_PREFIX, STAGING_SUFFIX, track

    out = tmp_path / "out"
    (out / f"{STAGING_PREFIX}dead{STAGING_SUFFIX}").mkdir(parents=True)
    frames = np.stack([_lattice(i) for i in range(3)])
    seen = []

    def detect(frame):
        seen.append(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
        yx = np.argwhere(frame > 140)[:20]
        return pd.DataFrame({"x": yx[:, 1].astype(float), "y": yx[:, 0].astype(float), "label": "C",
                             "probability": 0.9})

    written = track(frames, detect, SAMPLING, out, gif=False)
    assert seen == [[], [], []]  # nothing published while the frames are detected
    assert sorted(written) == sorted(p.name for p in out.iterdir())  # the stale staging folder is gone


# --------------------------------------------------------------------------- finetune


@pytest.fixture(scope="module")
def finetuning(tiny_graphene_store, tmp_path_factory):
    """A tiny general model with a simulation recipe in its card, and the fine-tuning command."""
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.train import TrainConfig, load_training_data, train

    cfg = TrainConfig(name="tiny", depth=2, width=4, crop_px=32, batch_size=4, epochs=2, warmup_steps=2,
                      checkpoint_every=1, validation_fraction=0.25, num_threads=1)
    store = DatasetStore(tiny_graphene_store)
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    recipe = {"store": str(tiny_graphene_store), "n": 8, "seed": 0, "simulation": tiny_config().to_dict()}
    work = tmp_path_factory.mktemp("finetune")
    stem = train(cfg, data, work / "source", recipe=recipe)
    microscope = work / "my.toml"
    from test_finetune import MICROSCOPE  # the microscope ranges test_finetune's runs use

    microscope.write_text(MICROSCOPE)
    return ["finetune", "--model", str(stem), "--microscope", str(microscope), "--minutes", "5",
            "--n-train", "8", "--n-test", "4", "--seed", "5", "--workers", "0"], work


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finetune_killed_anywhere(finetuning, seed, tmp_path):
    """Stores equal the uninterrupted run's bit for bit, the training resumes from its checkpoint and
    the final model is whole (its weights depend on the wall-clock budget: not compared)."""
    from atomfinder.nn.card import load_model

    args, work = finetuning
    reference = work / "ref"
    if not reference.exists():
        t = time.perf_counter()
        run_cli(args + ["--out", str(reference)])
        (work / "duration").write_text(str(time.perf_counter() - t))
    duration = float((work / "duration").read_text())
    out = tmp_path / "run"
    kill_during(args + ["--out", str(out)], out, kill_delay(seed, duration))
    resume = ["--resume"] if (out / "finetune.json").exists() else []
    run_cli(args + ["--out", str(out)] + resume)
    for name in ("train.zarr", "test.zarr"):
        a, b = _store_arrays(reference / "data" / name), _store_arrays(out / "data" / name)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name} {k}")
    load_model(out / "model")  # whole: the card's hash matches the weights
    assert (out / "comparison.json").exists() and (out / "comparison.md").exists()
    assert not leftovers(out)


# --------------------------------------------------------------------------- memory bounds (issue 17.4)


@pytest.mark.slow
def test_huge_image_and_long_stack_detected_within_3_gb():
    """`benchmarks/bench_detect.py --only-memory --huge 8192 --stack 1000`: each input detected in a fresh
    process under 3 GB peak RSS (the stack is read frame by frame; minutes on two cores)."""
    import json

    bench = Path(__file__).parents[1] / "benchmarks" / "bench_detect.py"
    done = subprocess.run([sys.executable, str(bench), "--only-memory", "--huge", "8192", "--stack", "1000"],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["peak_rss_mb_8192"] < 3000 and result["atoms_8192"] > 0, result
    assert result["peak_rss_mb_stack_1000x256"] < 3000 and result["rows_stack_1000x256"] > 0, result


def test_a_stack_is_read_frame_by_frame(tmp_path):
    """A multi-frame .npy or TIFF is opened lazily: frames come from the file one at a time, and detection
    of the stack gives the same table as of the stack in memory."""
    import pandas as pd

    from atomfinder.detection.io import FrameStack, read_micrograph, write_tiff_calibrated
    from atomfinder.detection.batch import detect_files
    from atomfinder.detection.sample import load_sample

    frames = np.stack([_lattice(i) for i in range(3)])
    npy = tmp_path / "stack.npy"
    np.save(npy, frames)
    tif = write_tiff_calibrated(tmp_path / "stack.tif", frames, SAMPLING)
    for path, sampling in ((npy, SAMPLING), (tif, None)):
        m = read_micrograph(path, sampling, lazy=True)
        assert isinstance(m.data, FrameStack) and m.data.shape == frames.shape and m.sampling_A == SAMPLING
        np.testing.assert_array_equal(m.data[2], frames[2])
        eager = load_sample(str(path), sampling)
        lazy = load_sample(str(path), sampling, lazy=True)
        assert isinstance(lazy.data, FrameStack)
        np.testing.assert_array_equal(np.asarray(lazy.data), eager.data)  # cleaned alike
    model = save_untrained_model(tmp_path / "tiny", SAMPLING)
    detect_files([npy], model, tmp_path / "lazy", sampling_A=SAMPLING)
    from atomfinder.detection.micrograph import detect

    table, _ = detect(frames, str(model), SAMPLING)
    lazy_table = pd.read_csv(tmp_path / "lazy" / "stack.csv")
    np.testing.assert_allclose(lazy_table[["frame", "x", "y"]].to_numpy(), table[["frame", "x", "y"]].to_numpy(),
                               atol=1e-4)


def test_stale_temporaries_include_a_temporary_of_a_staged_file(tmp_path):
    """A kill while the overlay figure was written into its staged file leaves the figure writer's
    own temporary beside the staged one (found by the kill test of detect): both are stale."""
    from atomfinder._files import remove_stale_temporaries, stale_temporaries

    final = tmp_path / "img7.png"
    staged = tmp_path / ".img7.png.a3627c97.partial.png"
    nested = tmp_path / "..img7.png.a3627c97.partial.png.zg94vnvi.tmp.png"
    keep = [tmp_path / "img7.csv", tmp_path / ".other.png.1234.tmp.png", tmp_path / "img7.png.bak"]
    for p in (staged, nested, *keep):
        p.write_bytes(b"x")
    assert stale_temporaries(final) == sorted([staged, nested])
    assert remove_stale_temporaries(final) == 2
    assert all(p.exists() for p in keep) and not staged.exists() and not nested.exists()


# --------------------------------------------------------------------------- simulation workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_simulation_workers_die_with_a_killed_parent():
    """``kill -9`` of ``simulate`` (or ``finetune``) cannot stop its process pool: the workers are started
    with :func:`atomfinder.datasets.generate._die_with_parent`, so the kernel ends them too."""
    code = ("import os, time\n"
            "from concurrent.futures import ProcessPoolExecutor\n"
            "from atomfinder.datasets.generate import _die_with_parent\n"
            "def pid(_):\n    time.sleep(0.2)\n    return os.getpid()\n"
            "if __name__ == '__main__':\n"
            "    pool = ProcessPoolExecutor(2, initializer=_die_with_parent, initargs=(os.getpid(),))\n"
            "    print(' '.join(str(p) for p in sorted(set(pool.map(pid, range(8))))), flush=True)\n"
            "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers and all(Path(f"/proc/{p}").exists() for p in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
