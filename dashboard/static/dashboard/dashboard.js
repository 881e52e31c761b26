// Flotilla dashboard: the live event stream, agent rows, the kill dialog.
// Our own code, no framework: the pages are server-rendered and this keeps
// them current over one WebSocket per page.
(function () {
  "use strict";

  const FINAL_STATES = new Set(["completed", "failed", "killed"]);
  const MAX_RECORDED_IDS = 100000;

  function setConnection(status, text) {
    const badge = document.getElementById("connection");
    if (!badge) return;
    badge.dataset.status = status;
    badge.textContent = text;
  }

  // A WebSocket that reconnects by itself and resumes after the last event id
  // it saw, so a dropped connection loses nothing and repeats nothing.
  class LiveStream {
    constructor(path, after, onBatch) {
      this.path = path;
      this.lastId = after;
      this.onBatch = onBatch;
      this.received = [];
      this.duplicates = 0;
      this.connects = 0;
      this.retryMs = 250;
      this.socket = null;
      this.paused = false;
    }

    connect() {
      if (this.paused) return;
      const scheme = window.location.protocol === "https:" ? "wss" : "ws";
      const url = `${scheme}://${window.location.host}${this.path}?after=${this.lastId}`;
      const socket = new WebSocket(url);
      this.socket = socket;
      socket.onopen = () => {
        this.connects += 1;
        this.retryMs = 250;
        setConnection("live", "live");
      };
      socket.onmessage = (message) => this.handle(JSON.parse(message.data));
      socket.onclose = (event) => {
        if (this.socket !== socket) return;
        this.socket = null;
        if (event.code === 4401) {
          // The session ended: a reload takes the operator to the login page.
          window.location.reload();
          return;
        }
        setConnection("down", "reconnecting…");
        const delay = this.retryMs;
        this.retryMs = Math.min(this.retryMs * 2, 5000);
        window.setTimeout(() => this.connect(), delay);
      };
    }

    handle(message) {
      if (message.type !== "batch") return;
      const fresh = [];
      for (const event of message.events) {
        if (event.id <= this.lastId) {
          this.duplicates += 1;
          continue;
        }
        fresh.push(event);
        this.lastId = event.id;
        if (this.received.length < MAX_RECORDED_IDS) this.received.push(event.id);
      }
      if (message.last_id > this.lastId) this.lastId = message.last_id;
      this.onBatch(fresh, message.agents || {});
    }

    // Closes the socket as a network drop would; the stream reconnects itself.
    drop() {
      if (this.socket) this.socket.close();
    }
  }

  function formatDuration(ms) {
    const seconds = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? `${h}h ${pad(m)}m ${pad(s)}s` : m ? `${m}m ${pad(s)}s` : `${s}s`;
  }

  function uptimeText(row) {
    if (!row.dataset.started) return FINAL_STATES.has(row.dataset.state) ? "–" : "waiting";
    const started = Date.parse(row.dataset.started);
    const finished = row.dataset.finished ? Date.parse(row.dataset.finished) : Date.now();
    return formatDuration(finished - started);
  }

  function refreshUptimes() {
    for (const row of document.querySelectorAll(".agent-row[data-agent-id]")) {
      const cell = row.querySelector('[data-field="uptime"]');
      if (cell) cell.textContent = uptimeText(row);
    }
  }

  function setField(row, name, value) {
    for (const element of row.querySelectorAll(`[data-field="${name}"]`)) {
      element.textContent = value == null ? "" : String(value);
    }
  }

  // Brings one agent row (or the detail card) up to date with a summary.
  function applySummary(row, agent) {
    row.dataset.agentId = agent.id;
    row.dataset.state = agent.state;
    row.dataset.started = agent.started_at || "";
    row.dataset.finished = agent.finished_at || "";
    for (const name of ["state", "task_id", "runtime", "repository", "base_branch",
      "work_branch", "origin", "node", "error", "cost_usd"]) {
      if (name in agent) setField(row, name, agent[name]);
    }
    setField(row, "short_id", agent.id.slice(0, 8));
    setField(row, "progress_text", `${agent.progress}%`);
    for (const bar of row.querySelectorAll('[data-field="progress"]')) bar.value = agent.progress;
    const link = row.querySelector('[data-field="link"]');
    if (link) link.href = `/dashboard/agents/${agent.id}/`;
    const scope = row.id === "agent" ? document : row;
    for (const button of scope.querySelectorAll('[data-action="kill"]')) {
      button.hidden = FINAL_STATES.has(agent.state);
    }
    // The agent page's Retry waits hidden until its agent fails or is killed.
    for (const retry of scope.querySelectorAll("[data-retry-states]")) {
      retry.hidden = !retry.dataset.retryStates.split(" ").includes(agent.state);
    }
    const cell = row.querySelector('[data-field="uptime"]');
    if (cell) cell.textContent = uptimeText(row);
  }

  function setupKillDialog() {
    const dialog = document.getElementById("kill-dialog");
    if (!dialog) return;
    const form = document.getElementById("kill-form");
    const reason = document.getElementById("kill-reason");
    const error = document.getElementById("kill-error");
    let agentId = null;
    document.addEventListener("click", (event) => {
      const button = event.target.closest('[data-action="kill"]');
      if (!button) return;
      const owner = button.closest("[data-agent-id]") || document.getElementById("agent");
      agentId = owner.dataset.agentId;
      document.getElementById("kill-agent-label").textContent = agentId.slice(0, 8);
      form.action = `/dashboard/agents/${agentId}/kill`;
      error.hidden = true;
      reason.value = "";
      dialog.showModal();
      reason.focus();
    });
    document.getElementById("kill-cancel").addEventListener("click", () => dialog.close());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = new FormData(form);
      const { response, payload } = await window.flotilla.apiPost(form.action, body, {
        csrfToken: body.get("csrfmiddlewaretoken"),
      });
      if (response.ok || response.status === 409) {
        dialog.close();
        return;
      }
      error.textContent = (payload.error && payload.error.message) || `refused (${response.status})`;
      error.hidden = false;
    });
  }

  function setupConfirmForms() {
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
  }

  function updateCounts() {
    const rows = document.querySelectorAll("#agent-rows .agent-row");
    let live = 0;
    for (const row of rows) if (!FINAL_STATES.has(row.dataset.state)) live += 1;
    const counts = document.getElementById("agent-counts");
    if (counts) counts.textContent = `${live} live · ${rows.length} shown`;
    const empty = document.getElementById("no-agents");
    if (empty) empty.hidden = rows.length > 0;
  }

  // Whether a new agent belongs in this page of the list: its first page,
  // under the filters the server applied (data-filter-* on the table).
  function listed(table, agent) {
    if (!("liveInsert" in table.dataset)) return false;
    const wanted = table.dataset;
    for (const [field, key] of [["state", "filterState"], ["runtime", "filterRuntime"],
      ["repository", "filterRepository"], ["origin", "filterOrigin"]]) {
      if (wanted[key] && agent[field] !== wanted[key]) return false;
    }
    const task = (wanted.filterTask || "").toLowerCase();
    return !task || String(agent.task_id).toLowerCase().includes(task);
  }

  function startBoard() {
    const table = document.getElementById("agents");
    const body = document.getElementById("agent-rows");
    const template = document.getElementById("agent-row-template");
    const stream = new LiveStream(table.dataset.stream, Number(table.dataset.after), (_events, agents) => {
      for (const agent of Object.values(agents)) {
        let row = body.querySelector(`tr[data-agent-id="${agent.id}"]`);
        if (!row) {
          if (!listed(table, agent)) continue;
          row = template.content.firstElementChild.cloneNode(true);
          body.prepend(row);
        }
        applySummary(row, agent);
      }
      updateCounts();
    });
    window.flotilla.stream = stream;
    updateCounts();
    stream.connect();
  }

  window.flotilla = Object.assign(window.flotilla || {}, {
    LiveStream,
    applySummary,
    FINAL_STATES,
    stream: null,
  });

  document.addEventListener("DOMContentLoaded", () => {
    setupKillDialog();
    setupConfirmForms();
    refreshUptimes();
    window.setInterval(refreshUptimes, 1000);
    if (document.body.dataset.page === "agents") startBoard();
  });
})();
