"""Packaging: environment.yml parses and installs what pyproject.toml declares; CLI entry points."""

import subprocess
import sys
import tomllib

import yaml


def test_environment_yml_parses_and_matches_pyproject(repo_root):
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python") for d in deps), "environment.yml must pin python"
    assert "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    # the pip section installs the project itself (so exactly pyproject's dependency set) ...
    assert any(line.replace("--editable", "-e").split()[-1].startswith(".[test]") for line in pip_section)
    # ... under the same torch pin as the Makefile
    assert "--constraint constraints.txt" in pip_section
    py = next(str(d) for d in deps if str(d).startswith("python"))
    minimum = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["requires-python"]
    assert minimum.startswith(">=")
    assert tuple(int(x) for x in py.split("=")[-1].split(".")) >= tuple(int(x) for x in minimum[2:].split("."))


def test_pyproject_ranges_and_constraints(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip(): d for d in project["dependencies"]}
    assert deps["torch"] == "torch>=2.4"
    assert "<2" in deps["jupyter-book"]
    for name in ("numpy", "nibabel", "papermill", "seaborn", "ipywidgets", "scikit-learn", "matplotlib"):
        assert name in deps, name
    assert "torch==2.13.0" in (repo_root / "constraints.txt").read_text()


def test_cli_entry_points(repo_root):
    out = subprocess.run([sys.executable, "-m", "u2ad_core", "--help"], capture_output=True, text=True, cwd=repo_root)
    assert out.returncode == 0, out.stderr
    assert "book" in out.stdout
