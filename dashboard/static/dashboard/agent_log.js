// Agent detail: the live event stream drawn as a virtualised log. Only the
// rows in view (plus a margin) exist in the DOM, so a 10,000-line log costs
// the same to show as a 40-line one.
(function () {
  "use strict";

  const LINE_HEIGHT = 18; // px; must match .log-row in dashboard.css
  const OVERSCAN = 20;

  function clock(iso) {
    return iso ? iso.slice(11, 19) : "";
  }

  function textOf(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  // One event becomes one or more log lines.
  function eventLines(event) {
    const data = event.data || {};
    switch (event.kind) {
      case "state": {
        let text = `→ ${data.to}`;
        if (data.from) text += ` (from ${data.from})`;
        if (data.reason) text += `: ${data.reason}`;
        return [text];
      }
      case "output":
        return (data.lines || []).map(textOf);
      case "log":
        return textOf(data.message ?? data).split("\n");
      case "gate": {
        const name = data.gate || data.name || data.profile || "gate";
        const verdict = data.status || (data.passed === true ? "passed" : data.passed === false ? "rejected" : "");
        const detail = data.summary || data.message || data.details || "";
        const stage = data.stage ? `${data.stage} ` : "";
        const lines = [`${stage}${name}: ${verdict}`.trim()];
        if (detail) lines.push(...textOf(detail).split("\n"));
        return lines;
      }
      case "transcript": {
        const role = data.role || data.type || "transcript";
        const body = data.text ?? data.content ?? data.tool ?? data;
        return textOf(body).split("\n").map((line, index) => (index ? `  ${line}` : `${role}: ${line}`));
      }
      default:
        return [textOf(data)];
    }
  }

  class VirtualLog {
    constructor(viewport, spacer, rows, counter, follow) {
      this.viewport = viewport;
      this.spacer = spacer;
      this.rows = rows;
      this.counter = counter;
      this.follow = follow;
      this.lines = [];
      this.visible = [];
      this.hidden = new Set();
      this.scheduled = false;
      viewport.addEventListener("scroll", () => {
        const atBottom = viewport.scrollTop + viewport.clientHeight >= viewport.scrollHeight - LINE_HEIGHT;
        if (!atBottom && this.follow.checked && !this.autoScrolling) this.follow.checked = false;
        if (atBottom && !this.follow.checked) this.follow.checked = true;
        this.autoScrolling = false;
        this.schedule();
      });
      follow.addEventListener("change", () => this.schedule());
    }

    append(events) {
      for (const event of events) {
        const time = clock(event.created_at);
        for (const text of eventLines(event)) {
          const line = { id: event.id, kind: event.kind, time, text };
          this.lines.push(line);
          if (!this.hidden.has(line.kind)) this.visible.push(line);
        }
      }
      this.schedule();
    }

    setKindShown(kind, shown) {
      if (shown) this.hidden.delete(kind);
      else this.hidden.add(kind);
      this.visible = this.lines.filter((line) => !this.hidden.has(line.kind));
      this.schedule();
    }

    schedule() {
      if (this.scheduled) return;
      this.scheduled = true;
      window.requestAnimationFrame(() => {
        this.scheduled = false;
        this.render();
      });
    }

    render() {
      const total = this.visible.length;
      this.spacer.style.height = `${total * LINE_HEIGHT}px`;
      if (this.follow.checked) {
        const bottom = Math.max(0, total * LINE_HEIGHT - this.viewport.clientHeight);
        if (Math.abs(this.viewport.scrollTop - bottom) > 1) {
          this.autoScrolling = true;
          this.viewport.scrollTop = bottom;
        }
      }
      const first = Math.max(0, Math.floor(this.viewport.scrollTop / LINE_HEIGHT) - OVERSCAN);
      const count = Math.ceil(this.viewport.clientHeight / LINE_HEIGHT) + 2 * OVERSCAN;
      const last = Math.min(total, first + count);
      this.rows.style.transform = `translateY(${first * LINE_HEIGHT}px)`;
      const fragment = document.createDocumentFragment();
      for (let index = first; index < last; index += 1) {
        const line = this.visible[index];
        const row = document.createElement("div");
        row.className = `log-row kind-${line.kind}`;
        row.dataset.eventId = line.id;
        row.dataset.line = index + 1;
        const time = document.createElement("span");
        time.className = "log-time";
        time.textContent = line.time;
        const kind = document.createElement("span");
        kind.className = "log-kind";
        kind.textContent = line.kind;
        const text = document.createElement("span");
        text.className = "log-text";
        text.textContent = line.text;
        row.append(time, kind, text);
        fragment.append(row);
      }
      this.rows.replaceChildren(fragment);
      this.counter.textContent = `${total} of ${this.lines.length} lines`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const card = document.getElementById("agent");
    const log = new VirtualLog(
      document.getElementById("log"),
      document.getElementById("log-spacer"),
      document.getElementById("log-rows"),
      document.getElementById("log-count"),
      document.getElementById("log-follow"),
    );
    for (const box of document.querySelectorAll(".log-toolbar input[data-kind]")) {
      box.addEventListener("change", () => log.setKindShown(box.dataset.kind, box.checked));
    }
    // The gate report, network log and usage are rendered with the page; a run
    // that ends while the page is open offers a reload to show their final form.
    const endedSinceLoad = !window.flotilla.FINAL_STATES.has(card.dataset.state);
    const stale = document.getElementById("report-stale");
    const stream = new window.flotilla.LiveStream(card.dataset.stream, 0, (events, agents) => {
      if (agents[card.dataset.agentId]) window.flotilla.applySummary(card, agents[card.dataset.agentId]);
      if (stale && endedSinceLoad && window.flotilla.FINAL_STATES.has(card.dataset.state)) {
        stale.hidden = false;
      }
      log.append(events);
    });
    window.flotilla.stream = stream;
    window.flotilla.log = log;
    stream.connect();
  });
})();
