"""Reader requests checked against the site, and the site file's [[readers]] rewrite."""

from __future__ import annotations

import json
import os
import threading
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from appliance.config import SiteConfig, load_config
from provisioning import SiteCredentials
from provisioning.credentials import hash_password
from provisioning.readers import ReaderArgumentError, ReaderRequest, registration
from provisioning.readers.registration import (
    Registration,
    box_has_reader,
    credentials_path,
    ensure_broker_account,
    port_owner,
    register_reader,
    register_request,
    reload_box,
    running_box_pid,
    validate_request,
)
from tests.reader_provisioning._boards import fake_box
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    site_file_fixture,
    write_site,
)


def request(**changes: object) -> ReaderRequest:
    fields: dict[str, object] = {
        "role": "exit",
        "zone": "back-door",
        "port": "/dev/ttyUSB0",
    }
    fields.update(changes)
    return ReaderRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "door"}, "role 'door' is unknown; use --role exit or --role kit"),
        ({"zone": "Main Door"}, "zone 'Main Door' is invalid"),
        ({"zone": ""}, "zone '' is invalid"),
        ({"zone": "z" * 33}, "is invalid; use 1-32"),
        ({"uplink": "lora"}, "uplink 'lora' is unknown"),
        ({"reader_id": "Exit_1"}, "reader id 'Exit_1' is invalid"),
        ({"reader_id": "kit-1"}, "reader kit-1 is already in the site file as a kit"),
        ({"kit_stock": 3}, "--kit-stock is for kit readers only"),
        ({"port": ""}, "port '' is invalid"),
        ({"reader_id": ""}, "reader id '' is invalid"),
        (
            {"role": "kit", "reader_id": "exit-1"},
            "reader exit-1 is already in the site file as an exit reader",
        ),
    ],
)
def test_request_rejected(
    site_file: Path, changes: dict[str, object], message: str
) -> None:
    config = load_config(site_file)
    with pytest.raises(ReaderArgumentError) as caught:
        validate_request(request(**changes), config)
    assert message in str(caught.value)


def test_wifi_needs_network(tmp_path: Path) -> None:
    config = load_config(write_site(tmp_path, network=False))
    with pytest.raises(ReaderArgumentError, match="--uplink serial"):
        validate_request(request(), config)


def test_serial_port_taken(tmp_path: Path) -> None:
    config = load_config(
        write_site(
            tmp_path,
            extra='\n[[readers]]\nid = "exit-9"\nrole = "exit"\nuplink = "serial"\n'
            'serial_port = "/dev/ttyUSB0"\n',
        )
    )
    with pytest.raises(
        ReaderArgumentError, match="already the uplink of reader exit-9"
    ):
        validate_request(request(uplink="serial"), config)


def test_next_free_id(site_file: Path) -> None:
    config = load_config(site_file)
    assert validate_request(request(), config).id == "exit-3"
    assert validate_request(request(role="kit"), config).id == "kit-2"


def test_existing_reader_keeps_stock(site_file: Path) -> None:
    config = load_config(site_file)
    reader = validate_request(request(role="kit", reader_id="kit-1"), config)
    assert reader.kit_stock == 5


def test_register_appends_reader(site_file: Path) -> None:
    config = load_config(site_file)
    reader = validate_request(request(uplink="serial", port="/dev/ttyUSB4"), config)
    new_config, changed = register_reader(site_file, config, reader)
    assert changed
    document = tomllib.loads(site_file.read_text())
    assert document["readers"][-1] == {
        "id": "exit-3",
        "role": "exit",
        "zone": "back-door",
        "uplink": "serial",
        "serial_port": "/dev/ttyUSB4",
    }
    assert new_config.reader("exit-3") == reader
    assert (site_file.parent / "site.toml.previous").exists()


def test_register_keeps_comments(site_file: Path) -> None:
    site_file.write_text("# Front of house readers.\n" + site_file.read_text())
    before = site_file.read_text()
    config = load_config(site_file)
    reader = validate_request(request(), config)
    register_reader(site_file, config, reader)
    text = site_file.read_text()
    assert text.startswith(before)
    assert text[len(before) :].lstrip("\n").startswith("[[readers]]\n")


