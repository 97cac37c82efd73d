"""handlers.py - the bench's Python handlers (bench/server.sh W1-python,
W3-python): the same calls as the C echo and sleep plugins."""
import time

__all__ = ["echo", "sleep"]


def echo(*args):
    """echo.echo: the params back, as the C echo plugin."""
    return args


def sleep(ms):
    """sleep.sleep [ms]: sleeps (releasing the GIL), returns ms."""
    time.sleep(ms / 1000)
    return ms
