"""Reads and atomic rewrites of the site's TOML configuration file.

Remote commands and configuration bundles change the file through these
functions. Every change is validated by parsing the whole changed document
with :func:`appliance.config.parse_config` before anything is written. A
change of ``site.id`` or ``box.id`` is rejected, because the box's store,
broker accounts and fleet identity belong to them. A change of
``box.data_dir`` or of the ``[broker]``, ``[sync]`` and ``[fleet]`` tables is
rejected too (:data:`LOCAL_ONLY_KEYS`), because after a restart it could
leave the box with an empty store or with no way to reach its operators.

Keys are dotted paths into the document's tables: ``wallet.max_charge``,
``checkout.threshold_dbm``. An array (such as the array of tables
``[[readers]]``) is addressed by a zero-based index: ``readers.0.threshold_dbm``
is the first reader's threshold. Only existing array elements can be
addressed; :func:`append_array_table` adds a new one, such as a new reader.

A rewrite drops the comments of the file, because tomli-w writes only the
data. An appended element keeps the file's text and comments. The file as
it was before is kept next to it as ``<name>.previous``.

Values of keys whose name ends in ``_key`` (``eid_identity_key``) are secret
key material: :func:`config_get` returns them as :data:`HIDDEN`, and error
messages never quote them.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import os
import re
import tempfile
import threading
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from appliance.config import SiteConfig, parse_config, read_toml_file
from appliance.errors import ConfigError
from provisioning.secret_file import sync_folder

# Keys that name the box's identity (see the module docstring).
FIXED_KEYS = ("site.id", "box.id")
# Keys and tables that only an edit of the file on the box may change, with
# the reason. A key below one of them (sync.broker) is included.
LOCAL_ONLY_KEYS = {
    "box.data_dir": (
        "it holds the box's store, broker passwords, token key and upstream credentials"
    ),
    "broker": "the box's readers and terminals connect to the broker it names",
    "sync": (
        "it names the upstream broker and credentials that remote commands "
        "and bundles arrive through"
    ),
    "fleet": (
        "it lists the operator keys that remote commands are verified with and "
        "sets how often the box reports"
    ),
}
# Marks a key that a document leaves out.
_ABSENT = object()
# The text that replaces a secret value in what config_get returns.
HIDDEN = "<hidden>"
# The valid format of each secret key, for the error messages that cannot
# quote the value.
_SECRET_FORMATS = {"eid_identity_key": "16 bytes as 32 hex digits"}
# The key at the start of an error message, such as
# "bands.registered[0].eid_identity_key".
_MESSAGE_SUBJECT = re.compile(r"[A-Za-z0-9_.\[\]-]+")
# The default of box.id in appliance.config.parse_config.
_DEFAULT_BOX_ID = "box-1"
# TOML integers are signed 64-bit.
_TOML_INT_MIN = -(2**63)
_TOML_INT_MAX = 2**63 - 1

# One writer at a time in this process: a command and a bundle may arrive at
# once, and each reads the file, changes it and writes it back.
_WRITE_LOCK = threading.Lock()


def config_get(config_path: Path, key: str | None) -> Any:
    """Return the value at the dotted ``key``, or the whole document for None.

    Secret values are replaced by :data:`HIDDEN`, in a single value and in
    every table and array below it. Raises ConfigError when the key is
    malformed or not in the file. A key that the file leaves out takes its
    default, which this function does not know, so the error message states
    that unset keys take defaults.
    """
    document = read_toml_file(config_path)
    if key is None:
        return hide_secrets(document)
    parts = _split_key(key)
    node: Any = document
    for depth, part in enumerate(parts):
        node = _child(node, part, key, parts[:depth])
    return hide_secrets(node, parts[-1])


def file_error(config_path: Path) -> str | None:
    """Validate the file as ``nightbox run`` does, and return its error or None.

    The message quotes no secret value.
    """
    document: dict[str, Any] = {}
    try:
        document = read_toml_file(config_path)
        _validate(document, config_path)
    except ConfigError as err:
        return str(_without_secrets(err, document))
    return None


def is_secret_key(name: str) -> bool:
    """Return whether the value of key ``name`` is secret key material.

    Such names end in ``_key``. ``fleet.operator_keys`` lists the paths of
    public key files, which are not secret, and its name ends in ``_keys``.
    """
    return name.endswith("_key")


def hide_secrets(value: Any, name: str | None = None) -> Any:
    """Return ``value`` with every secret value replaced by HIDDEN.

    ``name`` is the key of ``value``. A secret key's whole value is hidden,
    whatever its type.
    """
    if name is not None and is_secret_key(name):
        return HIDDEN
    if isinstance(value, dict):
        return {child: hide_secrets(item, child) for child, item in value.items()}
    if isinstance(value, list):
        return [hide_secrets(item) for item in value]
    return value


def config_set(config_path: Path, key: str, value: Any) -> SiteConfig:
    """Set the dotted ``key`` to ``value`` and rewrite the file atomically.

    ``value`` None removes the key, so its default applies again. Missing
    tables on the way are created. Returns the validated configuration of
    the new file. Raises ConfigError, and leaves the file unchanged, when
    the key is malformed or fixed, the value is not representable in TOML,
    or the changed document is invalid.
    """
    parts = _split_key(key)
    if key in FIXED_KEYS:
        raise ConfigError(
            f"{key} cannot be changed remotely; it names this box's store and "
            "accounts, so change it on the box and provision it again"
        )
    for local_key, reason in LOCAL_ONLY_KEYS.items():
        if key == local_key or key.startswith(local_key + "."):
            raise ConfigError(
                f"{key} can be changed only in the configuration file on the "
                f"box, not remotely, because {reason}"
            )
    try:
        if value is not None:
            _check_toml_value(value, key)
        with _WRITE_LOCK:
            document = read_toml_file(config_path)
            changed = copy.deepcopy(document)
            _assign(changed, parts, value, key)
            # A key such as "box" replaces a whole table, data_dir included.
            _reject_local_only_change(document, changed)
            config = _validate(changed, config_path)
            # A key such as "box" replaces a whole table, identity included.
            _reject_identity_change(config, *_identity(document))
            _write_atomically(config_path, changed)
            return config
    except ConfigError as err:
        raise _without_secrets(err, {parts[-1]: value}) from None


def replace_config(
    config_path: Path, document: dict[str, Any], *, site_id: str, box_id: str
) -> SiteConfig:
    """Replace the whole file with ``document`` after validating it.

    ``site_id`` and ``box_id`` are the running box's; a document naming
    another site or box is rejected before any other check. The keys of
    :data:`LOCAL_ONLY_KEYS` must have the values of the current file. Returns
    the validated configuration. Raises ConfigError, and leaves the file
    unchanged, for anything invalid.
    """
    if not isinstance(document, dict):
        raise ConfigError(
            f"a configuration document must be a table, not {type(document).__name__}"
        )
    reject_other_identity(document, site_id=site_id, box_id=box_id)
    try:
        _check_toml_value(document, "the configuration document")
        with _WRITE_LOCK:
            _reject_local_only_change(read_toml_file(config_path), document)
            config = _validate(document, config_path)
            _reject_identity_change(config, site_id, box_id)
            _write_atomically(config_path, document)
            return config
    except ConfigError as err:
        raise _without_secrets(err, document) from None


class NotAnArrayOfTablesError(ConfigError):
    """The file writes a key as an inline array, so no ``[[key]]`` can follow."""


def append_array_table(
    config_path: Path, key: str, table: dict[str, Any], *, site_id: str, box_id: str
) -> SiteConfig:
    """Append ``table`` as a new ``[[key]]`` element at the end of the file.

    Unlike :func:`replace_config`, the file's text and comments stay as they
    are: the new element is added as text after them. A symlinked
    ``config_path`` keeps its link, as in :func:`_write_atomically`. The
    whole result is parsed and validated first. Returns the validated
    configuration. Raises NotAnArrayOfTablesError when ``key`` is written as
    an inline array, and ConfigError when the result is invalid; either
    leaves the file unchanged.
    """
    _check_toml_value(table, f"the new [[{key}]] table")
    block = f"\n[[{key}]]\n" + tomli_w.dumps(table)
    with _WRITE_LOCK:
        old_text = config_path.read_text(encoding="utf-8")
        new_text = old_text + ("" if old_text.endswith("\n") else "\n") + block
        try:
            document = tomllib.loads(new_text)
        except tomllib.TOMLDecodeError as err:
            raise NotAnArrayOfTablesError(
                f"{key} in {config_path} is not an array of tables, so a new "
                f"[[{key}]] cannot be added after it: {err}"
            ) from None
        config = _validate(document, config_path)
        _reject_identity_change(config, site_id, box_id)
        target = _write_target(config_path)
        mode = target.stat().st_mode & 0o777
        previous = target.with_name(target.name + ".previous")
        _replace_with(previous, old_text.encode("utf-8"), mode)
        _replace_with(target, new_text.encode("utf-8"), mode)
        sync_folder(target.parent)
        return config


def reject_other_identity(
    document: dict[str, Any], *, site_id: str, box_id: str
) -> None:
    """Raise ConfigError unless ``document`` names this site and this box.

    It reads the raw values, so it can run before the document is validated.
    """
    document_site, document_box = _identity(document)
    if document_site != site_id:
        raise ConfigError(
            f"site.id = {document_site!r:.40} differs from this box's site "
            f"{site_id!r}; site.id cannot be changed remotely"
        )
    if document_box != box_id:
        raise ConfigError(
            f"box.id = {document_box!r:.40} differs from this box's id "
            f"{box_id!r}; box.id cannot be changed remotely, and a configuration "
            "document is for one box, so send it to that box only"
        )


def _reject_local_only_change(current: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ConfigError naming the first key of LOCAL_ONLY_KEYS that differs.

    The parsed values are compared, so formatting and comments do not count,
    and a table that is left out equals an empty one.
    """
    for key, reason in LOCAL_ONLY_KEYS.items():
        if _local_value(current, key) != _local_value(new, key):
            raise ConfigError(
                f"{key} differs from the configuration file on the box, but "
                f"{key} can be changed only in that file, not remotely, because "
                f"{reason}"
            )


