"""The `dopd` command line. The environment is read here and nowhere else.

Subcommands owned by other packages (forecast, worker, router, profile, simulate, bench) are loaded
lazily so `dopd plan` never imports torch or statsmodels.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> "module:attribute" of a click command, loaded on first use.
LAZY_COMMANDS: dict[str, str] = {
    "plan": "dopd_operator.cli_plan:plan",
    "crds": "dopd_operator.cli_plan:crds",
    "profiles": "dopd_operator.cli_plan:profiles",
    "forecast": "dopd_forecaster.cli:forecast",
    "worker": "dopd_worker.cli:worker",
    "router": "dopd_worker.cli:router",
    "profile": "dopd_worker.cli:profile",
    "simulate": "dopd_sim.cli:simulate",
    "bench": "dopd_sim.cli:bench",
    "demo": "dopd_sim.cli:demo",
    "run": "dopd_operator.cli_run:run",
    "emulate": "dopd_emulator.cli:emulate",
}

_HELP = {
    "plan": "Print the planner's decision for a DisaggregatedModel and a load.",
    "crds": "Print the DisaggregatedModel CRD generated from the API types.",
    "profiles": "List the built-in per-replica performance profiles.",
    "forecast": "Backtest the load forecasters on a request trace.",
    "worker": "Run a prefill or decode worker (needs the [worker] extra).",
    "router": "Run the length-aware OpenAI-compatible router.",
    "profile": "Measure this worker and write a performance profile.",
    "simulate": "Replay a trace through the simulated cluster under one policy.",
    "bench": "Run every policy on the same trace and write a report.",
    "demo": "Run the local demo.",
    "run": "Run the operator (Kopf) against the current kubeconfig.",
    "emulate": "Serve engine metrics (dopd, vLLM or SGLang) from the simulator's engines in wall-clock time.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return _unavailable(cmd_name, f"{module_name} cannot be imported ({exc}); run `make setup`")
        command = getattr(module, attr, None)
        if not isinstance(command, click.Command):
            return _unavailable(cmd_name, f"{target} is not available in this build")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, why: str) -> click.Command:
    def fail(**_: Any) -> None:
        raise click.ClickException(why)

    return click.Command(
        name, callback=fail, help=_HELP.get(name, ""), context_settings={"ignore_unknown_options": True}
    )


@click.group(cls=LazyGroup)
@click.version_option(package_name="dopd")
def cli() -> None:
    """dopd: autoscale prefill/decode-disaggregated LLM serving at the optimal P/D ratio."""


def main() -> None:
    cli(prog_name="dopd")


if __name__ == "__main__":  # pragma: no cover
    main()
