"""Stand-in for micropython-lib's ``umqtt.robust``, with its reconnect rules.

As in the real module, ``publish``, ``wait_msg`` and ``check_msg`` catch
OSError, call ``reconnect()`` (which calls ``connect(False)`` until it
works, pausing with ``delay``) and try again. Nothing here subscribes
again after a reconnect, which is the behaviour the firmware must cover.
"""

from . import simple


class MQTTClient(simple.MQTTClient):
    DELAY = 2
    DEBUG = False
    reconnect_calls = 0

    def delay(self, attempt):
        pass

    def log(self, in_reconnect, error):
        pass

    def reconnect(self):
        attempt = 0
        while True:
            try:
                return self.connect(False)
            except OSError as error:
                self.log(True, error)
                attempt += 1
                self.delay(attempt)

    def publish(self, topic, msg, retain=False, qos=0):
        while True:
            try:
                return super().publish(topic, msg, retain, qos)
            except OSError as error:
                self.log(False, error)
            self.reconnect()

    def wait_msg(self):
        while True:
            try:
                return super().wait_msg()
            except OSError as error:
                self.log(False, error)
            self.reconnect()

    def check_msg(self, attempts=2):
        while attempts:
            self.sock.setblocking(False)
            try:
                return super().wait_msg()
            except OSError as error:
                self.log(False, error)
            self.reconnect()
            attempts -= 1
