"""The optional login (``serve --auth``): one user, one password, decided once by the CLI.

Standard library only: the CLI reads it before it starts the default run's precompute, which
must not wait for the dashboard's imports. ``dashboard/security.py`` asks for it on every request.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from dataclasses import dataclass, field

LOGIN_USER = "layerscope"
LOGIN_REALM = "LayerScope"
PASSWORD_VARIABLE = "LAYERSCOPE_PASSWORD"


@dataclass(frozen=True)
class BasicAuth:
    """The one login the server asks for. ``generated``: the password was made at start (and
    must be shown to whoever started the server), not taken from ``LAYERSCOPE_PASSWORD``."""

    password: str = field(repr=False)
    generated: bool = False
    user: str = LOGIN_USER

    def header(self) -> dict[str, str]:
        """The Authorization header of this login (the server's own request to itself)."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def accepts(self, user: str, password: str) -> bool:
        # Both compared in constant time, and both always compared: how long a refusal takes
        # says nothing about which half was wrong. Bytes, since compare_digest refuses non-ASCII
        # str and a password from the environment may be any text.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok & password_ok


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
