// warmline console: a few lines of plain JavaScript, served by warmline (no build step).
// - forms with data-confirm ask first;
// - the live page (#live-calls) and a live call's page (#transcript[data-follow]) follow the
//   admin API's event stream (GET /admin/api/v1/events, Server-Sent Events; the session cookie
//   authenticates it). Every text is set with textContent, never parsed as HTML.
"use strict";

document.addEventListener("submit", (e) => {
  const msg = e.target.getAttribute && e.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) e.preventDefault();
});

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

function follow(url, onEvent, status) {
  const es = new EventSource(url, { withCredentials: true });
  es.onopen = () => status && (status.textContent = "Following live events.");
  es.onerror = () => {
    if (!status) return;
    // A refused reconnection (logged out, session expired) closes the source for good.
    status.textContent = es.readyState === EventSource.CLOSED
      ? "Disconnected from live events (logged out?). Reload the page."
      : "Reconnecting to live events…";
  };
  es.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    if (e.type === "cut") {
      if (status) status.textContent = "Fell behind; reconnecting…";
      return;
    }
    onEvent(e, es);
  };
  return es;
}

// One call's card on the live page.
function card(root, e) {
  let c = document.getElementById("live-" + e.call_sid);
  if (c) return c;
  c = el("article", "live-call");
  c.id = "live-" + e.call_sid;
  const h = el("h2");
  const a = el("a", null, e.call_sid);
  a.href = "/console/calls/" + encodeURIComponent(e.call_sid);
  h.appendChild(a);
  c.appendChild(h);
  c.appendChild(el("p", "state", "ringing"));
  c.appendChild(el("ol", "transcript"));
  root.prepend(c);
  return c;
}

// Applies one event to a transcript list (and a state line): shared by both pages.
function apply(e, list, state) {
  const say = (cls, text) => {
    const li = el("li", cls);
    li.appendChild(el("span", "role", cls));
    li.appendChild(document.createTextNode(" " + text));
    list.appendChild(li);
    return li;
  };
  switch (e.type) {
    case "call.ringing":
      state.textContent = "ringing from " + e.from + (e.warm ? " (warm session preparing)" : "");
      break;
    case "call.started":
      state.textContent = "in call (" + e.path + ", " + e.engine + ")";
      break;
    case "transcript.delta": {
      let p = list.querySelector("li.partial");
      if (!p) { p = say("agent", ""); p.classList.add("partial"); }
      p.lastChild.textContent += e.text;
      break;
    }
    case "transcript.done": {
      const p = list.querySelector("li.partial");
      if (p && e.role === "agent") p.remove();
      say(e.role, e.text);
      break;
    }
    case "barge_in": say("event", "barge-in: the caller talked over the agent"); break;
    case "tool.call": say("event", "tool " + e.name + " called"); break;
    case "tool.result": say("event", "tool answered " + (e.ok ? "ok" : "with an error")); break;
    case "latency":
      if (e.metric === "time_to_first_audio") state.textContent += " · first audio " + Math.round(e.ms) + " ms";
      break;
    case "call.ended":
      state.textContent = "ended: " + e.end_reason + " (" + Math.round(e.duration_ms / 1000) + " s)";
      break;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live-calls");
  if (live) {
    const status = document.getElementById("live-status");
    follow(live.getAttribute("data-events"), (e) => {
      const c = card(live, e);
      apply(e, c.querySelector("ol"), c.querySelector(".state"));
      if (e.type === "call.ended") c.classList.add("ended");
    }, status);
  }
  const t = document.querySelector("#transcript[data-follow]");
  if (t) {
    const sid = t.getAttribute("data-follow");
    const status = document.getElementById("follow-status");
    const outcome = document.getElementById("call-outcome");
    follow("/admin/api/v1/events?call_sid=" + encodeURIComponent(sid), (e, es) => {
      apply(e, t, outcome);
      if (e.type === "call.ended") {
        es.close();
        if (status) status.textContent = "The call has ended; reload for its timeline and recording.";
      }
    }, status);
  }
});
