"""Entry point: `python run.py [overrides]` trains one experiment; `python run.py -m ...` sweeps (see the README)."""

from metaplastic_vit.cli import cli

if __name__ == "__main__":
    cli()
