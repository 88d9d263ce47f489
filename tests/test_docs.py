"""The documentation's executable parts: the tutorial notebook runs top to bottom, and the
Examples sections of the public docstrings do what they show.

``make docs`` executes the same notebook (myst-nb) and fails on any error or warning; this
test keeps it working without building the site.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.ipynb"
# Modules whose docstring examples run (others' examples need files: they are marked +SKIP).
DOCTEST_MODULES = ["labels", "outputs", "evaluation", "series", "simulate", "watch", "errors",
                   "model", "result", "prediction", "preprocessing", "io.base", "io.registry",
                   "sampling", "training", "counts", "modelfile", "analysis", "inputs", "runtime"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"ghostmap.{name}")
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module) if t.examples]
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in ghostmap.{name} (output above)"


def test_public_names_have_examples():
    import ghostmap

    for name in ghostmap.__all__:
        doc = getattr(ghostmap, name).__doc__ or ""
        if getattr(ghostmap, name).__module__.removeprefix("ghostmap.") in DOCTEST_MODULES:
            assert "Examples\n" in doc, f"ghostmap.{name} has no Examples section"


def test_tutorial_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the tutorial's figures are missing"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    accuracy = float(text.split("accuracy ")[1].split("%")[0])
    assert accuracy > 80, text  # the loop works: labels, training and prediction agree with the truth
    assert "predictions.npz" in text
