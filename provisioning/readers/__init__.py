"""Reader provisioning: the reader bundle, and setting up an ESP32 reader from the box.

:func:`build_bundle` and :func:`verify_bundle` make and check the bundle
kept in ``<data_dir>/reader-bundle``. :func:`provision_reader` turns a blank
or MicroPython board into a configured reader of the site.
:func:`survey_readers` reads every reader's retained status from the box's
broker for ``nightbox reader list``.
"""

from provisioning.readers._errors import (
    BoardError,
    BoardNotFoundError,
    BoardTimeoutError,
    BundleError,
    ReaderArgumentError,
    ReaderSetupError,
)
from provisioning.readers.bundle import (
    DEFAULT_INDEX,
    BundleManifest,
    build_bundle,
    read_firmware_version,
    verify_bundle,
)
from provisioning.readers.provision import (
    ProvisionResult,
    default_bundle_folder,
    provision_reader,
)
from provisioning.readers.reader_file import reader_settings
from provisioning.readers.registration import ReaderRequest

__all__ = [
    "DEFAULT_INDEX",
    "BoardError",
    "BoardNotFoundError",
    "BoardTimeoutError",
    "BundleError",
    "BundleManifest",
    "ProvisionResult",
    "ReaderArgumentError",
    "ReaderRequest",
    "ReaderSetupError",
    "build_bundle",
    "default_bundle_folder",
    "provision_reader",
    "read_firmware_version",
    "reader_settings",
    "verify_bundle",
]
