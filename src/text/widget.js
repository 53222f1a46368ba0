// warmline's web chat widget (README "Web chat"): one script tag on the business's site,
//   <script src="https://voice.example.com/chat/widget.js" data-warmline-chat="wlc_…" defer></script>
// adds a chat button and panel (in a shadow root, so the page's styles and the widget's do not
// mix) that talks to GET /api/chat/stream on the script's own origin. The visitor is a random
// session id kept in localStorage. No build step, no dependency; text is only ever set with
// textContent. Optional attributes: data-title (the panel's title), data-lang (the page's
// language for the widget's own few words: "es" for Spanish, else English).
(() => {
  "use strict";
  const me = document.currentScript;
  const key = me && me.dataset.warmlineChat;
  if (!key) {
    console.error("warmline chat: data-warmline-chat (the business's chat key) is missing");
    return;
  }
  const base = new URL(me.src, location.href).origin;
  const es = (me.dataset.lang || document.documentElement.lang || "").toLowerCase().startsWith("es");
  const words = es
    ? { close: "Cerrar el chat", title: "Chatee con nosotros", label: "Su mensaje", send: "Enviar", down: "El chat no está disponible ahora mismo. Inténtelo más tarde.", you: "Usted", agent: "Respuesta" }
    : { close: "Close the chat", title: "Chat with us", label: "Your message", send: "Send", down: "The chat is unavailable right now. Please try again later.", you: "You", agent: "Answer" };
  const title = me.dataset.title || words.title;

  let session = null;
  try {
    session = localStorage.getItem("warmline-chat-session");
    if (!session) {
      session = crypto.randomUUID();
      localStorage.setItem("warmline-chat-session", session);
    }
  } catch (_) {
    // Storage refused (private mode): a session for this page only.
    session = session || crypto.randomUUID();
  }

  const host = document.createElement("div");
  host.setAttribute("data-warmline-chat-widget", "");
  const root = host.attachShadow({ mode: "open" });
  const css = `
    :host { all: initial; }
    * { box-sizing: border-box; font: 15px/1.4 system-ui, sans-serif; }
    .launch { position: fixed; right: 16px; bottom: 16px; z-index: 2147483000; border: 0;
      border-radius: 24px; padding: 12px 18px; background: #0b5cad; color: #fff; cursor: pointer;
      box-shadow: 0 2px 8px rgba(0,0,0,.3); }
    .launch:focus-visible, button:focus-visible, input:focus-visible { outline: 3px solid #f5a623; outline-offset: 2px; }
    .panel { position: fixed; right: 16px; bottom: 72px; z-index: 2147483000; width: min(360px, calc(100vw - 32px));
      height: min(480px, calc(100vh - 96px)); display: flex; flex-direction: column; background: #fff; color: #1a1a1a;
      border: 1px solid #8a8a8a; border-radius: 12px; box-shadow: 0 4px 16px rgba(0,0,0,.3); }
    .panel[hidden] { display: none; }
    header { display: flex; justify-content: space-between; align-items: center; padding: 10px 12px;
      background: #0b5cad; color: #fff; border-radius: 12px 12px 0 0; }
    h2 { margin: 0; font-weight: 600; }
    .close { border: 0; background: transparent; color: #fff; font-size: 20px; cursor: pointer; padding: 2px 8px; }
    ol { list-style: none; margin: 0; padding: 12px; overflow-y: auto; flex: 1; }
    li { margin: 0 0 8px; padding: 8px 10px; border-radius: 10px; max-width: 85%; width: fit-content; white-space: pre-wrap; word-wrap: break-word; }
    li.you { margin-left: auto; background: #e3eefa; }
    li.agent { background: #f1f1f1; }
    .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
    form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #d0d0d0; }
    input { flex: 1; min-width: 0; padding: 8px; border: 1px solid #6b6b6b; border-radius: 8px; color: #1a1a1a; background: #fff; }
    form button { border: 0; border-radius: 8px; padding: 8px 14px; background: #0b5cad; color: #fff; cursor: pointer; }
    form button:disabled { background: #5f7f9f; cursor: wait; }
  `;
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(css);
    root.adoptedStyleSheets = [sheet];
  } catch (_) {
    const style = document.createElement("style");
    style.textContent = css;
    root.append(style);
  }

  const el = (tag, props = {}) => Object.assign(document.createElement(tag), props);
  const launch = el("button", { className: "launch", type: "button", textContent: title });
  launch.setAttribute("aria-expanded", "false");
  launch.setAttribute("aria-controls", "warmline-chat-panel");
  const panel = el("section", { className: "panel", id: "warmline-chat-panel", hidden: true });
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-labelledby", "warmline-chat-title");
  const header = el("header");
  const h2 = el("h2", { id: "warmline-chat-title", textContent: title });
  const close = el("button", { className: "close", type: "button", textContent: "×" });
  close.setAttribute("aria-label", words.close);
  header.append(h2, close);
  const log = el("ol", { className: "log" });
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", title);
  const form = el("form");
  const label = el("label", { className: "sr", htmlFor: "warmline-chat-input", textContent: words.label });
  const input = el("input", { id: "warmline-chat-input", type: "text", maxLength: 2000, autocomplete: "off" });
  const send = el("button", { type: "submit", textContent: words.send });
  form.append(label, input, send);
  panel.append(header, log, form);
  root.append(launch, panel);

  const show = (open) => {
    panel.hidden = !open;
    launch.setAttribute("aria-expanded", String(open));
    if (open) input.focus();
    else launch.focus();
  };
  launch.addEventListener("click", () => show(panel.hidden));
  close.addEventListener("click", () => show(false));
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape") show(false);
  });

  // A line of the conversation; its text's element (the "You:" / "Answer:" prefix is for
  // screen readers only).
  const line = (who, text) => {
    const li = el("li", { className: who });
    const sr = el("span", { className: "sr", textContent: `${who === "you" ? words.you : words.agent}: ` });
    const body = el("span", { textContent: text });
    li.append(sr, body);
    log.append(li);
    log.scrollTop = log.scrollHeight;
    return body;
  };
  const busy = (b) => {
    input.disabled = b;
    send.disabled = b;
    if (!b) input.focus();
  };

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || send.disabled) return;
    input.value = "";
    line("you", text);
    const answer = line("agent", "");
    answer.parentElement.setAttribute("aria-busy", "true");
    busy(true);
    const url = `${base}/api/chat/stream?client=${encodeURIComponent(key)}` +
      `&sessionId=${encodeURIComponent(session)}&text=${encodeURIComponent(text)}`;
    const source = new EventSource(url);
    let done = false;
    const finish = (final) => {
      done = true;
      source.close();
      answer.textContent = final;
      answer.parentElement.removeAttribute("aria-busy");
      busy(false);
    };
    source.onmessage = (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      if (ev.type === "agent_chunk" && typeof ev.text === "string") {
        answer.textContent += ev.text;
        log.scrollTop = log.scrollHeight;
      }
      if (ev.done) finish(typeof ev.text === "string" ? ev.text : words.down);
    };
    // A refusal (4xx) or a broken connection: the browser would retry and send the message
    // again; the widget stops instead.
    source.onerror = () => {
      if (!done) finish(words.down);
    };
  });

  (document.body || document.documentElement).append(host);
})();
