"""``nightbox update boot-check`` and ``status``, and the ``[update]`` table.

The slots here hold a ``slot.json`` and a venv whose ``bin/python`` links
to the test's Python: boot-check reads only those, so no wheel is built.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import orjson
import pytest

from appliance.cli import main
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.update.config import UpdateConfig
from appliance.update.results import UpdateResult, record_result
from appliance.update.updater import UpdateFailed, Updater, systemd_reset_command

SITE = """\
[site]
id = "test"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"
"""


def make_slot(app_dir: Path, name: str, version: str) -> None:
    python = app_dir / name / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    marker = {
        "version": version,
        "complete": True,
        "installed_at": "2027-01-01T00:00:00Z",
    }
    (app_dir / name / "slot.json").write_bytes(orjson.dumps(marker))


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """slot-a with 0.1.0 and active, slot-b with 0.2.0."""
    folder = tmp_path / "app"
    make_slot(folder, "slot-a", "0.1.0")
    make_slot(folder, "slot-b", "0.2.0")
    (folder / "current").symlink_to("slot-a")
    write_state(folder, {"active": "slot-a", "trying": None, "previous": None})
    return folder


@pytest.fixture
def site_file(tmp_path: Path, app_dir: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        SITE + f'\n[update]\napp_dir = "{app_dir}"\nupdates_dir = "updates"\n'
    )
    return path


def write_state(app_dir: Path, state: dict[str, object]) -> None:
    (app_dir / "state.json").write_bytes(orjson.dumps(state))


def read_state(app_dir: Path) -> dict[str, object]:
    return orjson.loads((app_dir / "state.json").read_bytes())


def boot_check(site_file: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["update", "boot-check", "--config", str(site_file)]) == 0
    return capsys.readouterr().out


def test_consistent_slots_unchanged(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (app_dir / "state.json").read_bytes()

    output = boot_check(site_file, capsys)

    assert "nothing changed" in output
    assert (app_dir / "state.json").read_bytes() == before
    assert os.readlink(app_dir / "current") == "slot-a"


def test_pending_trial_switched_back(
    app_dir: Path, site_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir / "current").unlink()
    (app_dir / "current").symlink_to("slot-b")
    write_state(
        app_dir,
        {
            "active": "slot-a",
            "trying": "slot-b",
            "previous": "slot-a",
            "trying_version": "0.2.0",
            "trial_started_at": "2027-01-01T00:00:00Z",
        },
    )

    output = boot_check(site_file, capsys)

    assert "the trial of 0.2.0 in slot-b did not finish" in output
    assert os.readlink(app_dir / "current") == "slot-a"
    assert read_state(app_dir) == {"active": "slot-a", "trying": None, "previous": None}
    results = orjson.loads((tmp_path / "updates" / "results.json").read_bytes())
    assert results["last"]["result"] == "switched-back"
    assert results["last"]["reason"] == "interrupted"
    assert results["counts"] == {"interrupted": 1}


def test_current_on_incomplete_slot_repaired(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir / "slot-a" / "slot.json").unlink()

    output = boot_check(site_file, capsys)

    assert "switched to slot-b" in output
    assert os.readlink(app_dir / "current") == "slot-b"
    assert read_state(app_dir)["active"] == "slot-b"


def test_missing_state_rebuilt_from_link(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir / "state.json").unlink()
    (app_dir / "current").unlink()
    (app_dir / "current").symlink_to("slot-b")

    output = boot_check(site_file, capsys)

    assert "state.json was missing or invalid" in output
    assert read_state(app_dir) == {"active": "slot-b", "trying": None, "previous": None}
    assert os.readlink(app_dir / "current") == "slot-b"


def test_corrupt_state_and_leftovers_repaired(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir / "state.json").write_bytes(b'{"active": "slot-')
    leftover = app_dir / ".incoming-abc123"
    (leftover / "wheels").mkdir(parents=True)
    (leftover / "wheels" / "part.whl").write_bytes(b"half")

    output = boot_check(site_file, capsys)

    assert "removed the leftover extraction folder .incoming-abc123" in output
    assert not leftover.exists()
    assert read_state(app_dir)["active"] == "slot-a"


def test_no_complete_slot_fails(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir / "slot-a" / "slot.json").unlink()
    (app_dir / "slot-b" / "slot.json").write_bytes(b'{"complete": false}')

    code = main(["update", "boot-check", "--config", str(site_file)])

    assert code == 2
    assert "neither slot" in capsys.readouterr().err


def test_current_folder_named_with_fix(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir / "current").unlink()
    (app_dir / "current").mkdir()
    (app_dir / "current" / "kept.txt").write_text("left by hand\n")

    code = main(["update", "boot-check", "--config", str(site_file)])
    error = capsys.readouterr().err

    assert code == 2
    assert f"{app_dir / 'current'} is a folder" in error
    assert "move it away" in error
    assert (app_dir / "current" / "kept.txt").exists()


def test_boot_check_leaves_running_update_alone(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_state(app_dir, {"active": "slot-a", "trying": "slot-b", "previous": "slot-a"})
    descriptor = os.open(app_dir, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        output = boot_check(site_file, capsys)
        with pytest.raises(UpdateFailed, match="busy"):
            Updater(load_config(site_file).update, None).apply(app_dir / "x.nbu")
    finally:
        os.close(descriptor)

    assert "an update is running" in output
    assert read_state(app_dir)["trying"] == "slot-b"


def test_status_prints_slots(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()

    code = main(["update", "status", "--config", str(site_file)])
    output = capsys.readouterr().out
    main(["update", "status", "--json", "--config", str(site_file)])
    document = orjson.loads(capsys.readouterr().out)

    assert code == 0
    assert "Active slot:        slot-a" in output
    assert "slot-a:             0.1.0 (installed 2027-01-01T00:00:00Z)" in output
    assert "slot-b:             0.2.0" in output
    assert "Last result:        none" in output
    assert document["slots"]["slot-b"]["version"] == "0.2.0"
    assert document["current"] == "slot-a"


def test_status_result_without_version(
    app_dir: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    updates = site_file.parent / "updates"
    record_result(updates, UpdateResult("rejected", None, "unreadable", "no file"))
    capsys.readouterr()

    main(["update", "status", "--config", str(site_file)])
    output = capsys.readouterr().out

    assert "Last result:        rejected, unreadable at " in output


def test_status_without_slots_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    site = tmp_path / "plain.toml"
    site.write_text(SITE)

    code = main(["update", "status", "--config", str(site), "--app-dir", str(empty)])
    captured = capsys.readouterr()

    assert code == 2
    assert f"{empty} has no application slots" in captured.err
    assert "Active slot" not in captured.out


def test_boot_check_works_with_broken_site_file(
    app_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\n")
    (app_dir / "current").unlink()

    code = main(
        ["update", "boot-check", "--config", str(broken), "--app-dir", str(app_dir)]
    )

    assert code == 0
    assert os.readlink(app_dir / "current") == "slot-a"


def test_update_table_parsed(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        SITE
        + """
