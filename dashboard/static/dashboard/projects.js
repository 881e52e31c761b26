// Flotilla dashboard: the projects list and a project's task graph, kept live.
// Our own code, no library: the graph is laid out in layers by longest path
// from the roots and drawn as SVG; states arrive over one WebSocket per page
// as a full snapshot, then only the rows that changed.
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const OPEN_PROJECT_STATES = new Set(["pending", "running", "paused"]);
  const NODE_W = 176;
  const NODE_H = 46;
  const GAP_X = 72;
  const GAP_Y = 18;
  const PAD = 16;
  const MAX_LABEL = 22;

  const { StateStream } = window.flotilla;

  function setField(scope, name, value) {
    for (const element of scope.querySelectorAll(`[data-field="${name}"]`)) {
      element.textContent = value == null ? "" : String(value);
    }
  }

  function setProgress(scope, progress, suffix) {
    for (const bar of scope.querySelectorAll('[data-field="progress"]')) bar.value = progress.percent;
    setField(scope, "progress_text", `${progress.finished}/${progress.total}${suffix}`);
  }

  // --- The projects list ------------------------------------------------------

  function applyProjectRow(row, project) {
    row.dataset.projectId = project.id;
    row.dataset.state = project.state;
    for (const name of ["id", "name", "state", "mode", "created_by"]) setField(row, name, project[name]);
    setProgress(row, project.progress, "");
    const created = row.querySelector('[data-field="created_at"]');
    if (created) {
      created.dateTime = project.created_at || "";
      created.textContent = (project.created_at || "").slice(0, 19).replace("T", " ");
    }
    const link = row.querySelector('[data-field="link"]');
    if (link) link.href = `/dashboard/projects/${project.id}/`;
  }

  function startBoard() {
    const table = document.getElementById("projects");
    const body = document.getElementById("project-rows");
    const template = document.getElementById("project-row-template");
    const updateCounts = () => {
      const rows = body.querySelectorAll(".project-row");
      let open = 0;
      for (const row of rows) if (OPEN_PROJECT_STATES.has(row.dataset.state)) open += 1;
      document.getElementById("project-counts").textContent = `${open} open · ${rows.length} shown`;
      document.getElementById("no-projects").hidden = rows.length > 0;
    };
    const stream = new StateStream(table.dataset.stream, (frame) => {
      const rows = (frame.sections && frame.sections.projects) || {};
      const ordered = Object.values(rows).sort((a, b) => a.id - b.id);
      for (const project of ordered) {
        let row = body.querySelector(`tr[data-project-id="${project.id}"]`);
        if (!row) {
          row = template.content.firstElementChild.cloneNode(true);
          const newer = [...body.querySelectorAll(".project-row")].find(
            (other) => Number(other.dataset.projectId) < project.id);
          body.insertBefore(row, newer || null);
        }
        applyProjectRow(row, project);
      }
      const removed = frame.type === "snapshot"
        ? [...body.querySelectorAll(".project-row")].map((row) => row.dataset.projectId)
          .filter((id) => !(id in rows))
        : ((frame.removed && frame.removed.projects) || []);
      for (const id of removed) {
        const row = body.querySelector(`tr[data-project-id="${id}"]`);
        if (row) row.remove();
      }
      updateCounts();
    });
    window.flotilla.projectStream = stream;
    updateCounts();
    stream.connect();
  }

  // --- The task graph ---------------------------------------------------------

  // Layer of a task = length of the longest dependency path from a root to it
  // (Kahn's algorithm, so no recursion however deep the graph).
  function longestPathLayers(tasks, index) {
    const dependents = new Map(tasks.map((task) => [task.key, []]));
    const waiting = new Map();
    const layer = new Map();
    for (const task of tasks) {
      const deps = task.depends_on.filter((key) => index.has(key));
      waiting.set(task.key, deps.length);
      for (const dep of deps) dependents.get(dep).push(task.key);
      layer.set(task.key, 0);
    }
    const queue = tasks.filter((task) => waiting.get(task.key) === 0).map((task) => task.key);
    for (let head = 0; head < queue.length; head += 1) {
      const key = queue[head];
      for (const next of dependents.get(key)) {
        layer.set(next, Math.max(layer.get(next), layer.get(key) + 1));
        waiting.set(next, waiting.get(next) - 1);
        if (waiting.get(next) === 0) queue.push(next);
      }
    }
    return layer;
  }

  // Lays the graph out left to right, one column per layer. An edge that
  // skips layers gets a waypoint in each layer it crosses, which holds a slot
  // like a node, so it never runs underneath a task. Within a layer, tasks and
  // waypoints are ordered by the mean row of what they hang from, which keeps
  // edges short and mostly uncrossed; ties keep the project's own order.
  function layoutGraph(tasks) {
    const index = new Map(tasks.map((task, i) => [task.key, i]));
    const layer = longestPathLayers(tasks, index);
    const items = tasks.map((task) => ({ key: task.key, above: [], order: index.get(task.key) }));
    const routes = [];
    for (const item of items.slice(0, tasks.length)) {
      const task = tasks[item.order];
      for (const dep of task.depends_on.filter((key) => index.has(key))) {
        const route = [dep];
        for (let column = layer.get(dep) + 1; column < layer.get(task.key); column += 1) {
          const waypoint = `${dep}\u0000${task.key}\u0000${column}`;
          layer.set(waypoint, column);
          items.push({ key: waypoint, above: [route[route.length - 1]], order: item.order - 0.5 });
          route.push(waypoint);
        }
        item.above.push(route[route.length - 1]);
        route.push(task.key);
        routes.push(route);
      }
    }
    const layers = [];
    for (const item of items) {
      const n = layer.get(item.key);
      while (layers.length <= n) layers.push([]);
      layers[n].push(item);
    }
    const row = new Map();
    for (const column of layers) {
      const weight = (item) => {
        const rows = item.above.filter((key) => row.has(key)).map((key) => row.get(key));
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : item.order;
      };
      const weights = new Map(column.map((item) => [item.key, weight(item)]));
      column.sort((a, b) => (weights.get(a.key) - weights.get(b.key)) || (a.order - b.order));
      column.forEach((item, i) => row.set(item.key, i));
    }
    const tallest = Math.max(1, ...layers.map((column) => column.length));
    const positions = new Map();
    layers.forEach((column, n) => {
      const offset = ((tallest - column.length) * (NODE_H + GAP_Y)) / 2;
      column.forEach((item, i) => {
        positions.set(item.key, {
          x: PAD + n * (NODE_W + GAP_X),
          y: PAD + offset + i * (NODE_H + GAP_Y),
          layer: n,
        });
      });
    });
    return {
      positions,
      routes,
      width: PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X,
      height: PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y,
    };
  }

  // An SVG path along a route: a curve between columns, straight through waypoints.
  function routePath(route, positions) {
    const points = route.map((key) => positions.get(key));
    const first = points[0];
    let d = `M ${first.x + NODE_W} ${first.y + NODE_H / 2}`;
    for (let i = 1; i < points.length; i += 1) {
      const x1 = points[i - 1].x + NODE_W;
      const y1 = points[i - 1].y + NODE_H / 2;
      const last = i === points.length - 1;
      const x2 = points[i].x - (last ? 2 : 0);
      const y2 = points[i].y + NODE_H / 2;
      const bend = Math.max(24, (x2 - x1) / 2);
      d += ` C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
      if (!last) d += ` L ${x2 + NODE_W} ${y2}`;
    }
    return d;
  }

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, value);
    if (parent) parent.appendChild(element);
    return element;
  }

  function shortLabel(text) {
    return text.length > MAX_LABEL ? `${text.slice(0, MAX_LABEL - 1)}…` : text;
  }

  class TaskGraph {
    constructor(element, tasks) {
      this.element = element;
      this.tasks = new Map(tasks.map((task) => [task.key, { ...task }]));
      this.nodes = new Map();
      this.edges = [];
      this.draw(tasks);
    }

    draw(tasks) {
      const layout = layoutGraph(tasks);
      this.layout = layout;
      const root = this.element;
      root.replaceChildren();
      root.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);
      root.setAttribute("width", layout.width);
      root.setAttribute("height", layout.height);
      const defs = svg("defs", {}, root);
      const marker = svg("marker", {
        id: "dag-arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
        markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
      }, defs);
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "dag-arrowhead" }, marker);
      const edgeLayer = svg("g", { class: "dag-edges" }, root);
      const nodeLayer = svg("g", { class: "dag-nodes" }, root);
      for (const route of layout.routes) {
        const edge = svg("path", {
          class: "dag-edge",
          d: routePath(route, layout.positions),
          "marker-end": "url(#dag-arrow)",
          "data-from": route[0],
          "data-to": route[route.length - 1],
        }, edgeLayer);
        this.edges.push(edge);
      }
      for (const task of tasks) {
        this.nodes.set(task.key, this.drawNode(nodeLayer, task, layout.positions.get(task.key)));
      }
      for (const task of tasks) this.update(task);
    }

    drawNode(parent, task, at) {
      const link = svg("a", { class: "dag-link" }, parent);
      const node = svg("g", {
        class: "dag-node",
        transform: `translate(${at.x}, ${at.y})`,
        "data-task-key": task.key,
        "data-layer": at.layer,
      }, link);
      const title = svg("title", {}, node);
      svg("rect", { class: "dag-box", width: NODE_W, height: NODE_H, rx: "6", ry: "6" }, node);
      const key = svg("text", { class: "dag-key", x: "10", y: "19" }, node);
      key.textContent = shortLabel(task.key);
      const status = svg("text", { class: "dag-status", x: "10", y: "36" }, node);
      return { node, link, title, status };
    }

    // Applies what the page knows about one task to its node and its outgoing edges.
    update(change) {
      const task = Object.assign(this.tasks.get(change.key) || {}, change);
      this.tasks.set(task.key, task);
      const parts = this.nodes.get(task.key);
      if (!parts) return;
      parts.node.dataset.state = task.state;
      const attempts = task.attempts > 1 ? ` · attempt ${task.attempts}` : "";
      parts.status.textContent = `${task.state}${attempts}`;
      const name = task.title && task.title !== task.key ? `${task.key}: ${task.title}` : task.key;
      parts.title.textContent = `${name}\n${task.state}${attempts}${task.error ? `\n${task.error}` : ""}`;
      if (task.agent_id) parts.link.setAttribute("href", `/dashboard/agents/${task.agent_id}/`);
      else parts.link.removeAttribute("href");
      for (const edge of this.edges) {
        if (edge.dataset.from === task.key) edge.dataset.state = task.state;
      }
    }
  }

  // --- A project's page -------------------------------------------------------

  function applyProject(card, project) {
    card.dataset.state = project.state;
    setField(card, "state", project.state);
    setField(card, "error", project.error);
    setProgress(card, project.progress, " tasks finished");
    const forms = document.querySelectorAll("form[data-project-action]");
    for (const form of forms) {
      const action = form.dataset.projectAction;
      form.hidden = action === "resume" ? project.state !== "paused"
        : action === "pause" ? !["pending", "running"].includes(project.state)
          : !OPEN_PROJECT_STATES.has(project.state);
    }
  }

  function setupProjectControls(card) {
    const error = document.getElementById("project-error");
    for (const form of document.querySelectorAll("form[data-project-action]")) {
      form.addEventListener("submit", async (event) => {
        if (event.defaultPrevented) return; // the confirmation was declined
        event.preventDefault();
        const body = new FormData(form);
        const { response, payload } = await window.flotilla.apiPost(form.action, body, {
          csrfToken: body.get("csrfmiddlewaretoken"),
        });
        if (response.ok) {
          error.hidden = true;
          card.dataset.state = payload.state;
          return;
        }
        error.textContent = (payload.error && payload.error.message) || `refused (${response.status})`;
        error.hidden = false;
      });
    }
  }

  function startProject() {
    const card = document.getElementById("project");
    const tasks = JSON.parse(document.getElementById("project-tasks").textContent);
    const graph = new TaskGraph(document.getElementById("dag"), tasks);
    const stream = new StateStream(card.dataset.stream, (frame) => {
      const sections = frame.sections || {};
      for (const project of Object.values(sections.project || {})) applyProject(card, project);
      for (const task of Object.values(sections.tasks || {})) graph.update(task);
    });
    window.flotilla.graph = graph;
    window.flotilla.projectStream = stream;
    setupProjectControls(card);
    stream.connect();
  }

  window.flotilla = Object.assign(window.flotilla || {}, { layoutGraph, TaskGraph });

  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.page === "projects") startBoard();
    if (document.body.dataset.page === "project") startProject();
  });
})();
