// The live page: GET api/snapshot once, then Server-Sent Events from api/events (docs/WEB.md).
// No framework, no build step: this file is what the browser runs.
"use strict";

const TEXT = {
  fr: {
    title: "Compteur Linky", connecting: "Connexion…", connected: "En direct", lost: "Connexion perdue",
    power: "Puissance", phase: "Phase", tariff: "Tarif", period: "Période", price: "Prix",
    tempo_today: "Tempo aujourd’hui", tempo_tomorrow: "demain", today: "Aujourd’hui", month: "Ce mois-ci",
    chart: "Puissance sur 24 heures", ago24: "il y a 24 h", now: "maintenant", appliance: "Appareil",
    version: "Version", uptime: "en marche depuis", injected: "injectée", total: "Total énergie",
    subscription: "Abonnement", with_subscription: "Total avec abonnement", unpriced: "sans prix",
    no_frame: "Aucune trame reçue du compteur pour l’instant : vérifiez le câble de téléinformation.",
    stale: "Plus de trame du compteur depuis {s} s.",
    lost_banner: "Connexion à l’appareil perdue : nouvelle tentative en cours…",
    ago: "il y a {s} s", default_prices: "Prix par défaut : tarif réglementé (tarif bleu) du {d}.",
    default_old: "Prix par défaut du {d}, antérieurs au tarif en vigueur : configurez vos prix.",
    no_price: "Pas de prix pour cette période : configurez [tariff].", health: "État",
    clock_wait: "Coûts en attente de l’heure exacte (NTP) : l’énergie sera comptée dès qu’elle sera connue.",
    outputs: "Sorties", checks: "Autocontrôles", none: "aucune", unknown: "inconnu",
    blue: "bleu", white: "blanc", red: "rouge", not_announced: "pas encore annoncé",
    kwh: "kWh", no_data: "Pas encore de données.",
    periods: {
      base: "Base", hc: "Heures creuses", hp: "Heures pleines",
      tempo_blue_hc: "Bleu, heures creuses", tempo_blue_hp: "Bleu, heures pleines",
      tempo_white_hc: "Blanc, heures creuses", tempo_white_hp: "Blanc, heures pleines",
      tempo_red_hc: "Rouge, heures creuses", tempo_red_hp: "Rouge, heures pleines",
      ejp_normal: "EJP, heures normales", ejp_peak: "EJP, pointe mobile", unattributed: "Période inconnue",
    },
    states: { up: "en marche", starting: "démarrage", failing: "en échec", stopped: "arrêtée", down: "hors service",
              drain: "dégradé", ok: "ok", problem: "problème", error: "erreur" },
  },
  en: {
    title: "Linky meter", connecting: "Connecting…", connected: "Live", lost: "Connection lost",
    power: "Power", phase: "Phase", tariff: "Tariff", period: "Period", price: "Price",
    tempo_today: "Tempo today", tempo_tomorrow: "tomorrow", today: "Today", month: "This month",
    chart: "Power over 24 hours", ago24: "24 h ago", now: "now", appliance: "Appliance",
    version: "Version", uptime: "up for", injected: "injected", total: "Energy total",
    subscription: "Subscription", with_subscription: "Total with subscription", unpriced: "no price",
    no_frame: "No frame from the meter yet: check the teleinformation cable.",
    stale: "No frame from the meter for {s} s.",
    lost_banner: "Connection to the appliance lost: trying again…",
    ago: "{s} s ago", default_prices: "Default prices: French regulated tariff (tarif bleu) of {d}.",
    default_old: "Default prices of {d}, older than the tariff in force: configure your prices.",
    no_price: "No price for this period: configure [tariff].", health: "Health",
    clock_wait: "Costs wait for the exact time (NTP): the energy is counted as soon as it is known.",
    outputs: "Outputs", checks: "Self-checks", none: "none", unknown: "unknown",
    blue: "blue", white: "white", red: "red", not_announced: "not announced yet",
    kwh: "kWh", no_data: "No data yet.",
    periods: {
      base: "Base", hc: "Off-peak", hp: "Peak",
      tempo_blue_hc: "Blue, off-peak", tempo_blue_hp: "Blue, peak",
      tempo_white_hc: "White, off-peak", tempo_white_hp: "White, peak",
      tempo_red_hc: "Red, off-peak", tempo_red_hp: "Red, peak",
      ejp_normal: "EJP, normal hours", ejp_peak: "EJP, mobile peak", unattributed: "Unknown period",
    },
    states: { up: "up", starting: "starting", failing: "failing", stopped: "stopped", down: "down",
              drain: "degraded", ok: "ok", problem: "problem", error: "error" },
  },
};

