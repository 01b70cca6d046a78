"""Figures of the API and for papers (issue 16, items 3 and 4): overlay options, file
formats, stacks, scale bars, the Jupyter view of a detection. Small synthetic data, no network."""

from __future__ import annotations

import base64
import pickle
import re
import struct

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from atomfinder._figures import percentile_limits, pil_legend, pil_scale_bar, save_figure  # noqa: E402
from atomfinder.analysis import plots  # noqa: E402
from atomfinder.detection.overlay import (  # noqa: E402
    Detection,
    detection_summary,
    marker_diameter_pt,
    overlay_figure,
    overlay_plot,
    overlay_stack_plot,
    scale_bar_label,
    scale_bar_length_A,
    write_overlay_frames,
)
from atomfinder.detection.peaks import AtomTable  # noqa: E402

SAMPLING = 0.2  # Å/px
SHAPE = (48, 64)
PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"


def _image(shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.cos(2 * np.pi * xx / 8) * np.cos(2 * np.pi * yy / 8)
    return (100 + 20 * img + np.random.default_rng(0).normal(0, 1, shape)).astype(np.float32)


def _table(n=12, heights=False, calibrated=True, frame=None) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = 4 + 8 * (np.arange(n) % 7)
    y = 4 + 8 * (np.arange(n) // 7)
    table = pd.DataFrame({
        "x": x + rng.uniform(-0.3, 0.3, n), "y": y.astype(float),
        "label": np.where(np.arange(n) % 3 == 0, "N", "C"),
        "confidence": np.linspace(0.7, 1.0, n) if calibrated else np.full(n, np.nan),
        "probability": np.linspace(0.6, 0.99, n),
    })
    if heights:
        h = pd.array(2 + np.arange(n) % 4, dtype="Int64")
        h[0] = pd.NA
        table["height"] = h
    if frame is not None:
        table.insert(0, "frame", frame)
    return table


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _scale_text(shape=SHAPE, sampling=SAMPLING) -> str:
    return scale_bar_label(scale_bar_length_A(shape[1] * sampling))


def _colorbar_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


# --------------------------------------------------------------------------- single overlays


def test_overlay_plot_by_class_has_no_title_a_scale_bar_and_counts():
    fig = overlay_plot(_image(), _table(), ("C", "N"), SAMPLING)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes  # no colour bar when colouring by class
    assert ax.get_title() == "" and fig._suptitle is None
    assert _scale_text() == "2 Å" and "2 Å" in _texts(fig)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["C (8)", "N (4)"]
    rings = [c for c in ax.collections if c.get_zorder() == 3]
    assert len(rings) == 2 and all(c.get_linewidths()[0] >= 0.8 for c in rings)  # not thin fixed rings
    assert overlay_plot(_image(), _table(), ("C", "N"), SAMPLING, title="Fig. 2a").axes[0].get_title() == "Fig. 2a"


def test_figures_show_as_png_when_a_jupyter_cell_returns_them():
    """IPython calls _repr_png_ when no figure formatter is registered (a fresh kernel: no pyplot figure yet)."""
    fig = overlay_plot(_image(), _table(), ("C", "N"), SAMPLING)
    assert isinstance(fig, Figure) and fig._repr_png_().startswith(PNG)


@pytest.mark.parametrize("colour_by, calibrated, label", [
    ("confidence", True, "confidence"),
    ("confidence", False, "probability (model not calibrated)"),
    ("probability", True, "detection probability"),
])
def test_colour_by_a_number_adds_a_colour_bar(colour_by, calibrated, label):
    fig = overlay_plot(_image(), _table(calibrated=calibrated), ("C", "N"), SAMPLING, colour_by=colour_by)
    (cbar,) = _colorbar_axes(fig)
    assert cbar.get_ylabel() == label
    ax = fig.axes[0]
    markers = {c.get_paths()[0].vertices.shape for c in ax.collections if c.get_zorder() == 3}
    assert len(markers) == 2  # classes differ by marker shape


def test_heights_are_a_colour_bar_not_unexplained_digits():
    table = _table(heights=True)
    fig = overlay_plot(_image(), table, ("C", "N"), SAMPLING)  # auto: heights present -> colour by height
    (cbar,) = _colorbar_axes(fig)
    assert cbar.get_ylabel() == "atoms per column"
    assert [float(t) for t in cbar.get_yticks()] == [2.0, 3.0, 4.0, 5.0]
    assert _texts(fig) == ["2 Å"]  # only the scale bar: no digits
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "height unknown (1)" in legend
    fig = overlay_plot(_image(), table, ("C", "N"), SAMPLING, colour_by="class", height_labels=True)
    assert not _colorbar_axes(fig)
    assert sorted(_texts(fig)) == sorted(["2 Å"] + [str(int(h)) for h in table["height"].dropna()])
    assert "number: atoms per column" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(ValueError, match="height"):
        overlay_plot(_image(), _table(), ("C", "N"), SAMPLING, colour_by="height")
    with pytest.raises(ValueError, match="colour_by"):
        overlay_plot(_image(), _table(), ("C", "N"), SAMPLING, colour_by="size")


def test_marker_size_options_and_automatic_size():
    fig = overlay_plot(_image(), _table(), ("C", "N"), SAMPLING, marker_size=10, ring_width=2.0, outline=False,
                       legend=False, scale_bar=False)
    ax = fig.axes[0]
    assert ax.get_legend() is None and _texts(fig) == []
    assert {float(c.get_sizes()[0]) for c in ax.collections} == {100.0}
    assert {float(c.get_linewidths()[0]) for c in ax.collections} == {2.0}
    xy = np.column_stack([np.arange(10) * 8.0, np.zeros(10)])
    assert marker_diameter_pt(xy, SAMPLING, points_per_px=1.0) == pytest.approx(4.0)  # half of 8 px
    assert marker_diameter_pt(xy, SAMPLING, points_per_px=0.01) == 3.0  # huge image: never invisible
    assert marker_diameter_pt(xy, SAMPLING, points_per_px=100.0) == 16.0
    assert marker_diameter_pt(xy[:1], SAMPLING, points_per_px=1.0) == pytest.approx(5.5)  # 1.1 Å


def test_probability_map_at_another_sampling_is_stretched_onto_the_table_grid():
    fig = overlay_plot(np.random.default_rng(0).random((24, 32)), _table(), ("C", "N"), SAMPLING,
                       image_sampling_A=2 * SAMPLING)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((-1.0, 63.0)) and ax.images[0].get_extent()[1] == pytest.approx(63.0)


@pytest.mark.parametrize("suffix, magic", [(".png", PNG), (".svg", b"<svg"), (".pdf", PDF)])
def test_overlay_file_format_follows_the_suffix(tmp_path, suffix, magic):
    path = overlay_figure(_image(), _table(heights=True), ("C", "N"), SAMPLING, tmp_path / f"o{suffix}", dpi=60)
    data = path.read_bytes()
    assert magic in data[:400] if suffix == ".svg" else data.startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"o{suffix}"]


def test_overlay_png_dpi_and_bad_suffix(tmp_path):
    def width(p):
        return struct.unpack(">I", p.read_bytes()[16:20])[0]

    small = overlay_figure(_image(), _table(), ("C", "N"), SAMPLING, tmp_path / "a.png", dpi=40, width_in=3)
    large = overlay_figure(_image(), _table(), ("C", "N"), SAMPLING, tmp_path / "b.png", dpi=80, width_in=3)
    assert 1.7 < width(large) / width(small) < 2.3
    # the old call (positional path, title keyword) still works
    assert overlay_figure(_image(), _table(), ("C", "N"), SAMPLING, tmp_path / "c.png", title="t").exists()
    with pytest.raises(ValueError, match="suffix"):
        overlay_figure(_image(), _table(), ("C", "N"), SAMPLING, tmp_path / "d.bmpx")
    assert not (tmp_path / "d.bmpx").exists()


# --------------------------------------------------------------------------- stacks


def test_stack_grid_and_one_file_per_frame(tmp_path):
    frames = np.stack([_image(), _image()[::-1], _image()[:, ::-1]])
    table = pd.concat([_table(n=7 + i, heights=True, frame=i) for i in range(3)], ignore_index=True)
    fig = overlay_stack_plot(frames, table, ("C", "N"), SAMPLING, columns=2)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3 and len(_colorbar_axes(fig)) == 1  # one shared colour bar
    assert [ax.get_title() for ax in images] == ["frame 0: 7 atoms", "frame 1: 8 atoms", "frame 2: 9 atoms"]
    assert _texts(fig).count("2 Å") == 3 and fig._suptitle is None
    files = write_overlay_frames(frames, table, ("C", "N"), SAMPLING, tmp_path / "o.svg", dpi=50)
    assert [p.name for p in files] == ["o_frame000.svg", "o_frame001.svg", "o_frame002.svg"]
    assert all(b"<svg" in p.read_bytes()[:400] for p in files)
    (grid,) = write_overlay_frames(frames, table, ("C", "N"), SAMPLING, tmp_path / "g.png", layout="grid",
                                   frames=[0, 2], dpi=40)
    assert grid.read_bytes().startswith(PNG)


# --------------------------------------------------------------------------- API result


def _info(table: pd.DataFrame, stack: int | None = None) -> dict:
    rng = np.random.default_rng(2)
    shape = (3, 24, 32) if stack is None else (stack, 3, 24, 32)
    probs = rng.dirichlet(np.ones(3), size=shape[:-3] + shape[-2:]).astype(np.float32)
    probs = np.moveaxis(probs, -1, -3)
    prov = {"sampling_A": SAMPLING, "model": {"name": "gold", "version": "0.3"}, "threshold": 0.45,
            "frames": stack or 1}
    return {"probabilities": probs, "height": None, "sampling_A": SAMPLING, "model_sampling_A": 2 * SAMPLING,
            "class_names": ("C", "N"), "provenance": prov,
            "validity": {"passed": False, "warnings": ["x.tif: few atoms <found>"]}}


def test_detection_shows_a_thumbnail_and_the_summary():
    table = _table()
    det = Detection(table, _info(table))
    t, info = det  # still the (table, info) pair
    assert t is table and info["sampling_A"] == SAMPLING and len(det) == 2 and isinstance(det, tuple)
    s = det.summary()
    assert s["per_class"] == {"C": 8, "N": 4} and s["confidence_median"] == pytest.approx(0.85)
    page = det._repr_html_()
    m = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m is not None
    png = base64.b64decode(m.group(1))
    assert png.startswith(PNG) and len(png) < 60_000
    for text in ("12", "C</th><td style=\"text-align:left\">8", "N</th><td style=\"text-align:left\">4",
                 "0.2 Å/px", "gold 0.3", "0.45", "0.850", "few atoms &lt;found&gt;"):
        assert text in page, text
    assert "gold 0.3" in repr(det)
    fig = det.plot()  # no image: the atom probability map underneath
    assert isinstance(fig, Figure) and fig.axes[0].images[0].get_extent()[1] == pytest.approx(63.0)
    assert isinstance(det.plot(image=_image(), colour_by="confidence"), Figure)
    again = pickle.loads(pickle.dumps(Detection(table, _info(table), image=_image())))
    assert again.image.shape == SHAPE and again.table.equals(table)


def test_detection_of_a_stack_and_an_uncalibrated_model():
    table = pd.concat([_table(n=5 + i, calibrated=False, frame=i) for i in range(2)], ignore_index=True)
    det = Detection(table, _info(table, stack=2), image=np.stack([_image(), _image()]))
    s = detection_summary(*det)
    assert s["frames"] == 2 and s["atoms"] == 11 and np.isnan(s["confidence_median"])
    page = det._repr_html_()
    assert "data:image/png;base64," in page and "model not calibrated" in page and "frame 0 of 2" in page
    assert len([ax for ax in det.plot(frame=1).axes if ax.images]) == 1
    assert len([ax for ax in det.plot(frame="all").axes if ax.images]) == 2


def test_atom_table_plot_returns_a_figure():
    atoms = AtomTable(x=[5.0, 20.0, 40.0], y=[5.0, 20.0, 30.0], label=[1, 2, 1], probability=[0.9, 0.8, 0.7],
                      height=[3, -1, 5])
    fig = atoms.plot(_image(), SAMPLING, class_names=("Au", "Pt"), title="t")
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "t"
    assert _colorbar_axes(fig)[0].get_ylabel() == "atoms per column"
    assert isinstance(atoms.plot(image=_image(), sampling_A=SAMPLING, colour_by="class"), Figure)


# --------------------------------------------------------------------------- previews, GIF helpers


def test_preview_grid_has_scale_bars(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=150: shown.append(fig) or path)
    xy = np.array([[5.0, 5.0], [20.0, 20.0]])
    plots.preview_grid([_image(), _image()], [xy, xy], [np.array([1, 2])] * 2, ("C", "N"), tmp_path / "p.png",
                       titles=["a", "b"], sampling_A=[SAMPLING, 0.5])
    assert _texts(shown[0]) == ["2 Å", "5 Å"]
    plots.preview_grid([_image()], [xy], [np.array([1, 2])], ("C", "N"), tmp_path / "q.png")
    assert _texts(shown[1]) == []  # no pixel size: no scale bar (as before)


def test_pillow_scale_bar_legend_and_per_frame_stretch():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (200, 120), (60, 60, 60))
    draw = ImageDraw.Draw(img)
    assert pil_scale_bar(draw, img.size, sampling_A=0.25) == "1 nm"  # 50 Å wide -> 10 Å = 40 px
    px = np.asarray(img)
    bar_row = px[120 - 5 - 1]
    assert (bar_row[8:8 + 40] == 255).all() and not (bar_row[60:] == 255).any()
    box = pil_legend(draw, [("Au present", (255, 59, 48), "ring"), ("absent", (255, 59, 48), "cross")], img.size)
    assert 0 < box[0] < box[2] <= 200 and box[3] < 120
    assert (np.asarray(img)[box[1] + 1, box[0] + 1] == 0).all()
    frames = [np.linspace(0, 1, 100).reshape(10, 10), 1000 + np.linspace(0, 5, 100).reshape(10, 10)]
    (lo0, hi0), (lo1, hi1) = (percentile_limits(f) for f in frames)
    assert hi0 <= 1 and lo1 >= 1000 and hi1 - lo1 < 6
    assert percentile_limits(np.full((4, 4), 3.0)) == (3.0, 4.0)


