"""Every `python run.py` command the README and docs/ show composes and passes validation, every job of it."""

import itertools
import re
import shlex

from conftest import ROOT, composer
from hydra.core.override_parser.overrides_parser import OverridesParser

from metaplastic_vit import experiment

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python run\.py([^`\n#|]*)")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, overrides) of every run.py command in a page; skips those with placeholders (<net>, ...)."""
    found = []
    for page in PAGES:
        for match in COMMAND.finditer(page.read_text()):
            text = match.group(1).strip().rstrip("\\").strip()
            if "<" in text or "..." in text:
                continue
            words = [w for w in shlex.split(text) if w not in ("-m", "--multirun")]
            if "--cfg" in words or "--help" in words:
                continue
            found.append((page.name, [w for w in words if not w.startswith(("hydra.", "hydra/"))]))
    return found


def searched(compose_with, job: tuple[str, ...], parser: OverridesParser) -> list[str]:
    """For a search's command, one point of its space (its lower ends), as the sweeper would set it."""
    if not any(w.startswith("+search=") for w in job):
        return []
    params = compose_with(*job, return_hydra_config=True).hydra.sweeper.params
    points = []
    for key, space in params.items():
        value = parser.parse_override(f"{key}={space}").value()
        points.append(f"{key}={getattr(value, 'start', None) or value.list[0]}")
    return points


def test_the_docs_show_commands():
    pages = {page for page, _ in documented_commands()}
    assert {"README.md", "configuration.md", "sweeps.md"} <= pages


def test_every_documented_command_composes_and_validates():
    parser = OverridesParser.create()
    with composer() as compose_with:
        for page, words in documented_commands():
            overrides = parser.parse_overrides(words)
            choices = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line]
                       for o in overrides]
            choices = [[f"{o.get_key_element()}={v}" if o.is_sweep_override() else v for v in c]
                       for o, c in zip(overrides, choices, strict=True)]
            for job in itertools.product(*choices):
                try:
                    experiment.validate(compose_with(*job, *searched(compose_with, job, parser)))
                except Exception as error:  # noqa: BLE001 - name the page and the command
                    raise AssertionError(f"{page}: python run.py {' '.join(words)}: {error}") from error
