"""The `planner` command. Each command group lives in its own module and only parses options,
calls one library function, and prints; library modules are imported inside the commands so
that `planner --help` never imports torch, sqlalchemy or optuna.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from planner.cli import analyze, apply, db, explain, models, plans, profile, profiles, tune


class _CleanErrors(TyperGroup):
    """Turns a `UserError` from any command into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        from runtime.errors import UserError

        from planner.cli.quiet import third_party_to_debug

        try:
            with third_party_to_debug():
                return super().invoke(ctx)
        except UserError as e:
            from planner.cli._common import inert

            typer.echo(f"error: {inert(e)}", err=True)  # messages quote plan and file text
            raise typer.Exit(2) from None
        except typer.TyperException as e:  # typer's (vendored click's) usage errors
            if not hasattr(e, "ctx") or type(e).__name__ == "NoArgsIsHelpError":
                raise
            from planner.cli._common import inert

            # a bad option value: one line like every other refusal, not a framed box
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            message = e.format_message().rstrip(".")
            typer.echo(f"error: {inert(message)}; see `{inert(where)} --help`", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_CleanErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Measure, plan and run block offloading for diffusion transformers on small GPUs.",
)
app.add_typer(models.app, name="models", help="Models we know, their blocks, checkpoints.")
app.add_typer(plans.app, name="plans", help="Stored plans: list, show, best, export, import.")
app.add_typer(profiles.app, name="profiles", help="Stored profiles: list, show.")
app.add_typer(db.app, name="db", help="The store's schema: upgrade, current.")


def _version(value: bool) -> None:
    if value:
        from runtime.version import TOOL_VERSION

        typer.echo(f"offload-planner {TOOL_VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Measure, plan and run block offloading for diffusion transformers on small GPUs."""


app.command("profile")(profile.profile)
app.command("tune")(tune.tune)
app.command("apply")(apply.apply)
app.command("explain")(explain.explain)
app.command("analyze")(analyze.analyze)


def main() -> None:
    app()
