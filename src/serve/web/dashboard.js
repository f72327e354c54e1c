// Clickflow's dashboard: plain JavaScript over the query API, no framework and no network
// beyond this server. Every number shown carries the API's value in data-value, so a test
// (and a curious merchant) can check it against the API's own answer.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var path = location.pathname;
  var shared = path.match(/^\/share\/([^/]+)$/);
  var opened = path.match(/^\/sites\/([^/]+)$/);
  var site = opened ? decodeURIComponent(opened[1]) : null;
  var auth = null;
  var state = { period: "7d", from: "", to: "", granularity: "day", filters: [] };
  var tabs = {};
  var generation = 0;
  // The answer each widget shows: a quiet update redraws only what changed, so an open
  // dashboard neither flickers nor loses what the reader is looking at.
  var shown = {};

  // ---- formatting ----
  var int = function (v) { return Math.round(v).toLocaleString("en-US"); };
  var pct = function (v) { return v.toFixed(1) + "%"; };
  var dur = function (v) {
    var s = Math.round(v), m = Math.floor(s / 60);
    return m ? m + "m " + String(s % 60).padStart(2, "0") + "s" : s + "s";
  };
  var money = function (v, currency) { return (currency ? currency + " " : "") + v.toFixed(2); };

  // ---- the API ----
  function api(body) {
    var q = Object.assign({ site_id: site }, body);
    return fetch("/api/v1/query", {
      method: "POST",
      headers: { Authorization: "Bearer " + auth, "Content-Type": "application/json" },
      body: JSON.stringify(q)
    }).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) throw new Error(j.error || "HTTP " + r.status);
        return j;
      });
    });
  }
  function range() { return state.period == "custom" ? [state.from, state.to] : state.period; }
  function filters() { return state.filters.map(function (f) { return [f[0], "is", [f[1]]]; }); }

  // ---- state in the URL ----
  function readUrl() {
    var p = new URLSearchParams(location.search);
    state.period = p.get("period") || "7d";
    state.from = p.get("from") || "";
    state.to = p.get("to") || "";
    state.granularity = p.get("granularity") || (state.period == "today" || state.period == "yesterday" ? "hour" : "day");
    state.filters = p.getAll("filter").map(function (f) {
      var at = f.indexOf(":");
      return [f.slice(0, at), f.slice(at + 1)];
    }).filter(function (f) { return f[0]; });
  }
  function writeUrl() {
    var p = new URLSearchParams();
    p.set("period", state.period);
    if (state.period == "custom") { p.set("from", state.from); p.set("to", state.to); }
    p.set("granularity", state.granularity);
    state.filters.forEach(function (f) { p.append("filter", f[0] + ":" + f[1]); });
    history.replaceState(null, "", location.pathname + "?" + p.toString());
  }

  // ---- sign-in ----
  function signin(message) {
    $("signin").hidden = false;
    $("dashboard").hidden = true;
    if (site) $("signin-site").value = site;
    if (message) { $("signin-error").textContent = message; $("signin-error").hidden = false; }
    $("signin").onsubmit = function (e) {
      e.preventDefault();
      var s = $("signin-site").value.trim();
      sessionStorage.setItem("clickflow_key_" + s, $("signin-key").value.trim());
      location.href = "/sites/" + encodeURIComponent(s) + location.search;
    };
  }

  // ---- KPI cards ----
  var KPIS = [
    { id: "visitors", label: "Visitors", metric: "visitors", fmt: int },
    { id: "visits", label: "Visits", metric: "visits", fmt: int },
    { id: "pageviews", label: "Pageviews", metric: "pageviews", fmt: int },
    { id: "bounce_rate", label: "Bounce rate", metric: "bounce_rate", fmt: pct, lowerIsBetter: true },
    { id: "visit_duration", label: "Visit duration", metric: "visit_duration", fmt: dur },
    { id: "revenue", label: "Revenue", metric: "total_revenue", dims: ["goal", "currency"], fmt: money }
  ];
  // Revenue is kept per currency: the card shows the largest.
  function revenueOf(results) {
    var by = {};
    results.forEach(function (r) { by[r.dimensions[1]] = (by[r.dimensions[1]] || 0) + r.metrics[0]; });
    var best = Object.keys(by).sort(function (a, b) { return by[b] - by[a]; })[0];
    return best ? { value: Math.round(by[best] * 100) / 100, currency: best } : { value: 0, currency: "" };
  }
  function kpis(run, quiet) {
    if (!quiet) {
      $("kpis").innerHTML = KPIS.map(function (k) {
        return '<div class="kpi" id="kpi-' + k.id + '"><div class="label">' + k.label +
          '</div><div class="value">…</div><div class="change muted">&nbsp;</div></div>';
      }).join("");
    }
    KPIS.forEach(function (k) {
      var card = $("kpi-" + k.id);
      api({ metrics: [k.metric], date_range: range(), dimensions: k.dims || [], filters: filters(), compare: "previous_period" })
        .then(function (a) {
          if (unchanged(run, quiet, "kpi-" + k.id, a)) return;
          var now, before, currency = "";
          if (k.dims) {
            var cur = revenueOf(a.results), prev = revenueOf(a.comparison.results.filter(function (r) { return r.dimensions[1] == cur.currency; }));
            now = cur.value; before = prev.value; currency = cur.currency;
          } else {
            now = a.results[0].metrics[0];
            before = a.comparison.results[0].metrics[0];
          }
          var value = card.querySelector(".value");
          value.textContent = k.fmt(now, currency);
          value.dataset.value = now;
          if (currency) value.dataset.currency = currency;
          var change = card.querySelector(".change");
          change.dataset.previous = before;
          if (before) {
            var d = Math.round((now - before) / before * 100);
            var good = k.lowerIsBetter ? d < 0 : d > 0;
            change.textContent = (d > 0 ? "↑ " : d < 0 ? "↓ " : "") + Math.abs(d) + "% vs previous period";
            change.className = "change " + (d == 0 ? "muted" : good ? "up" : "down");
          } else {
            change.textContent = now ? "new in this period" : "no data before";
            change.className = "change muted";
          }
        })
        .catch(function (e) {
          if (run != generation || quiet) return;
          var value = card.querySelector(".value");
          value.textContent = "—";
          card.title = e.message;
          card.querySelector(".change").textContent = state.filters.length ? "not kept for this filter" : e.message;
        });
    });
  }

  // ---- the main graph ----
  function graph(run, quiet) {
    var metric = state.filters.length ? "visits" : "visitors";
    $("graph-title").textContent = metric == "visits" ? "Visits" : "Visitors";
    api({ metrics: [metric], date_range: range(), dimensions: ["time:" + state.granularity], filters: filters() })
      .then(function (a) {
        if (unchanged(run, quiet, "graph", a)) return;
        var values = a.results.map(function (r) { return r.metrics[0]; });
        var labels = a.results.map(function (r) { return short(r.dimensions[0], a.meta.time_zone); });
        var svg = $("graph");
        svg.dataset.values = JSON.stringify(values);
        svg.dataset.labels = JSON.stringify(labels);
        var max = Math.max.apply(null, values.concat([1]));
        var n = Math.max(values.length - 1, 1);
        var pts = values.map(function (v, i) { return (i / n * 1000).toFixed(1) + "," + (210 - v / max * 200).toFixed(1); });
        svg.setAttribute("viewBox", "0 0 1000 220");
        svg.innerHTML = [0, 0.5, 1].map(function (f) {
          var y = (210 - f * 200).toFixed(1);
          return '<line class="grid" x1="0" x2="1000" y1="' + y + '" y2="' + y + '"/>';
        }).join("") +
          (pts.length ? '<polygon class="area" points="0,210 ' + pts.join(" ") + " 1000,210\"/>" +
            '<polyline class="line" points="' + pts.join(" ") + '"/>' : "");
        var pick = labels.length ? [labels[0], labels[Math.floor(labels.length / 2)], labels[labels.length - 1]] : [];
        $("graph-axis").innerHTML = pick.map(function (l) { return "<span>" + esc(l) + "</span>"; }).join("");
        $("graph-note").textContent = "peak " + int(Math.max.apply(null, values.concat([0])));
      })
      .catch(function (e) {
        if (run != generation || quiet) return;
        $("graph").innerHTML = "";
        $("graph-note").textContent = e.message;
      });
  }

  // Hours come as instants: shown as the site's local time of day.
  function short(label, zone) {
    if (label.indexOf("T") < 0) return label;
    try {
      return new Intl.DateTimeFormat("en-GB", { timeZone: zone, month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }).format(new Date(label));
    } catch (e) {
      return label;
    }
  }

  // ---- breakdowns ----
  var PANELS = [
    { id: "pages", title: "Pages", tabs: [
      { label: "Top pages", dims: ["page"], metrics: ["visitors", "pageviews"], heads: ["Visitors", "Pageviews"] },
      { label: "Entry pages", dims: ["page"], metrics: ["entries"], heads: ["Entries"] },
      { label: "Exit pages", dims: ["page"], metrics: ["exits"], heads: ["Exits"] }] },
    { id: "sources", title: "Sources", tabs: [
      { label: "Sources", dims: ["source"] }, { label: "Channels", dims: ["channel"] },
      { label: "Referrers", dims: ["referrer"] }, { label: "UTM source", dims: ["utm_source"] },
      { label: "UTM medium", dims: ["utm_medium"] }, { label: "UTM campaign", dims: ["utm_campaign"] }] },
    { id: "devices", title: "Devices", tabs: [
      { label: "Devices", dims: ["device"] }, { label: "Browsers", dims: ["browser"] }, { label: "OS", dims: ["os"] }] },
    { id: "countries", title: "Countries", tabs: [{ label: "Countries", dims: ["country"] }] },
    { id: "goals", title: "Goals", tabs: [
      { label: "Goals", dims: ["goal"], metrics: ["visitors", "conversions", "conversion_rate"], heads: ["Visitors", "Conversions", "CR"] },
      { label: "Revenue", dims: ["goal", "currency"], metrics: ["total_revenue", "revenue_events"], heads: ["Revenue", "Orders"] }] }
  ];
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; });
  }
  function cell(metric, v) {
    var text = metric == "conversion_rate" ? pct(v) : metric == "total_revenue" ? money(v) : int(v);
    return '<td data-metric="' + metric + '" data-value="' + v + '">' + text + "</td>";
  }
  function panels(run) {
    $("panels").innerHTML = PANELS.map(function (p) {
      return '<div class="card panel" id="panel-' + p.id + '"><h2>' + p.title + '</h2><div class="tabs">' +
        p.tabs.map(function (t, i) { return '<button data-tab="' + i + '">' + t.label + "</button>"; }).join("") +
        '</div><div class="table"></div></div>';
    }).join("");
    PANELS.forEach(function (p) {
      var box = $("panel-" + p.id);
      box.querySelectorAll(".tabs button").forEach(function (b) {
        b.onclick = function () { tabs[p.id] = +b.dataset.tab; panel(p, box, generation); };
      });
      panel(p, box, run);
    });
  }
  function panel(p, box, run, quiet) {
    var t = p.tabs[tabs[p.id] || 0];
    var metrics = t.metrics || ["visitors", "visits"];
    var heads = t.heads || ["Visitors", "Visits"];
    box.querySelectorAll(".tabs button").forEach(function (b) { b.classList.toggle("on", +b.dataset.tab == (tabs[p.id] || 0)); });
    var table = box.querySelector(".table");
    table.dataset.dimensions = t.dims.join(",");
    if (!quiet) table.innerHTML = '<p class="empty">Loading…</p>';
    api({ metrics: metrics, date_range: range(), dimensions: t.dims, filters: filters(), limit: 10 })
      .then(function (a) {
        if (unchanged(run, quiet, "panel-" + p.id + "-" + (tabs[p.id] || 0), a)) return;
        if (!a.results.length) { table.innerHTML = '<p class="empty">No data in this period</p>'; return; }
        table.innerHTML = "<table><tr><th>" + esc(t.label) + "</th>" +
          heads.map(function (h) { return "<th>" + h + "</th>"; }).join("") + "</tr>" +
          a.results.map(function (r) {
            var name = r.dimensions.join(" · ");
            return '<tr class="row" data-dimension="' + esc(t.dims[0]) + '" data-name="' + esc(r.dimensions[0]) + '"><td title="' + esc(name) + '">' + esc(name) + "</td>" +
              r.metrics.map(function (v, i) { return cell(metrics[i], v); }).join("") + "</tr>";
          }).join("") + "</table>";
        table.querySelectorAll("tr.row").forEach(function (tr) {
          tr.onclick = function () { addFilter(tr.dataset.dimension, tr.dataset.name); };
        });
      })
      .catch(function (e) {
        if (run != generation || quiet) return;
        table.innerHTML = '<p class="empty">' + esc(state.filters.length ? "Not kept for this filter: " + e.message : e.message) + "</p>";
      });
  }

  // ---- filters ----
  function addFilter(dimension, value) {
    state.filters = state.filters.filter(function (f) { return f[0] != dimension; });
    state.filters.push([dimension, value]);
    refresh();
  }
  function chips() {
    $("filters").innerHTML = state.filters.map(function (f, i) {
      return '<span class="chip" data-dimension="' + esc(f[0]) + '">' + esc(f[0]) + " is <b>" + esc(f[1]) +
        '</b><button aria-label="Remove filter" data-remove="' + i + '">×</button></span>';
    }).join("");
    $("filters").querySelectorAll("button").forEach(function (b) {
      b.onclick = function () { state.filters.splice(+b.dataset.remove, 1); refresh(); };
    });
  }

  // ---- controls ----
  function controls() {
    document.querySelectorAll("#periods button").forEach(function (b) {
      b.classList.toggle("on", b.dataset.period == state.period);
      b.onclick = function () {
        state.period = b.dataset.period;
        if (state.period == "custom" && !state.from) {
          var today = new Date().toISOString().slice(0, 10);
          state.from = state.to = today;
        }
        if (state.period == "today" || state.period == "yesterday") state.granularity = "hour";
        else if (state.granularity == "hour") state.granularity = "day";
        refresh();
      };
    });
    document.querySelectorAll("#granularities button").forEach(function (b) {
      b.classList.toggle("on", b.dataset.granularity == state.granularity);
      b.onclick = function () { state.granularity = b.dataset.granularity; refresh(); };
    });
    $("custom-range").hidden = state.period != "custom";
    $("custom-from").value = state.from;
    $("custom-to").value = state.to;
    $("custom-from").onchange = $("custom-to").onchange = function () {
      state.from = $("custom-from").value; state.to = $("custom-to").value;
      if (state.from && state.to) refresh();
    };
  }

  // True when an answer should not be drawn: a newer view superseded it, or a quiet update
  // brought what is already on screen.
  function unchanged(run, quiet, widget, answer) {
    if (run != generation) return true;
    var text = JSON.stringify([answer.results, answer.comparison]);
    if (quiet && shown[widget] == text) return true;
    shown[widget] = text;
    return false;
  }

  // A range that reaches today keeps moving: redraw what changed every 15 seconds.
  function follow() {
    // The site's day may still be yesterday in UTC: a custom range ending then is open too.
    var yesterday = new Date(Date.now() - 864e5).toISOString().slice(0, 10);
    var open = state.period == "custom" ? state.to >= yesterday : state.period != "yesterday" && state.period != "last_month";
    if (!open || document.hidden) return;
    kpis(generation, true);
    graph(generation, true);
    PANELS.forEach(function (p) { panel(p, $("panel-" + p.id), generation, true); });
  }

  function refresh() {
    shown = {};
    generation++;
    writeUrl();
    controls();
    chips();
    kpis(generation);
    graph(generation);
    panels(generation);
  }

  // ---- live visitors ----
  function live() {
    fetch("/api/v1/realtime?site_id=" + encodeURIComponent(site), { headers: { Authorization: "Bearer " + auth } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) return;
        $("live").hidden = false;
        $("current-visitors").textContent = int(j.current_visitors);
        $("current-visitors").dataset.value = j.current_visitors;
      })
      .catch(function () {});
  }

  // ---- sharing ----
  function sharing() {
    if (shared) return;
    $("share-controls").hidden = false;
    var call = function (method, url) {
      return fetch(url, { method: method, headers: { Authorization: "Bearer " + auth } })
        .then(function (r) { return r.json(); });
    };
    $("share-create").onclick = function () {
      call("POST", "/api/v1/shares?site_id=" + encodeURIComponent(site)).then(function (j) {
        if (!j.token) return;
        $("share-url").value = location.origin + "/share/" + j.token + location.search;
        $("share-url").hidden = $("share-revoke").hidden = false;
        $("share-revoke").dataset.token = j.token;
      });
    };
    $("share-revoke").onclick = function () {
      call("DELETE", "/api/v1/shares/" + $("share-revoke").dataset.token).then(function () {
        $("share-url").hidden = $("share-revoke").hidden = true;
      });
    };
  }

  function start() {
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("site-name").textContent = site;
    readUrl();
    refresh();
    sharing();
    live();
    setInterval(live, 10000);
    setInterval(follow, 15000);
  }

  // ---- entry ----
  if (shared) {
    auth = decodeURIComponent(shared[1]);
    fetch("/api/v1/shares/" + encodeURIComponent(auth)).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) { signin("This shared link was revoked or never existed."); return; }
        site = j.site_id;
        start();
        $("site-name").textContent = j.domain + " (shared, read-only)";
      });
    return;
  }
  if (site) {
    // `clickflow up` opens /sites/<id>#key=…: the key moves to this tab's session storage
    // and leaves the address bar.
    var fromHash = location.hash.match(/key=([^&]+)/);
    if (fromHash) {
      sessionStorage.setItem("clickflow_key_" + site, decodeURIComponent(fromHash[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    auth = sessionStorage.getItem("clickflow_key_" + site);
  }
  if (site && auth) start();
  else signin();
})();