def test_save_figure_closes_and_leaves_no_temporary_file(tmp_path):
    from atomfinder._figures import new_figure

    fig = new_figure((2, 2))
    fig.add_subplot().plot([0, 1])
    out = save_figure(fig, tmp_path / "f.pdf", dpi=72)
    assert out.read_bytes().startswith(PDF) and [p.name for p in tmp_path.iterdir()] == ["f.pdf"]


def test_pillow_scale_bar_draws_the_angstrom_sign():
    """The GIF's scale bar read "5 □": Pillow's default font has no Å. matplotlib's DejaVu Sans is
    used instead (its Å is not the empty box of a missing letter); without it the label says "5 A"."""
    from PIL import Image, ImageDraw

    from atomfinder import _figures

    img = Image.new("RGB", (100, 100), (60, 60, 60))
    assert pil_scale_bar(ImageDraw.Draw(img), img.size, sampling_A=0.25) == "5 Å"  # 25 Å wide
    font, has_units = _figures._pil_font(None, 12)
    assert has_units
    missing = np.asarray(font.getmask("\ue000"))  # a private-use letter: drawn as the font's empty box
    assert np.asarray(font.getmask("Å")).tobytes() != missing.tobytes()
    _figures._truetype_font.cache_clear()
    try:
        _figures.PIL_FONT_FAMILY = "no such font family"
        assert pil_scale_bar(ImageDraw.Draw(img), img.size, sampling_A=0.25) == "5 A"
    finally:
        _figures.PIL_FONT_FAMILY = "DejaVu Sans"
        _figures._truetype_font.cache_clear()
