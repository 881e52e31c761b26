"""The API docs page is served by the hub alone: no CDN, no inline script, a strict policy."""

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.test import Client


class ResourceLinks(HTMLParser):
    """Every URL the page loads: scripts, stylesheets, icons; and whether it has inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in values
            if values.get("src"):
                self.urls.append(values["src"])
        if tag == "link" and values.get("href"):
            self.urls.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.fixture
def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_links(browser: Client) -> ResourceLinks:
    response = browser.get("/api/v1/docs/")
    assert response.status_code == 200
    links = ResourceLinks()
    links.feed(response.content.decode())
    return links


def same_origin(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and url.startswith("/")


def test_the_docs_page_loads_only_same_origin_scripts_and_styles(browser):
    links = page_links(browser)

    assert len(links.urls) >= 4  # stylesheet, icon, two Swagger UI bundles, the start-up script
    assert [url for url in links.urls if not same_origin(url)] == []
    assert links.inline_scripts == 0


def test_every_file_the_docs_page_loads_is_served_by_the_hub(browser):
    for url in page_links(browser).urls:
        response = browser.get(url)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert response.status_code == 200, url
        assert body, url


def test_the_start_up_script_points_swagger_ui_at_the_hubs_own_schema(browser):
    script = next(url for url in page_links(browser).urls if "script" in urlsplit(url).query)

    response = browser.get(script)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    text = response.content.decode()
    assert '"/api/v1/schema/"' in text
    assert "http://" not in text and "https://" not in text


def test_the_docs_page_has_a_content_security_policy_that_allows_only_its_own_scripts(browser):
    policy = browser.get("/api/v1/docs/")["Content-Security-Policy"]

    directives = dict(item.strip().split(" ", 1) for item in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"


def test_the_docs_page_is_for_signed_in_users(db):
    assert Client().get("/api/v1/docs/").status_code in (401, 403)
