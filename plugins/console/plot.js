// A small time-series (or step-series) plot over uPlot: created once, fed new data on each render.
import { html, useEffect, useRef } from './vendor/htm-preact.js';
import uPlot from './vendor/uplot.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c'];

/**
 * `data` is uPlot's columnar form: [xs, ys1, ys2, …]; `series` names each y column. `time` says
 * whether x is a Unix time in seconds (the overview) or a plain number (training steps, α).
 */
export function Plot({ title, series, data, time = true, width = 440, height = 170, id }) {
  const el = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const opts = {
      title,
      width,
      height,
      scales: { x: { time } },
      legend: { live: false },
      series: [{}, ...series.map((s, i) => ({ label: s, stroke: COLORS[i % COLORS.length], width: 2, points: { show: !time } }))],
    };
    plot.current = new uPlot(opts, data, el.current);
    return () => {
      plot.current.destroy();
      plot.current = null;
    };
  }, [title, series.join('|'), time]);
  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [data]);
  // data-points lets a test (and a curious reader of the DOM) see how many samples are drawn.
  return html`<div class="plot" data-plot=${id || title} data-points=${data[0].length} ref=${el}></div>`;
}
