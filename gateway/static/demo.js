// Demo mode only: buttons that break `meshelect demo` on purpose (gateway/democontrol.py).
// A gateway without --demo-control answers 404 on /api/demo, and nothing here is drawn.
// Each action the demo does (a button here, or a key in its terminal) comes back on the live
// feed as an "operator" event, which app.js lists with the elections; this bar listens to them
// too, to know whether the mesh is partitioned.
"use strict";

(function demoControls() {
  const BUTTONS = [
    ["kill", "Kill the leader", "kill -9 the leader's process: the others elect a new one (crash)"],
    ["stop", "Stop the leader", "stop the leader gracefully: it hands over as it goes (handoff)"],
    ["drain", "Drain its battery", "drop the leader's battery to 16%: it hands over (low battery)"],
    ["partition", "Partition the mesh", "each half of the agents stops hearing the other: a leader on each side"],
    ["heal", "Heal", "the halves hear each other again: one leader (partition merge)"],
  ];

  function make(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(info) {
    const bar = make("div", { class: "demo-bar", "data-testid": "demo-bar" });
    bar.appendChild(make("span", { class: "demo-title" }, "Demo: break it"));
    const buttons = new Map();
    for (const [action, label, title] of BUTTONS) {
      const button = make("button", { type: "button", title, "data-testid": "demo-" + action }, label);
      button.addEventListener("click", () => act(action, status));
      buttons.set(action, button);
      bar.appendChild(button);
    }
    const status = make("span", { class: "demo-status", "data-testid": "demo-status" },
      info.connected ? "" : "the demo does not answer yet");
    bar.appendChild(status);
    const partitioned = (yes) => {
      buttons.get("partition").disabled = yes;
      buttons.get("heal").disabled = !yes;
    };
    partitioned(info.partitioned);
    document.addEventListener("meshelect-operator", (event) => {
      const action = event.detail.action;
      if (action === "partition" || action === "heal") partitioned(action === "partition");
    });
    document.querySelector("header.topbar").after(bar);
    for (const event of info.recent) handlers.operator(event); // app.js: into the election list
  }

  async function act(action, status) {
    status.textContent = "\u2026";
    try {
      const response = await fetch("/api/demo/" + action, { method: "POST", headers: { "X-Meshelect-Demo": "1" } });
      const reply = await response.json();
      status.textContent = response.ok ? reply.event.text : "cannot: " + reply.error;
    } catch (err) {
      status.textContent = "cannot reach the gateway: " + err;
    }
  }

  fetch("/api/demo")
    .then((response) => (response.ok ? response.json() : null))
    .then((info) => { if (info) draw(info); })
    .catch(() => {});
})();