def _local_value(document: dict[str, Any], key: str) -> Any:
    node: Any = document
    for part in key.split("."):
        node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
    if node is _ABSENT and "." not in key:
        return {}
    return node


def _without_secrets(error: ConfigError, source: dict[str, Any]) -> ConfigError:
    """Return ``error``, or an error that quotes no secret value of ``source``.

    The exception is raised ``from None`` by the callers, so no traceback
    carries the original message either.
    """
    message = str(error)
    subject = _MESSAGE_SUBJECT.match(message)
    name = subject.group().rsplit(".", 1)[-1] if subject else ""
    if subject and is_secret_key(name):
        expected = _SECRET_FORMATS.get(name, "a valid value")
        return ConfigError(
            f"{subject.group()} is invalid, and its value is not repeated "
            f"because it is secret key material; give {expected}"
        )
    # A message about another key might still quote a secret string.
    hidden = message
    for secret in _secret_values(source):
        if isinstance(secret, str):
            hidden = hidden.replace(repr(secret), HIDDEN)
    return error if hidden == message else ConfigError(hidden)


def _secret_values(value: Any, name: str | None = None) -> list[Any]:
    if name is not None and is_secret_key(name):
        return [value]
    if isinstance(value, dict):
        return [
            secret
            for child, item in value.items()
            for secret in _secret_values(item, child)
        ]
    if isinstance(value, list):
        return [secret for item in value for secret in _secret_values(item)]
    return []


