"""Every tutorial runs to the end: ``tutorials/NN_*.py`` in a fresh interpreter, exit code 0.

The tutorials assert their own results against NumPy, so a zero exit code means they ran and
their checks held. New tutorials are picked up by the glob.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import minicomp

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 120


def test_tutorials_found():
    assert TUTORIALS, f"no tutorials/[0-9][0-9]_*.py under {REPO}"


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs(script: Path, tmp_path: Path):
    # Run from an unrelated directory (tutorials must work from anywhere and leave no files
    # behind), against the same minicomp this test process imported.
    env = dict(os.environ)
    package_root = str(Path(minicomp.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["MINICOMP_TUTORIAL_SMALL"] = "1"  # tutorials with a big model (16: GPT-2) run a small one
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"{script.name} ran over {TIMEOUT_S} s\n--- stdout ---\n{(out or '')[-4000:]}")
    assert proc.returncode == 0, (
        f"{script.name} exited with {proc.returncode}\n"
        f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    assert list(tmp_path.iterdir()) == [], f"{script.name} left files in its working directory"
