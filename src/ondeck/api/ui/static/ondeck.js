// ondeck dashboard: live fragments over server-sent events, actions with progress, log tail.
// No framework, no build step; the server escapes all HTML it sends.
"use strict";

(function () {
  const MAX_LOG_LINES = 1000;

  function toast(text, kind) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.className = "show " + (kind || "");
  }

  function live(on) {
    const dot = document.getElementById("live");
    if (dot) dot.className = on ? "live on" : "live";
  }

  function stream() {
    const url = document.body.dataset.stream;
    if (!url) return;
    const events = new EventSource(url);
    events.addEventListener("open", () => live(true));
    events.addEventListener("error", () => live(false));
    events.addEventListener("fragments", (e) => {
      const changed = JSON.parse(e.data);
      for (const id of Object.keys(changed)) {
        const el = document.getElementById(id);
        if (el) el.outerHTML = changed[id];
      }
      document.body.dataset.updated = String(Date.now());
    });
    events.addEventListener("reload", () => { events.close(); location.reload(); });
    events.addEventListener("logout", () => { events.close(); location.assign("/login"); });
  }

  async function act(form) {
    const button = form.querySelector("button");
    const label = button ? button.textContent : "action";
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    if (button) button.disabled = true;
    toast(label + ": working…", "busy");
    const body = new URLSearchParams(new FormData(form));
    try {
      const answer = await fetch(form.getAttribute("action"), {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          "x-requested-with": "ondeck",
          "x-csrf-token": body.get("csrf") || "",
        },
        body: body,
      });
      let data = {};
      try { data = await answer.json(); } catch (err) { data = {}; }
      const text = data.message || data.detail || answer.statusText;
      toast(label + ": " + text, answer.ok && data.ok !== false ? "ok" : "bad");
    } catch (err) {
      toast(label + ": the server did not answer (" + err + ")", "bad");
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  }

  function logTail() {
    const pre = document.getElementById("log");
    if (!pre || !pre.dataset.src) return;
    const state = document.getElementById("log-state");
    const events = new EventSource(pre.dataset.src);
    events.addEventListener("open", () => { if (state) state.textContent = "following"; });
    events.addEventListener("error", () => { if (state) state.textContent = "reconnecting…"; });
    events.addEventListener("logout", () => { events.close(); location.assign("/login"); });
    events.addEventListener("log", (e) => {
      const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      for (const line of JSON.parse(e.data)) {
        pre.appendChild(document.createTextNode(line + "\n"));
      }
      while (pre.childNodes.length > MAX_LOG_LINES) pre.removeChild(pre.firstChild);
      if (follow) pre.scrollTop = pre.scrollHeight;
    });
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form instanceof HTMLFormElement && form.classList.contains("act")) {
      e.preventDefault();
      act(form);
    }
  });
  document.addEventListener("DOMContentLoaded", () => { stream(); logTail(); });
})();
