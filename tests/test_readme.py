"""The README is a front page whose code runs, and its generated parts are up to date."""

import importlib.util
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _tables_tool():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "tools" /
                                                  "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_page():
    assert len(README.splitlines()) <= 250
    run = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"&& (python -m pytest)", README).group(1)
    assert command.replace("python", "python3") in run  # the README's test command is CI's
    assert "autoqnn demo" in README and "colab-badge.svg" in README
    for link in re.findall(r"\]\(((?:docs|notebooks|results)/[^)#]*)\)", README):
        assert (ROOT / link).exists(), link


def test_generated_pages_match_what_the_tool_prints():
    tool = _tables_tool()
    assert tool.stale() == [], "run: python tools/readme_tables.py --write " \
                               "docs/results_tables.md --write-index"
    headline = tool._captured(tool.headline_table)
    block = README.split("<!-- headline:", 1)[1].split("<!-- end of headline -->", 1)[0]
    assert block.split("\n", 1)[1].strip() == headline.strip(), \
        "README headline differs from: python tools/readme_tables.py --headline"


def test_every_results_file_is_listed_with_its_command_or_says_none():
    index = (ROOT / "results" / "README.md").read_text()
    for path in sorted((ROOT / "results").glob("*.json")):
        assert f"`{path.name}`" in index, path.name


def test_the_ten_line_tutorial_runs(tmp_path, monkeypatch):
    """The README's first Python block as written, on 600 images (the bundled subset cut)."""
    import autoqnn.data

    source = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    (x, y), test = autoqnn.data.load_demo_subset()
    monkeypatch.setattr(autoqnn.data, "load_demo_subset", lambda: ((x[:600], y[:600]), test))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    try:
        exec(compile(source.replace("epochs=2", "epochs=1"), "README.md", "exec"), namespace)
    except Exception as err:  # say which recipe the one call chose: it depends on the run
        report = getattr(namespace.get("qmodel"), "autoqnn_report", None)
        raise AssertionError(f"the README's tutorial failed ({type(err).__name__}: {err}); "
                             f"the one call chose: {getattr(report, 'recipe', None)}") from err
    assert (tmp_path / "model.tflite").stat().st_size > 1000
    assert namespace["qmodel"].autoqnn_report.weight_bits_avg <= 3.0
    assert np.isfinite(namespace["qmodel"].predict(x[:4], verbose=0)).all()
