"""The ``atomfinder`` command line: parses arguments and calls the API.

Errors in the input are reported as one line (``error: ...``) with a non-zero
exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
import numpy as np
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find atoms and atomic columns in HRTEM images with networks trained on multislice simulations.",
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _run(action: Callable[[], Any], resume_hint: str | None = None) -> Any:
    """Run ``action``; turn expected failures into one-line errors."""
    try:
        return action()
    except KeyboardInterrupt:
        hint = f"; {resume_hint}" if resume_hint else ""
        console.print(f"[yellow]interrupted[/yellow]{hint}")
        raise typer.Exit(130) from None
    except (ValueError, OSError, KeyError) as exc:
        if _state["debug"]:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _progress(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command()
def simulate(
    system: str = typer.Option(..., "--system", help="graphene, gold or mos2."),
    n: int = typer.Option(..., "--n", min=1, help="Number of samples."),
    out: Path = typer.Option(..., "--out", help="Output zarr store (DIR.zarr); an unfinished one is resumed."),
    seed: int = typer.Option(0, "--seed", help="Master seed: same config and seed, identical arrays."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML/JSON simulation config ([simulation] table)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Local worker processes (default: all CPUs; 0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask.distributed scheduler address (tcp://host:8786)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG grid of images with their labels."),
) -> None:
    """Simulate labelled HRTEM training data into a zarr store."""

    def action() -> None:
        from atomfinder.datasets.generate import load_config, simulate_to_store

        cfg = load_config(config, system)
        if workers is not None and scheduler is not None:
            raise ValueError("give --workers or --scheduler, not both")
        with _progress(f"simulate {cfg.system}") as bar:
            task = bar.add_task("simulate", total=n)
            simulate_to_store(
                cfg, n, out, seed=seed, workers=workers, scheduler=scheduler,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        console.print(f"wrote {n} samples to {out}")
        if preview is not None:
            path = write_preview(out, preview)
            console.print(f"preview: {path}")

    _run(action, resume_hint="run the same command again to resume")


def write_preview(store_path: Path, png: Path, count: int = 8) -> Path:
    """Draw the first ``count`` samples of a store with their ground-truth sites."""
    from atomfinder.analysis.plots import preview_grid
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(store_path)
    # spread the picks over the store, so that several structures are shown
    picks = np.unique(np.linspace(0, len(store) - 1, min(count, len(store))).round().astype(int))
    images = store.array("images", store.indices[picks])
    imgs, xys, labs, titles = [], [], [], []
    for row, i in enumerate(picks):
        gt = store.ground_truth(int(i))
        m = store.microscope(int(i))[0]
        for f, frame in enumerate(images[row]):
            imgs.append(frame)
            xys.append(gt["positions_px"])
            labs.append(gt["labels"])
            titles.append(
                f"#{i}{f' frame {f}' if len(images[row]) > 1 else ''}: {m['energy_eV'] / 1e3:.0f} kV, "
                f"df {store.microscope(i)[f]['defocus_A']:.0f} Å, Cs {m['Cs_A'] / 1e4:.0f} µm, "
                f"{m['dose_e_per_A2']:.0e} e/Å²"
            )
    columns = images.shape[1] if images.shape[1] > 1 else 4
    return preview_grid(imgs, xys, labs, store.class_names, png, titles=titles, columns=columns)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
