"""The box's SQLite store: schema migrations, transactions and the outbox."""

from appliance.store._database import Store, Transaction
from appliance.store._outbox import OutboxEvent

__all__ = ["OutboxEvent", "Store", "Transaction"]
