"""Running the mock: in a background thread (tests, `gateway serve`) or in the foreground.

Both use werkzeug's threaded server on purpose: it hands the client's socket to
the app (`werkzeug.socket`), which is what lets the mock drop a connection after
receiving a Bundle, and it needs no extra process.
"""
from __future__ import annotations

import logging
import threading

from werkzeug.serving import BaseWSGIServer, make_server

from gateway.mock_upstream.app import create_mock_app
from gateway.mock_upstream.config import MockConfig
from gateway.mock_upstream.upstream import MockUpstream

log = logging.getLogger("gateway.mock_upstream")


class MockServer:
    """A mock upstream listening on `host:port`; `url` is the base the gateway posts to."""

    def __init__(self, server: BaseWSGIServer, mock: MockUpstream, host: str) -> None:
        self._server = server
        self.mock = mock
        self.host = host
        self.port: int = server.server_port
        self.url = f"http://{_url_host(host)}:{self.port}/fhir"
        self.root = f"http://{_url_host(host)}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.1}, name=f"mock-upstream-{self.port}", daemon=True)

    def start(self) -> MockServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, stop processing, release the database. Safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        self.mock.close()

    def __enter__(self) -> MockServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve_mock(config: MockConfig | None = None, host: str = "127.0.0.1",
               port: int = 0) -> MockServer:
    """Start the mock in a background thread and return at once; port 0 picks a free one."""
    app = create_mock_app(config)
    server = make_server(host, port, app, threaded=True)
    running = MockServer(server, app.extensions["mock"], host).start()
    log.info("Mock upstream listening on %s", running.url)
    return running


def run_mock(host: str = "127.0.0.1", port: int = 8091,
             config: MockConfig | None = None) -> None:
    """Serve the mock in the foreground until interrupted (`gateway mock-upstream`)."""
    app = create_mock_app(config)
    server = make_server(host, port, app, threaded=True)
    mock: MockUpstream = app.extensions["mock"]
    print(f"Mock upstream (ЕГИСЗ) on http://{_url_host(host)}:{server.server_port}/fhir  "
          f"stats: /_mock/stats", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        mock.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
