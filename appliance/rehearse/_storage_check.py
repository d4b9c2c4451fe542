"""The storage check: free space on the box's data folder against the night's needs.

The store and its logs get a fixed margin. With a studio, the clips kept
on disk and the HLS segments of the live window are added at the
configured bitrate, because both are written to the same card.
"""

from __future__ import annotations

import shutil

from appliance.rehearse._checks import Context, Outcome, failed, passed

_MIB = 1024 * 1024
# The SQLite store, its WAL and the logs of one night, with room to spare.
STORE_MARGIN_BYTES = 256 * _MIB
# The AAC bitrate of the studio's sound (hardware.camera.CameraSettings).
_AUDIO_KBPS = 96
# HLS keeps its window of segments plus the one being written and one
# being deleted.
_EXTRA_SEGMENTS = 2
# The maximum number of clip files per ``clips_keep`` while sync is down:
# clips_keep uploaded and twice clips_keep waiting of the triggered clips,
# and clips_keep uploaded set-end clips. Waiting set-end clips come on top.
_CLIP_FILES_PER_KEEP = 4


def needed_bytes(studio: object | None, *, sets: int = 0) -> tuple[int, dict[str, int]]:
    """Return the bytes the night needs on the data folder, and their parts.

    ``sets`` is the number of the night's sets, each of which may leave a
    set-end clip waiting for upload.
    """
    parts = {"store": STORE_MARGIN_BYTES}
    if studio is not None:
        kbps = int(getattr(studio, "bitrate_kbps", 0))
        if getattr(studio, "audio", "none") != "none":
            kbps += _AUDIO_KBPS
        bytes_per_s = kbps * 1000 // 8
        clip_s = float(getattr(studio, "clip_seconds", 0.0))
        clips_keep = int(getattr(studio, "clips_keep", 0))
        segments = int(getattr(studio, "hls_window", 0)) + _EXTRA_SEGMENTS
        segment_s = float(getattr(studio, "segment_s", 0.0))
        clip_files = _CLIP_FILES_PER_KEEP * clips_keep + sets
        parts["clips"] = int(clip_files * clip_s * bytes_per_s)
        parts["hls"] = int(segments * segment_s * bytes_per_s)
    return sum(parts.values()), parts


async def check_storage(context: Context) -> Outcome:
    """Check that the data folder's file system has room for the night."""
    config = context.target.config
    usage = shutil.disk_usage(config.data_dir)
    commerce = getattr(config, "commerce", None)
    sets = len(getattr(commerce, "sets", ()))
    need, parts = needed_bytes(getattr(config, "studio", None), sets=sets)
    facts = {
        "path": str(config.data_dir),
        "free_bytes": usage.free,
        "needed_bytes": need,
        "needed_by_part": parts,
    }
    described = ", ".join(
        f"{name} {size / _MIB:.0f} MiB" for name, size in parts.items()
    )
    if usage.free < need:
        return failed(
            f"{usage.free / _MIB:.0f} MiB free on {config.data_dir}, but the night "
            f"needs {need / _MIB:.0f} MiB ({described}); free space on the card or "
            "lower studio.clips_keep",
            **facts,
        )
    return passed(
        f"{usage.free / _MIB:.0f} MiB free on {config.data_dir}, "
        f"{need / _MIB:.0f} MiB needed ({described})",
        **facts,
    )
