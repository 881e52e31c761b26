"""``manage.py federation_rotate_key``: a new signing key; the old one stays valid until expiry."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from federation.identity import instance_key_rotate
from federation.remote import peers_announce_keys


class Command(BaseCommand):
    help = "Create a new key version, keep older keys valid for --grace-days, tell ACTIVE peers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace-days", type=int, default=settings.FLOTILLA_FEDERATION_KEY_GRACE_DAYS
        )
        parser.add_argument(
            "--no-announce", action="store_true", help="do not send the new keys to ACTIVE peers"
        )

    def handle(self, *args: object, grace_days: int, no_announce: bool, **options: object) -> None:
        new, retiring = instance_key_rotate(grace_days=grace_days)
        self.stdout.write(f"new key version {new.version}")
        for key in retiring:
            # The rotation gave every retiring key an expiry.
            expires = key.expires_at.isoformat() if key.expires_at else "never"
            self.stdout.write(f"key version {key.version} expires {expires}")
        if no_announce or not retiring:
            return
        for instance_id, error in peers_announce_keys(sign_version=retiring[-1].version):
            state = f"failed: {error}" if error else "told"
            self.stdout.write(f"peer {instance_id}: {state}")
