"""Errors that reach the user as one readable line (the entry point prints them without a traceback)."""


class UserError(ValueError):
    """Bad input from the user: a config value, a task token, a data path. The message is one line."""


class DataError(UserError):
    """A dataset is missing, corrupt or not in the expected on-disk layout."""


class TrainingFailedError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); results.json says `failed` and the last checkpoint is kept."""


class RunPruned(Exception):  # noqa: N818 - a decision, not an error
    """A search's pruner stopped the run early (its trial looks worse than the others); the run ends `pruned`."""


class EnvironmentFaultError(RuntimeError):
    """The machine failed the run (disk full, read-only or unreadable files); the last checkpoint is kept."""


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf composition error (multi-line, with search paths) as one readable line."""
    text = str(exc)
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text += "\n" + str(exc.__cause__)
    text = text.split("Config search path:")[0]
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    out, options = [], []
    for ln in lines:
        if out and out[-1].endswith(":") and " " not in ln:  # an indented list of available options
            options.append(ln)
            continue
        if options:
            out[-1] += " " + ", ".join(options)
            options = []
        out.append(ln)
    if options:
        out[-1] += " " + ", ".join(options)
    return "; ".join(out)