[update]
app_dir = "slots"
public_key = "/etc/nightbox/other.pub"
health_timeout_s = 30
restart_command = ["/usr/bin/true"]
bundle_dirs = ["usb"]
"""
    )

    config = load_config(path).update

    assert config.app_dir == tmp_path / "slots"
    assert config.public_key == Path("/etc/nightbox/other.pub")
    assert config.health_timeout_s == 30
    assert config.restart_command == ("/usr/bin/true",)
    assert config.bundle_dirs == (tmp_path / "usb",)
    assert config.updates_dir == UpdateConfig().updates_dir


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("restart_command = []", "update.restart_command"),
        ('restart_command = "systemctl restart"', "array of non-empty strings"),
        ("health_timeout_s = 0", "update.health_timeout_s"),
        ("bundle_dirs = [1]", "update.bundle_dirs"),
        ('app_dir = " "', "update.app_dir is empty"),
        ("colour = 1", "unknown key 'colour'"),
    ],
)
def test_update_table_errors(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE + f"\n[update]\n{line}\n")

    with pytest.raises(ConfigError, match=words):
        load_config(path)


def test_update_defaults_match_image() -> None:
    config = UpdateConfig()

    assert config.app_dir == Path("/var/lib/nightbox/app")
    assert config.public_key == Path("/etc/nightbox/update-key.pub")
    assert config.health_timeout_s == 90
    assert config.restart_command == ("systemctl", "restart", "nightbox.service")


def test_systemctl_restart_resets_start_limit() -> None:
    restart = ["systemctl", "restart", "nightbox.service"]

    assert systemd_reset_command(restart) == [
        "systemctl",
        "reset-failed",
        "nightbox.service",
    ]
    assert systemd_reset_command(["/bin/systemctl", "restart", "a", "b"]) == [
        "/bin/systemctl",
        "reset-failed",
        "a",
        "b",
    ]
    assert systemd_reset_command(["systemctl", "start", "nightbox.service"]) is None
    assert systemd_reset_command(["/usr/local/bin/restart-box"]) is None
