"""Topic names of the Nightbox bus; ``docs/mqtt.md`` documents each one.

Every topic starts with ``nightbox/<site>/``. Building them here, and only
here, keeps the services, the simulator and the ACLs in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "nightbox"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder for one site."""

    site: str

    @property
    def prefix(self) -> str:
        """``nightbox/<site>``."""
        return f"{ROOT}/{self.site}"

    def availability(self, kind: str, device_id: str) -> str:
        """Retained ``online``/``offline`` of a device, set by its last will."""
        return f"{self.prefix}/{kind}/{device_id}/availability"

    def status(self, kind: str, device_id: str) -> str:
        """Retained health of a device as JSON."""
        return f"{self.prefix}/{kind}/{device_id}/status"

    def reply(self, kind: str, device_id: str) -> str:
        """Return the topic where a device receives replies to its requests."""
        return f"{self.prefix}/{kind}/{device_id}/reply"

    def sightings(self, reader_id: str) -> str:
        """Batched sightings from one reader."""
        return f"{self.prefix}/reader/{reader_id}/sightings"

    @property
    def all_sightings(self) -> str:
        """Filter for every reader's sightings."""
        return f"{self.prefix}/reader/+/sightings"

    @property
    def all_reader_status(self) -> str:
        """Filter for every reader's retained status."""
        return f"{self.prefix}/reader/+/status"

    @property
    def clock(self) -> str:
        """The box's time beacon, which readers set their clocks from."""
        return f"{self.prefix}/clock"

    def event(self, event_type: str) -> str:
        """Committed facts of one type, published from the outbox."""
        return f"{self.prefix}/events/{event_type}"

    @property
    def all_events(self) -> str:
        """Filter for every event."""
        return f"{self.prefix}/events/#"

    def api(self, service: str, action: str) -> str:
        """Name of a service action, as callers pass it to ``Bus.request``.

        Requests travel on the sender's own topic, :meth:`device_api`.
        """
        return f"{self.prefix}/api/{service}/{action}"

    def device_api(self, kind: str, device_id: str, service: str, action: str) -> str:
        """Topic on which a device sends its requests for a service action.

        The ACL lets only that device publish under its own
        ``<kind>/<id>/api/``, so the topic proves who sent the request.
        """
        return f"{self.prefix}/{kind}/{device_id}/api/{service}/{action}"

    @property
    def all_requests(self) -> str:
        """Filter for every device's requests."""
        return f"{self.prefix}/+/+/api/+/+"

    def creator_figures(self, creator_id: str) -> str:
        """Retained live sales and drop claims of one creator, by set."""
        return f"{self.prefix}/creators/{creator_id}/figures"

    def box_topic(self, box_id: str, suffix: str) -> str:
        """Return a topic of one box: ``nightbox/<site>/box/<box>/<suffix>``."""
        return f"{self.prefix}/box/{box_id}/{suffix}"

    def command(self, box_id: str, name: str) -> str:
        """Return the topic of the signed command ``name`` for one box."""
        return self.box_topic(box_id, f"cmnd/{name}")

    def command_result(self, box_id: str) -> str:
        """Return the topic of the results of a box's commands and bundles."""
        return self.box_topic(box_id, "stat/result")

    def telemetry(self, box_id: str) -> str:
        """Return the topic of a box's retained periodic telemetry."""
        return self.box_topic(box_id, "tele/state")

    def sync_state(self, box_id: str) -> str:
        """Return the topic of a box's retained sync backlog and last success."""
        return self.box_topic(box_id, "tele/sync")

    def stream_state(self, box_id: str) -> str:
        """Return the topic of a box's retained camera studio state."""
        return self.box_topic(box_id, "tele/stream")

    def upstream_event(self, box_id: str, event_type: str) -> str:
        """Return the upstream topic of one box's outbox events of a type."""
        return self.box_topic(box_id, f"events/{event_type}")

    def bundle(self, box_id: str | None, bundle_type: str) -> str:
        """Return the topic of signed bundles for one box, or for the whole site."""
        if box_id is None:
            return f"{self.prefix}/bundle/{bundle_type}"
        return self.box_topic(box_id, f"bundle/{bundle_type}")

    @property
    def health(self) -> str:
        """Retained list of open health faults on the site."""
        return f"{self.prefix}/box/health"
