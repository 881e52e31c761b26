"""``manage.py peers list|fingerprint|connect URL|accept ID|reject ID|suspend ID|disconnect ID``."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from federation.documents import PublishedKey, key_fingerprints
from federation.errors import FederationError
from federation.identity import identity_keys
from federation.remote import peer_connect
from federation.selectors import peer_list
from federation.services import PEER_ACTIONS, peer_transition


class Command(BaseCommand):
    help = (
        "List peer hubs with their key fingerprints, print this hub's own, connect to a hub, "
        "or accept/reject/suspend/disconnect one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        commands.add_parser("list", help="list peers and their key fingerprints")
        commands.add_parser(
            "fingerprint", help="this hub's own key fingerprints, for a peer's admin to compare"
        )
        connect = commands.add_parser("connect", help="connect to the hub at URL")
        connect.add_argument("url")
        for action in PEER_ACTIONS:
            sub = commands.add_parser(action, help=f"{action} a peer by id or instance id")
            sub.add_argument("peer")
            sub.add_argument("--reason", default="")

    def handle(self, *args: object, action: str, **options: object) -> None:
        actor = "system:manage.py peers"
        if action == "list":
            self._list()
            return
        if action == "fingerprint":
            self._fingerprints(identity_keys())
            return
        try:
            if action == "connect":
                peer = peer_connect(url=str(options["url"]), actor=actor)
            else:
                peer = peer_transition(
                    peer_id=self._peer_id(str(options["peer"])),
                    action=action,
                    actor=actor,
                    reason=str(options["reason"]),
                )
        except FederationError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"{peer.id}  {peer.instance_id}  {peer.state}")
        self._fingerprints(peer.keys)

    def _list(self) -> None:
        for peer in peer_list():
            seen = peer.last_seen.isoformat() if peer.last_seen else "never"
            self.stdout.write(
                f"{peer.id}  {peer.instance_id:<24} {peer.state:<12} {peer.url}  last seen {seen}"
            )
            self._fingerprints(peer.keys)

    def _fingerprints(self, keys: list[PublishedKey]) -> None:
        for key in key_fingerprints(keys):
            self.stdout.write(f"    {key['key_id']}  {key['fingerprint']}")

    def _peer_id(self, reference: str) -> str:
        match = peer_list().filter(instance_id=reference).first()
        return str(match.id) if match else reference
