"""A rejected private key of any format is never served by the patch download.

The secret scan flags a PuTTY or SSH2 key by its header line only; the key's
body carries no value of its own, so the masking must take it with the header.
"""

from agents.patches import patch_mask

BODY = [
    "AAAAB3NzaC1yc2EAAAADAQABAAABAQDQk9f3vX2mZs8qLr0aXw1yTtB7pE3nKfU5hG8c",
    "AAABAQCkR2x9sLm4pQ0vW7nF1aJ8dE6tY3uK5oH2gZ9cX4bV0rM1iN7wS6yT8eL3fD2q",
]


def _diff(lines: list[str]) -> str:
    added = "".join(f"+{line}\n" for line in lines)
    return (
        "diff --git a/id.ppk b/id.ppk\nnew file mode 100644\nindex 0000000..1111111\n"
        f"--- /dev/null\n+++ b/id.ppk\n@@ -0,0 +1,{len(lines)} @@\n{added}"
    )


def test_a_putty_private_key_body_is_not_served():
    key = [
        "PuTTY-User-Key-File-2: ssh-rsa",
        "Encryption: none",
        "Private-Lines: 2",
        *BODY,
        "Private-MAC: 0123456789abcdef0123456789abcdef01234567",
    ]
    masked, count, _ = patch_mask(_diff(key))
    assert count >= 1  # the scan found the key
    for line in BODY:
        assert line not in masked


def test_an_ssh2_private_key_body_is_not_served():
    key = [
        "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----",
        *BODY,
        "---- END SSH2 ENCRYPTED PRIVATE KEY ----",
    ]
    masked, count, _ = patch_mask(_diff(key))
    assert count >= 1
    for line in BODY:
        assert line not in masked
