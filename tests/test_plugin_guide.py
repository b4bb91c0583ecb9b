"""docs/plugins.md documents every hook and suite, and its minimal plugin really works: the files
it shows are pip-installed and pass the conformance suite the guide tells authors to use."""
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nvllm import hookspecs, testing

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "plugins.md").read_text()


def hooks() -> dict:
    return {name: fn for name, fn in vars(hookspecs).items() if getattr(fn, "nvllm_spec", None) is not None}


def test_every_hook_is_documented_with_its_signature():
    assert hooks(), "found no hookspecs"
    for name, fn in hooks().items():
        heading = f"### `{name}{inspect.signature(fn)}`"
        assert heading in GUIDE.splitlines(), f"docs/plugins.md has no section `{heading}`"
        section = GUIDE.split(heading, 1)[1].split("\n### ", 1)[0]
        assert "config group" in section and "built as" in section, f"{name}: say what it registers and how it is built"


def test_every_suite_is_documented():
    suites = [name for name, obj in vars(testing).items()
              if inspect.isclass(obj) and name.endswith("Suite") and obj is not testing.ComponentSuite]
    assert len(suites) == 9
    for name in suites:
        assert f"`{name}`" in GUIDE, name


def test_readme_links_the_guide():
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()


def guide_files() -> dict[str, str]:
    """The code blocks whose info string names a file: ```python nvllm-min-p/nvllm_min_p.py"""
    return dict(re.findall(r"^```\w+ (\S+)\n(.*?)^```$", GUIDE, re.M | re.S))


@pytest.mark.slow  # pip installs the guide's plugin
def test_the_minimal_plugin_installs_and_passes_its_suite(tmp_path):
    files = guide_files()
    assert {f"nvllm-min-p/{f}" for f in ("pyproject.toml", "nvllm_min_p.py", "tests/test_nvllm_min_p.py")} <= set(files)
    for path, body in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(tmp_path / "nvllm-min-p")], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("NVLLM_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "nvllm-min-p/tests"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout
