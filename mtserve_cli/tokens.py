"""`mtserve tokens ...`: the bearer tokens the services of this home accept.

They act on `<home>/auth/tokens.json` directly (the file every service on
this machine reads, re-read on change): whoever may run this command on the
machine owns the services' keys, as with the local admin token beside it.
"""

from __future__ import annotations

import json

import typer

from mtserve_cli.root import app, settings

tokens_app = typer.Typer(help="Bearer tokens the services accept: create, list, revoke (no restart needed).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def create_cmd(
    role: str = typer.Option(..., "--role", help="client | operator | admin (see docs/security.md for what each may call)."),
    name: str = typer.Option(..., "--name", help="Who holds it: recorded as the actor of every write made with it."),
    as_json: bool = typer.Option(False, "--json", help="Print name, role and token as JSON."),
) -> None:
    """Make a token and print its secret once (only its hash is stored)."""
    from mtserve.auth import Role, TokenStore, ensure_local_admin

    home = settings().home
    ensure_local_admin(home)
    secret = TokenStore(home).create(name, Role.parse(role))
    if as_json:
        typer.echo(json.dumps({"name": name, "role": Role.parse(role).label, "token": secret}))
    else:
        typer.echo(secret)
        typer.echo(f"token {name!r} ({role}) created; it is shown only now: give it to its holder (MTSERVE_AUTH__TOKEN)", err=True)


@tokens_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Name, role and creation time of every token (never the secrets)."""
    from mtserve.auth import TokenStore

    tokens = TokenStore(settings().home).tokens()
    if as_json:
        typer.echo(json.dumps([{"name": t.name, "role": t.role.label, "created_at": t.created_at} for t in tokens], indent=2))
        return
    for t in tokens:
        typer.echo(f"{t.name}\t{t.role.label}\t{t.created_at}")


@tokens_app.command("revoke")
def revoke_cmd(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token: running services refuse it from their next call on."""
    from mtserve.auth import TokenStore

    token = TokenStore(settings().home).revoke(name)
    typer.echo(f"token {token.name!r} ({token.role.label}) revoked", err=True)
