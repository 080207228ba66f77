// Charts: uPlot (npm, served by the app from node_modules; no CDN) for the live, history and
// spectrum charts, and a plain canvas for the overview's sparklines (500 of those must be cheap).
import { defaultBounds, el, formatHz } from "./core.js";

export const hasCharts = () => typeof window.uPlot === "function";
const css = (name) => getComputedStyle(document.body).getPropertyValue(name).trim() || "#888";

// the level bounds (an object whose min/max may change) as dashed lines across the plot
const drawBounds = (b) => (u) => {
  const { ctx } = u;
  const { left, width } = u.bbox;
  ctx.save();
  ctx.setLineDash([6, 4]);
  ctx.lineWidth = devicePixelRatio;
  for (const [v, color] of [[b.min, css("--low")], [b.max, css("--high")]]) {
    const y = Math.round(u.valToPos(v, "y", true));
    if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) continue;
    ctx.strokeStyle = color;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(left + width, y);
    ctx.stroke();
  }
  ctx.restore();
};

const dbRange = (b) => (u, lo, hi) => [
  Math.floor(Math.min(lo ?? b.min, b.min - 10) / 10) * 10,
  Math.ceil(Math.max(hi ?? b.max, b.max + 10) / 10) * 10,
];

function axes(yLabel) {
  const stroke = css("--muted");
  const grid = { stroke: css("--line"), width: 1 };
  return [{ stroke, grid, ticks: grid }, { stroke, grid, ticks: grid, label: yLabel, size: 50 }];
}

function sizeOf(target, height) {
  return { width: Math.max(240, target.clientWidth || 600), height };
}

// keep a chart as wide as its box (phones rotate, windows resize)
function autoWidth(u, target, height) {
  const ro = new ResizeObserver(() => u.setSize(sizeOf(target, height)));
  ro.observe(target);
  return () => ro.disconnect();
}

/** LAeq and LAFmax over the last `spanS` seconds, scrolling; update(data) with [t, laeq, lafmax]. */
export function liveChart(target, b = defaultBounds, spanS = 300, height = 260) {
  const u = new window.uPlot({
    ...sizeOf(target, height),
    series: [
      {},
      { label: "LAeq", stroke: css("--ok"), width: 2, value: (_, v) => (v == null ? "—" : `${v.toFixed(1)} dB(A)`) },
      { label: "LAFmax", stroke: css("--accent"), width: 1, value: (_, v) => (v == null ? "—" : `${v.toFixed(1)} dB(A)`) },
    ],
    scales: { x: { time: true }, y: { range: dbRange(b) } },
    axes: axes("dB(A)"),
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    hooks: { draw: [drawBounds(b)] },
  }, [[], [], []], target);
  const stop = autoWidth(u, target, height);
  return {
    u,
    points: 0,
    update(data, nowS) {
      this.points = data[0].length;
      u.setData(data, false);
      u.setScale("x", { min: nowS - spanS, max: nowS });
    },
    destroy() { stop(); u.destroy(); },
  };
}

/** History buckets; dragging across it calls onZoom(startMs, endMs). */
export function historyChart(target, onZoom, b = defaultBounds, height = 280) {
  const u = new window.uPlot({
    ...sizeOf(target, height),
    series: [
      {},
      { label: "LAeq", stroke: css("--ok"), width: 2, spanGaps: false },
      { label: "LAFmax", stroke: css("--accent"), width: 1, spanGaps: false },
      { label: "LAFmin", stroke: css("--muted"), width: 1, spanGaps: false },
    ],
    scales: { x: { time: true }, y: { range: dbRange(b) } },
    axes: axes("dB(A)"),
    cursor: { drag: { x: true, y: false, setScale: false } },
    hooks: {
      draw: [drawBounds(b)],
      setSelect: [(self) => {
        const { left, width } = self.select;
        if (width < 5) return;
        const a = self.posToVal(left, "x");
        const b = self.posToVal(left + width, "x");
        self.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
        onZoom(Math.round(a * 1000), Math.round(b * 1000));
      }],
    },
  }, [[], [], [], []], target);
  const stop = autoWidth(u, target, height);
  return {
    u,
    set(points, startMs, endMs) {
      const data = [
        points.map((p) => p.t_ms / 1000), points.map((p) => p.laeq),
        points.map((p) => p.lafmax), points.map((p) => p.lafmin),
      ];
      u.setData(data, false);
      u.setScale("x", { min: startMs / 1000, max: endMs / 1000 });
    },
    destroy() { stop(); u.destroy(); },
  };
}

/** 1/3-octave band levels as bars; set(bandsHz, bandsDb). */
export function spectrumChart(target, height = 220) {
  let hz = [];
  const u = new window.uPlot({
    ...sizeOf(target, height),
    series: [
      {},
      {
        label: "band level", stroke: css("--ok"), fill: css("--ok") + "99", width: 1,
        paths: window.uPlot.paths.bars({ size: [0.85, 40] }), points: { show: false },
        value: (_, v) => (v == null ? "—" : `${v.toFixed(1)} dB`),
      },
    ],
    scales: {
      x: { time: false, range: (_u) => [-0.5, Math.max(hz.length, 1) - 0.5] },
      y: { range: (_u, lo, hi) => [Math.floor(((lo ?? 0) - 10) / 10) * 10, Math.ceil(((hi ?? 60) + 5) / 10) * 10] },
    },
    axes: [
      { ...axes()[0], values: (_u, splits) => splits.map((i) => (Number.isInteger(i) && hz[i] ? formatHz(hz[i]) : "")) },
      axes("dB (Z)")[1],
    ],
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
  }, [[], []], target);
  const stop = autoWidth(u, target, height);
  return {
    u,
    set(bandsHz, bandsDb) {
      hz = bandsHz;
      u.setData([bandsHz.map((_, i) => i), bandsDb]);
    },
    destroy() { stop(); u.destroy(); },
  };
}

/** A tiny line of the last minutes for the overview cards: plain canvas, drawn on demand. */
export function sparkline(width = 160, height = 34) {
  const canvas = el("canvas", { class: "spark", width: width * devicePixelRatio, height: height * devicePixelRatio,
    "aria-hidden": "true" });
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  return {
    canvas,
    draw(series, nowS, b = defaultBounds, spanS = 300) {
      const ctx = canvas.getContext("2d");
      const W = canvas.width;
      const H = canvas.height;
      ctx.clearRect(0, 0, W, H);
      if (!series || !series.t.length) return;
      const lo = b.min - 15;
      const hi = b.max + 15;
      const y = (v) => H - ((Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo)) * H;
      ctx.strokeStyle = css("--line");
      ctx.lineWidth = 1;
      for (const v of [b.min, b.max]) {
        ctx.beginPath(); ctx.moveTo(0, y(v)); ctx.lineTo(W, y(v)); ctx.stroke();
      }
      ctx.strokeStyle = css("--fg");
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.beginPath();
      let started = false;
      let lastX = -1;
      for (let i = 0; i < series.t.length; i++) {
        const x = Math.round(((series.t[i] - (nowS - spanS)) / spanS) * W);
        const v = series.laeq[i];
        if (x < 0 || v == null || x === lastX) continue; // one point per pixel column
        lastX = x;
        if (started) ctx.lineTo(x, y(v)); else { ctx.moveTo(x, y(v)); started = true; }
      }
      ctx.stroke();
    },
  };
}