// French unless the browser prefers English: the first language of navigator.languages that we speak wins.
function pickLanguage(list) {
  for (const tag of list || []) {
    const primary = String(tag).toLowerCase().split("-")[0];
    if (primary === "fr" || primary === "en") return primary;
  }
  return "fr";
}

const LANG = pickLanguage(navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language]);
const T = TEXT[LANG];
const LOCALE = LANG === "fr" ? "fr-FR" : "en-GB";
const STALE_S = 10;
const RECONNECT_MS = 2000;

const state = {
  snapshot: null, frame: null, frameClock: 0, history: { bucket_s: 60, points: [] },
  status: null, statusClock: 0, connected: false, everLost: false, source: null, liveCount: 0, chartDrawn: 0,
  chartTimer: 0,
};

const $ = (id) => document.getElementById(id);
const fmt = (x, digits) => (x === null || x === undefined || Number.isNaN(x)) ? "—"
  : new Intl.NumberFormat(LOCALE, { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(x);
function money(x, currency, digits = 2) {
  if (x === null || x === undefined) return "—";
  return new Intl.NumberFormat(LOCALE, { style: "currency", currency: currency || "EUR",
    minimumFractionDigits: digits, maximumFractionDigits: digits }).format(x);
}
const tr = (key, vars) => String(T[key] ?? key).replace(/\{(\w+)\}/g, (_, k) => vars[k]);
const dateText = (iso) => new Intl.DateTimeFormat(LOCALE, { dateStyle: "long", timeZone: "UTC" })
  .format(new Date(iso + "T00:00:00Z"));
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function applyLanguage() {
  document.documentElement.lang = LANG;
  document.title = T.title;
  for (const node of document.querySelectorAll("[data-i18n]")) {
    const text = T[node.dataset.i18n];
    if (typeof text === "string") node.textContent = text;
  }
}

// --- banner and connection ------------------------------------------------------------------------------
function showBanner() {
  const banner = $("banner");
  let text = "", kind = "";
  if (!state.connected && state.everLost) {
    text = T.lost_banner; kind = "lost";
  } else if (state.snapshot && !state.frame) {
    text = T.no_frame; kind = "no-frame";
  } else if (state.frame && state.connected) {
    const age = frameAge();
    if (age !== null && age > STALE_S) { text = tr("stale", { s: Math.round(age) }); kind = "stale"; }
  }
  banner.hidden = !text;
  banner.textContent = text;
  banner.dataset.kind = kind;
}

function setConnection(ok) {
  state.connected = ok;
  if (!ok) state.everLost = true;
  const pill = $("conn");
  pill.dataset.state = ok ? "ok" : "lost";
  pill.textContent = ok ? T.connected : T.lost;
  showBanner();
}

// --- frame --------------------------------------------------------------------------------------------
function frameAge() {
  if (!state.frame) return null;
  return (state.frame.age_s || 0) + (Date.now() - state.frameClock) / 1000;
}

function renderFrame(frame) {
  state.frame = frame;
  state.frameClock = Date.now();
  $("power").textContent = fmt(frame.power_va, 0);
  const injected = $("injected");
  injected.hidden = !frame.injected_va;
  injected.textContent = frame.injected_va ? `${fmt(frame.injected_va, 0)} VA ${T.injected}` : "";
  const body = $("phases").tBodies[0];
  body.replaceChildren(...(frame.phases || []).map((p) =>
    el("tr", {}, el("td", {}, String(p.phase)), el("td", {}, fmt(p.power_va, 0)),
      el("td", {}, fmt(p.current_a, 0)), el("td", {}, fmt(p.voltage_v, 0)))));
  renderPeriod(frame.period, frame.period_label, frame.price);
  renderAge();
  chartFrame(frame);
}

// The minute in progress, from the frames (the server sends each minute once it is over): the chart starts
// with the first frame, not a minute later.
function chartFrame(frame) {
  const v = frame.power_va;
  const t = Date.parse(frame.at) / 1000;
  if (v === null || v === undefined || Number.isNaN(t)) return;
  const size = state.history.bucket_s || 60;
  const bucket = Math.floor(t / size) * size;
  const points = state.history.points;
  const last = points[points.length - 1];
  if (last && last[0] === bucket) {
    const n = state.liveCount || 1;
    last[1] = Math.min(last[1], v); last[3] = Math.max(last[3], v);
    last[2] = Math.round((last[2] * n + v) / (n + 1));
    state.liveCount = n + 1;
  } else if (!last || last[0] < bucket) {
    points.push([bucket, v, v, v]);
    state.liveCount = 1;
  }
  if (!state.chartTimer) {  // redrawn at most every 5 s: 1440 points are not worth redrawing on every frame
    const wait = Math.max(0, 5000 - (Date.now() - state.chartDrawn));
    state.chartTimer = setTimeout(() => { state.chartTimer = 0; renderChart(); }, wait);
  }
}

function renderAge() {
  const age = frameAge();
  $("frame-age").textContent = age === null ? "" : tr("ago", { s: Math.max(0, Math.round(age)) });
  showBanner();
}

// --- tariff -------------------------------------------------------------------------------------------
function currency() {
  return (state.snapshot && state.snapshot.tariff && state.snapshot.tariff.currency) || "EUR";
}

function renderPeriod(period, label, price) {
  $("period").textContent = period ? (T.periods[period] || period) : (label || "—");
  $("price").textContent = price ? `${money(price.value, currency(), 4)}/${T.kwh}` : "—";
  const note = $("price-note");
  let text = "";
  if (period && !price) text = T.no_price;
  else if (price && price.origin === "default") text = tr(price.current ? "default_prices" : "default_old", { d: dateText(price.since) });
  note.hidden = !text;
  note.textContent = text;
}

function chip(node, colour) {
  node.dataset.colour = colour || "";
  node.textContent = colour ? T[colour] : T.not_announced;
}

function costRows(totals, cur) {
  const rows = [];
  for (const [period, e] of Object.entries(totals.periods || {})) {
    rows.push(el("tr", { "data-period": period },
      el("td", {}, T.periods[period] || period),
      el("td", { class: "kwh", "data-value": String(e.wh) }, `${fmt(e.wh / 1000, 2)} ${T.kwh}`),
      el("td", { class: "cost", "data-value": e.cost === null ? "" : String(e.cost) },
        e.cost === null ? T.unpriced : money(e.cost, cur))));
  }
  if (totals.unattributed_wh) {
    rows.push(el("tr", { "data-period": "unattributed" }, el("td", {}, T.periods.unattributed),
      el("td", { class: "kwh", "data-value": String(totals.unattributed_wh) }, `${fmt(totals.unattributed_wh / 1000, 2)} ${T.kwh}`),
      el("td", { class: "cost", "data-value": "" }, T.unpriced)));
  }
  if (!rows.length) return [el("tr", {}, el("td", { colspan: "3" }, T.no_data))];
  rows.push(el("tr", { class: "total", "data-row": "energy" }, el("td", {}, T.total),
    el("td", { class: "kwh", "data-value": String(totals.wh) }, `${fmt(totals.wh / 1000, 2)} ${T.kwh}`),
    el("td", { class: "cost", "data-value": totals.cost === null ? "" : String(totals.cost) }, money(totals.cost, cur))));
  if (totals.subscription !== null && totals.subscription !== undefined) {
    rows.push(el("tr", { class: "sub", "data-row": "subscription" }, el("td", {}, T.subscription), el("td", {}, ""),
      el("td", { class: "cost", "data-value": String(totals.subscription) }, money(totals.subscription, cur))));
    rows.push(el("tr", { class: "total", "data-row": "total" }, el("td", {}, T.with_subscription), el("td", {}, ""),
      el("td", { class: "cost", "data-value": String(totals.total) }, money(totals.total, cur))));
  }
  return rows;
}

function renderTariff(tariff) {
  if (!state.snapshot) state.snapshot = {};
  state.snapshot.tariff = tariff;
  if (!tariff) return;
  const cur = tariff.currency;
  $("today").tBodies[0].replaceChildren(...costRows(tariff.today, cur));
  $("month").tBodies[0].replaceChildren(...costRows(tariff.month, cur));
  const tempo = tariff.tempo;
  $("tempo").hidden = !tempo;
  if (tempo) { chip($("tempo-today"), tempo.today); chip($("tempo-tomorrow"), tempo.tomorrow); }
  if (!state.frame || !state.frame.period) renderPeriod(tariff.period, tariff.period_label, tariff.price);
}

// --- history chart ------------------------------------------------------------------------------------
function renderChart() {
  const svg = $("chart");
  const points = state.history.points || [];
  const end = Date.now() / 1000, start = end - 86400;
  const max = Math.max(1000, ...points.map((p) => p[3]));
  const x = (t) => ((t - start) / 86400 * 600).toFixed(1);
  const y = (v) => (200 - v / max * 190).toFixed(1);
  const ns = "http://www.w3.org/2000/svg";
  const shape = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  const nodes = [0.25, 0.5, 0.75].map((f) => shape("line", { class: "grid-line", x1: "0", x2: "600", y1: y(max * f), y2: y(max * f) }));
  const shown = points.filter((p) => p[0] >= start);
  if (shown.length) {
    const upper = shown.map((p) => `${x(p[0])},${y(p[3])}`);
    const lower = shown.slice().reverse().map((p) => `${x(p[0])},${y(p[1])}`);
    nodes.push(shape("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    nodes.push(shape("polyline", { class: "mean", points: shown.map((p) => `${x(p[0])},${y(p[2])}`).join(" ") }));
  }
  if (shown.length) {
    const now = shown[shown.length - 1];
    nodes.push(shape("circle", { class: "now", cx: x(now[0]), cy: y(now[2]), r: "4" }));
  }
  svg.replaceChildren(...nodes);
  svg.dataset.points = String(shown.length);
  state.chartDrawn = Date.now();
  $("chart-max").textContent = `max ${fmt(max, 0)} VA`;
}

// --- status -------------------------------------------------------------------------------------------
function stateText(s) { return (s && T.states[s]) || s || T.unknown; }

function renderStatus(status) {
  state.status = status;
  state.statusClock = Date.now();
  const items = [];
  const health = status.health || {};
  items.push(el("li", {}, el("span", {}, T.health), el("span", { class: "dot", "data-state": health.state || "" }, stateText(health.state))));
  const outputs = Object.entries(status.outputs || {});
  if (!outputs.length) items.push(el("li", {}, el("span", {}, T.outputs), el("span", {}, T.none)));
  for (const [name, o] of outputs) {
    items.push(el("li", { "data-output": name }, el("span", {}, name), el("span", { class: "dot", "data-state": o.state || "" }, stateText(o.state))));
  }
  const checks = status.checks;
  items.push(el("li", {}, el("span", {}, T.checks),
    el("span", { class: "dot", "data-state": (checks && checks.status) || "" }, checks ? stateText(checks.status) : T.none)));
  $("status").replaceChildren(...items);
  const waiting = !!(status.tariff && status.tariff.state === "waiting_for_clock");
  $("tariff-note").hidden = !waiting;
  $("tariff-note").textContent = waiting ? T.clock_wait : "";
  $("version").textContent = status.version || "—";
  renderUptime();
}

function renderUptime() {
  if (!state.status) return;
  let s = Math.floor((state.status.uptime_s || 0) + (Date.now() - state.statusClock) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60);
  $("uptime").textContent = (d ? `${d} ${LANG === "fr" ? "j" : "d"} ` : "") + `${h} h ${String(m).padStart(2, "0")} min`;
}

// --- data flow ----------------------------------------------------------------------------------------
async function loadSnapshot() {
  const response = await fetch("api/snapshot", { cache: "no-store" });
  if (!response.ok) throw new Error(`snapshot: HTTP ${response.status}`);
  const snap = await response.json();
  state.snapshot = snap;
  state.history = snap.history || { bucket_s: 60, points: [] };
  state.liveCount = 0;
  if (snap.frame) renderFrame(snap.frame); else { state.frame = null; $("power").textContent = "—"; }
  renderTariff(snap.tariff);
  if (snap.status) renderStatus(snap.status);
  renderChart();
  showBanner();
}

function on(source, name, handler) {
  source.addEventListener(name, (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch (e) { return; }  // a malformed event changes nothing
    handler(data);
  });
}

function connect() {
  const source = new EventSource("api/events");
  state.source = source;
  source.onopen = () => {
    const resync = state.everLost;
    setConnection(true);
    if (resync) loadSnapshot().catch(() => setConnection(false));  // what happened while we were away
  };
  source.onerror = () => {
    setConnection(false);  // EventSource reconnects by itself after a network error (retry: from the server)...
    if (source.readyState === EventSource.CLOSED) {  // ...but gives up after an HTTP error: we do not
      source.close();
      setTimeout(connect, RECONNECT_MS);
    }
  };
  on(source, "frame", renderFrame);
  on(source, "tariff", renderTariff);
  on(source, "status", renderStatus);
  on(source, "history", (data) => {
    const points = state.history.points;
    const i = points.findIndex((p) => p[0] === data.point[0]);  // the minute as the server counted it
    if (i >= 0) points[i] = data.point; else { points.push(data.point); points.sort((a, b) => a[0] - b[0]); }
    while (points.length && points[0][0] < Date.now() / 1000 - 86400) points.shift();
    renderChart();
  });
}

applyLanguage();
loadSnapshot().catch(() => setConnection(false)).finally(connect);
setInterval(() => { renderAge(); renderUptime(); }, 1000);
setInterval(renderChart, 60000);
