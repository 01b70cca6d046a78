"""The example notebook (examples/detect_graphene.ipynb) runs from top to bottom on the
bundled micrograph, in a kernel of this test's own Python (so the venv's atomfinder)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "detect_graphene.ipynb"
KERNEL = "atomfinder-test"


def _kernel_manager(kernels_dir: Path):
    """A kernel manager for a kernel spec, written into ``kernels_dir``, that starts
    ``sys.executable``: no installed kernel spec (a user's ``python3`` may be another
    Python) is involved."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = kernels_dir / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "atomfinder tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def _stdout(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_example_notebook_runs(tmp_path):
    stored = NOTEBOOK.read_bytes()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = _stdout(nb)
    found = re.search(r"^(\d+) atoms found$", text, re.MULTILINE)
    assert found and int(found.group(1)) > 500, text
    assert re.search(r"^\d+ of \d+ atoms have a confidence of at least 0\.9$", text, re.MULTILINE), text
    assert re.search(r"^saved graphene_defect_hrtem\.csv: \d+ rows$", text, re.MULTILINE), text
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "text/html" in o.get("data", {})]
    assert any("atoms found" in h and "Å/px" in h for h in html)  # the result's _repr_html_
    plots = [c for c in nb.cells if c.cell_type == "code" and "result.plot(" in c.source]
    assert plots and all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in plots), \
        "the figure of result.plot() is not shown"  # a fresh kernel: no pyplot figure made before it
    assert NOTEBOOK.read_bytes() == stored  # executing did not write the file
