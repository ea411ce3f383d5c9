"""Candidates' validated values, exported from finished searches: `python -m metaplastic_vit.candidates ...`.

A candidate (`sweeps/candidates/<name>.yaml`) names a net and the values validation chose for it under
`tags.validated` (meta, the baselines' strengths, a learning rate, ...), which the seeded sweeps read through
`+arm` and `+baseline`. Those values are never typed by hand: `export` copies them, at full precision, from the
best trial of a finished search's summary (its search.json and trials.json, in the search directory or as a
report keeps them under `searches/`), and records under `tags.validated_from` which summary, trial, seeds and
validation score each came from. `check` verifies every candidate against its summaries (a test runs it).

  python -m metaplastic_vit.candidates export docs/science/search_meta/+candidate=bnn_ln/searches/<dir> bnn_ln
  python -m metaplastic_vit.candidates check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import UserError
from .record import SEARCH, TRIALS

CANDIDATES = Path("sweeps/candidates")
MARKER = "# Chosen on validation data; written by `python -m metaplastic_vit.candidates export`, never by hand."


@dataclass
class Summary:
    """A finished single-objective search, as its summary files describe it."""

    path: Path
    objective: str
    maximize: bool
    seeds: list[int | None]
    fixed: list[str]
    best: dict[str, Any]  # the best completed trial: number, params, values, stderr


def read_summary(path: str | Path) -> Summary:
    """The summary in `path`; a UserError unless it is a finished search on one objective."""
    path = Path(path)
    try:
        spec = json.loads((path / SEARCH).read_text())
        trials = json.loads((path / TRIALS).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} holds no readable search summary ({SEARCH}, {TRIALS}): {exc}") from None
    if len(spec["objectives"]) != 1:
        raise UserError(f"{path}: a search on {len(spec['objectives'])} objectives has a front, not one best trial")
    running = [t["number"] for t in trials if t["state"] == "RUNNING"]
    counted = [t for t in trials if t["state"] in ("COMPLETE", "FAIL", "PRUNED") and t.get("duplicate_of") is None]
    if running or len(counted) < spec["n_trials"]:
        raise UserError(f"{path}: the search has not finished ({len(counted)} of {spec['n_trials']} trials"
                        + (f", trials {running} still running" if running else "") + "); run it to its end first")
    done = [t for t in trials if t["state"] == "COMPLETE" and t.get("values")]
    if not done:
        raise UserError(f"{path}: no trial of the search completed")
    objective = spec["objectives"][0]
    maximize = spec["directions"][0] == "maximize"
    best = min(done, key=lambda t: ((-1 if maximize else 1) * t["values"][objective], t["number"]))
    return Summary(path, objective, maximize, spec.get("seeds", [None]), spec.get("fixed", []), best)


def validated_key(param: str, fixed: Sequence[str]) -> str:
    """The tags.validated key a searched parameter is kept under: a baseline's strength under the strategy's
    name, a meta_layers group's meta under the group's name, anything else under its last name (meta, lr)."""
    if param == "strategy.strength":
        strategy = next((f.split("=", 1)[1] for f in fixed if f.split("=", 1)[0].lstrip("+") == "strategy"), None)
        if strategy is None:
            raise UserError("a strength search without strategy=<name> among its overrides: name the key with --as")
        return strategy
    group = re.fullmatch(r"optimizer\.meta_layers\.(\w+)\.meta", param)
    return group.group(1) if group else param.rsplit(".", 1)[-1]


def _candidate_file(name: str, candidates: Path) -> Path:
    path = candidates / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"no candidate {name!r}: {path} does not exist")
    return path


def _split(text: str) -> tuple[str, dict[str, Any]]:
    """The candidate file's hand-written head and its generated tags (empty when it has none yet)."""
    at = text.find(MARKER)
    if at < 0:
        return text.rstrip() + "\n", {}
    tags = OmegaConf.to_container(OmegaConf.create(text[at:])).get("tags", {})
    return text[:at].rstrip() + "\n", tags


