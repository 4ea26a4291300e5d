"""`visionq gateway`: run the HTTP gateway under uvicorn."""
from __future__ import annotations

import ipaddress
from types import FrameType
from typing import Callable

import uvicorn

from tasks.settings import Settings


UVICORN_STARTUP_FAILURE = 3  # uvicorn.main.STARTUP_FAILURE: it could not bind, or the app's startup failed
# Asked to stop, the gateway ends its event streams and waits at once; requests still running
# after this long (a slow upload) are cut, so a rolling restart never waits for a SIGKILL.
GRACEFUL_SHUTDOWN_S = 30


class GatewayRefused(ValueError):
    """The gateway would start unsafe (no keys, or --no-auth off loopback), or could not start."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    """uvicorn's, which also ends the gateway's event streams and waits when asked to stop: their
    keep-alives would hold it open for as long as their clients stay connected."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def serve(host: str = "127.0.0.1", port: int = 8080, *, no_auth: bool = False, settings: Settings | None = None) -> int:
    from producer.gateway.app import create_app
    from producer.gateway.keys import KeyStore

    settings = settings or Settings.from_env()
    if no_auth and not is_loopback(host):
        raise GatewayRefused(f"--no-auth is refused on {host}: only a loopback host (127.0.0.1, ::1) may run without keys")
    app = create_app(settings, no_auth=no_auth)
    if not no_auth and not KeyStore(app.state.services.redis, settings.redis_prefix).any_keys():
        raise GatewayRefused(
            "no API keys exist: create one with `visionq keys create TENANT` (or use --no-auth on loopback)"
        )
    # Behind a load balancer, X-Forwarded-* from it are trusted (uvicorn's --forwarded-allow-ips).
    config = uvicorn.Config(app, host=host, port=port, log_level="info", proxy_headers=True,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    try:
        _Server(config, app.state.services.stop_following).run()
    except SystemExit as exc:
        if exc.code == UVICORN_STARTUP_FAILURE:  # its own exit status, which docs/cli.md gives to "no such job"
            raise GatewayRefused(f"could not start on {host}:{port} (the error above: e.g. the port is in use)") from None
        raise
    return 0
