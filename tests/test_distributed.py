"""The scale-out paths, really run: ``torchrun`` training with two CPU processes (gloo), and the
dask ``LocalCluster`` paths of simulate and detect with a worker killed in the middle of a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_untrained_model, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")

#: A recipe whose loss is a mean over the crops (fixed class weights, no Dice, group norm): two
#: processes of 2 crops then follow one process of 4 up to float rounding.
DDP_RECIPE = dict(name="tiny", depth=2, width=4, norm="group", crop_px=32, epochs=20, warmup_steps=2,
                  checkpoint_every=1, validation_fraction=0.0, num_threads=1, class_weights=[1.0, 1.0],
                  dice_weight=0.0)
STEPS = 40  # 20 epochs of an 8-image store at a global batch of 4


def _toml(recipe: dict) -> str:
    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return str(v).lower()
        return str(v)

    return "[train]\n" + "".join(f"{k} = {value(v)}\n" for k, v in recipe.items())


def _torchrun(config: Path, store: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "atomfinder.cli", "train", "--config", str(config), "--data", str(store), "--out", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, by their ids (children first are listed, then all die)."""
    import psutil

    parent = psutil.Process(pid)
    for p in [parent, *parent.children(recursive=True)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ddp_run(tiny_graphene_store, tmp_path_factory):
    """The recipe (2 crops per process) and its uninterrupted two-process run."""
    work = tmp_path_factory.mktemp("ddp")
    config = work / "ddp.toml"
    config.write_text(_toml(DDP_RECIPE | {"batch_size": 2}))
    _finish(_torchrun(config, tiny_graphene_store, work / "ddp"))
    return config, work / "ddp"


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(ddp_run, tiny_graphene_store,
                                                                              tmp_path):
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.train import TrainConfig, load_training_data, train

    config, ddp = ddp_run
    state = _state(ddp)
    assert state["step"] == STEPS
    assert json.loads((ddp / "model.json").read_text())["training"]["device"] == "cpu x2"
    single_cfg = TrainConfig.from_dict(DDP_RECIPE | {"batch_size": 4})
    store = DatasetStore(tiny_graphene_store)
    data = load_training_data(store, np.arange(len(store)), single_cfg.normalization)
    torch.set_num_threads(1)
    train(single_cfg, data, tmp_path / "single")
    single = _state(tmp_path / "single")
    assert single["step"] == STEPS
    for k, v in single["model"].items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # and the runs did learn something: the weights moved away from their initialisation
    from atomfinder.nn.unet import UNetConfig, build_model

    torch.manual_seed(single_cfg.seed)
    init = build_model(UNetConfig(in_channels=1, n_classes=2, depth=2, width=4, norm="group")).state_dict()
    assert max(float((init[k] - v).abs().max()) for k, v in single["model"].items() if v.is_floating_point()) > 1e-3


@pytest.mark.slow
def test_torchrun_resumes_after_a_kill(ddp_run, tiny_graphene_store, tmp_path):
    config, ddp = ddp_run
    out = tmp_path / "killed"
    proc = _torchrun(config, tiny_graphene_store, out)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.01)
    _kill_tree(proc.pid)  # torchrun and both workers (each in a session of its own)
    proc.communicate()
    step = _state(out)["step"]
    assert 0 < step < STEPS, step
    _finish(_torchrun(config, tiny_graphene_store, out, "--resume"))
    a, b = _state(ddp), _state(out)
    assert b["step"] == STEPS
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-6, atol=1e-7, msg=k)


# --------------------------------------------------------------------------- dask


def _kill_a_busy_worker(client, stop: threading.Event, killed: list) -> None:
    """SIGKILL the process of the first worker seen running a task (its nanny starts a new one)."""
    pids = client.run(os.getpid)
    while not stop.is_set():
        busy = [w for w, keys in client.processing().items() if keys]
        executing = client.run(lambda dask_worker: len(dask_worker.state.executing))
        busy = [w for w in busy if executing.get(w)]
        if busy:
            time.sleep(0.2)
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])
            return
        time.sleep(0.05)


def _with_worker_killed(cluster, job):
    """Run ``job()`` while a thread kills a worker in the middle of a task; returns job's result and the
    killed worker's address."""
    from distributed import Client

    killed: list = []
    stop = threading.Event()
    with Client(cluster.scheduler_address) as client:
        killer = threading.Thread(target=_kill_a_busy_worker, args=(client, stop, killed))
        killer.start()
        try:
            result = job()
        finally:
            stop.set()
            killer.join()
    return result, killed


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_class="distributed.Nanny") as c:
        yield c


@pytest.mark.slow
def test_dask_simulate_survives_a_killed_worker(cluster, tmp_path):
    pytest.importorskip("abtem")
    from atomfinder.datasets.generate import simulate_to_store
    from atomfinder.datasets.store import DatasetStore

    cfg = tiny_config()
    reference = simulate_to_store(cfg, 8, tmp_path / "ref.zarr", seed=13, workers=0)
    out, killed = _with_worker_killed(
        cluster, lambda: simulate_to_store(cfg, 8, tmp_path / "dask.zarr", seed=13, scheduler=cluster.scheduler_address))
    assert killed, "no worker was caught running a job"
    a, b = DatasetStore(reference), DatasetStore(out)
    assert len(b) == 8
    for k in ("images", "targets", "sites_A", "sites_label", "microscope"):
        np.testing.assert_array_equal(a.array(k), b.array(k), err_msg=k)
    assert not [p for p in Path(out).rglob("*.partial")]


@pytest.mark.slow
def test_dask_detect_survives_a_killed_worker(cluster, tmp_path):
    from atomfinder.detection.io import write_tiff_calibrated
    from atomfinder.detection.batch import detect_files

    model = save_untrained_model(tmp_path / "tiny", 0.2)
    rng = np.random.default_rng(0)
    inputs = [write_tiff_calibrated(tmp_path / f"img{i}.tif",
                                    (100 + rng.normal(0, 1, (256, 256))).astype(np.float32), 0.2) for i in range(6)]
    torch.set_num_threads(1)
    detect_files(inputs, model, tmp_path / "local")
    _, killed = _with_worker_killed(
        cluster, lambda: detect_files(inputs, model, tmp_path / "dask", scheduler=cluster.scheduler_address))
    assert killed, "no worker was caught running a job"
    for i in range(6):
        for ext in (".csv", ".png"):
            assert (tmp_path / "dask" / f"img{i}{ext}").read_bytes() == (tmp_path / "local" / f"img{i}{ext}").read_bytes()
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
