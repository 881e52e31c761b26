"""HTTP for the hub's own outbound requests: every connection goes to a vetted address.

``outbound_session()`` is a ``requests.Session`` whose connections resolve
their host through ``netguard.outbound.host_resolve`` and connect to one of
the addresses it vetted, so the check happens at the one moment that
matters, for every connection the session opens: the first one, a
reconnection, and each hop of a redirect. TLS still verifies the certificate
against the host name. The session ignores proxy settings from the
environment: a proxy would make the connection, and the check, elsewhere.
"""

import socket
from typing import Any, NoReturn

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from netguard.outbound import OutboundRefused, host_resolve

__all__ = ["OutboundRefused", "outbound_session"]

MAX_REDIRECTS = 5


class _VettedHTTPConnection(HTTPConnection):
    """Resolve and vet the host, then connect to a vetted address only."""

    def _new_conn(self) -> socket.socket:
        try:
            addresses = host_resolve(self.host, self.port)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        failure: Exception = NewConnectionError(self, f"{self.host} has no address")
        for address in addresses:
            try:
                return connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError:
                failure = ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                )
            except OSError as error:
                failure = NewConnectionError(self, f"Failed to establish a new connection: {error}")
        raise failure


class _VettedHTTPSConnection(_VettedHTTPConnection, HTTPSConnection):
    """TLS over a vetted connection: ``_new_conn`` comes first in the MRO."""


class _VettedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _VettedHTTPConnection


class _VettedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _VettedHTTPSConnection


class _VettedAdapter(HTTPAdapter):
    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _VettedHTTPConnectionPool,
            "https": _VettedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> NoReturn:
        raise OutboundRefused("the hub's outbound requests go through no proxy")


def outbound_session() -> requests.Session:
    """A session for URLs the hub did not choose itself: webhooks, peers, the coordinator.

    A refused address raises ``OutboundRefused`` from the request call, which
    is not a ``requests.RequestException``: callers catch both.
    """
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = MAX_REDIRECTS
    adapter = _VettedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
