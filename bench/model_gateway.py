"""Model gateway overhead: a streamed Messages API call through an agent's gateway versus direct.

Usage: ``.venv/bin/python bench/model_gateway.py [--calls 100] [--chars 600] [--gap-ms 2]``;
prints one JSON object.

A local Messages API server (tests/messages_server.py, its own process)
streams each reply as server-sent events (a text of ``--chars`` characters
comes in 16-character deltas). A client (its own process, as a sandbox's CLI
is) makes streamed calls alternately (a) straight to the server over TCP and
(b) through an agent's gateway over its Unix socket with the agent's token,
each on a kept-alive connection. The gateway runs in this process on its own
thread, as it does in a worker: it checks the token, prices the model, swaps
the key, relays the stream and meters its usage. Added latency is the
gateway's median minus the direct median: to the first byte, and in what the
client waited for the whole call beyond the server's own time for it (from
its request's arrival to its reply's last byte, which the server stamps on
the same monotonic clock), so that how long the server took, which varies
on a busy machine, does not count.

Two runs: ``paced``, where the server pauses ``--gap-ms`` between events as a
model generating tokens does (the target: a p50 under 5 ms added per call),
and ``burst``, where it sends every event at once, which measures how fast
the gateway relays a backlog of events rather than what a call waits.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.messages_server import message_events, text_reply  # noqa: E402

SERVER = r"""
import json, sys
from tests.messages_server import MessagesServer, text_reply, usage
chars, gap_s = int(sys.argv[1]), float(sys.argv[2])
with MessagesServer() as server:
    reported = usage(1200, 300, 0, 4000)
    server.default = text_reply("x" * chars, usage_data=reported, event_delay_s=gap_s)
    print(server.url, flush=True)
    sys.stdin.readline()
    # When each request arrived and its reply was all sent (CLOCK_MONOTONIC, as the client's).
    print(json.dumps([[each["received_at"], each["replied_at"]] for each in server.requests]))
"""

CLIENT = r"""
import json, sys, time
import httpx2
direct_url, socket_path, token, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
        "messages": [{"role": "user", "content": "fix the failing test"}]}
direct = httpx2.Client(base_url=direct_url)
gateway = httpx2.Client(base_url="http://gateway", transport=httpx2.HTTPTransport(uds=socket_path))
headers = {"x-api-key": token, "anthropic-version": "2023-06-01"}
made = []

def call(client, name):
    started = time.monotonic()
    with client.stream("POST", "/v1/messages", json=body, headers=headers) as response:
        first = None
        for chunk in response.iter_raw():
            first = first or time.monotonic()
        assert response.status_code == 200, response.status_code
    made.append([name, started, first, time.monotonic()])

for number in range(calls + 10):
    for client, name in ((direct, "direct"), (gateway, "gateway"))[:: 1 if number % 2 else -1]:
        call(client, name)
print(json.dumps(made))
"""


def setup_django(data: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
    os.environ["DATA_DIR"] = str(data)
    import django

    django.setup()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
    }


def measure(*, calls: int, chars: int, gap_s: float) -> dict:
    """One run: the client's calls, against the server's own time for each reply."""
    from django.conf import settings

    from agents.gateway.service import gateway_close, gateway_open, gateway_socket_path

    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(chars), str(gap_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    agent_id = str(uuid.uuid4())
    usages: list[dict] = []
    try:
        url = server.stdout.readline().strip()
        settings.ANTHROPIC_BASE_URL = url
        settings.ANTHROPIC_API_KEY = "sk-ant-bench-" + "0" * 32
        socket_path = gateway_socket_path(agent_id=agent_id)
        token = gateway_open(
            agent_id=agent_id,
            provider="anthropic",
            socket_path=socket_path,
            budget_usd=None,
            spent_usd=Decimal(0),
            on_usage=usages.append,
        )
        cpu = os.times()
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, url, str(socket_path), token, str(calls)],
            capture_output=True,
            text=True,
            env=environment,
            check=True,
        )
        after = os.times()
        gateway_close(agent_id=agent_id)
        served, _ = server.communicate("dump\n", timeout=60)
    finally:
        server.kill()
        server.wait()
    made = json.loads(client.stdout)
    server_times = json.loads(served)
    return summary(
        made,
        server_times,
        calls,
        gap_s,
        after.user + after.system - cpu.user - cpu.system,
        len(usages),
    )


def summary(
    made: list, server_times: list, calls: int, gap_s: float, cpu_s: float, usages: int
) -> dict:
    """Per call, what the client waited beyond the server's own time; the first calls warm up."""
    waited: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
    for (name, started, first, ended), (received, replied) in list(
        zip(made, server_times, strict=True)
    )[20:]:
        waited[name].append(
            ((first - started) * 1000, ((ended - started) - (replied - received)) * 1000)
        )
    report: dict = {"event_gap_ms": gap_s * 1000, "usage_reports": usages}
    for index, stage in enumerate(("first_byte_ms", "beyond_server_ms")):
        direct = [pair[index] for pair in waited["direct"]]
        through = [pair[index] for pair in waited["gateway"]]
        report[stage] = {
            "direct": percentiles(direct),
            "gateway": percentiles(through),
            "added_p50": round(statistics.median(through) - statistics.median(direct), 3),
        }
    # This process runs nothing but the gateway while the client calls.
    report["gateway_cpu_ms_per_call"] = round(cpu_s * 1000 / (calls + 10), 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--chars", type=int, default=600, help="text length of each reply")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="pause between paced events")
    options = parser.parse_args()
    setup_django(Path(tempfile.mkdtemp(prefix="flotilla-bench-gateway-")))
    events = len(message_events(text_reply("x" * options.chars).body))
    paced = measure(calls=options.calls, chars=options.chars, gap_s=options.gap_ms / 1000)
    burst = measure(calls=options.calls, chars=options.chars, gap_s=0.0)
    added = paced["beyond_server_ms"]["added_p50"]
    report = {
        "calls": options.calls,
        "reply_events": events,
        "paced": paced,
        "burst": burst,
        "target": "p50 added per paced streamed call under 5 ms",
        "met": added < 5,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
