"""A bounded ring of batches kept for replay while the uplink is down.

When the ring is full, the oldest batch is dropped and counted in
``dropped``: recent sightings matter more at an exit than old ones.
"""


class Ring:
    """First-in, first-out store of at most ``capacity`` items."""

    def __init__(self, capacity):
        self._items = [None] * capacity
        self._capacity = capacity
        self._head = 0
        self._count = 0
        self.dropped = 0

    def __len__(self):
        return self._count

    def push(self, item):
        """Append ``item``; drop the oldest item when the ring is full."""
        if self._count == self._capacity:
            self._items[self._head] = None
            self._head = (self._head + 1) % self._capacity
            self._count -= 1
            self.dropped += 1
        self._items[(self._head + self._count) % self._capacity] = item
        self._count += 1

    def peek(self):
        """Return the oldest item, or None when the ring is empty."""
        if not self._count:
            return None
        return self._items[self._head]

    def pop(self):
        """Remove and return the oldest item, or None when the ring is empty."""
        item = self.peek()
        if item is not None:
            self._items[self._head] = None
            self._head = (self._head + 1) % self._capacity
            self._count -= 1
        return item

    def items(self):
        """Return the items oldest first, as a new list."""
        return [
            self._items[(self._head + i) % self._capacity] for i in range(self._count)
        ]
