// ff-celery console: live parts of the server-rendered pages (no build step, nothing fetched
// from elsewhere). Elements say what to follow:
//   data-refresh="<url>"  replace the element's content with that URL's HTML every 2 s;
//   data-events="<url>"   follow that URL's server-sent events (states, frames, end).
"use strict";

function setState(element, state) {
  element.dataset.state = state;
  if (element.classList.contains("member-state") || element.id === "live-state") {
    element.textContent = state;
  }
  const label = element.querySelector(".member-state");
  if (label) label.textContent = state;
}

function followRefresh(element) {
  setInterval(async () => {
    const answer = await fetch(element.dataset.refresh, { credentials: "same-origin" });
    if (answer.ok) element.innerHTML = await answer.text();
  }, 2000);
}

function followEvents(element) {
  const source = new EventSource(element.dataset.events);
  source.addEventListener("states", (message) => {
    const states = JSON.parse(message.data);
    for (const [member, state] of Object.entries(states)) {
      document.querySelectorAll(`[data-member="${CSS.escape(member)}"]`).forEach((e) => setState(e, state));
    }
  });
  source.addEventListener("state", (message) => {
    const core = JSON.parse(message.data);
    const badge = document.getElementById("live-state");
    if (badge && core.public_state) setState(badge, core.public_state);
    const bar = document.getElementById("progress");
    if (bar && core.progress_pct) bar.value = Number(core.progress_pct);
    const text = document.getElementById("progress-message");
    if (text && core.progress_message !== undefined) text.textContent = core.progress_message;
  });
  source.addEventListener("frame", (message) => {
    const frame = JSON.parse(message.data);
    const list = document.getElementById("frames");
    if (!list) return;
    const item = document.createElement("li");
    item.textContent = `[${frame.attempt}] ${frame.frame_type}: ${frame.payload}`;
    list.appendChild(item);
  });
  source.addEventListener("end", () => {
    source.close();
    const badge = document.getElementById("live-state");
    // an execution that ended while shown: load its result once
    if (badge && element.dataset.initial && element.dataset.initial !== badge.dataset.state) location.reload();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(followRefresh);
  document.querySelectorAll("[data-events]").forEach(followEvents);
});
