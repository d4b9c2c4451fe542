"""Nightbox wristband reader firmware for an ESP32 running MicroPython 1.2x.

The reader scans BLE adverts, keeps those of the site's wristbands and sends
one sightings batch per interval to the box, over Wi-Fi and MQTT 3.1.1 or
over the USB serial line. A kit reader also answers a button press with the
box's verdict on a green or red light.

Modules: ``config`` (``/reader.json``), ``adverts`` (band identities),
``scanner`` (the BLE radio), ``aggregate`` (per-band summaries), ``ring``
(batches kept while the uplink is down), ``clock`` (time from the box),
``health`` (status fields), ``frames`` (serial frames), ``uplink_mqtt`` and
``uplink_serial`` (the two uplinks), ``kit`` (the kit station), ``update``
(firmware updates from the box) and ``app`` (the tasks and the watchdog).
"""

FW_VERSION = "1.0.0"
