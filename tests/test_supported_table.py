"""The README's table of supported NumPy is generated (``minicomp supported``) and current."""

from pathlib import Path

import numpy as np

from minicomp.cli import main
from minicomp.frontend.functions import FUNCTIONS, _numpy_name
from minicomp.frontend.supported import END, START, markdown_table, readme_section, supported_surface

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_current():
    section = readme_section(README.read_text(encoding="utf-8"))
    assert section is not None, f"README.md lacks the generated section ({START} ... {END})"
    assert section == markdown_table(), (
        "README.md's table of supported NumPy is out of date: run "
        "`python -m minicomp supported --update-readme README.md`")


def test_table_lists_every_registered_function_and_the_new_surface():
    surface = supported_surface()
    assert len(surface["NumPy functions"]) == len({_numpy_name(f) for f in FUNCTIONS})
    for name in ("np.pad", "np.einsum", "np.cumsum", "np.tril", "np.lib.stride_tricks.sliding_window_view"):
        assert f"`{name}`" in surface["NumPy functions"]
    for method in ("argmax", "any", "all", "cumsum", "repeat"):
        assert f"`x.{method}()`" in surface["array methods"]
    assert "`x.item()`" not in surface["array methods"]  # defined only to refuse: not supported
    assert "`&` (bool)" in surface["operators"] and "`<<`" not in " ".join(surface["operators"])
    assert "`np.add.reduce`" in surface["ufunc methods"]
    assert any(u.startswith("`np.exp`") for u in surface["ufuncs"])
    assert not any(u.startswith(f"`np.{np.fmod.__name__}`") for u in surface["ufuncs"])


def test_cli_prints_and_updates(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\nafter\n", encoding="utf-8")
    assert main(["supported", "--update-readme", str(readme)]) in (0, None)
    text = readme.read_text(encoding="utf-8")
    assert readme_section(text) == markdown_table() and text.endswith("\n\nafter\n")
    assert main(["supported"]) in (0, None)
    assert "| NumPy functions (" in capsys.readouterr().out
