"""Scenario helpers: run named cases and print their results as JSON lines.

Each line is ``@@`` and a JSON object with ``case`` and either ``result``
or ``error`` (the MicroPython traceback). Stand-ins are cleared before
every case.
"""

import io
import json
import sys

import bluetooth
import machine
import network
import umqtt.simple


def emit(record):
    """Print one result record."""
    print("@@" + json.dumps(record))


def clear_standins():
    """Reset every stand-in to its state at boot."""
    machine.clear()
    bluetooth.clear()
    network.clear()
    umqtt.simple.clear()


async def run_cases(cases):
    """Run ``(name, function)`` pairs; a function may be a coroutine function."""
    for name, function in cases:
        clear_standins()
        try:
            result = function()
            if hasattr(result, "send"):
                result = await result
            emit({"case": name, "result": result})
        except Exception as err:
            text = io.StringIO()
            sys.print_exception(err, text)
            emit({"case": name, "error": text.getvalue()})
