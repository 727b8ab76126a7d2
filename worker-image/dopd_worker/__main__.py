"""`python -m dopd_worker worker|router|profile ...`: the same commands as `dopd worker` etc., for images
and tests that run without the operator's CLI."""

from __future__ import annotations

import click

from dopd_worker.cli import profile, router, worker


@click.group()
def main() -> None:
    """dopd worker image entrypoints."""


main.add_command(worker)
main.add_command(router)
main.add_command(profile)

if __name__ == "__main__":
    main()
