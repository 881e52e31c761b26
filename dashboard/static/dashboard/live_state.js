// Flotilla dashboard: streams of watched states (projects, the hub's banners).
// Unlike the agent event streams, every (re)connect starts with a full
// snapshot and then carries only the rows that changed, so nothing needs to
// be remembered across connections. Our own code, no library.
(function () {
  "use strict";

  function setConnection(status, text) {
    const badge = document.getElementById("connection");
    if (!badge) return;
    badge.dataset.status = status;
    badge.textContent = text;
  }

  // A WebSocket that reconnects with backoff. ``badge``: whether this stream
  // drives the page's connection badge (a page's main stream does).
  class StateStream {
    constructor(path, onFrame, { badge = true } = {}) {
      this.path = path;
      this.onFrame = onFrame;
      this.badge = badge;
      this.version = null;
      this.connects = 0;
      this.frames = 0;
      this.retryMs = 250;
      this.socket = null;
    }

    connect() {
      const scheme = window.location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${window.location.host}${this.path}`);
      this.socket = socket;
      socket.onopen = () => {
        this.connects += 1;
        this.retryMs = 250;
        if (this.badge) setConnection("live", "live");
      };
      socket.onmessage = (message) => this.handle(JSON.parse(message.data));
      socket.onclose = (event) => {
        if (this.socket !== socket) return;
        this.socket = null;
        if (event.code === 4401) {
          window.location.reload(); // the session ended: the reload shows the login page
          return;
        }
        if (this.badge) setConnection("down", "reconnecting…");
        const delay = this.retryMs;
        this.retryMs = Math.min(this.retryMs * 2, 5000);
        window.setTimeout(() => this.connect(), delay);
      };
    }

    handle(frame) {
      if (frame.type !== "snapshot" && frame.type !== "delta") return;
      this.frames += 1;
      this.version = frame.version;
      this.onFrame(frame);
    }

    drop() {
      if (this.socket) this.socket.close();
    }
  }

  // The halt and YOLO banners, on every page, kept current without a reload.
  // The banner stream drives the connection badge only on pages with no
  // stream of their own (peers).
  function showBanner(container, name, text) {
    let banner = container.querySelector(`[data-banner="${name}"]`);
    if (text == null) {
      if (banner) banner.remove();
      return;
    }
    if (!banner) {
      banner = document.createElement("div");
      banner.className = `banner banner-${name}`;
      banner.setAttribute("role", "alert");
      banner.dataset.banner = name;
      container.appendChild(banner);
    }
    banner.textContent = text;
  }

  function applyBanners(container, hub) {
    showBanner(container, "yolo", hub.yolo_mode
      ? "YOLO mode is on: quality gates are skipped (every skip is audited)." : null);
    const reason = hub.halt_reason ? `: ${hub.halt_reason}` : "";
    const actor = hub.halt_actor ? ` (${hub.halt_actor})` : "";
    showBanner(container, "halted", hub.halted
      ? `The hub is halted${reason}${actor}. No new agent will start.` : null);
  }

  function startBanners() {
    const container = document.getElementById("banners");
    if (!container || !container.dataset.stream) return null;
    const stream = new StateStream(container.dataset.stream, (frame) => {
      const rows = (frame.sections && frame.sections.banners) || {};
      if (rows.hub) applyBanners(container, rows.hub);
    }, { badge: !document.querySelector("[data-stream]:not(#banners)") });
    stream.connect();
    return stream;
  }

  window.flotilla = Object.assign(window.flotilla || {}, { StateStream, setConnection });

  document.addEventListener("DOMContentLoaded", () => {
    window.flotilla.bannerStream = startBanners();
  });
})();
