"""The user guide (docs/guide, mkdocs.yml) builds without warnings and matches the code.

- The command-line reference (docs/guide/cli.md) is generated from the typer app by
  docs/gen_cli_reference.py; it must equal what the generator makes now, so that it
  cannot drift from the program (`make docs` regenerates it).
- ``mkdocs build --strict`` fails on any warning: a link to a missing page or
  anchor, a page left out of the navigation (mkdocs.yml turns these into warnings).
- The output-format page lists exactly the columns the code writes.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "docs" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    gen = _generator()
    committed = (ROOT / gen.PAGE).read_text(encoding="utf-8")
    assert committed == gen.render(), (
        f"{gen.PAGE} is out of date with the typer app in src/atomfinder/cli.py: "
        "run `make docs` (or `python docs/gen_cli_reference.py docs/guide/cli.md`) and commit the page")


def test_cli_reference_lists_every_command_and_option():
    import typer

    from atomfinder.cli import app

    text = _generator().render()
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="atomfinder")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert f"## `atomfinder {name}`" in text
        for param in command.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert f"`{opt}`" in text, f"{name} {opt} missing from the reference"


def _section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading) + 1
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.M)
    match = following.search(text, start)
    return text[start:match.start() if match else len(text)]


def _first_cells(table_text: str) -> list[str]:
    """The names in the first cell of each row of the Markdown tables in a text (``a``, ``a``, ``b``)."""
    names = []
    for line in table_text.splitlines():
        m = re.match(r"^\| (`[^|]*`) \|", line)
        if m:
            names += re.findall(r"`([^`]+)`", m.group(1))
    return names


def test_output_page_lists_the_columns_the_code_writes():
    from atomfinder.analysis import timeseries
    from atomfinder.detection.peaks import TABLE_COLUMNS

    text = (GUIDE / "outputs.md").read_text(encoding="utf-8")
    atom_table = _first_cells(_section(text, "## Atom table: `<stem>.csv`"))
    assert atom_table == ["frame", *TABLE_COLUMNS]
    series = _section(text, "## Time series: `atomfinder track`")
    tables = {}
    for name in ("sites", "presence", "events", "drift", "occupancy"):
        start = series.index(f"`{name}.csv`")
        end = series.find("\n\n`", start + 1)
        tables[name] = _first_cells(series[start:end if end > 0 else len(series)])
    assert tables["sites"] == list(timeseries.SITES_COLUMNS)
    assert tables["presence"] == list(timeseries.PRESENCE_COLUMNS)
    assert tables["events"] == list(timeseries.EVENTS_COLUMNS)
    assert tables["drift"] == list(timeseries.DRIFT_COLUMNS)
    assert tables["occupancy"] == list(timeseries.OCCUPANCY_COLUMNS)


def test_guide_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "cli" / "index.html").is_file()


def test_focal_series_guide_commands_can_run_one_after_another():
    """The `detect` lines of the focal-series guide wrote the same `series.*` outputs into the same
    folder, so the third was refused (no --overwrite): each line needs outputs of its own."""
    text = (GUIDE / "focal-series.md").read_text(encoding="utf-8")
    targets = []
    for line in re.findall(r"^atomfinder detect .*$", text, re.M):
        words = line.split("#")[0].split()
        out = words[words.index("--out") + 1] if "--out" in words else "atomfinder-results"
        first_input = next(w for w in words[2:] if not w.startswith("-"))
        if "--overwrite" not in words:
            targets.append((out, Path(first_input).stem))
    assert len(targets) >= 3
    assert len(set(targets)) == len(targets), targets


def test_readme_says_where_the_graphene_false_atom_figures_come_from():
    """The README said the graphene dose test sets had "empty fields, contamination and holes
    included", but none of their images is an empty field (the fewest sites in one is 139): the
    false-atom figures come from separate stores of vacuum, amorphous carbon and sheets with holes,
    made with configs whose fields are all empty (vacuum, carbon) or none (holes)."""
    import tomllib

    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "empty fields, contamination and holes included" not in text
    assert "none of the 16 drew an empty field" in text
    for store, config, empty in (("graphene-test-vacuum", "test-vacuum", 1.0), ("graphene-test-carbon", "test-carbon", 1.0),
                                 ("graphene-test-holes", "test-holes", 0.0)):
        assert f"`{store}`" in text
        simulation = tomllib.loads((ROOT / "configs" / f"{config}.toml").read_text(encoding="utf-8"))
        assert simulation["simulation"]["p_empty_field"] == empty