def _identity(document: dict[str, Any]) -> tuple[Any, Any]:
    """Return the raw site.id and effective box.id of a parsed document."""
    site = document.get("site")
    box = document.get("box")
    site_id = site.get("id") if isinstance(site, dict) else None
    box_id = box.get("id", _DEFAULT_BOX_ID) if isinstance(box, dict) else None
    return site_id, box_id


def _reject_identity_change(config: SiteConfig, site_id: Any, box_id: Any) -> None:
    if config.site_id != site_id:
        raise ConfigError(
            f"site.id = {config.site_id!r} differs from this box's site "
            f"{site_id!r}; site.id cannot be changed remotely"
        )
    if config.box_id != box_id:
        raise ConfigError(
            f"box.id = {config.box_id!r} differs from this box's id "
            f"{box_id!r}; box.id cannot be changed remotely"
        )


def _validate(document: dict[str, Any], config_path: Path) -> SiteConfig:
    return parse_config(copy.deepcopy(document), base_dir=config_path.parent)


def _split_key(key: Any) -> list[str]:
    if not isinstance(key, str) or not key:
        raise ConfigError(
            f"key {key!r:.80} is invalid; give a dotted path such as "
            "'wallet.max_charge' or 'readers.0.threshold_dbm'"
        )
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(
            f"key {key!r:.80} has an empty part; give a dotted path such as "
            "'wallet.max_charge'"
        )
    return parts


