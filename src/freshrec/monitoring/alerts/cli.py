"""``freshrec alerts``: test delivery to the configured receivers, list open alerts.

Only stdlib, typer, rich and freshrec.config at module level.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from freshrec.config import Settings

app = typer.Typer(help="On-call alerts: test delivery to the configured receivers, list open alerts.")
console = Console()


@app.command("test")
def test(
    ctx: typer.Context,
    receiver: list[str] = typer.Option(None, "--receiver", help="Receiver name (repeatable); default: all."),
) -> None:
    """Send a test alert to the configured receivers and report each delivery (exit 1 if any failed)."""
    from freshrec.monitoring.alerts import AlertManager

    settings: Settings = ctx.obj
    if not settings.alerts.receivers:
        console.print("no receivers configured (alerts.receivers); only the console line is shown")
    try:
        deliveries = AlertManager(settings.alerts, settings.state_dir).test(receiver or None)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    table = Table(title="test alert deliveries")
    for col in ("receiver", "kind", "delivered", "attempts", "status", "error"):
        table.add_column(col)
    for d in deliveries:
        table.add_row(
            d.receiver,
            d.kind,
            "[green]yes[/]" if d.ok else "[red]no[/]",
            str(d.attempts),
            str(d.status_code or "—"),
            d.error or "",
        )
    console.print(table)
    if any(not d.ok for d in deliveries):
        raise typer.Exit(1)


@app.command("list")
def list_open(ctx: typer.Context) -> None:
    """List the open (firing) alerts kept in the state directory."""
    from freshrec.monitoring.alerts import AlertManager

    settings: Settings = ctx.obj
    open_alerts = AlertManager(settings.alerts, settings.state_dir).open_alerts()
    if not open_alerts:
        console.print("no open alerts")
        return
    table = Table(title="open alerts")
    for col in ("key", "severity", "since", "summary"):
        table.add_column(col)
    for key, alert in sorted(open_alerts.items()):
        table.add_row(key, alert.severity, alert.starts_at.isoformat(timespec="seconds"), alert.summary)
    console.print(table)
