"""The README's two set-up commands stay true: CI runs the second one, verbatim."""

import re

from tests.conftest import REPO


def _setup_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    demo, tests = commands
    assert demo.startswith("python3 -m venv") and demo.endswith("snakemake --cores all")
    assert tests.startswith("python3 -m venv") and "pytest" in tests


def test_ci_runs_the_readme_test_command_and_treats_no_tests_as_failure():
    ci = (REPO / ".ci" / "run").read_text()
    test_command = _setup_commands()[1]
    assert test_command in ci.splitlines()
    assert '"$rc" -eq 5' in ci
