"""The tokens screen: the box's edge tokens, issuing one as a QR code, revoking.

The whole screen needs the admin PIN, because the list shows who can act
on the box. A new token is shown once, as a QR code in half blocks that a
terminal scans, and as text. The box keeps only its id, so it cannot be
shown again. Revoking takes effect from the token's next request.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from appliance.tokens import MAX_TTL_S, SCOPES
from tui.qr import qr_text
from tui.screens._form import Field, FormModal, parse_duration_s
from tui.screens._operation import OperationScreen, fill_table, selected_key

# The columns fit 80 terminal columns: the token id is cut to its first
# characters (the row key keeps it whole), and the detail line below the
# table shows the selected token in full.
_COLUMNS = ("token", "subject", "state", "expires", "scopes")
_ID_CHARS = 8


class TokensScreen(OperationScreen):
    """Issued edge tokens; issue a new one or revoke the selected one."""

    TITLE = "Edge tokens"
    SENSITIVE = True
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "issue", "Issue token"),
        Binding("x", "revoke", "Revoke token"),
        Binding("g", "reload", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        # The last tokens list by token id, for the detail line.
        self._tokens: dict[str, dict[str, Any]] = {}

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="tokens", cursor_type="row", zebra_stripes=True)
        yield Static("", id="token-detail", markup=False)

    async def unlocked(self) -> None:
        await self._load()

    def action_reload(self) -> None:
        self.run_latest(self._load, "tokens")

    async def _load(self) -> None:
        reply = await self.send("console", "tokens", {}, admin=True)
        if reply is None or not self.is_attached:
            return
        rows = []
        self._tokens = {}
        for token in reply.get("tokens") or []:
            token_id = str(token.get("token_id"))
            self._tokens[token_id] = token
            short_id = (
                token_id
                if len(token_id) <= _ID_CHARS
                else token_id[: _ID_CHARS - 1] + "\u2026"
            )
            rows.append(
                (
                    token_id,
                    (
                        short_id,
                        token.get("subject"),
                        self._state_text(token),
                        self.time_text(token.get("expires_at"), seconds=False),
                        " ".join(token.get("scopes") or []),
                    ),
                )
            )
        fill_table(self.query_one("#tokens", DataTable), _COLUMNS, rows)
        self._draw_detail()

    def _state_text(self, token: dict[str, Any]) -> Text:
        now = self.box_now()
        expires_at = token.get("expires_at")
        if token.get("revoked"):
            return Text("revoked", style="bold red")
        if now is not None and isinstance(expires_at, int | float):
            return Text("expired", style="dim") if expires_at <= now else Text("valid")
        return Text("valid")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "tokens":
            self._draw_detail()

    def _draw_detail(self) -> None:
        token_id = selected_key(self.query_one("#tokens", DataTable))
        token = self._tokens.get(token_id or "")
        detail = self.query_one("#token-detail", Static)
        if token is None:
            detail.update("")
            return
        detail.update(
            Text(
                f"{token_id} for {token.get('subject')}, "
                f"{self._state_text(token).plain}, issued "
                f"{self.time_text(token.get('issued_at'))}, expires "
                f"{self.time_text(token.get('expires_at'))}; scopes "
                f"{' '.join(token.get('scopes') or []) or '--'}"
            )
        )

    def action_issue(self) -> None:
        terminals = [
            (str(terminal), str(terminal))
            for terminal in self.overview().get("terminals") or []
        ]
        fields = (
            Field("subject", "terminal", options=terminals),
            Field(
                "scopes",
                "scopes",
                options=[(f"{scope}: {text}", scope) for scope, text in SCOPES.items()],
                multiple=True,
            ),
            Field("ttl", "lifetime", value="8h", placeholder="8h, 90m, 1h30m"),
        )
        form = FormModal("Issue an edge token", fields, "Issue", _issue_request)
        self.app.push_screen(form, self._issue_chosen)

    def _issue_chosen(self, request: dict[str, Any] | None) -> None:
        if request is not None:
            self.start_action(self._issue(request))

    async def _issue(self, request: dict[str, Any]) -> None:
        reply = await self.send(
            "console", "token-issue", request, admin=True, mutating=True
        )
        if reply is None:
            return
        self.show_ok(f"token {reply.get('token_id')} issued to {reply.get('subject')}")
        self.app.push_screen(
            TokenQrScreen(reply, self.time_text(reply.get("expires_at")))
        )
        await self._load()

    def action_revoke(self) -> None:
        token_id = selected_key(self.query_one("#tokens", DataTable))
        if token_id is None:
            self.show_error("no token selected to revoke")
            return
        fields = (Field("reason", "reason", value="revoked from the console"),)
        form = FormModal(
            f"Revoke token {token_id}? The box rejects it from its next request.",
            fields,
            "Revoke",
            lambda values: {"token_id": token_id, "reason": values["reason"]},
        )
        self.app.push_screen(form, self._revoke_chosen)

    def _revoke_chosen(self, request: dict[str, Any] | None) -> None:
        if request is not None:
            self.start_action(self._revoke(request))

    async def _revoke(self, request: dict[str, Any]) -> None:
        if not request["reason"]:
            del request["reason"]
        reply = await self.send(
            "console", "token-revoke", request, admin=True, mutating=True
        )
        if reply is None:
            return
        if reply.get("revoked"):
            self.show_ok(f"token {request['token_id']} revoked")
        else:
            self.show_ok(f"token {request['token_id']} was already revoked")
        await self._load()


def _issue_request(values: dict[str, Any]) -> dict[str, Any]:
    if not values["subject"]:
        raise ValueError("terminal is missing: choose the terminal that gets the token")
    if not values["scopes"]:
        raise ValueError("scopes are missing: select at least one with space")
    return {
        "subject": values["subject"],
        "scopes": values["scopes"],
        "ttl_s": parse_duration_s("lifetime", values["ttl"], maximum=int(MAX_TTL_S)),
    }


class TokenQrScreen(ModalScreen[None]):
    """A new token as a QR code and as text, shown once."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]
    DEFAULT_CSS = """
    TokenQrScreen { align: center middle; }
    TokenQrScreen > VerticalScroll {
        width: 100%; height: 100%; background: $surface;
    }
    TokenQrScreen #qr { width: auto; height: auto; }
    TokenQrScreen #token-text { height: auto; }
    """

    def __init__(self, issued: dict[str, Any], expires_text: str) -> None:
        super().__init__()
        self._issued = issued
        self._expires_text = expires_text

    def compose(self) -> ComposeResult:
        issued = self._issued
        token = str(issued.get("token"))
        with VerticalScroll(can_focus=True):
            yield Static(
                f"Token {issued.get('token_id')} for {issued.get('subject')}, "
                f"expires {self._expires_text}; scan it on the terminal now, "
                "because it is not shown again. Esc closes.",
                id="token-info",
            )
            yield Static(qr_text(token), id="qr")
            yield Static(Text(token), id="token-text")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
