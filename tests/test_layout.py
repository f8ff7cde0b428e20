"""The shape of the project: runtime/ stays Django-free, the dev compose file is valid, CI calls make test."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_runtime_imports_no_django():
    """Import every runtime module in a fresh interpreter; Django must not be loaded."""
    modules = sorted(
        "runtime." + ".".join(p.relative_to(ROOT / "runtime").with_suffix("").parts)
        for p in (ROOT / "runtime").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith(('django.', 'project', 'images', 'containers')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(modules) > 3


def test_the_dev_compose_file_is_valid():
    result = subprocess.run(["docker-compose", "-f", "docker-compose.dev.yml", "config"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "privileged: true" in result.stdout


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
