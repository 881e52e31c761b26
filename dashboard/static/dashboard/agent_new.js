// Flotilla dashboard: the new-agent form. It sends the same JSON body a
// coordinator would to POST /api/v1/agents (with the session and Django's
// CSRF token), so the API's serializer is the only validator, and puts each
// of the API's field errors ({error: {code, message, fields}}) next to its
// field. On success the new agent's page opens. Our own code, no library.
(function () {
  "use strict";

  const form = document.getElementById("spawn-form");
  if (!form) return;
  const formError = document.getElementById("form-error");
  const submit = document.getElementById("spawn-submit");

  // Only what the operator filled in is sent: the API's defaults apply to the rest.
  function body() {
    const data = { context: {}, options: {} };
    const put = (name, value) => {
      const path = name.split(".");
      let target = data;
      for (const key of path.slice(0, -1)) target = target[key];
      target[path[path.length - 1]] = value;
    };
    for (const field of form.elements) {
      if (!field.name || field.name === "csrfmiddlewaretoken" || field.disabled) continue;
      if (field.type === "radio" && !field.checked) continue;
      const shown = !field.closest("[hidden]");
      const value = field.value.trim();
      if (!shown || value === "") continue;
      if (field.name === "options.allow_hosts") {
        put(field.name, value.split(/\s*[\n,]\s*/).filter(Boolean));
      } else if (field.dataset.number) {
        const number = Number(value);
        // Anything that is not a number goes as typed, so the API names the problem.
        put(field.name, Number.isFinite(number) ? number : value);
      } else {
        put(field.name, field.name === "script" || field.name === "context.instructions" ? field.value : value);
      }
    }
    return data;
  }

  function clearErrors() {
    formError.hidden = true;
    formError.textContent = "";
    for (const element of form.querySelectorAll("[data-error-for]")) {
      element.hidden = true;
      element.textContent = "";
    }
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  }

  // The error element for an API field name such as "options.allow_hosts.0":
  // the most specific one the form has.
  function errorSlot(name) {
    let key = name;
    while (key) {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(key)}"]`);
      if (slot) return slot;
      const cut = key.lastIndexOf(".");
      key = cut > 0 ? key.slice(0, cut) : "";
    }
    return null;
  }

  function showErrors(error, status) {
    const unplaced = [];
    let first = null;
    for (const [name, messages] of Object.entries(error.fields || {})) {
      const slot = errorSlot(name);
      const text = messages.join(" ");
      if (!slot) {
        unplaced.push(`${name}: ${text}`);
        continue;
      }
      slot.textContent = slot.textContent ? `${slot.textContent} ${text}` : text;
      slot.hidden = false;
      const field = form.querySelector(`[aria-describedby~="${slot.id}"]`);
      if (field) {
        field.setAttribute("aria-invalid", "true");
        first = first || field;
      }
    }
    const fieldless = !error.fields || unplaced.length;
    if (fieldless) {
      formError.textContent = [error.message || `refused (${status})`, ...unplaced].join(" ");
      formError.hidden = false;
    }
    const focus = first && first.getAttribute("role") === "radiogroup"
      ? first.querySelector("input:checked") : first;
    (focus || formError).focus?.();
    if (!first) formError.scrollIntoView({ block: "center" });
  }

  // Fields that apply only to one runtime or one network mode are hidden otherwise.
  function refreshVisibility() {
    const runtime = form.elements.runtime.value;
    const network = form.querySelector('input[name="options.network"]:checked')?.value;
    for (const block of form.querySelectorAll("[data-show-for-runtime]")) {
      block.hidden = block.dataset.showForRuntime !== runtime;
    }
    for (const block of form.querySelectorAll("[data-show-for-network]")) {
      block.hidden = block.dataset.showForNetwork !== network;
    }
  }

  form.addEventListener("change", refreshVisibility);
  refreshVisibility();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    submit.disabled = true;
    try {
      const { response, payload } = await window.flotilla.apiPost(form.action, body(), {
        csrfToken: form.elements.csrfmiddlewaretoken.value,
      });
      if (response.status === 202 && payload.agent_id) {
        window.location.assign(`/dashboard/agents/${payload.agent_id}/`);
        return;
      }
      showErrors(payload.error || {}, response.status);
    } catch (failure) {
      showErrors({ message: `The hub could not be reached: ${failure}` }, 0);
    } finally {
      submit.disabled = false;
    }
  });
})();
