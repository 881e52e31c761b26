// Flotilla dashboard: the new-project form. The tasks come from a table, from
// pasted JSON or YAML (read on the hub: POST /dashboard/projects/new/yaml
// gives back JSON's value), or from the planner (POST /api/v1/projects/plan),
// whose proposal fills the table to edit. The graph is drawn (with
// projects.js's TaskGraph) and a dependency cycle or an unknown key is named
// before anything is sent. The project is created by POST /api/v1/projects
// (session and CSRF token), so the API's validation decides, and its field
// errors are shown where they belong. Our own code, no library.
(function () {
  "use strict";

  const form = document.getElementById("project-form");
  if (!form) return;
  const rows = document.getElementById("task-rows");
  const rowTemplate = document.getElementById("task-row-template");
  const jsonBox = document.getElementById("p-tasks-json");
  const jsonError = document.getElementById("e-tasks-json");
  const yamlBox = document.getElementById("p-tasks-yaml");
  const yamlError = document.getElementById("e-tasks-yaml");
  const goalBox = document.getElementById("p-goal");
  const planButton = document.getElementById("plan");
  const planStatus = document.getElementById("plan-status");
  const planError = document.getElementById("e-plan");
  const tasksError = document.getElementById("e-tasks");
  const formError = document.getElementById("form-error");
  const summary = document.getElementById("graph-summary");
  const graphElement = document.getElementById("dag");

  // The table shows these task fields; a row keeps the others (a planned
  // task's agent_type, priority, branch ...) and sends them unchanged.
  const SHOWN = ["key", "title", "runtime", "script", "instructions", "depends_on"];
  const hiddenFields = new WeakMap();
  // What the hub made of the YAML box's text: {text, value} or {text, problem}.
  let yamlRead = { text: null };
  let yamlReading = null;
  let yamlTimer = null;
  let shownSource = "table";

  function source() {
    return form.querySelector('input[name="task-source"]:checked').value;
  }

  function csrfToken() {
    return form.elements.csrfmiddlewaretoken.value;
  }

  function field(row, name) {
    return row.querySelector(`[data-task-field="${name}"]`);
  }

  // A script task is given a script, any other a task for an agent: instructions.
  function showWork(row) {
    const script = field(row, "runtime").value === "script";
    field(row, "script").hidden = !script;
    field(row, "instructions").hidden = script;
  }

  function addRow(task = {}) {
    const row = rowTemplate.content.firstElementChild.cloneNode(true);
    for (const input of row.querySelectorAll("[data-task-field]")) {
      const value = task[input.dataset.taskField];
      if (input.tagName === "SELECT") {
        const runtime = value ? String(value) : "script";
        if (![...input.options].some((option) => option.value === runtime)) {
          input.add(new Option(runtime, runtime));
        }
        input.value = runtime;
      } else {
        input.value = Array.isArray(value) ? value.join(", ") : String(value ?? "");
      }
    }
    hiddenFields.set(row, Object.fromEntries(
      Object.entries(task).filter(([name]) => !SHOWN.includes(name))));
    showWork(row);
    rows.appendChild(row);
    return row;
  }

  function tableTasks() {
    return [...rows.querySelectorAll(".task-row")].map((row) => {
      const task = {};
      const value = (name) => field(row, name).value.trim();
      if (value("key")) task.key = value("key");
      if (value("title")) task.title = value("title");
      const runtime = value("runtime");
      if (runtime !== "script") task.runtime = runtime;
      const work = runtime === "script" ? "script" : "instructions";
      if (value(work)) task[work] = value(work);
      const deps = value("depends_on");
      task.depends_on = deps ? deps.split(/\s*,\s*/).filter(Boolean) : [];
      return Object.assign(task, hiddenFields.get(row));
    });
  }

  function fillTable(tasks) {
    rows.replaceChildren();
    for (const task of tasks) addRow(task);
  }

  function tasksOf(parsed, language) {
    const tasks = Array.isArray(parsed) ? parsed : parsed && parsed.tasks;
    if (!Array.isArray(tasks) || tasks.some((task) => !task || typeof task !== "object")) {
      const shape = language === "YAML" ? "a mapping with a \"tasks\" list" : "an object with a \"tasks\" list";
      return { problem: `expected a list of tasks, or ${shape}` };
    }
    return { tasks };
  }

  // The tasks as the API will get them, an error message for an unreadable
  // paste, or {pending} while the hub is still reading the YAML.
  function currentTasks(kind = source()) {
    if (kind === "table") return { tasks: tableTasks() };
    const box = kind === "json" ? jsonBox : yamlBox;
    if (!box.value.trim()) return { tasks: [] };
    if (kind === "yaml") {
      if (yamlRead.text !== yamlBox.value) return { pending: true };
      return yamlRead.problem ? { problem: yamlRead.problem } : tasksOf(yamlRead.value, "YAML");
    }
    let parsed;
    try {
      parsed = JSON.parse(box.value);
    } catch (failure) {
      return { problem: `not valid JSON: ${failure.message}` };
    }
    return tasksOf(parsed, "JSON");
  }

  // Sends the YAML box's text to the hub (once per text) and redraws with the answer.
  function readYaml() {
    const text = yamlBox.value;
    if (!text.trim() || yamlRead.text === text) return Promise.resolve();
    if (yamlReading && yamlReading.text === text) return yamlReading.done;
    const done = (async () => {
      let answer;
      try {
        const { response, payload } = await window.flotilla.apiPost(
          yamlBox.dataset.url, new URLSearchParams({ text }), { csrfToken: csrfToken() });
        answer = response.ok && "value" in payload ? { text, value: payload.value }
          : { text, problem: (payload.error && payload.error.message)
            || `the hub could not read the YAML (${response.status})` };
      } catch (failure) {
        answer = { text, problem: `the hub could not be reached: ${failure.message}` };
      }
      if (yamlBox.value !== text) return; // typed on since; that text is read next
      yamlRead = answer;
      preview();
    })();
    yamlReading = { text, done };
    return done;
  }

  // A YAML rendering of the table's tasks, to start the YAML box from.
  function yamlValue(value) {
    if (Array.isArray(value)) return `[${value.map(yamlValue).join(", ")}]`;
    if (typeof value !== "string") return JSON.stringify(value);
    const plain = /^[A-Za-z_][\w./-]*$/.test(value)
      && !/^(true|false|yes|no|on|off|null|y|n)$/i.test(value);
    return plain ? value : JSON.stringify(value);
  }

  function yamlOf(tasks) {
    return tasks.map((task) => {
      const lines = Object.entries(task).map(([name, value]) => `${name}: ${yamlValue(value)}`);
      return lines.length ? `- ${lines.join("\n  ")}` : "- {}";
    }).join("\n") + (tasks.length ? "\n" : "");
  }

  function showSource(mode) {
    for (const block of form.querySelectorAll("[data-task-source]")) {
      block.hidden = block.dataset.taskSource !== mode;
    }
    form.querySelector(`input[name="task-source"][value="${mode}"]`).checked = true;
    shownSource = mode;
  }

  // The dependencies each task waits for, as the hub will read them (mode included).
  function edges(tasks, mode) {
    const keys = tasks.map((task) => String(task.key || ""));
    if (mode === "sequential") return keys.map((key, i) => [key, i ? [keys[i - 1]] : []]);
    if (mode === "parallel") return keys.map((key) => [key, []]);
    return tasks.map((task, i) => [keys[i], (Array.isArray(task.depends_on) ? task.depends_on : []).map(String)]);
  }

  // One dependency cycle as [a, b, ..., a] (a depends on b), or null; iterative DFS.
  function findCycle(dependencies) {
    const colour = new Map();
    for (const start of dependencies.keys()) {
      if (colour.has(start)) continue;
      const stack = [[start, 0]];
      const path = [start];
      colour.set(start, "grey");
      while (stack.length) {
        const top = stack[stack.length - 1];
        const next = (dependencies.get(top[0]) || [])[top[1]];
        top[1] += 1;
        if (next === undefined) {
          colour.set(top[0], "black");
          stack.pop();
          path.pop();
        } else if (!dependencies.has(next) || colour.get(next) === "black") {
          continue;
        } else if (colour.get(next) === "grey") {
          return [...path.slice(path.indexOf(next)), next];
        } else {
          colour.set(next, "grey");
          stack.push([next, 0]);
          path.push(next);
        }
      }
    }
    return null;
  }

  // Draws the graph and names what is wrong with it; returns the problems found.
  function preview() {
    const { tasks, problem, pending } = currentTasks();
    const pasteError = source() === "yaml" ? yamlError : jsonError;
    for (const slot of [jsonError, yamlError]) {
      slot.hidden = slot !== pasteError || !problem;
      slot.textContent = slot === pasteError ? problem || "" : "";
    }
    if (pending) {
      summary.textContent = "reading the YAML…";
      return ["the YAML is still being read"];
    }
    if (problem) return [problem];
    const mode = form.elements.mode.value;
    const pairs = edges(tasks, mode);
    const dependencies = new Map(pairs);
    const problems = [];
    const seen = new Set();
    for (const [key] of pairs) {
      if (!key) problems.push("every task needs a key");
      else if (seen.has(key)) problems.push(`duplicate key ${key}`);
      seen.add(key);
    }
    for (const [key, deps] of pairs) {
      for (const dep of deps) if (!seen.has(dep)) problems.push(`${key} depends on unknown task ${dep}`);
    }
    const cycle = findCycle(dependencies);
    if (cycle) problems.unshift(`dependency cycle: ${cycle.join(" → ")}`);
    const drawn = pairs.filter(([key], i) => key && pairs.findIndex(([other]) => other === key) === i)
      .map(([key, deps]) => ({ key, depends_on: deps, state: "pending", attempts: 0 }));
    new window.flotilla.TaskGraph(graphElement, drawn);
    const inCycle = new Set(cycle || []);
    for (const node of graphElement.querySelectorAll(".dag-node")) {
      if (inCycle.has(node.dataset.taskKey)) node.dataset.cycle = "";
    }
    for (const edge of graphElement.querySelectorAll(".dag-edge")) {
      const from = cycle ? cycle.indexOf(edge.dataset.to) : -1;
      if (from >= 0 && cycle[from + 1] === edge.dataset.from) edge.dataset.cycle = "";
    }
    graphElement.dataset.cycle = cycle ? cycle.join(" → ") : "";
    summary.textContent = `${drawn.length} task${drawn.length === 1 ? "" : "s"}, `
      + `${drawn.reduce((n, task) => n + task.depends_on.length, 0)} dependencies`;
    tasksError.hidden = !problems.length;
    tasksError.textContent = problems.join("; ");
    return problems;
  }

  function body() {
    const data = { name: form.elements.name.value.trim(), mode: form.elements.mode.value,
      failure_policy: form.elements.failure_policy.value };
    const parallel = form.elements.max_parallel.value.trim();
    if (parallel) data.max_parallel = Number.isFinite(Number(parallel)) ? Number(parallel) : parallel;
    if (form.elements.paused.checked) data.paused = true;
    const repository = form.elements.repository.value.trim();
    data.tasks = (currentTasks().tasks || []).map((task) => {
      const copy = { ...task };
      if (repository && !copy.repository) copy.repository = repository;
      if (data.mode !== "dag" && Array.isArray(copy.depends_on) && !copy.depends_on.length) delete copy.depends_on;
      return copy;
    });
    return data;
  }

  function clearErrors() {
    formError.hidden = true;
    planError.hidden = true;
    for (const slot of form.querySelectorAll("[data-error-for]")) {
      slot.hidden = true;
      slot.textContent = "";
    }
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  }

  // An API field such as "tasks[2].depends_on" goes to that row's input in
  // the table; anything about the tasks otherwise goes under the tasks.
  function place(name, text) {
    const task = /^tasks\[(\d+)\]\.?(\w*)/.exec(name);
    if (task && source() === "table") {
      const row = rows.querySelectorAll(".task-row")[Number(task[1])];
      const input = row && row.querySelector(`[data-task-field="${task[2]}"]`);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.title = text;
      }
    }
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`)
      || (name.startsWith("tasks") ? tasksError : null);
    if (!slot) return false;
    const line = slot === tasksError && name !== "tasks" ? `${name}: ${text}` : text;
    slot.textContent = slot.textContent ? `${slot.textContent} ${line}` : line;
    slot.hidden = false;
    return true;
  }

  // Switching to a paste box starts it from the table; switching back to the
  // table loads the pasted tasks into it (when they could be read).
  function switchSource(mode) {
    const before = currentTasks(shownSource);
    showSource(mode);
    if (mode === "json" && !jsonBox.value.trim()) {
      jsonBox.value = JSON.stringify(tableTasks(), null, 2);
    } else if (mode === "yaml" && !yamlBox.value.trim()) {
      yamlBox.value = yamlOf(tableTasks());
    } else if (mode === "table" && before.tasks && before.tasks.length) {
      fillTable(before.tasks);
    }
    if (mode === "yaml") readYaml();
  }

  form.addEventListener("input", (event) => {
    if (event.target === yamlBox) {
      clearTimeout(yamlTimer);
      yamlTimer = setTimeout(readYaml, 250);
    }
    preview();
  });
  form.addEventListener("change", (event) => {
    if (event.target.name === "task-source") switchSource(source());
    if (event.target.dataset.taskField === "runtime") showWork(event.target.closest(".task-row"));
    preview();
  });
  document.getElementById("add-task").addEventListener("click", () => {
    addRow().querySelector("input").focus();
    preview();
  });
  rows.addEventListener("click", (event) => {
    const button = event.target.closest('[data-action="remove-task"]');
    if (!button) return;
    button.closest(".task-row").remove();
    preview();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    if (source() === "yaml") await readYaml();
    if (preview().length && currentTasks().problem) {
      (source() === "yaml" ? yamlBox : jsonBox).focus();
      return;
    }
    const { response, payload } = await window.flotilla.apiPost(form.action, body(), {
      csrfToken: csrfToken(),
    });
    if (response.status === 201 && payload.id) {
      window.location.assign(`/dashboard/projects/${payload.id}/`);
      return;
    }
    const error = payload.error || {};
    const unplaced = Object.entries(error.fields || {})
      .filter(([name, messages]) => !place(name, messages.join(" ")))
      .map(([name, messages]) => `${name}: ${messages.join(" ")}`);
    if (!error.fields || unplaced.length) {
      formError.textContent = [error.message || `refused (${response.status})`, ...unplaced].join(" ");
      formError.hidden = false;
      formError.focus();
    } else {
      (form.querySelector('[aria-invalid="true"]') || tasksError).focus?.();
    }
  });

  // The planner's proposal fills the form: the tasks into the table, and the
  // name and failure policy where the user has not chosen them yet.
  function proposalApply(proposal, repository) {
    if (!form.elements.name.value.trim()) form.elements.name.value = proposal.name || "";
    form.elements.mode.value = "dag";
    const policy = form.elements.failure_policy;
    if ([...policy.options].some((option) => option.value === proposal.failure_policy)) {
      policy.value = proposal.failure_policy;
    }
    // The repository field fills in each task's, so a later change there applies.
    fillTable(proposal.tasks.map((task) => {
      const copy = { ...task };
      if (copy.repository === repository) delete copy.repository;
      return copy;
    }));
    showSource("table");
    preview();
  }

  function planFailed(payload, status) {
    const error = payload.error || {};
    const unplaced = [];
    for (const [name, messages] of Object.entries(error.fields || {})) {
      const input = name === "goal" || name === "repository" ? form.elements[name] : null;
      if (input && place(name, messages.join(" "))) input.setAttribute("aria-invalid", "true");
      else unplaced.push(`${name}: ${messages.join(" ")}`);
    }
    if (error.fields && !unplaced.length) {
      form.querySelector('[aria-invalid="true"]').focus();
      return;
    }
    const reason = [error.message || `the hub answered ${status}`, ...unplaced].join(" ");
    planError.textContent = `No plan: ${reason}`;
    planError.hidden = false;
    planError.focus();
  }

  async function plan() {
    clearErrors();
    planButton.disabled = true;
    planStatus.textContent = "Asking the planner; this can take a minute…";
    const repository = form.elements.repository.value.trim();
    let response;
    let payload;
    try {
      ({ response, payload } = await window.flotilla.apiPost(
        planButton.dataset.url, { goal: goalBox.value, repository }, { csrfToken: csrfToken() }));
    } catch (failure) {
      response = null;
      payload = { error: { message: `the hub could not be reached: ${failure.message}` } };
    } finally {
      planButton.disabled = false;
    }
    if (response && response.ok && Array.isArray(payload.tasks)) {
      proposalApply(payload, repository);
      const count = payload.tasks.length;
      planStatus.textContent = `The planner proposed ${count} task${count === 1 ? "" : "s"}: `
        + "edit them below, then create the project.";
      return;
    }
    planStatus.textContent = "";
    planFailed(payload, response ? response.status : 0);
  }

  planButton.addEventListener("click", plan);

  addRow({ key: "build" });
  preview();
  window.flotilla.projectForm = { preview, findCycle, readYaml };
})();
