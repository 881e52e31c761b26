"""/metrics: Prometheus text computed from the database, for the scraper's token or staff."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import spawn_body, wait_for_state

SCRAPER_TOKEN = "scrape-" + "s" * 40


@pytest.fixture
def scraper(settings, client):
    settings.FLOTILLA_METRICS_TOKEN = SCRAPER_TOKEN
    return client


def scrape(client) -> dict[str, list]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPER_TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    families = text_string_to_metric_families(response.content.decode())
    return {family.name: family.samples for family in families}


def sample(samples: list, name: str, **labels: str) -> float:
    return next(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(key) == value for key, value in labels.items())
    )


def test_metrics_count_agents_latencies_gates_and_federation_rejections(
    hub, api, staff_api, scraper, remote_repo
):
    done = api.post("/api/v1/agents", spawn_body(remote_repo, "echo hi > hi.txt"), format="json")
    sleeper = api.post("/api/v1/agents", spawn_body(remote_repo, "sleep 60"), format="json")
    wait_for_state(done.data["agent_id"], "completed")
    wait_for_state(sleeper.data["agent_id"], "running")
    killed = api.post(
        f"/api/v1/agents/{sleeper.data['agent_id']}/kill", {"reason": "metrics"}, format="json"
    )
    assert killed.status_code == 200
    unsigned = scraper.post("/federation/v1/commands", data=b"{}", content_type="application/json")
    assert unsigned.status_code == 401

    metrics = scrape(scraper)

    assert sample(metrics["flotilla_agents"], "flotilla_agents", state="completed") == 1
    assert sample(metrics["flotilla_agents"], "flotilla_agents", state="killed") == 1
    assert sample(metrics["flotilla_agents"], "flotilla_agents", state="running") == 0
    spawn = metrics["flotilla_spawn_latency_seconds"]
    assert sample(spawn, "flotilla_spawn_latency_seconds_count") == 2
    assert sample(spawn, "flotilla_spawn_latency_seconds_bucket", le="+Inf") == 2
    assert sample(spawn, "flotilla_spawn_latency_seconds_sum") > 0
    kill = metrics["flotilla_kill_latency_seconds"]
    assert sample(kill, "flotilla_kill_latency_seconds_count") == 1
    assert sample(kill, "flotilla_kill_latency_seconds_bucket", le="+Inf") == 1
    gates = metrics["flotilla_gate_runs"]
    assert sum(s.value for s in gates if s.name == "flotilla_gate_runs_total") >= 1
    assert {s.labels["gate"] for s in gates} >= {"secret_scan"}
    rejections = metrics["flotilla_federation_rejections"]
    assert sum(s.value for s in rejections if s.name.endswith("_total")) == 1
    assert sample(metrics["flotilla_queue_depth"], "flotilla_queue_depth") >= 0


def test_metrics_refuse_anonymous_users_and_a_wrong_token(scraper, api, staff_api):
    anonymous = scraper.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"]
    assert scraper.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert api.get("/metrics").status_code == 403
    assert staff_api.get("/metrics").status_code == 200


def test_metrics_without_a_configured_token_refuse_every_bearer(settings, client):
    settings.FLOTILLA_METRICS_TOKEN = None
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 401