def _yaml(value: Any) -> str:
    """A value as YAML flow text, floats at full precision (repr round-trips)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return "null" if value is None else json.dumps(value) if isinstance(value, str) else str(value)


def render(head: str, tags: dict[str, Any]) -> str:
    """The candidate file: its head, then the generated tags block."""
    lines = [head.rstrip(), MARKER, "tags:", "  validated:"]
    lines += [f"    {k}: {_yaml(v)}" for k, v in tags["validated"].items()]
    lines.append("  validated_from:")
    lines += [f"    {k}: {_yaml(v)}" for k, v in tags["validated_from"].items()]
    return "\n".join(lines) + "\n"


def export(summary_dir: str | Path, name: str, rename: dict[str, str] | None = None,
           candidates: Path = CANDIDATES) -> dict[str, Any]:
    """Write the best trial's values of a finished search into candidate `name`; returns what was written."""
    summary = read_summary(summary_dir)
    path = _candidate_file(name, candidates)
    head, tags = _split(path.read_text())
    tags = {"validated": dict(tags.get("validated", {})), "validated_from": dict(tags.get("validated_from", {}))}
    best = summary.best
    written = {}
    for param, value in best["params"].items():
        key = (rename or {}).get(param) or validated_key(param, summary.fixed)
        written[key] = value
        tags["validated"][key] = value
        tags["validated_from"][key] = {
            "search": str(summary.path), "trial": best["number"], "param": param, "objective": summary.objective,
            "value": best["values"][summary.objective], "stderr": (best.get("stderr") or {}).get(summary.objective),
            "seeds": summary.seeds}
    path.write_text(render(head, tags))
    return written


def check(candidates: Path = CANDIDATES, root: Path = Path(".")) -> list[str]:
    """Every candidate's validated values against the summaries they name: a list of problems (empty: all
    equal, at full precision, to the best trial of a finished search)."""
    problems = []
    for path in sorted(candidates.glob("*.yaml")):
        text = path.read_text()
        if MARKER not in text and "tags" in (OmegaConf.create(text) or {}):
            problems.append(f"{path.name}: its tags were written by hand; export them from a finished search")
            continue
        _, tags = _split(text)
        validated, sources = tags.get("validated", {}), tags.get("validated_from", {})
        for key, value in validated.items():
            source = sources.get(key)
            if source is None:
                problems.append(f"{path.name}: tags.validated.{key} names no search it came from")
                continue
            try:
                summary = read_summary(root / source["search"])
            except UserError as exc:
                problems.append(f"{path.name}: tags.validated.{key}: {exc}")
                continue
            expected = summary.best["params"].get(source["param"])
            if summary.best["number"] != source["trial"] or expected != value or type(expected) is not type(value):
                problems.append(f"{path.name}: tags.validated.{key} is {value!r}, but the best trial of "
                                f"{source['search']} is trial {summary.best['number']} with {source['param']} "
                                f"{expected!r}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: export a finished search's best values into a candidate, or check every candidate."""
    parser = argparse.ArgumentParser(prog="python -m metaplastic_vit.candidates", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="copy a finished search's best values into a candidate")
    out.add_argument("summary", help="a search directory, or a report's searches/<dir> copy of its summary")
    out.add_argument("candidate", help="the candidate's name (sweeps/candidates/<name>.yaml)")
    out.add_argument("--as", dest="rename", action="append", default=[], metavar="PARAM=KEY",
                     help="keep a searched parameter under another tags.validated key")
    commands.add_parser("check", help="verify every candidate against the searches it names")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            rename = dict(r.split("=", 1) for r in args.rename if "=" in r)
            if len(rename) != len(args.rename):
                raise UserError(f"--as takes PARAM=KEY, got {args.rename}")
            written = export(args.summary, args.candidate, rename)
            print(f"{args.candidate}: " + ", ".join(f"{k} = {v!r}" for k, v in written.items()))
            return 0
        problems = check()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