def test_register_inline_readers_rewritten(site_file: Path) -> None:
    document = tomllib.loads(site_file.read_text())
    site_file.write_text(tomli_w.dumps(document))
    assert "[[readers]]" not in site_file.read_text()
    config = load_config(site_file)
    reader = validate_request(request(), config)
    new_config, changed = register_reader(site_file, config, reader)
    assert changed
    assert new_config.reader("exit-3") == reader
    assert len(tomllib.loads(site_file.read_text())["readers"]) == 4


def test_register_same_reader_unchanged(site_file: Path) -> None:
    config = load_config(site_file)
    reader = validate_request(request(reader_id="exit-1", zone="main-door"), config)
    before = site_file.read_bytes()
    _config, changed = register_reader(site_file, config, reader)
    assert not changed
    assert site_file.read_bytes() == before


def test_register_updates_zone_and_stock(site_file: Path) -> None:
    config = load_config(site_file)
    reader = validate_request(
        request(role="kit", reader_id="kit-1", zone="bar", kit_stock=40), config
    )
    new_config, changed = register_reader(site_file, config, reader)
    assert changed
    kit = new_config.reader("kit-1")
    assert kit is not None
    assert kit.zone == "bar"
    assert kit.kit_stock == 40
    assert len(new_config.readers) == 3


def test_account_generated_once(site_file: Path) -> None:
    config = load_config(site_file)
    first = ensure_broker_account(config, "exit-3")
    second = ensure_broker_account(config, "exit-3")
    assert first.username == "reader-exit-3"
    assert first.password == second.password
    assert len(first.password) >= 24


def test_no_box_no_reload(site_file: Path) -> None:
    config = load_config(site_file)
    assert running_box_pid(config) is None
    assert reload_box(config) is None


def test_running_box_gets_sighup(site_file: Path) -> None:
    config = load_config(site_file)
    with fake_box(config.data_dir) as box:
        assert running_box_pid(config) == box.pid
        assert reload_box(config) == box.pid
        assert box.got_sighup()
    assert running_box_pid(config) is None


def test_register_through_symlink(site_file: Path) -> None:
    real = site_file.with_name("real-site.toml")
    site_file.rename(real)
    link = site_file.with_name("link.toml")
    link.symlink_to(real.name)
    config = load_config(link)
    register_reader(link, config, validate_request(request(), config))
    assert link.is_symlink()
    assert load_config(real).reader("exit-3") is not None

    config = load_config(link)
    moved = validate_request(request(reader_id="exit-3", zone="bar"), config)
    register_reader(link, config, moved)
    assert link.is_symlink()
    exit_3 = load_config(real).reader("exit-3")
    assert exit_3 is not None
    assert exit_3.zone == "bar"
    assert real.with_name("real-site.toml.previous").is_file()
    assert not link.with_name("link.toml.previous").exists()


# Long enough for every thread to read the site file before any writes it,
# unless the site file's lock keeps them apart.
SLOW_READ_S = 0.2
RACING_RUNS = 4


