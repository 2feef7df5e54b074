"""The architecture, enforced: kernels ← policy ← streams, and no torch on the serving path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_ALLOWED = {"policy/train.py", "policy/meta_model.py", "policy/train_glm.py", "policy/retention/train.py"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_kernels_import_only_numpy_numba_and_stdlib():
    forbidden = {"torch", "faust", "confluent_kafka", "aiokafka", "policy", "streams", "metacart", "pydantic"}
    for path in modules("kernels"):
        assert not imported_roots(path) & forbidden, path


def test_policy_never_imports_streams_kafka_or_faust():
    forbidden = {"streams", "faust", "confluent_kafka", "aiokafka", "metacart"}
    for path in modules("policy"):
        assert not imported_roots(path) & forbidden, path


def test_torch_only_in_training_modules():
    for package in ("kernels", "policy", "streams"):
        for path in modules(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in TORCH_ALLOWED:
                assert "torch" not in imported_roots(path), rel


def test_streams_never_imports_the_cli_package():
    for path in modules("streams"):
        assert "metacart" not in imported_roots(path), path


def test_the_serving_package_holds_no_simulated_world():
    """The live simulators (shops producing traffic) live in metacart.live, not beside the worker."""
    for path in modules("streams"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.startswith("policy.simulator") for m in names), path


def test_serving_path_loads_without_torch():
    code = ("import sys, streams.worker, streams.agents.ads, streams.agents.retention, policy.adapter, kernels.warmup,"
            " metacart.live.ads, metacart.live.retention;"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _without_training_extra(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a process where torch and matplotlib cannot be imported (a serving install)."""
    block = "import sys; sys.modules['torch'] = None; sys.modules['matplotlib'] = None\n"
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_serving_install_does_not_depend_on_torch():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "torch" not in core and "matplotlib" not in core
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["train"])
    result = _without_training_extra(
        "import streams.worker, streams.agents.retention, streams.web, metacart.cli\n"
        "from metacart.cli import main; sys.exit(main(['worker', '--help']))")
    assert result.returncode == 0, result.stderr


def test_training_without_the_extra_is_one_line():
    result = _without_training_extra("from metacart.cli import main; sys.exit(main(['train', '--out', 'x', '--simulate']))")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "metacart: error: `metacart train` needs torch and matplotlib, which a serving install leaves out: "
        "pip install 'metacart[train]'"]
