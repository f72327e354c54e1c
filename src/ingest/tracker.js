// Clickflow's tracker. One tag:
//   <script defer data-site="cf_..." src="https://collector.example/js/clickflow.js"></script>
// Optional attributes: data-api (another collector's event URL), data-hash (hash routing),
// data-outbound (outbound link clicks), data-downloads (file downloads; a value replaces the
// extensions, "pdf,zip"), data-allow-localhost.
// The collector serves this file with full-line comments and indentation removed: keep
// comments on lines of their own.
(function () {
  "use strict";
  var w = window, d = document, l = w.location, n = w.navigator;
  var s = d.currentScript;
  if (!s) return;
  var at = function (a) { return s.getAttribute(a); };
  var site = at("data-site");
  var api = at("data-api") || new URL(s.src).origin + "/api/event";
  var hash = at("data-hash") != null;
  var files = at("data-downloads");
  var fileRe = files != null && new RegExp("\\.(" + (files || "pdf|xlsx?|docx?|txt|rtf|csv|exe|key|pp[st]x?|7z|pkg|rar|gz|zip|avi|mov|mp4|mpe?g|wmv|midi?|mp3|wav|wma|dmg|iso|msi").replace(/,/g, "|") + ")$", "i");
  var last;

  // Says why an event is not sent, on the console, so a site owner testing the tag sees it.
  function ignored(name) {
    var why;
    try {
      if (w.localStorage.clickflow_ignore == "true") why = "localStorage.clickflow_ignore is set";
    } catch (e) {}
    if (l.protocol == "file:") why = "a file: page (serve it over http)";
    else if (at("data-allow-localhost") == null && /^(localhost|127(\.\d+){3}|\[::1\])$/.test(l.hostname)) why = "localhost (add data-allow-localhost)";
    if (why && w.console) console.warn("clickflow: not sending " + name + ": " + why);
    return why;
  }

  // 128 random bits: the collector drops a retried event whose id it has seen.
  function id() {
    var b = crypto.getRandomValues(new Uint8Array(16)), h = "";
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1);
    return h;
  }

  function here() {
    return hash ? l.href : l.href.split("#")[0];
  }

  // clickflow(name, {props: {...}, revenue: {amount: "12.50", currency: "EUR"}, callback})
  function send(name, o) {
    o = o || {};
    if (!ignored(name)) {
      var e = { site: site, name: name, url: here(), referrer: d.referrer, event_id: id() };
      if (o.props) e.props = o.props;
      if (o.revenue) e.revenue = o.revenue;
      var body = JSON.stringify(e);
      // A string beacon is text/plain: no CORS preflight, and it outlives the page.
      if (!(n.sendBeacon && n.sendBeacon(api, body))) {
        fetch(api, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } }).catch(function () {});
      }
    }
    if (o.callback) o.callback();
  }

  // A single-page app's route change is a pageview; the same URL twice in a row is not.
  function page() {
    if (here() == last) return;
    last = here();
    send("pageview");
  }

  function click(ev) {
    var a = ev.target.closest && ev.target.closest("a[href]");
    if (!a || !/^https?:$/.test(a.protocol)) return;
    if (at("data-outbound") != null && a.host != l.host) send("Outbound Link: Click", { props: { url: a.href } });
    else if (fileRe && fileRe.test(a.pathname)) send("File Download", { props: { url: a.href } });
  }

  var h = w.history;
  ["pushState", "replaceState"].forEach(function (m) {
    var f = h[m];
    h[m] = function () {
      var r = f.apply(this, arguments);
      page();
      return r;
    };
  });
  w.addEventListener("popstate", page);
  if (hash) w.addEventListener("hashchange", page);
  d.addEventListener("click", click);
  d.addEventListener("auxclick", click);

  // Calls made before this script loaded wait in clickflow.q (see the README's snippet).
  var queue = (w.clickflow && w.clickflow.q) || [];
  w.clickflow = send;
  page();
  for (var i = 0; i < queue.length; i++) send.apply(null, queue[i]);
})();
