// The Confide dashboard page: one snapshot of the federation (api/state), then every new one as the server
// sends it (api/events, server-sent events). Everything a site or the job named is set as text (textContent),
// never parsed as markup; names given to plotly have their markup characters escaped (plotly reads a few tags).
"use strict";

(function () {
  const token = new URLSearchParams(window.location.search).get("token") || "";
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  let current = null;
  let receivedAt = 0; // seconds, this page's clock, when `current` arrived
  const curveDivs = new Map();

  function byId(id) {
    return document.getElementById(id);
  }

  function text(value) {
    return value === null || value === undefined ? "\u2014" : String(value);
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "\u2014" : Number(value).toFixed(digits);
  }

  function cell(content, className) {
    const td = document.createElement("td");
    if (content instanceof Node) {
      td.appendChild(content);
    } else {
      td.textContent = text(content);
    }
    if (className) {
      td.className = className;
    }
    return td;
  }

  function lines(items) {
    const box = document.createElement("div");
    for (const item of items) {
      const span = document.createElement("span");
      span.className = "line";
      span.textContent = item;
      span.title = item;
      box.appendChild(span);
    }
    return box;
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      tr.appendChild(c instanceof HTMLTableCellElement ? c : cell(c));
    }
    if (className) {
      tr.className = className;
    }
    return tr;
  }

  function plotText(name) {
    return String(name).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function metricsText(metrics) {
    return Object.entries(metrics || {})
      .map(([key, value]) => key + " " + fixed(value, 4))
      .join(", ");
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) {
      return "\u2014";
    }
    const since = seconds + (performance.now() / 1000 - receivedAt);
    return since < 60 ? since.toFixed(0) + " s ago" : (since / 60).toFixed(1) + " min ago";
  }

  function renderSites(state) {
    const rows = state.sites.map((site) => {
      const recorded = [];
      if (site.update) {
        const u = site.update;
        recorded.push(
          "round " + u.round + (u.masked ? " (masked)" : "") + ", " + u.num_examples + " example(s)"
        );
        recorded.push("filters: " + (u.filters.length ? u.filters.join(", ") : "none"));
        for (const [key, value] of Object.entries(u.recorded)) {
          const shown = typeof value === "number" && !Number.isInteger(value) ? Number(value.toPrecision(4)) : value;
          recorded.push(key + ": " + text(shown));
        }
      }
      const problem = site.problem ? "round " + site.problem.round + ": " + site.problem.reason : null;
      return row([
        cell(site.name, "site"),
        cell(site.connected ? "yes" : "no", site.connected ? "yes" : "no"),
        cell(ago(site.last_heard_s), "num"),
        cell(site.accepted + " / " + site.asked, "num"),
        cell(problem === null ? null : lines([problem])),
        cell(recorded.length ? lines(recorded) : null),
        cell(site.update ? metricsText(site.update.metrics) || "none sent" : null),
      ]);
    });
    byId("sites").tBodies[0].replaceChildren(...rows);
    byId("sites-note").textContent = state.sites.length ? "" : "no site has been heard from yet";
    const refused = state.refused.map((r) => row([r.who, r.reason, ago(r.seconds_ago)]));
    byId("refused").tBodies[0].replaceChildren(...refused);
    byId("refused-section").hidden = refused.length === 0;
  }

  function renderRounds(state) {
    const shown = state.rounds.slice(-200).reverse();
    const rows = shown.map((r) => {
      const failures = Object.entries(r.failures).map(([site, why]) => site + ": " + why);
      const evaluated = Object.keys(r.eval_metrics).length;
      const tested = metricsText(r.test_metrics);
      const metrics = [
        metricsText(r.train_metrics) + (evaluated ? " (scored at " + evaluated + " site(s))" : ""),
        tested ? "test splits: " + tested : "",
      ]
        .filter(Boolean)
        .join("; ");
      return row(
        [
          cell(r.round, "num"),
          r.status,
          cell(fixed(r.seconds, 2), "num"),
          cell(fixed(r.coordination_seconds, 2), "num"),
          cell(fixed(r.site_seconds, 2), "num"),
          cell(r.accepted.length + " / " + r.asked.length, "num"),
          cell(failures.length ? lines(failures) : null),
          metrics,
        ],
        r.status
      );
    });
    byId("rounds").tBodies[0].replaceChildren(...rows);
  }

  const plotConfig = { displaylogo: false, displayModeBar: false, responsive: true };

  function renderCurves(state) {
    const box = byId("curves");
    const seen = new Set();
    for (const curve of state.curves) {
      seen.add(curve.name);
      let div = curveDivs.get(curve.name);
      if (!div) {
        div = document.createElement("div");
        div.className = "curve";
        box.appendChild(div);
        curveDivs.set(curve.name, div);
      }
      const trace = { x: curve.rounds, y: curve.values, mode: "lines+markers", name: plotText(curve.name) };
      const layout = {
        title: { text: plotText(curve.name), font: { size: 13 } },
        margin: { l: 50, r: 10, t: 36, b: 36 },
        xaxis: { title: { text: "round" }, dtick: curve.rounds.length > 12 ? undefined : 1 },
      };
      Plotly.react(div, [trace], layout, plotConfig);
    }
    for (const [name, div] of curveDivs) {
      if (!seen.has(name)) {
        Plotly.purge(div);
        div.remove();
        curveDivs.delete(name);
      }
    }
    byId("curves-note").textContent = state.curves.length
      ? ""
      : "no curve yet: it grows as rounds close (under differential privacy the sites send no metrics; a " +
        "simulation scores the global model on the sites' test splits every few rounds)";
  }

  function renderPrivacy(state) {
    const privacy = state.privacy;
    byId("privacy-note").textContent = privacy.note;
    const chart = byId("privacy-chart");
    const traces = privacy.ledgers.map((ledger) => ({
      x: ledger.points.map((p) => p.round),
      y: ledger.points.map((p) => p.epsilon),
      mode: "lines+markers",
      name: plotText(ledger.site),
    }));
    const budgets = [...new Set(privacy.ledgers.map((l) => l.budget).filter((b) => b !== null))];
    const shapes = budgets.map((b) => ({
      type: "line", xref: "paper", x0: 0, x1: 1, y0: b, y1: b, line: { dash: "dash", color: "#b42318" },
    }));
    if (traces.length) {
      chart.classList.remove("empty");
      Plotly.react(
        chart,
        traces,
        {
          title: { text: "epsilon spent after each round (dashed: budget)", font: { size: 13 } },
          margin: { l: 50, r: 10, t: 36, b: 36 },
          xaxis: { title: { text: "round" }, dtick: traces[0].x.length > 12 ? undefined : 1 },
          yaxis: { title: { text: "epsilon" }, rangemode: "tozero" },
          shapes: shapes,
        },
        plotConfig
      );
    } else {
      chart.classList.add("empty");
    }
    const rows = privacy.ledgers.map((ledger) => {
      const last = ledger.points.length ? ledger.points[ledger.points.length - 1] : null;
      const spent = last ? last.epsilon : 0;
      const left = ledger.budget === null ? null : Math.max(ledger.budget - spent, 0);
      return row([
        cell(ledger.site, "site"),
        cell(fixed(spent, 3), "num"),
        cell(fixed(ledger.budget, 3), "num"),
        cell(fixed(left, 3), "num"),
        cell(last ? last.round : null, "num"),
        cell(last ? fixed(last.spent, 3) : null, "num"),
        cell(ledger.delta === null ? null : Number(ledger.delta).toExponential(1), "num"),
      ]);
    });
    byId("privacy").tBodies[0].replaceChildren(...rows);
    byId("privacy").hidden = rows.length === 0;
  }

  function render(state) {
    current = state;
    receivedAt = performance.now() / 1000;
    byId("job-name").textContent = state.job_name;
    byId("status").textContent = state.status;
    byId("round-count").textContent = String(state.rounds_closed);
    byId("rounds-planned").textContent = String(state.rounds_planned);
    byId("mode").textContent = state.mode;
    byId("job").textContent = JSON.stringify(state.job, null, 2);
    renderSites(state);
    renderRounds(state);
    renderCurves(state);
    renderPrivacy(state);
  }

  function live(on, words) {
    const badge = byId("live");
    badge.textContent = words;
    badge.className = on ? "on" : "off";
  }

  let ended = false;

  function connect() {
    const source = new EventSource("api/events" + query);
    source.onmessage = (event) => {
      render(JSON.parse(event.data));
      live(true, "live");
    };
    source.onerror = () => {
      if (!ended) {
        live(false, "reconnecting\u2026 (is the server still running?)");
      }
    };
    source.addEventListener("end", () => {
      ended = true;
      source.close();
      live(false, "ended: the process that served this page has stopped; it shows the last state it sent");
    });
  }

  fetch("api/state" + query, { credentials: "same-origin" })
    .then((answer) => {
      if (!answer.ok) {
        throw new Error("the dashboard answered " + answer.status);
      }
      return answer.json();
    })
    .then((state) => render(state))
    .catch((error) => live(false, String(error)))
    .finally(connect);

  window.setInterval(() => {
    if (current !== null) {
      renderSites(current); // how long ago each site was heard from, on this page's clock
    }
  }, 1000);
})();
