"""The box a rehearsal runs against: where its broker is and how to act on it.

A rehearsal runs on the box itself, as the user that runs it. It reads the
broker's address and the broker accounts from the box's data folder. It
issues its own short-lived edge tokens with the box's key, as
``nightbox token issue`` does. The running box reads revocations from the
same store on every request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance._cli_arguments import open_store
from appliance.config import SiteConfig
from appliance.errors import ConfigError
from appliance.store import Store
from appliance.tokens import EdgeTokens, box_tokens
from provisioning.readers.survey import broker_address


@dataclass
class Target:
    """Everything a check needs to reach the box under rehearsal.

    ``accounts`` maps broker usernames to passwords. Checks act on the box
    only through its broker, its HTTP server and its files, so a demo box
    and a running one are rehearsed alike.
    """

    description: str
    config: SiteConfig
    host: str
    port: int
    accounts: Mapping[str, str]
    tokens: EdgeTokens
    store: Store
    # The studio's HTTP server, set when the site file does not give its
    # port, such as for a demo box whose port was picked at start.
    studio_url: str | None = None

    def password(self, username: str) -> str:
        """Return the broker password of ``username``.

        Raises ConfigError naming the account when the box never created it.
        """
        password = self.accounts.get(username)
        if password is None:
            raise ConfigError(
                f"the box's broker credentials have no account {username!r}; "
                "restart the box with 'nightbox run', which creates it"
            )
        return password


def read_accounts(path: Path) -> dict[str, str]:
    """Read the box's broker accounts without creating any.

    ``provisioning.SiteCredentials`` would generate a missing password that
    the running broker does not know, so the file is only read here.
    """
    try:
        accounts = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(
            f"no broker credentials at {path}; start the box once with "
            "'nightbox run --config FILE', which creates them"
        ) from err
    except PermissionError as err:
        raise ConfigError(
            f"cannot read {path} (permission denied); run the rehearsal as the "
            "user that runs the box"
        ) from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read broker credentials {path}: {err}") from err
    if not isinstance(accounts, dict) or not all(
        isinstance(value, str) for value in accounts.values()
    ):
        raise ConfigError(
            f"broker credentials {path} are not a JSON object of passwords; "
            "restart the box with 'nightbox run', which rewrites them"
        )
    return {str(name): value for name, value in accounts.items()}


def running_box(config: SiteConfig, config_path: Path) -> Target:
    """Return the target of the box that runs with ``config``.

    Raises ConfigError when the box's broker address, its credentials or
    its store cannot be found.
    """
    url = broker_address(config)
    if url is None:
        raise ConfigError(
            f"the broker address of the box in {config_path} is unknown: broker.port "
            "is 0 and the box has not written its mosquitto.conf yet; start the box "
            f"with 'nightbox run --config {config_path}' first"
        )
    accounts = read_accounts(config.data_dir / "secrets" / "broker.json")
    store = open_store(config, create=False)
    tokens = box_tokens(config, store, config.system_clock())
    return Target(
        description=f"box {config.box_id} of site {config.site_id} "
        f"(broker {url.host}:{url.port})",
        config=config,
        host=url.host,
        port=url.port,
        accounts=accounts,
        tokens=tokens,
        store=store,
    )
