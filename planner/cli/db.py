"""`planner db upgrade | current`: the store's schema revision."""

from __future__ import annotations

import typer

from planner.cli._common import DbOption, JsonOption, echo, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("current")
def current(db: DbOption = None, json_out: JsonOption = False) -> None:
    """Show the database's schema revision and the one this tool needs."""
    from db.location import safe_url
    from db.migrate import schema_state, upgrade_command

    state = schema_state(db)
    if json_out:
        print_json(
            {"url": safe_url(state.url), "current": state.current, "head": state.head,
             "up_to_date": state.is_current}
        )
        return
    echo(f"database {safe_url(state.url)} is at revision {state.current or '(empty)'}")
    if state.is_current:
        echo(f"up to date (this tool needs {state.head})")
    else:
        echo(f"this tool needs {state.head}: run `{upgrade_command(state.url)}`")


@app.command("upgrade")
def upgrade(db: DbOption = None, json_out: JsonOption = False) -> None:
    """Upgrade the database's schema to the revision this tool needs, keeping every row."""
    from db.location import safe_url
    from db.migrate import upgrade as run_upgrade

    before, after = run_upgrade(db)
    if json_out:
        print_json(
            {"url": safe_url(after.url), "before": before.current, "after": after.current,
             "head": after.head}
        )
        return
    if before.current == after.current:
        echo(f"database {safe_url(after.url)} is already at {after.current}")
    else:
        echo(f"database {safe_url(after.url)} upgraded: {before.current or '(empty)'} -> {after.current}")
