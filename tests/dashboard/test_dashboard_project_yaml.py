"""The project form's pasted YAML, read on the hub: JSON's value back, or a message saying where."""

import pytest
from django.test import Client

from dashboard.task_yaml import MAX_YAML_CHARS

URL = "/dashboard/projects/new/yaml"


@pytest.fixture
def browser(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/dashboard/projects/new/")  # sets the CSRF cookie, as the page does
    return client


def _read(client: Client, text: str):
    token = client.cookies["csrftoken"].value
    return client.post(URL, {"text": text}, HTTP_X_CSRFTOKEN=token)


def test_pasted_yaml_comes_back_as_the_value_json_would_give(browser):
    text = """
tasks:
  - key: build
    script: make
  - key: test
    title: Run the tests
    script: |
      make test
      make lint
    depends_on: [build]
    priority: 3
    not_before: 2030-01-02T03:04:05Z
"""
    response = _read(browser, text)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "value": {
            "tasks": [
                {"key": "build", "script": "make"},
                {
                    "key": "test",
                    "title": "Run the tests",
                    "script": "make test\nmake lint\n",
                    "depends_on": ["build"],
                    "priority": 3,
                    "not_before": "2030-01-02T03:04:05+00:00",
                },
            ]
        }
    }


def test_unreadable_yaml_is_a_400_naming_the_line(browser):
    response = _read(browser, "- key: a\n  depends_on: [b\n- key: b\n")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_yaml"
    assert error["message"].startswith("not valid YAML: ")
    assert "line 3" in error["message"]
    assert error["fields"] == {"text": [error["message"]]}


def test_an_alias_bomb_is_refused_instead_of_expanded(browser):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]")
    response = _read(browser, "\n".join(lines))

    assert response.status_code == 400
    assert "expands to more than" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x" * (MAX_YAML_CHARS + 1), "paste a larger project as JSON"),
        ("- !!binary aGVsbG8=", "!!binary"),
        ("- !!python/object:os.system {}", "not valid YAML"),
        ("- .nan", "not a number JSON can hold"),
        ("&a [*a]", "nested more than"),
        ("[" * 5000 + "]" * 5000, "nested"),
    ],
    ids=["too long", "binary", "python tag", "nan", "self-reference", "deep"],
)
def test_yaml_the_form_cannot_use_is_a_400_with_a_reason(browser, text, words):
    response = _read(browser, text)

    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_reading_yaml_needs_the_csrf_token_and_a_login(browser, db):
    assert browser.post(URL, {"text": "- key: a"}).status_code == 403
    anonymous = Client().post(URL, {"text": "- key: a"})
    assert anonymous.status_code == 302 and "/login" in anonymous["Location"]
