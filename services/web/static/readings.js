/* How the page reads a prediction beyond its scores (issue 16): the heatmap's cell colours with text
 * that keeps WCAG AA contrast at every score, which genres are likely (the version's thresholds),
 * and where a year departs from the genre's mean over the years. Exposed as window.PosterReadings
 * (and module.exports for Node, where tests/services/web/test_readings_js.py checks the contrast).
 */
(function (root) {
  "use strict";

  // The heatmap's hue (the page's accent), blended over white with the score as opacity.
  const HEAT_RGB = [31, 95, 191];
  const WHITE = [255, 255, 255];
  const BLACK = [0, 0, 0];
  // services.web.year_table.DEPARTURE_MARGIN: the in-browser mode applies the server's rule.
  const DEPARTURE_MARGIN = 0.10;

  function channel(value) {
    const c = value / 255;
    return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
  }

  /* WCAG 2 relative luminance of an [r, g, b] colour (0..255). */
  function luminance(rgb) {
    return 0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2]);
  }

  function contrast(first, second) {
    const a = luminance(first), b = luminance(second);
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  }

  /* The cell's background (the heat colour at opacity max(0.04, score), composited on white, as
     the browser paints it) and the text colour of better contrast on it: black or white. Between
     them the worse of the two is still >= 4.58:1, so every score passes AA (4.5:1). */
  function heatColours(score) {
    const alpha = Math.min(1, Math.max(0.04, score));
    const background = HEAT_RGB.map((c, i) => Math.round(c * alpha + WHITE[i] * (1 - alpha)));
    const onWhite = contrast(WHITE, background), onBlack = contrast(BLACK, background);
    const text = onWhite >= onBlack ? WHITE : BLACK;
    return { background: `rgb(${background.join(", ")})`, color: `rgb(${text.join(", ")})`,
             backgroundRgb: background, colorRgb: text, contrast: Math.max(onWhite, onBlack) };
  }

  /* The server's services.web.year_table.departures, for the in-browser mode: each row's genres whose
     score lies further than the margin from the genre's mean over the rows. Sets row.departs. */
  function departures(rows, margin = DEPARTURE_MARGIN) {
    const byGenre = new Map();
    for (const row of rows) {
      for (const [genre, score] of Object.entries(row.scores || {})) {
        if (!byGenre.has(genre)) byGenre.set(genre, []);
        byGenre.get(genre).push(score);
      }
    }
    const means = {};
    for (const [genre, values] of byGenre) means[genre] = values.reduce((a, b) => a + b, 0) / values.length;
    for (const row of rows) {
      row.departs = {};
      for (const [genre, score] of Object.entries(row.scores || {})) {
        if (byGenre.get(genre).length > 1 && Math.abs(score - means[genre]) > margin) {
          row.departs[genre] = score - means[genre];
        }
      }
    }
    return { margin, margin_source: "fixed", means };
  }

  /* The likely mark of each of a row's best genres from a version's thresholds (genre -> number), as
     the server marks them; without thresholds the row says it has none. */
  function markLikely(row, thresholds) {
    row.has_thresholds = Boolean(thresholds);
    if (!thresholds) return row;
    for (const entry of row.top) entry.likely = entry.score >= thresholds[entry.genre];
    return row;
  }

  const api = { HEAT_RGB, DEPARTURE_MARGIN, luminance, contrast, heatColours, departures, markLikely };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  root.PosterReadings = api;
})(typeof window !== "undefined" ? window : globalThis);
