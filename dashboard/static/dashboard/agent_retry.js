// Flotilla dashboard: the agent page's Retry button. It posts to the REST
// API's POST /api/v1/agents/{id}/retry with the session and Django's CSRF
// token, as the new-agent form posts its spawn, and opens the new agent's
// page. The API decides whether the agent may be retried; its refusal
// ({error: {code, message}}) is shown under the button. Our own code.
(function () {
  "use strict";

  const form = document.getElementById("retry-form");
  if (!form) return;
  const button = form.querySelector('[data-action="retry"]');
  const error = document.getElementById("retry-error");
  // Kept only while a request got no answer, so sending it again cannot start
  // two agents; any answer ends it, and the next click is a new request.
  let pendingKey = null;

  function newKey() {
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return "retry-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function showError(text) {
    error.textContent = text;
    error.hidden = false;
    error.focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (button.disabled) return;
    error.hidden = true;
    button.disabled = true;
    button.textContent = "Retrying…";
    pendingKey = pendingKey || newKey();
    try {
      const { response, payload } = await window.flotilla.apiPost(form.action, {}, {
        csrfToken: form.elements.csrfmiddlewaretoken.value,
        headers: { "Idempotency-Key": pendingKey },
      });
      pendingKey = null;
      if (response.status === 202 && payload.agent_id) {
        // The button stays disabled while the new agent's page opens.
        window.location.assign(`/dashboard/agents/${payload.agent_id}/`);
        return;
      }
      const message = (payload.error && payload.error.message) || `refused (${response.status})`;
      enable();
      showError(`Not retried: ${message}`);
    } catch (failure) {
      enable();
      showError(`The hub could not be reached: ${failure}. Retry sends the same request again.`);
    }
  });

  function enable() {
    button.disabled = false;
    button.textContent = "Retry";
  }

  // Back from the new agent's page, the browser may show this page as it was left.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) enable();
  });
})();
