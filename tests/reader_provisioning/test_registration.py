"""Reader requests checked against the site, and the site file's [[readers]] rewrite."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from appliance.config import load_config
from provisioning.readers import ReaderArgumentError, ReaderRequest
from provisioning.readers.registration import (
    ensure_broker_account,
    register_reader,
    reload_box,
    running_box_pid,
    validate_request,
)
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


HOLDER = """
import fcntl, os, signal, sys, time
path, marker = sys.argv[1], sys.argv[2]
handle = open(path, "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.truncate(0)
handle.write(f"{os.getpid()}\\n")
handle.flush()
signal.signal(signal.SIGHUP, lambda *_: open(marker, "w").close())
print("locked", flush=True)
for _ in range(600):
    if os.path.exists(marker):
        break
    time.sleep(0.05)
"""


def test_running_box_gets_sighup(site_file: Path) -> None:
    import subprocess
    import sys
    import time

    config = load_config(site_file)
    config.data_dir.mkdir(parents=True)
    marker = site_file.parent / "hup-received"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            str(config.data_dir / "nightbox.lock"),
            str(marker),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert running_box_pid(config) == holder.pid
        assert reload_box(config) == holder.pid
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
    finally:
        holder.kill()
        holder.wait()
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
