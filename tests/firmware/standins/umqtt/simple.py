"""Stand-in for micropython-lib's ``umqtt.simple`` with a recording broker.

``MQTTClient`` has the real API (connect, set_last_will, set_callback,
publish, subscribe, check_msg, wait_msg, ping, disconnect). It talks to
``broker``, a fake broker that records every packet and that a test drives:
``deliver`` queues a message for a subscriber, ``drop`` breaks the
connection so the next call raises OSError, ``down`` refuses connects.
In relay mode (``use_relay``) the client forwards each call over the
Node.js process's stdio to a real broker instead, and ``relay_stop`` turns
true when the test requests the scenario to finish.
"""

import json


class MQTTException(Exception):
    pass


class _Socket:
    def __init__(self):
        self.open = True
        self.blocking = True

    def setblocking(self, flag):
        self.blocking = flag

    def close(self):
        self.open = False


class Broker:
    """A recording broker with one client session at a time."""

    def __init__(self):
        self.connects = []
        self.published = []
        self.retained = {}
        self.subscriptions = {}
        self.subscribe_calls = []
        self.pings = 0
        self.down = False
        self.socket = None
        self.client = None
        self.queue = []
        self.will = None
        self.disconnects = 0

    def connect(self, client, clean_session):
        if self.down:
            raise OSError(111)
        self.connects.append(
            {
                "client_id": client.client_id,
                "server": client.server,
                "port": client.port,
                "user": client.user,
                "password_set": bool(client.pswd),
                "keepalive": client.keepalive,
                "clean_session": clean_session,
                "will": [
                    client.lw_topic,
                    client.lw_msg,
                    client.lw_retain,
                    client.lw_qos,
                ],
            }
        )
        if clean_session:
            self.subscriptions = {}
        self.socket = _Socket()
        self.client = client
        self.will = (client.lw_topic, client.lw_msg, client.lw_retain, client.lw_qos)
        return self.socket

    def check(self, socket):
        if socket is None or socket is not self.socket or not socket.open:
            raise OSError(-1)

    def publish(self, topic, msg, retain, qos):
        self.published.append((topic, bytes(msg), retain, qos))
        if retain:
            self.retained[topic] = bytes(msg)

    def drop(self, forget_session=True):
        """Break the connection as a lost link or a broker restart does.

        The last will is published, and with ``forget_session`` the
        subscriptions are gone, as on a broker without persistence.
        """
        if self.socket is not None:
            self.socket.open = False
        self.socket = None
        if self.will is not None and self.will[0]:
            topic, msg, retain, qos = self.will
            self.publish(topic, msg, retain, qos)
        if forget_session:
            self.subscriptions = {}

    def deliver(self, topic, msg):
        """Queue a message; it reaches the client if it subscribed to ``topic``."""
        if topic in self.subscriptions:
            self.queue.append((topic, msg))
            return True
        return False


broker = Broker()
_relay = None


def clear():
    """Start a fresh fake broker."""
    global broker
    broker = Broker()


def use_relay(call):
    """Forward every client call through ``call(json_text) -> json_text``."""
    global _relay
    _relay = call


relay_stop = False


def _relay_call(request):
    global relay_stop
    response = json.loads(_relay(json.dumps(request)))
    relay_stop = response.get("stop", False)
    if response.get("error"):
        raise OSError(response["error"])
    return response


class MQTTClient:
    """The umqtt.simple client API over the fake broker or the relay."""

    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,
    ):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.sock = None
        self.server = server
        self.port = port
        self.ssl = ssl
        self.pid = 0
        self.cb = None
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2
        assert topic
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def connect(self, clean_session=True):
        if _relay is not None:
            _relay_call(
                {
                    "op": "connect",
                    "client_id": self.client_id,
                    "host": self.server,
                    "port": self.port,
                    "user": self.user,
                    "password": self.pswd,
                    "keepalive": self.keepalive,
                    "clean_session": clean_session,
                    "will": [
                        self.lw_topic,
                        _text(self.lw_msg),
                        self.lw_retain,
                        self.lw_qos,
                    ],
                }
            )
            self.sock = _Socket()
            return 0
        self.sock = broker.connect(self, clean_session)
        return 0

    def disconnect(self):
        if _relay is not None:
            _relay_call({"op": "disconnect"})
        else:
            broker.check(self.sock)
            broker.disconnects += 1
            broker.will = None
            broker.socket = None
        self.sock.close()

    def ping(self):
        if _relay is None:
            broker.check(self.sock)
            broker.pings += 1

    def publish(self, topic, msg, retain=False, qos=0):
        if isinstance(msg, str):
            msg = msg.encode()
        if _relay is not None:
            _relay_call(
                {
                    "op": "publish",
                    "topic": topic,
                    "payload": _text(msg),
                    "retain": retain,
                    "qos": qos,
                }
            )
            return
        broker.check(self.sock)
        broker.publish(topic, msg, retain, qos)

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        if _relay is not None:
            _relay_call({"op": "subscribe", "topic": topic, "qos": qos})
            return
        broker.check(self.sock)
        broker.subscribe_calls.append((topic, qos))
        broker.subscriptions[topic] = qos

    def wait_msg(self):
        if _relay is not None:
            response = _relay_call({"op": "check"})
            message = response.get("message")
            if message is None:
                return None
            self.cb(message[0].encode(), message[1].encode())
            return 0x30
        broker.check(self.sock)
        if not broker.queue:
            return None
        topic, msg = broker.queue.pop(0)
        if isinstance(msg, str):
            msg = msg.encode()
        self.cb(topic.encode(), msg)
        return 0x30

    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()


def _text(value):
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    return value
