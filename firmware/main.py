"""Board entry point and boot loader: MicroPython runs this file after boot.py.

The firmware package ``nbreader`` lives in ``/lib`` as provisioned, or in
``/fw/a`` or ``/fw/b`` after an update from the box. ``/fw/boot.json``
names the active folder::

    {"active": "/fw/a", "version": "1.1.0", "previous": "/lib",
     "previous_version": "1.0.0", "trial": 3}

``trial`` is present while a new firmware has not yet reported healthy: it
counts the boots it has left. Each boot on trial takes one. A boot that
finds none left switches back to ``previous`` and records the version that
failed, so the running firmware does not download it again. The firmware
removes ``trial`` once it has connected and published its status
(``nbreader.update``). Without the file, or with one that cannot be read,
the board runs ``/lib``.

This file is not replaced by an update from the box, because a loader that
fails could not switch back. ``nightbox reader provision`` replaces it.
"""

import sys

BOOT_FILE = "/fw/boot.json"
FACTORY_FOLDER = "/lib"


def read_state(path=BOOT_FILE):
    """Return the boot state as a dict, or None when it is missing or unreadable."""
    import json

    try:
        with open(path) as file:
            state = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return state if type(state) is dict else None


def write_state(state, path=BOOT_FILE):
    """Write the boot state as a temporary file renamed over the old one."""
    import json
    import os

    partial = path + ".new"
    with open(partial, "w") as file:
        file.write(json.dumps(state))
    try:
        os.rename(partial, path)
    except OSError:
        # FAT cannot rename over an existing file; littlefs, the ESP32's
        # default, can, so this path is taken only on FAT.
        os.remove(path)
        os.rename(partial, path)


def _has_firmware(folder):
    import os

    try:
        os.stat(folder + "/nbreader/__init__.py")
    except OSError:
        return False
    return True


def select_folder(path=BOOT_FILE):
    """Pick the firmware folder for this boot; return ``(folder, on_trial)``.

    Takes one boot from a trial, or switches back to the previous folder
    when the trial has none left.
    """
    state = read_state(path)
    if state is None:
        return FACTORY_FOLDER, False
    active = state.get("active")
    if type(active) is not str or not _has_firmware(active):
        return FACTORY_FOLDER, False
    trial = state.get("trial")
    if type(trial) is not int:
        return active, False
    if trial > 0:
        state["trial"] = trial - 1
        write_state(state, path)
        return active, True
    previous = state.get("previous")
    if type(previous) is not str or not _has_firmware(previous):
        previous = FACTORY_FOLDER
    print(
        "nbreader: firmware %s in %s never reported healthy; back to %s"
        % (state.get("version"), active, previous)
    )
    write_state(
        {
            "active": previous,
            "version": state.get("previous_version"),
            "failed": state.get("version"),
            "failed_folder": active,
        },
        path,
    )
    return previous, False


def use_folder(folder):
    """Put ``folder`` first on ``sys.path``, so ``nbreader`` is imported from it."""
    if folder != FACTORY_FOLDER and folder not in sys.path:
        sys.path.insert(0, folder)


def start():
    """Select the folder and run the reader; reset a trial boot that fails."""
    folder, on_trial = select_folder()
    use_folder(folder)
    try:
        import nbreader.app

        nbreader.app.main()
    except Exception as err:
        sys.print_exception(err)
        if not on_trial:
            raise
    if on_trial:
        # The new firmware stopped before it reported healthy: the next
        # boot takes another try, or switches back.
        import machine

        machine.reset()


if __name__ == "__main__":
    start()
