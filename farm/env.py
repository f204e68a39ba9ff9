"""Where the farm's Redis is, read from ``FARM_*`` variables without pydantic.

:class:`farm.config.Settings` reads every knob; the light commands (``farm status``, which a
pipeline may run on every poll) need only these two, and use the same rules through here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PREFIX = "farm_"
URL_SCHEMES = ("redis://", "rediss://", "unix://")
EVERYWHERE = os.sep  # the allowed root of the embedded default: any path its user may write


def variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``FARM_LEASE_TTL_S=10`` as ``{"lease_ttl_s": "10"}``; names in any case."""
    env = os.environ if environ is None else environ
    return {
        name.lower().removeprefix(PREFIX): value
        for name, value in env.items()
        if name.lower().startswith(PREFIX)
    }


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "gvl-farm"


def check_redis_url(url: str | None) -> str | None:
    if url and not url.startswith(URL_SCHEMES):
        raise ValueError(
            "FARM_REDIS_URL must start with redis://, rediss:// or unix:// (for example "
            "redis://localhost:6379/0)"
        )
    return url or None


def redis_location() -> tuple[str | None, Path]:
    """The configured Redis URL (None: the embedded default) and the state directory."""
    found = variables()
    state = found.get("state_dir")
    return check_redis_url(found.get("redis_url")), Path(state) if state else default_state_dir()