def test_concurrent_runs_get_distinct_ids(
    site_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow_load_config(path: Path) -> SiteConfig:
        config = load_config(path)
        time.sleep(SLOW_READ_S)
        return config

    monkeypatch.setattr(registration, "load_config", slow_load_config)
    start = threading.Barrier(RACING_RUNS)
    results: list[Registration] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(register_request(site_file, request()))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(RACING_RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    ids = sorted(result.reader.id for result in results)
    assert ids == ["exit-3", "exit-4", "exit-5", "exit-6"]
    assert all(result.reader_added for result in results)
    config = load_config(site_file)
    assert [reader.id for reader in config.readers][3:] == ids
    accounts = json.loads(credentials_path(config).read_text())
    for reader_id in ids:
        assert f"reader-{reader_id}" in accounts


def test_register_request_rereads_site_file(site_file: Path) -> None:
    stale = load_config(site_file)
    first = validate_request(request(), stale)
    assert first.id == "exit-3"
    register_reader(site_file, stale, first)
    second = register_request(site_file, request())
    assert second.reader.id == "exit-4"
    assert second.site_file_changed
    assert second.account_created


def test_register_request_explicit_id_updates(site_file: Path) -> None:
    registration_result = register_request(
        site_file, request(reader_id="exit-1", zone="bar")
    )
    assert not registration_result.reader_added
    assert registration_result.site_file_changed
    assert registration_result.reader.zone == "bar"


@pytest.mark.parametrize("uplink", ["wifi", "serial"])
def test_other_readers_port_rejected(tmp_path: Path, uplink: str) -> None:
    device = tmp_path / "ttyUSB7"
    device.touch()
    link = tmp_path / "by-id-link"
    link.symlink_to(device)
    config = load_config(
        write_site(
            tmp_path,
            extra='\n[[readers]]\nid = "exit-9"\nrole = "exit"\nuplink = "serial"\n'
            f'serial_port = "{device}"\n',
        )
    )
    with pytest.raises(ReaderArgumentError) as caught:
        validate_request(request(port=str(link), uplink=uplink), config)
    assert "already the uplink of reader exit-9" in str(caught.value)
    assert "--id exit-9" in str(caught.value)
    own = validate_request(request(port=str(link), reader_id="exit-9"), config)
    assert own.id == "exit-9"


def test_port_owner_compares_urls_as_text(tmp_path: Path) -> None:
    config = load_config(
        write_site(
            tmp_path,
            extra='\n[[readers]]\nid = "exit-9"\nrole = "exit"\nuplink = "serial"\n'
            'serial_port = "rfc2217://127.0.0.1:4000"\n',
        )
    )
    owner = port_owner(config, "rfc2217://127.0.0.1:4000")
    assert owner is not None
    assert owner.id == "exit-9"
    assert port_owner(config, "rfc2217://127.0.0.1:4001") is None


def write_password_file(config: SiteConfig, usernames: list[str]) -> Path:
    """Write ``<data_dir>/run/mosquitto.passwd`` with only ``usernames`` in it.

    The lines have the format of SiteCredentials.render_password_file, which
    the box's mosquitto start writes for every account.
    """
    credentials = SiteCredentials(credentials_path(config))
    path = config.data_dir / "run" / "mosquitto.passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            f"{name}:{hash_password(credentials.account(name).password)}\n"
            for name in usernames
        )
    )
    return path


def set_mtime(path: Path, seconds: float) -> None:
    os.utime(path, (seconds, seconds))


def test_box_has_reader_reads_password_file(site_file: Path) -> None:
    registered = register_request(site_file, request())
    config = registered.config
    reader_id = registered.reader.id
    assert not box_has_reader(site_file, config, reader_id)

    with fake_box(config.data_dir):
        lock = config.data_dir / "nightbox.lock"
        now = time.time()
        set_mtime(site_file, now - 30)
        set_mtime(lock, now - 20)
        passwords = write_password_file(config, ["reader-exit-1"])
        set_mtime(passwords, now - 10)
        assert not box_has_reader(site_file, config, reader_id)

        passwords = write_password_file(config, ["reader-exit-1", "reader-exit-3"])
        set_mtime(passwords, now - 10)
        assert box_has_reader(site_file, config, reader_id)

        # Written before the box's latest start: the embedded broker runs.
        set_mtime(passwords, now - 25)
        assert not box_has_reader(site_file, config, reader_id)

        # The site file changed after the box's broker started.
        set_mtime(passwords, now - 10)
        set_mtime(site_file, now - 5)
        assert not box_has_reader(site_file, config, reader_id)

        # Another password than the credentials file's.
        set_mtime(site_file, now - 30)
        passwords.write_text("reader-exit-3:" + hash_password("old password") + "\n")
        set_mtime(passwords, now - 10)
        assert not box_has_reader(site_file, config, reader_id)
