"""The report files of an evaluation: Markdown tables, plots and the JSON result.

:func:`write_report` writes ``report.md`` (:func:`report_markdown`: overall scores,
the breakdowns by dose, defocus, Cs, shape and support, class confusion, heights by
thickness, the trust section), ``report.json`` and the plots (F1 and RMSE against dose
and defocus, the reliability diagram) of a :func:`atomfinder.analysis.evaluate.compare`
or :func:`atomfinder.analysis.evaluate.evaluate` result. matplotlib is imported only
when the plots are drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from atomfinder._files import atomic_write, remove_stale_temporaries
from atomfinder.analysis.evaluate import CS_CORRECTED_MAX_A, FAR_A, NO_NOISE_BIN, radius_key, to_jsonable

__all__ = ["REPORT_FILES", "earlier_report_files", "per_image_f1", "per_image_row", "report_markdown", "write_report"]


def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (temporary file in the same folder + rename)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _as_comparison(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept the output of :func:`~atomfinder.analysis.evaluate.compare` or of :func:`~atomfinder.analysis.evaluate.evaluate`."""
    if "detectors" in report:
        return report
    return {"settings": report["settings"], "n_images": report["n_images"], "detectors": {"detector": report}}


def _primary_radius(report: Mapping[str, Any], radius_A: float | None) -> str:
    radii = report["settings"]["radii_A"]
    if radius_A is None:
        return radius_key(radii[len(radii) // 2])
    key = radius_key(radius_A)
    if key not in {radius_key(r) for r in radii}:
        raise ValueError(f"radius {radius_A} Å was not evaluated (radii: {radii})")
    return key


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _binned_table(dets: Mapping[str, Any], key: str, rk: str) -> list[str]:
    names = list(dets)
    first = dets[names[0]][key]
    cols = [("f1", "F1", 3), ("precision", "precision", 3), ("recall", "recall", 3), ("rmse_pm", "RMSE (pm)", 1)]
    header = ["bin", "images"] + [f"{label} {n}" for _, label, _ in cols for n in names]
    rows = []
    for b in first:
        row = [b["bin"], str(b["n_images"])]
        for metric, _, digits in cols:
            for n in names:
                match = [x for x in dets[n][key] if x["bin"] == b["bin"]]
                row.append(_f(match[0]["metrics"][rk][metric], digits) if match else "–")
        rows.append(row)
    return _table(header, rows)


def per_image_f1(detector_report: Mapping[str, Any], radius_A: float) -> np.ndarray:
    """Per-image F1 scores at one matching radius (images without sites are left out)."""
    return np.array([im["f1"] for im in detector_report.get("images", [])
                     if math.isclose(im["radius_A"], radius_A) and im["n_true"] > 0 and im["f1"] is not None],
                    dtype=float)


def per_image_row(name: str, detector_report: Mapping[str, Any], radius_A: float) -> list[str]:
    """One row of the per-image table: count, median, 10th percentile, shares >= 0.95 and < 0.5."""
    f1 = per_image_f1(detector_report, radius_A)
    if len(f1) == 0:
        return [name, "0", "", "", "", ""]
    return [name, str(len(f1)), _f(float(np.median(f1))), _f(float(np.percentile(f1, 10))),
            f"{100 * np.mean(f1 >= 0.95):.0f} %", f"{100 * np.mean(f1 < 0.5):.0f} %"]


def report_markdown(report: Mapping[str, Any], title: str, radius_A: float | None = None) -> str:
    """The report as Markdown text (see :func:`write_report`)."""
    rep = _as_comparison(report)
    st = rep["settings"]
    dets = rep["detectors"]
    rk = _primary_radius(rep, radius_A)
    names = st.get("class_names") or [str(i) for i in range(1, st["n_classes"] + 1)]
    lines = [f"# {title}", ""]
    lines += _provenance_lines(rep)
    lines += [
        f"{rep['n_images']} images; matching radii {', '.join(radius_key(r) for r in st['radii_A'])} Å; "
        f"sites and predictions within {st['border_A']:g} Å of the image edge are ignored "
        "(a prediction matched to an ignored site is ignored too). Counts are pooled over images. "
        "Defocus: frame 0, Å, positive = underfocus.",
        "",
        "## Overall",
        "",
    ]
    rows = []
    for n, d in dets.items():
        for r in st["radii_A"]:
            m = d["overall"][radius_key(r)]
            rows.append([n, radius_key(r), str(m["tp"]), str(m["fp"]), str(m["fn"]), _f(m["precision"]),
                         _f(m["recall"]), _f(m["f1"]), _f(m["rmse_pm"], 1), _f(m["label_accuracy"]),
                         _f(m.get("fp_per_10nm2"), 2), _f(m.get("far_detections")), _f(m.get("max_far_per_image"))])
    lines += _table(["detector", "radius (Å)", "TP", "FP", "FN", "precision", "recall", "F1", "RMSE (pm)",
                     "label accuracy", "false per 10 nm²", f"> {FAR_A:g} Å from any site", "most in one image"], rows)
    lines += _interval_lines(dets, rk)
    lines += ["Time per image: " + ", ".join(f"{n} {_f(d['seconds_per_image'], 3)} s" for n, d in dets.items()), ""]
    lines += [f"## Per image (radius {rk} Å)", "",
              "Pooled counts hide whether errors are spread thin or whole images fail: the distribution "
              "of the per-image F1 (images with sites only).", ""]
    lines += _table(["detector", "images", "median F1", "10th percentile", "F1 >= 0.95", "F1 < 0.5"],
                    (per_image_row(n, d, float(rk)) for n, d in dets.items()))
    lines += _trust_markdown(dets)
    lines += [f"## By dose (e/Å², radius {rk} Å)", ""] + _binned_table(dets, "by_dose", rk)
    lines += [f"## By defocus (Å, radius {rk} Å)", ""] + _binned_table(dets, "by_defocus", rk)
    lines += _categorical_sections(dets, rk)
    lines += _confusion_markdown(dets, names, rk)
    lines += _per_class_markdown(dets, names, rk)
    lines += ["## Column heights (matched pairs with known heights)", ""]
    rows = [
        [n, radius_key(r), str(d["overall"][radius_key(r)]["n_height"]),
         _f(d["overall"][radius_key(r)]["height_exact"]), _f(d["overall"][radius_key(r)]["height_within1"])]
        for n, d in dets.items() for r in st["radii_A"]
    ]
    if any(row[2] != "0" for row in rows):
        lines += _table(["detector", "radius (Å)", "pairs", "exact", "±1"], rows)
        lines += _thickness_markdown(dets, rk)
    else:
        lines += ["No heights (no detector predicted heights, or the data has none).", ""]
    return "\n".join(lines)


def _provenance_lines(rep: Mapping[str, Any]) -> list[str]:
    """The warnings of the run (first), then the model files and the data scored, where the result records them."""
    lines = [line for w in rep.get("warnings") or [] for line in (f"**Warning:** {w}", "")]
    model, versus, data = rep.get("model"), rep.get("versus"), rep.get("data")
    for role, m in (("network", model), (versus.get("label", "versus") if versus else "", versus)):
        if not m:
            continue
        where = m.get("weights") or m.get("path")
        shipped = " (shipped with atomfinder)" if m.get("shipped") else (" (not a shipped model)" if "shipped" in m else "")
        lines.append(f"- `{role}`: {m.get('name', '?')} {m.get('version', '?')}" + (f", `{where}`{shipped}" if where else "")
                     + (f"; {m['frame_note']}" if m.get("frame_note") else ""))
    if data:
        n, n_sim = data.get("n"), data.get("n_simulated")
        of = f" (an unfinished store: {n} of its {n_sim} images simulated)" if n_sim is not None and n_sim != n else ""
        lines.append(f"- data: `{data.get('store', '?')}`, seed {data.get('seed', '?')}, {n} images scored{of}"
                     + ("; **the model's training store**" if data.get("training_store") else "")
                     + ("; **the seed of the model's calibration store**" if data.get("calibration_store") else ""))
    return lines + [""] if (model or versus or data) else lines


def _interval_lines(dets: Mapping[str, Any], rk: str) -> list[str]:
    """One line: each detector's F1 with its specimen-bootstrap interval (reports made before
    the interval existed have none, and get no line)."""
    parts = []
    n_spec = None
    for n, d in dets.items():
        m = d["overall"][rk]
        if m.get("f1_interval"):
            lo, hi = m["f1_interval"]
            parts.append(f"{n} {_f(m['f1'])} ({_f(lo)}-{_f(hi)})")
            n_spec = m.get("n_specimens")
    if not parts:
        return []
    return [f"F1 at {rk} Å with a 95 % interval from resampling the {n_spec} simulated specimens (images of one "
            "sheet or particle share its structure and voltage, so they are not independent draws): "
            + ", ".join(parts) + ".", ""]


def _confusion_markdown(dets: Mapping[str, Any], names: Sequence[str], rk: str) -> list[str]:
    """The class confusion of each detector, with a ``missed`` column and an ``extra`` row."""
    lines = [f"## Class confusion (radius {rk} Å; rows true, columns predicted)", "",
             "`missed`: sites no detection matched; `extra`: detections that matched no site.", ""]
    for n, d in dets.items():
        m = d["overall"][rk]
        conf, missed, extra = m["confusion"], m.get("missed"), m.get("extra")
        lines += [f"### {n}", ""]
        if conf is None:
            lines += ["(no labels)", ""]
            continue
        rows = [[names[i]] + [str(v) for v in row] + ([str(missed[i])] if missed is not None else [])
                for i, row in enumerate(conf)]
        if extra is not None:
            rows.append(["extra"] + [str(v) for v in extra] + (["–"] if missed is not None else []))
        lines += _table(["true \\ predicted"] + list(names) + (["missed"] if missed is not None else []), rows)
    return lines


def _per_class_markdown(dets: Mapping[str, Any], names: Sequence[str], rk: str) -> list[str]:
    """Precision and recall of each class (a detection counts only with the right class)."""
    if not any(d["overall"][rk].get("per_class") for d in dets.values()):
        return []
    lines = [f"## Per class (radius {rk} Å)", "",
             "A detection is right for its class only when it matches a site of that class: precision = right / "
             "detections of the class, recall = right / sites of the class.", ""]
    rows = []
    for n, d in dets.items():
        for i, c in enumerate(d["overall"][rk].get("per_class") or []):
            rows.append([n, names[i], str(c["n_true"]), str(c["n_pred"]), str(c["tp"]), _f(c["precision"]),
                         _f(c["recall"]), _f(c["f1"])])
    return lines + _table(["detector", "class", "sites", "detections", "right", "precision", "recall", "F1"], rows)


def _thickness_markdown(dets: Mapping[str, Any], rk: str) -> list[str]:
    """Height accuracy by true column height (atoms per column)."""
    rows = [[n, b["bin"], str(b["n_height"]), _f(b["height_exact"]), _f(b["height_within1"])]
            for n, d in dets.items() for b in d["overall"][rk].get("height_by_thickness") or []]
    if not rows:
        return []
    return [f"### By column thickness (true atoms per column, radius {rk} Å)", ""] + _table(
        ["detector", "true height", "pairs", "exact", "±1"], rows)


#: The categorical breakdowns of the report: key, section title, note under the title.
CATEGORICAL_SECTIONS = (
    ("by_cs_sign", "By spherical aberration",
     f"Aberration-corrected microscopes (|Cs| < {CS_CORRECTED_MAX_A / 1e7:g} mm) by the sign of Cs; "
     "uncorrected: larger |Cs|."),
    ("by_shape", "By particle shape",
     "The shape the structure builder drew for the particle in the image's box (an image cropped "
     "away from the particle counts too)."),
    ("by_support", "By support",
     "free: no support; carbon: on amorphous carbon; CeO2 110, CeO2 100: on ceria seen along that "
     "zone axis; both: on ceria and carbon."),
)


def _categorical_sections(dets: Mapping[str, Any], rk: str) -> list[str]:
    """The Markdown sections of the categorical breakdowns that apply (non-empty)."""
    first = next(iter(dets.values()))
    lines: list[str] = []
    for key, title, note in CATEGORICAL_SECTIONS:
        if first.get(key):
            lines += [f"## {title} (radius {rk} Å)", "", note, ""] + _binned_table(dets, key, rk)
    return lines


def _trust_markdown(dets: Mapping[str, Any]) -> list[str]:
    """The confidence-calibration and error-bar section (detectors with a confidence only)."""
    lines: list[str] = []
    for n, d in dets.items():
        t = d.get("trust")
        if not t:
            continue
        lines += [f"## Confidence and error bars: {n} (radius {t['radius_A']:g} Å)", "",
                  f"{t['n_detections']} scored detections, {t['n_true']} real atoms of their class "
                  f"({_f(t['fraction_true'])}); mean confidence {_f(t['mean_confidence'])}; "
                  f"expected calibration error (10 bins) **{_f(t['ece'], 4)}**.", ""]
        lines += _table(["confidence", "detections", "mean confidence", "share real"],
                        ([f"{b['lo']:.1f}–{b['hi']:.1f}", str(b["n"]), _f(b["mean_confidence"]),
                          _f(b["fraction_true"])] for b in t["reliability"]))
        sg = t["sigma"]
        lines += [f"Error bars (`sigma_angstrom`, 1 σ per coordinate) of the {sg['n']} real atoms: "
                  f"{_f(100 * sg['within_1_sigma'] if sg['within_1_sigma'] is not None else None, 1)} % of the "
                  f"x and y errors lie within 1 σ (68.3 % for a right Gaussian σ), "
                  f"{_f(100 * sg['within_2_sigma'] if sg['within_2_sigma'] is not None else None, 1)} % within 2 σ; "
                  f"median σ {_f(sg['median_sigma_pm'], 1)} pm.", ""]
        lines += _table(["dose (e/Å²)", "atoms", "median σ (pm)", "RMSE per axis (pm)", "within 1 σ", "within 2 σ"],
                        ([b["bin"], str(b["n"]), _f(b["median_sigma_pm"], 1), _f(b["rmse_per_axis_pm"], 1),
                          _f(b["within_1_sigma"]), _f(b["within_2_sigma"])] for b in t["sigma_by_dose"]))
    return lines


def _plot_reliability(dets: Mapping[str, Any], path: Path) -> Path | None:
    """Reliability diagram: share of real atoms against mean confidence per bin."""
    trusted = {n: d["trust"] for n, d in dets.items() if d.get("trust")}
    if not trusted:
        return None
    import matplotlib.pyplot as plt

    from atomfinder.analysis.plots import save_figure

    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for n, t in trusted.items():
        bins = t["reliability"]
        ax.plot([b["mean_confidence"] for b in bins], [b["fraction_true"] for b in bins], "o-",
                label=f"{n} (ECE {t['ece']:.3f})")
        ax_n.bar([0.5 * (b["lo"] + b["hi"]) for b in bins], [b["n"] for b in bins], width=0.09, alpha=0.6)
    ax.set_ylabel("share of real atoms")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if any(b["n"] > 0 for t in trusted.values() for b in t["reliability"]):
        ax_n.set_yscale("log")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("detections")
    return save_figure(fig, path)


def _plot_vs(dets: Mapping[str, Any], key: str, metric: str, rk: str, xlabel: str, ylabel: str,
             log_x: bool, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from atomfinder.analysis.plots import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    plotted = False
    for n, d in dets.items():
        bins = [b for b in d[key] if math.isfinite(b["median"])]
        ys = [b["metrics"][rk][metric] for b in bins]
        (line,) = ax.plot([b["median"] for b in bins], ys, "o-", label=n)
        plotted = plotted or bool(bins)
        for b in d[key]:
            y = b["metrics"][rk][metric]
            if b["bin"] == NO_NOISE_BIN and y is not None and math.isfinite(y):
                ax.axhline(y, ls="--", lw=1, color=line.get_color(), label=f"{n} ({NO_NOISE_BIN})")
    if log_x and plotted:
        ax.set_xscale("log")
    if metric == "f1":
        ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"matching radius {rk} Å; points at the bin's median", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


#: The files :func:`write_report` writes (``reliability.png`` only for calibrated detectors).
REPORT_FILES = ("report.json", "report.md", "f1_vs_dose.png", "rmse_vs_dose.png", "f1_vs_defocus.png",
                "reliability.png")


def earlier_report_files(out_dir: Path | str) -> list[Path]:
    """The :data:`REPORT_FILES` an earlier :func:`write_report` left in ``out_dir`` (those that exist)."""
    out = Path(out_dir)
    return [out / name for name in REPORT_FILES if (out / name).is_file()]


def write_report(report: Mapping[str, Any], out_dir: Path | str, title: str, *, radius_A: float | None = None) -> list[Path]:
    """Write ``report.json``, ``report.md`` and PNG plots to ``out_dir`` (each atomically).

    The files of :data:`REPORT_FILES` that this report does not write (the reliability
    diagram of an earlier, calibrated run) are removed, so the folder holds one report.
    The command line refuses a folder holding an earlier report without ``--overwrite``
    (:func:`earlier_report_files`); this function replaces it.

    Parameters
    ----------
    report : dict
        Output of :func:`~atomfinder.analysis.evaluate.compare` (or of :func:`~atomfinder.analysis.evaluate.evaluate`).
    out_dir : path
        Folder (created if missing).
    title : str
        Title of the Markdown report.
    radius_A : float, optional
        Matching radius of the binned tables, the confusion matrices and the plots
        (default: the middle of the evaluated radii, 0.5 Å for the defaults).

    Returns
    -------
    list of Path
        ``report.json`` (NaN written as null, infinities as ``"inf"``), ``report.md``,
        ``f1_vs_dose.png``, ``rmse_vs_dose.png``, ``f1_vs_defocus.png`` and, for
        detectors with a calibrated confidence, ``reliability.png``.
    """
    out = Path(out_dir)
    rep = _as_comparison(report)
    rk = _primary_radius(rep, radius_A)
    dets = rep["detectors"]
    # temporaries that a run killed while writing an earlier report left beside these files
    remove_stale_temporaries(*(out / name for name in REPORT_FILES))
    paths = [
        _write_text(out / "report.json", json.dumps(to_jsonable(rep), indent=1, allow_nan=False) + "\n"),
        _write_text(out / "report.md", report_markdown(rep, title, radius_A)),
        _plot_vs(dets, "by_dose", "f1", rk, "dose (e/Å²)", "F1", True, out / "f1_vs_dose.png"),
        _plot_vs(dets, "by_dose", "rmse_pm", rk, "dose (e/Å²)", "RMSE (pm)", True, out / "rmse_vs_dose.png"),
        _plot_vs(dets, "by_defocus", "f1", rk, "defocus (Å, positive = underfocus)", "F1", False,
                 out / "f1_vs_defocus.png"),
    ]
    reliability = _plot_reliability(dets, out / "reliability.png")
    paths += [reliability] if reliability is not None else []
    written = {Path(p).name for p in paths}
    for name in REPORT_FILES:  # an earlier report's file this one does not replace (e.g. its reliability
        if name not in written:  # diagram) would pass for part of this one
            (out / name).unlink(missing_ok=True)
    return paths
