"""The guest portal of a simulated night: its site, assets and a browser's guest.

``nightbox demo`` serves the portal on a free loopback port. It preloads
the tee's sample 3D model as an operator would. A folder contains the model,
``assets.toml`` and a manifest signed with a throwaway operator key, and the
box imports the folder at start (``[assets] preload_dir``).

With ``--portal-file`` the demo also picks one simulated guest whom a
browser plays. The guest opts in on the portal instead of at the desk,
takes a kit later in the night, and has money left in their wallet and a
late drop with units left to claim from. The late drop ends after the
night, so it is still open while ``--hold`` keeps the box running. The file
gives the browser that guest's band code, when the simulation checks them
out and hands them their kit, and until when the drop is open.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import zoneinfo
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.pack import DESCRIPTION_NAME, pack_folder
from appliance.assets.sample import write_sample_model
from appliance.commerce.config import CommerceConfig, DropConfig
from appliance.config import SiteConfig
from appliance.errors import NightboxError
from appliance.portal.config import PortalConfig
from appliance.signed_documents import key_id
from appliance.sim._economy import LATE_DROP, Purchase
from appliance.sim._world import Guest, NightPlan
from provisioning.secret_file import write_secret_file

# The folder inside the data folder that acts as the operator's USB stick.
ASSET_FOLDER = "usb-assets"
OPERATOR_KEY_FILE = "demo-operator.key"
SAMPLE_ITEM = "tee"
_SAMPLE_FILE = "tee.glb"
# The manifest is signed this long before the simulated night starts, so
# the box's simulated clock finds it already valid.
_SIGNED_BEFORE_NIGHT_S = 600.0


class NoPortalGuestError(NightboxError, ValueError):
    """No simulated guest fits the portal walkthrough of ``--portal-file``."""


@dataclass(frozen=True, slots=True)
class PortalGuest:
    """The guest a browser plays on the portal, and the drop they claim."""

    guest: Guest
    drop: DropConfig
    # Wallet balance when the guest claims: top-up minus the night's drinks.
    balance: int

    @property
    def checkout_at(self) -> float:
        """Simulated time when the guest walks out through their exit."""
        assert self.guest.leave_s is not None
        return self.guest.leave_s

    @property
    def kit_at(self) -> float:
        """Simulated time when the guest requests a kit at the kit station."""
        assert self.guest.kit_visit_s is not None
        return self.guest.kit_visit_s


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now.

    The portal's public address must name its port before the portal starts,
    so the port is chosen here. Another process could take it in between,
    and then the portal fails to start with the port in its error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def demo_portal_site(
    config: SiteConfig, plan: NightPlan, consent_text: str
) -> SiteConfig:
    """Return ``config`` with a loopback portal and the tee's model preloaded.

    Writes into the data folder: a throwaway operator key
    (``secrets/demo-operator.key``, mode 0600) listed in ``[fleet]
    operator_keys``, and the folder ``usb-assets`` with the sample model,
    ``assets.toml`` and the signed ``manifest.json``, which
    ``[assets] preload_dir`` names.
    """
    port = free_loopback_port()
    portal = PortalConfig(
        public_url=f"http://127.0.0.1:{port}",
        consent_text=consent_text,
        host="127.0.0.1",
        port=port,
    )
    operator_key = Ed25519PrivateKey.generate()
    write_secret_file(
        config.data_dir / "secrets" / OPERATOR_KEY_FILE,
        operator_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    folder = config.data_dir / ASSET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_sample_model(folder / _SAMPLE_FILE)
    (folder / DESCRIPTION_NAME).write_text(
        f'[[assets]]\nitem = "{SAMPLE_ITEM}"\nname = "Drop tee, 3D model"\n'
        f'file = "{_SAMPLE_FILE}"\n',
        encoding="utf-8",
    )
    pack_folder(
        folder,
        operator_key,
        site=config.site_id,
        version=1,
        issued_at=plan.start_s - _SIGNED_BEFORE_NIGHT_S,
    )
    public_key = operator_key.public_key()
    operator_keys = {**config.fleet.operator_keys, key_id(public_key): public_key}
    return replace(
        config,
        portal=portal,
        assets=replace(config.assets, preload_dir=folder),
        fleet=replace(config.fleet, operator_keys=operator_keys),
    )


def choose_portal_guest(
    plan: NightPlan,
    commerce: CommerceConfig,
    purchases: list[Purchase],
    kit_stock: int,
) -> PortalGuest:
    """Return the guest a browser plays on the portal.

    The guest does not opt in at the desk, and requests one kit after the
    late drop opens and while the kit station still has stock. They keep at
    least the drop's price in their wallet because they top up and skip the
    first drop's rush. Of those, the guest with the earliest kit visit wins,
    so the browser has the most night left to claim in. Raises
    NoPortalGuestError when no guest fits.
    """
    drop = next(drop for drop in commerce.drops if drop.id == LATE_DROP)
    visits = sorted(
        (guest.kit_visit_s, guest.band.index)
        for guest in plan.guests
        if guest.kit_visit_s is not None
    )
    # Kits go out in visit order until the stock runs out; a second request
    # by a guest who already has a kit takes none.
    stocked = {index for _visit, index in visits[:kit_stock]}
    balances = _balances(purchases)
    candidates = [
        guest
        for guest in plan.guests
        if guest.opt_in is None
        and guest.kit_visit_s is not None
        and guest.leave_s is not None
        and not guest.asks_twice
        and guest.kit_visit_s >= drop.starts_at
        and guest.band.index in stocked
        and balances.get(guest.band.index, 0) >= drop.price
    ]
    if not candidates:
        raise NoPortalGuestError(
            f"no guest of this night (seed {plan.seed}, {len(plan.guests)} guests) "
            "skips the desk opt-in, takes a kit after the late drop opens and can "
            "pay for it; run more guests, such as --guests 100, or another --seed"
        )
    chosen = min(candidates, key=lambda guest: (guest.kit_visit_s, guest.band.index))
    return PortalGuest(chosen, drop, balances[chosen.band.index])


def _balances(purchases: list[Purchase]) -> dict[int, int]:
    """Return each top-up guest's balance after their drinks, without drop claims.

    A guest who claims in the first drop's rush is left out, because whether
    the claim wins depends on the order the claims arrive in.
    """
    balances: dict[int, int] = {}
    rush: set[int] = set()
    for purchase in purchases:
        index = purchase.guest.band.index
        if purchase.kind == "topup":
            balances[index] = balances.get(index, 0) + purchase.amount
        elif purchase.kind == "drink":
            balances[index] = balances.get(index, 0) - purchase.amount
        else:
            rush.add(index)
    return {index: left for index, left in balances.items() if index not in rush}


def local_time(t: float, timezone: str) -> str:
    """Return Unix time ``t`` as an ISO 8601 date-time in ``timezone``."""
    moment = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(timezone))
    return moment.isoformat(timespec="seconds")


def write_portal_file(
    path: Path,
    *,
    url: str,
    portal_guest: PortalGuest,
    band_code: str,
    plan: NightPlan,
    speed: float,
    pid: int,
    timezone: str,
) -> None:
    """Write the portal file: the portal's address and the browser's guest.

    Times are seconds since the epoch on the simulated clock; ``night_start``
    and ``speed`` convert them to wall-clock seconds after the night began.
    ``drop_open_until`` is the drop's end as an ISO 8601 date-time in
    ``timezone``. The band code lets anyone act as the guest, so the file
    has mode 0600.
    """
    guest = portal_guest.guest
    document: dict[str, Any] = {
        "url": url,
        "band": guest.band.band_id,
        "band_code": band_code,
        "drop": portal_guest.drop.id,
        "item": portal_guest.drop.item,
        "price": portal_guest.drop.price,
        "balance": portal_guest.balance,
        "checkout_at": portal_guest.checkout_at,
        "kit_at": portal_guest.kit_at,
        "drop_starts_at": portal_guest.drop.starts_at,
        "drop_ends_at": portal_guest.drop.ends_at,
        "drop_open_until": local_time(portal_guest.drop.ends_at, timezone),
        "night_start": plan.start_s,
        "night_end": plan.end_s,
        "speed": speed,
        "pid": pid,
    }
    write_secret_file(path, json.dumps(document, indent=2).encode() + b"\n")
