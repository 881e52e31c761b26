"""The outbound guard: the hub fetches no URL of its own host or private network (SSRF).

The tests' hub allows private addresses (settings_test: the test servers live
on 127.0.0.1); each test here turns the guard back on with ``guarded``, and
lets a single server through by name where it needs one, as an operator
names an internal coordinator in ``FLOTILLA_PRIVATE_URL_ALLOWLIST``. Only a
public name cannot exist here, so the few tests about names stub the
resolver for the one made-up name they use and leave every other lookup real.
"""

import pytest

from gates.services import gates_run
from netguard.http import OutboundRefused, outbound_session
from netguard.outbound import url_refusal
from taskqueue.models import Project, WebhookState
from taskqueue.webhooks import webhook_deliver
from tests.outbound import PUBLIC_ADDRESS
from tests.test_deploy_check import manage
from tests.test_gates import gate_context

FORBIDDEN_URLS = [
    "http://127.0.0.1:8000/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "https://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://100.64.0.1/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[2002:7f00:1::]/hook",
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_no_loopback_private_link_local_or_metadata_address_is_fetched(guarded, url):
    assert "not a public address" in url_refusal(url)


def test_a_public_address_is_not_refused(guarded):
    assert url_refusal(f"https://{PUBLIC_ADDRESS}/hook") is None


def test_a_name_with_one_private_address_among_public_ones_is_refused(guarded, resolver):
    resolver["hooks.example.test"] = [PUBLIC_ADDRESS, "10.0.0.7"]

    assert "resolves to 10.0.0.7" in url_refusal("https://hooks.example.test/hook")


def test_the_operator_may_allow_every_private_address(settings):
    settings.FLOTILLA_ALLOW_PRIVATE_URLS = True

    assert url_refusal("http://127.0.0.1:8000/hook") is None


def test_a_project_webhook_to_loopback_is_refused_when_the_project_is_made(guarded, api, server):
    receiver = server()
    body = {"name": "p", "webhook_url": f"{receiver.url}/hook", "tasks": [{"key": "a"}]}
    body["tasks"][0]["script"] = "true"

    response = api.post("/api/v1/projects", body, format="json")

    assert response.status_code == 400, response.content
    assert "loopback" in response.json()["error"]["fields"]["webhook_url"][0]


def test_a_webhook_whose_name_now_resolves_to_loopback_is_not_delivered(
    guarded, api, server, resolver
):
    receiver = server()
    resolver["hooks.example.test"] = [PUBLIC_ADDRESS]
    url = f"http://hooks.example.test:{receiver.port}/hook"
    body = {"name": "p", "webhook_url": url, "tasks": [{"key": "a", "script": "true"}]}
    project = api.post("/api/v1/projects", body, format="json").json()
    Project.objects.filter(id=project["id"]).update(webhook_state=WebhookState.PENDING)
    resolver["hooks.example.test"] = ["127.0.0.1"]  # the name is rebound after the check

    assert webhook_deliver(project_id=project["id"]) is False

    assert receiver.requests == []
    refused = Project.objects.get(id=project["id"])
    assert refused.webhook_state == WebhookState.FAILED  # not retried: it would be refused again
    assert "refused" in refused.webhook_error and "loopback" in refused.webhook_error


def test_a_connection_goes_to_the_address_that_was_vetted(guarded, server, resolver):
    receiver = server()
    # The system resolver knows no such name: only the vetted address can be reached.
    resolver["hooks.example.test"] = ["127.0.0.1"]
    guarded.FLOTILLA_PRIVATE_URL_ALLOWLIST = (f"hooks.example.test:{receiver.port}",)

    with outbound_session() as session:
        answer = session.get(f"http://hooks.example.test:{receiver.port}/hook", timeout=5)

    assert answer.status_code == 200
    assert receiver.requests == [{"path": "/hook", "host": f"hooks.example.test:{receiver.port}"}]


def test_a_redirect_from_an_allowed_server_to_loopback_is_refused(guarded, server):
    inner = server()
    outer = server(307, {"Location": f"{inner.url}/api/quality/check"})
    guarded.FLOTILLA_PRIVATE_URL_ALLOWLIST = (f"127.0.0.1:{outer.port}",)

    with outbound_session() as session, pytest.raises(OutboundRefused, match="loopback"):
        session.post(f"{outer.url}/api/quality/check", data=b"{}", timeout=5)

    assert len(outer.requests) == 1
    assert inner.requests == []


def test_the_coordinator_gate_follows_no_redirect_to_loopback(guarded, server, db):
    inner = server()
    outer = server(307, {"Location": f"{inner.url}/api/quality/check"})
    guarded.FLOTILLA_PRIVATE_URL_ALLOWLIST = (f"127.0.0.1:{outer.port}",)
    guarded.FLOTILLA_COORDINATOR_URL = outer.url

    report = gates_run(
        stage="pre-push", profile="minimal", context=gate_context(conflict_check=lambda: [])
    )

    result = next(result for result in report.results if result.gate == "coordinator")
    assert not report.passed and "refused" in result.summary and "loopback" in result.summary
    assert len(outer.requests) == 1 and inner.requests == []


def test_a_coordinator_on_loopback_is_not_asked_unless_the_operator_names_it(guarded, server, db):
    coordinator = server()
    guarded.FLOTILLA_COORDINATOR_URL = coordinator.url
    context = gate_context(conflict_check=lambda: [])

    refused = gates_run(stage="pre-push", profile="minimal", context=context)
    assert not refused.passed and coordinator.requests == []

    guarded.FLOTILLA_PRIVATE_URL_ALLOWLIST = (f"127.0.0.1:{coordinator.port}",)
    assert gates_run(stage="pre-push", profile="minimal", context=context).passed
    assert [request["path"] for request in coordinator.requests] == ["/api/quality/check"]


def test_a_peer_on_loopback_is_not_connected_to(guarded, staff_api, server):
    peer = server()

    response = staff_api.post("/api/v1/peers/connect", {"url": peer.url}, format="json")

    assert response.status_code == 400, response.content
    assert "loopback" in response.json()["error"]["fields"]["url"][0]
    assert peer.requests == []


def test_a_peer_url_the_http_client_cannot_parse_is_a_400(staff_api):
    response = staff_api.post(
        "/api/v1/peers/connect", {"url": "http://a." + "b" * 300}, format="json"
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["url"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FLOTILLA_LOCAL_REPOSITORY_ROOTS", "repos", "must list absolute directories"),
        ("FLOTILLA_PRIVATE_URL_ALLOWLIST", "coordinator:http", "FLOTILLA_PRIVATE_URL_ALLOWLIST"),
        ("FLOTILLA_ALLOW_PRIVATE_URLS", "sometimes", "must be true or false"),
    ],
)
def test_a_malformed_outbound_setting_stops_the_hub(tmp_path, variable, value, message):
    done = manage(tmp_path, "check", **{variable: value})

    assert done.returncode != 0
    assert message in done.stderr
