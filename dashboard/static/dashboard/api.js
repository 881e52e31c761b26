// Flotilla dashboard: how a page calls the hub's REST API. One POST, with the
// session and Django's CSRF token, asking for JSON; its answer and the JSON
// payload it carried (empty when it carried none). Our own code.
(function () {
  "use strict";

  // A plain object is sent as JSON; FormData or URLSearchParams as they are.
  async function apiPost(url, body, { csrfToken, headers = {} }) {
    const json = !(body instanceof FormData || body instanceof URLSearchParams);
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        ...(json ? { "Content-Type": "application/json" } : {}),
        Accept: "application/json",
        "X-CSRFToken": csrfToken,
        ...headers,
      },
      body: json ? JSON.stringify(body) : body,
    });
    const payload = await response.json().catch(() => ({}));
    return { response, payload };
  }

  window.flotilla = Object.assign(window.flotilla || {}, { apiPost });
})();
