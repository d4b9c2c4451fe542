"""Sightings batches: built at the end of each interval, rendered when sent.

A batch keeps its times as ``ticks_ms`` values with the clock base that
was current when it was built (None before the first clock message). It is
rendered to the JSON envelope only when the uplink sends it, so a batch
built before the clock was synced gets box time, and a batch sent again
after a reconnect keeps its original ``seq`` and times.
"""

import json


class Batch:
    """One interval: ``seq``, end time, ``heard`` and the band sightings."""

    def __init__(self, seq, end_ticks, heard, sightings, base):
        self.seq = seq
        self.end_ticks = end_ticks
        self.heard = heard
        # A list of (ticks_ms, band_key, json_tail); see Aggregator.take.
        self.sightings = sightings
        self.base = base


def render(batch, reader, boot, clock):
    """Return the batch's envelope as JSON text (docs/mqtt.md "Sightings batch").

    The envelope ``id`` is ``<boot>-<seq>``, so a batch sent twice carries
    the same id. ``batch.base`` is set from ``clock`` first if it is None.
    """
    if batch.base is None:
        batch.base = clock.base
    t = clock.text(batch.end_ticks, batch.base)
    parts = []
    for ticks, _band, tail in batch.sightings:
        parts.append('{"t":' + clock.text(ticks, batch.base) + tail)
    src = json.dumps("reader/" + reader)
    return (
        '{"v":1,"id":"%s-%d","ts":%s,"src":%s,"data":{"reader":%s,"boot":"%s",'
        '"seq":%d,"t":%s,"heard":%d,"sightings":[%s]}}'
        % (
            boot,
            batch.seq,
            t,
            src,
            json.dumps(reader),
            boot,
            batch.seq,
            t,
            batch.heard,
            ",".join(parts),
        )
    )