def _child(node: Any, part: str, key: str, path: list[str]) -> Any:
    where = ".".join(path) or "the top level"
    if isinstance(node, dict):
        if part not in node:
            raise ConfigError(
                f"{key} is not set in the configuration file ({part!r} not found "
                f"in {where}); unset keys take their defaults"
            )
        return node[part]
    if isinstance(node, list):
        return node[_index(part, node, key, where)]
    raise ConfigError(f"{key}: {where} is a value, not a table or an array")


def _index(part: str, array: list[Any], key: str, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(
            f"{key}: {where} is an array; address an element by its index "
            f"({where}.0 is the first), not by {part!r}"
        )
    index = int(part)
    if index >= len(array):
        raise ConfigError(
            f"{key}: {where} has {len(array)} elements, so index {index} does "
            "not exist; elements cannot be added by key, so replace the "
            "whole document"
        )
    return index


def _assign(document: dict[str, Any], parts: list[str], value: Any, key: str) -> None:
    node: Any = document
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, dict):
            if part not in node and value is not None:
                node[part] = {}
            elif part not in node:
                return  # Removing a key that is not there changes nothing.
            node = node[part]
        elif isinstance(node, list):
            node = node[_index(part, node, key, where)]
        else:
            raise ConfigError(f"{key}: {where} is a value, not a table or an array")
    last = parts[-1]
    where = ".".join(parts[:-1]) or "the top level"
    if isinstance(node, dict):
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list):
        index = _index(last, node, key, where)
        if value is None:
            raise ConfigError(
                f"{key}: array elements cannot be removed by key; replace the "
                "whole document"
            )
        node[index] = value
    else:
        raise ConfigError(f"{key}: {where} is a value, not a table or an array")


def _check_toml_value(value: Any, where: str) -> None:
    """Raise ConfigError unless tomli-w can write ``value`` as TOML."""
    if isinstance(value, bool | str | datetime.date | datetime.time):
        return
    if isinstance(value, int):
        if not _TOML_INT_MIN <= value <= _TOML_INT_MAX:
            raise ConfigError(
                f"{where} = {value} is outside the signed 64-bit range of whole "
                f"numbers ({_TOML_INT_MIN} to {_TOML_INT_MAX}) that TOML holds"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        if value.is_integer() and not _TOML_INT_MIN <= value <= _TOML_INT_MAX:
            # orjson reads a JSON integer outside the 64-bit range as a float,
            # so the signer's exact digits are lost before the box receives them.
            raise ConfigError(
                f"{where} = {value!r} is outside the signed 64-bit range of "
                f"whole numbers ({_TOML_INT_MIN} to {_TOML_INT_MAX}); give a "
                "number within it"
            )
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            if item is None:
                raise ConfigError(f"{where}[{index}] is null; TOML has no null value")
            _check_toml_value(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{where} has a non-string key {name!r:.40}")
            if item is None:
                raise ConfigError(
                    f"{where}.{name} is null; TOML has no null value, so leave "
                    "the key out"
                )
            _check_toml_value(item, f"{where}.{name}")
        return
    raise ConfigError(
        f"{where} has a value of type {type(value).__name__}, which TOML cannot "
        "hold; use a string, number, boolean, array or table"
    )


def _write_atomically(config_path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``config_path`` so a power cut leaves one whole file.

    The old bytes go to ``<name>.previous`` first. The new text is written to
    a temporary file in the same folder, flushed to disk and renamed over
    the old file, and the folder is synced so the rename itself survives.
    A symlinked ``config_path`` keeps its link: the file it points to is
    replaced, with ``.previous`` beside that file.
    """
    text = tomli_w.dumps(document)
    target = _write_target(config_path)
    try:
        mode = target.stat().st_mode & 0o777
        old = target.read_bytes()
    except FileNotFoundError:
        mode, old = 0o644, None
    if old is not None:
        previous = target.with_name(target.name + ".previous")
        _replace_with(previous, old, mode)
    _replace_with(target, text.encode("utf-8"), mode)
    sync_folder(target.parent)


def _write_target(config_path: Path) -> Path:
    """Return the file that a write to ``config_path`` replaces, symlinks resolved.

    Renaming a new file over a symlink would replace the link itself and
    leave the file it points to unchanged.
    """
    return Path(os.path.realpath(config_path))


def _replace_with(path: Path, data: bytes, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
