"""``manage.py peers list|connect URL|accept ID|reject ID|suspend ID|disconnect ID``."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from federation.errors import FederationError
from federation.remote import peer_connect
from federation.selectors import peer_list
from federation.services import PEER_ACTIONS, peer_transition


class Command(BaseCommand):
    help = "List peer hubs, connect to one, or accept/reject/suspend/disconnect one."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        commands.add_parser("list", help="list peers")
        connect = commands.add_parser("connect", help="connect to the hub at URL")
        connect.add_argument("url")
        for action in PEER_ACTIONS:
            sub = commands.add_parser(action, help=f"{action} a peer by id or instance id")
            sub.add_argument("peer")
            sub.add_argument("--reason", default="")

    def handle(self, *args: object, action: str, **options: object) -> None:
        actor = "system:manage.py peers"
        try:
            if action == "list":
                for peer in peer_list():
                    seen = peer.last_seen.isoformat() if peer.last_seen else "never"
                    self.stdout.write(
                        f"{peer.id}  {peer.instance_id:<24} {peer.state:<12} "
                        f"{peer.url}  last seen {seen}"
                    )
                return
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

    def _peer_id(self, reference: str) -> str:
        match = peer_list().filter(instance_id=reference).first()
        return str(match.id) if match else reference
