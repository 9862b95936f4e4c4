"""`mtserve tls ...`: the local certificate authority of this home (mtserve/tls.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from mtserve_cli.root import app, settings

tls_app = typer.Typer(help="The local CA: where its files are, client certificates for mutual TLS.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")


@tls_app.command("init")
def init_cmd() -> None:
    """Make the local CA and server certificate now (a service's first start does it too); print the folder."""
    from mtserve.tls import ensure_local_ca

    s = settings()
    typer.echo(ensure_local_ca(s.home, tuple(s.tls.server_names)))


@tls_app.command("client-cert")
def client_cert_cmd(
    name: str = typer.Option(..., "--name", help="Who the certificate is for (its common name)."),
    out: Path = typer.Option(..., "--out", help="Folder for NAME.pem and NAME.key (owner-only)."),
) -> None:
    """A client certificate signed by the local CA, for servers run with tls.client_ca_file (mutual TLS)."""
    from mtserve.tls import ensure_local_ca, make_client_certificate

    s = settings()
    ensure_local_ca(s.home, tuple(s.tls.server_names))
    cert, key = make_client_certificate(s.home, name, out)
    typer.echo(f"{cert}\n{key}")
    typer.echo("clients: set tls.client_cert_file and tls.client_key_file to these files", err=True)
