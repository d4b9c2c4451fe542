"""The Wi-Fi uplink: ``network.WLAN`` and ``umqtt.robust`` (MQTT 3.1.1).

The reader logs in as ``reader-<id>`` with the password from
``/reader.json``. Its last will is a retained ``offline`` on its
availability topic. Every connect publishes a retained ``online`` and
subscribes to the reader's reply topic and to the box's clock beacon.

umqtt.robust reconnects inside ``publish`` and ``check_msg`` but does not
subscribe again, and its reconnect loop would block every task until the
broker is back. The client here makes one reconnect attempt, so a failure
reaches the uplink task as OSError, and it marks a successful reconnect so
the uplink subscribes and announces itself again.
"""

import time

from micropython import const

# A join that has not completed after this long is started again.
_JOIN_RETRY_MS = const(15000)
# A ping is sent after this long without a packet to the broker, well
# inside the 60 s keepalive.
_PING_AFTER_MS = const(30000)


def _client_class(robust):
    class _ReconnectingClient(robust.MQTTClient):
        reconnected = False

        def reconnect(self):
            # One attempt: raises OSError when the broker is unreachable.
            self.connect(False)
            self.reconnected = True

        def delay(self, attempt):
            pass

    return _ReconnectingClient


class MqttUplink:
    """Publishes the reader's channels as MQTT topics and receives replies.

    ``on_message(channel, payload)`` gets ``"clock"``, ``"reply"``,
    ``"firmware-manifest"`` and ``"firmware-chunk"`` messages.
    ``network_module`` and ``robust_module`` default to the board's
    ``network`` and ``umqtt.robust``.
    """

    name = "wifi"
    # The box's firmware offer reaches the reader over this uplink.
    firmware_updates = True
    # umqtt.simple sends payloads of up to 2 MB; batches are never split.
    max_payload = None

    def __init__(self, config, on_message, network_module=None, robust_module=None):
        if network_module is None:
            import network as network_module
        if robust_module is None:
            import umqtt.robust as robust_module
        self._config = config
        self._network = network_module
        self._client_type = _client_class(robust_module)
        self.on_message = on_message
        prefix = "nightbox/%s/reader/%s/" % (config.site, config.reader)
        self._prefix = prefix
        self.reply_topic = prefix + "reply"
        self.clock_topic = "nightbox/%s/clock" % config.site
        self.manifest_topic = "nightbox/%s/firmware/manifest" % config.site
        self.chunk_topic = prefix + "firmware/chunk"
        self._wlan = None
        self._client = None
        self._joining = False
        self._join_started_ms = 0
        self._last_packet_ms = 0
        self._ever_connected = False
        self.connected = False
        self.reconnects = 0
        # Incremented by every new broker session, so the app sends
        # its status again.
        self.sessions = 0

    def topic(self, channel):
        """Return the MQTT topic of a reader channel such as ``"sightings"``."""
        return self._prefix + channel

    def connect(self):
        """Join Wi-Fi, then connect to the broker; return True when connected.

        Returns False while the Wi-Fi join is still in progress. Raises
        OSError (or the client's MQTTException) when the broker connection
        fails.
        """
        if self._wlan is None:
            self._wlan = self._network.WLAN(self._network.STA_IF)
        if not self._wlan.isconnected():
            now_ms = time.ticks_ms()
            if (
                not self._joining
                or time.ticks_diff(now_ms, self._join_started_ms) > _JOIN_RETRY_MS
            ):
                self._joining = True
                self._join_started_ms = now_ms
                self._wlan.active(True)
                self._wlan.connect(self._config.wifi_ssid, self._config.wifi_password)
            return False
        self._joining = False
        self._close_client()
        client = self._client_type(
            "reader-" + self._config.reader,
            self._config.broker_host,
            port=self._config.broker_port,
            user=self._config.broker_username,
            password=self._config.broker_password,
            keepalive=60,
        )
        client.set_callback(self._deliver)
        client.set_last_will(self.topic("availability"), b"offline", retain=True, qos=1)
        # NOTE: umqtt.simple uses blocking sockets without a timeout, so a
        # broker or link that stops replying blocks this connect, or a QoS 1
        # publish waiting for its PUBACK, until the hardware watchdog resets
        # the board.
        client.connect()
        self._client = client
        self._announce()
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.connected = True
        self._last_packet_ms = time.ticks_ms()
        return True

    def _announce(self):
        client = self._client
        client.reconnected = False
        self.sessions += 1
        client.publish(self.topic("availability"), b"online", True, 1)
        client.subscribe(self.reply_topic, 1)
        client.subscribe(self.clock_topic, 0)
        client.subscribe(self.chunk_topic, 1)
        client.subscribe(self.manifest_topic, 1)

    def _deliver(self, topic, message):
        if isinstance(topic, (bytes, bytearray)):
            topic = bytes(topic).decode()
        if topic == self.reply_topic:
            self.on_message("reply", message)
        elif topic == self.clock_topic:
            self.on_message("clock", message)
        elif topic == self.chunk_topic:
            self.on_message("firmware-chunk", message)
        elif topic == self.manifest_topic:
            self.on_message("firmware-manifest", message)

    def _after_call(self):
        if self._client.reconnected:
            # robust reconnected inside the call: the new session may have
            # no subscriptions, so subscribe and announce again.
            self.reconnects += 1
            self._announce()

    def publish(self, channel, payload, retain=False, qos=1):
        """Publish ``payload`` on the reader's ``channel`` topic.

        Raises OSError when the connection is lost and one reconnect
        attempt failed; the uplink is then marked disconnected.
        """
        try:
            self._client.publish(self.topic(channel), payload, retain, qos)
            self._after_call()
        except OSError:
            self._lost()
            raise
        self._last_packet_ms = time.ticks_ms()

    def poll(self):
        """Deliver waiting messages; check Wi-Fi and keep the session alive.

        Raises OSError when the connection is lost and one reconnect
        attempt failed.
        """
        if not self._wlan.isconnected():
            self._lost()
            raise OSError("Wi-Fi connection to %r lost" % self._config.wifi_ssid)
        try:
            while self._client.check_msg() is not None:
                pass
            self._after_call()
            if time.ticks_diff(time.ticks_ms(), self._last_packet_ms) > _PING_AFTER_MS:
                self._client.ping()
                self._last_packet_ms = time.ticks_ms()
        except OSError:
            self._lost()
            raise

    def _lost(self):
        self.connected = False
        self._close_client()

    def _close_client(self):
        if self._client is not None:
            try:
                self._client.sock.close()
            except (OSError, AttributeError):
                pass
            self._client = None

    def close(self):
        """Disconnect cleanly, so the broker does not send the last will."""
        if self._client is not None and self.connected:
            try:
                self._client.publish(self.topic("availability"), b"offline", True, 1)
                self._client.disconnect()
            except OSError:
                pass
        self._client = None
        self.connected = False
