/* The poster page: upload (or drop) a poster, then the table of each year's six best genres and the
 * genres-by-years heatmap. Server mode posts the poster to /api/v1/predictions; in-browser mode
 * loads the models' TF.js exports and predicts on this device, with the same preprocessing
 * (preprocess.js) and the same choice of model per year as the server. */
(function () {
  "use strict";

  const TOP_K = 6;
  const TFJS_SCRIPT = "/static/vendor/tf.min.js";
  const form = document.getElementById("poster-form");
  const fileInput = document.getElementById("poster-file");
  const dropZone = document.getElementById("drop-zone");
  const yearsInput = document.getElementById("years");
  const banner = document.getElementById("banner");
  const statusLine = document.getElementById("status");
  const results = document.getElementById("results");
  const preview = document.getElementById("preview");
  let currentFile = null;

  function mode() {
    return form.querySelector("input[name=mode]:checked").value;
  }

  function showError(message) {
    banner.textContent = message;
    banner.hidden = false;
  }

  function clearError() {
    banner.hidden = true;
    banner.textContent = "";
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  /* "2000-2019" or "2000,2005-2007" -> sorted years (the API checks the same way). */
  function parseYears(spec) {
    const years = new Set();
    for (const part of spec.split(",").map((p) => p.trim())) {
      const match = /^(\d{4})(?:-(\d{4}))?$/.exec(part);
      if (!match) throw new Error(`bad years "${part}": expected e.g. 2000-2019 or 2000,2005`);
      const first = Number(match[1]), last = Number(match[2] || match[1]);
      if (first > last) throw new Error(`bad years "${part}": the range runs backwards`);
      for (let y = first; y <= last; y++) years.add(y);
    }
    return [...years].sort((a, b) => a - b);
  }

  function topGenres(genres, scores, k) {
    const order = genres.map((_, i) => i).sort(
      (a, b) => scores[b] - scores[a] || (genres[a] < genres[b] ? -1 : genres[a] > genres[b] ? 1 : 0));
    return order.slice(0, k).map((i) => ({ genre: genres[i], score: scores[i] }));
  }

  // ---------------------------------------------------------------------------------------- server

  async function predictOnServer(file, yearsSpec) {
    const body = new FormData();
    body.append("file", file);
    const params = new URLSearchParams({ years: yearsSpec, k: String(TOP_K), scores: "true" });
    let response;
    try {
      response = await fetch(`/api/v1/predictions?${params}`, { method: "POST", body });
    } catch (error) {
      throw new Error("The server cannot be reached. Check your connection and try again.");
    }
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      const message = payload && payload.error ? payload.error.message : `HTTP ${response.status}`;
      if (response.status === 503) throw new Error(`Predictions are unavailable right now: ${message}`);
      throw new Error(message);
    }
    return payload;
  }

  // --------------------------------------------------------------------------------------- browser

  const graphModels = new Map();

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(
        `In-browser mode needs ${src} (TF.js 4.22.0); the server administrator installs it with ` +
        "`python -m services.web.vendor`."));
      document.head.appendChild(script);
    });
  }

  async function loadTf() {
    if (!window.tf) await loadScript(TFJS_SCRIPT);
    const wanted = new URLSearchParams(location.search).get("backend");
    if (wanted && tf.getBackend() !== wanted) await tf.setBackend(wanted);
    await tf.ready();
    return window.tf;
  }

  async function sha256Hex(buffer) {
    const digest = await crypto.subtle.digest("SHA-256", buffer);
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function graphModel(model) {
    const key = `${model.name}/${model.version}`;
    if (!graphModels.has(key)) {
      const url = `/api/v1/models/${encodeURIComponent(model.name)}/${model.version}/files/exports/tfjs/model.json`;
      graphModels.set(key, tf.loadGraphModel(url));
    }
    return graphModels.get(key);
  }

  async function runModel(model, pixels) {
    const size = model.image_size;
    const loaded = await graphModel(model);
    const input = tf.tensor4d(Float32Array.from(pixels), [1, size, size, 3], "float32");
    try {
      let output = loaded.predict(input);
      if (Array.isArray(output)) output = output[0];
      else if (!(output instanceof tf.Tensor)) output = output.scores || Object.values(output)[0];
      const values = Array.from(await output.data());
      output.dispose();
      return values;
    } finally {
      input.dispose();
    }
  }

  async function predictInBrowser(file, yearsSpec) {
    const years = parseYears(yearsSpec);
    setStatus("Loading TF.js and the models into this browser…");
    await loadTf();
    const listing = await (await fetch("/api/v1/models")).json();
    const byName = new Map(listing.models.map((m) => [m.name, m]));
    const chosen = new Map();  // model name -> the requested years it answers
    for (const year of years) {
      const name = listing.by_year[String(year)];
      const model = name && byName.get(name);
      if (model && model.files.includes("exports/tfjs/model.json")) {
        if (!chosen.has(name)) chosen.set(name, []);
        chosen.get(name).push(year);
      }
    }
    const decoded = await PosterPixels.decodePoster(file);
    const pixelsBySize = new Map();  // each poster resized once per input size, as on the server
    const answers = new Map();
    await Promise.all([...chosen.keys()].map(async (name) => {
      const model = byName.get(name);
      if (!pixelsBySize.has(model.image_size)) {
        pixelsBySize.set(model.image_size, PosterPixels.posterPixels(decoded, model.image_size));
      }
      answers.set(name, await runModel(model, pixelsBySize.get(model.image_size)));
    }));
    const rows = [], unavailable = [];
    for (const year of years) {
      const name = listing.by_year[String(year)];
      if (!name || !answers.has(name)) {
        unavailable.push(year);
        continue;
      }
      const model = byName.get(name), all = answers.get(name), g = model.genres.length;
      const shared = model.layout === "shared" || name.endsWith("-shared");
      const offset = shared ? model.years.indexOf(year) * g : 0;
      const scores = all.slice(offset, offset + g);
      const scoreMap = Object.fromEntries(model.genres.map((genre, i) => [genre, scores[i]]));
      rows.push(PosterReadings.markLikely(
        { year, model: name, version: model.version, top: topGenres(model.genres, scores, TOP_K),
          scores: scoreMap }, model.thresholds));
    }
    // The poster never leaves the device, so the server's not-a-poster check does not run on it.
    return { poster_sha256: await sha256Hex(await file.arrayBuffer()), k: TOP_K, years: rows,
             unavailable_years: unavailable, departures: PosterReadings.departures(rows), warnings: [] };
  }

  // ---------------------------------------------------------------------------------------- render

  function cell(tag, text, attributes = {}) {
    const element = document.createElement(tag);
    if (text !== undefined && text !== null) element.textContent = text;
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    return element;
  }

  function renderTable(prediction, years) {
    const table = document.getElementById("prediction-table");
    const head = table.tHead, body = table.tBodies[0];
    head.replaceChildren();
    body.replaceChildren();
    const headRow = document.createElement("tr");
    headRow.append(cell("th", "Year", { scope: "col" }), cell("th", "Model", { scope: "col" }));
    for (let i = 1; i <= TOP_K; i++) headRow.append(cell("th", `#${i}`, { scope: "col" }));
    head.append(headRow);
    const byYear = new Map(prediction.years.map((row) => [row.year, row]));
    for (const year of years) {
      const row = byYear.get(year);
      const tr = cell("tr", null, { "data-year": String(year) });
      tr.append(cell("th", String(year), { scope: "row" }));
      if (!row) {
        tr.classList.add("unavailable");
        tr.append(cell("td", "no model for this year", { colspan: String(TOP_K + 1) }));
      } else {
        tr.dataset.model = row.model;
        tr.dataset.version = String(row.version);
        tr.append(cell("td", `${row.model} v${row.version}`));
        if (row.has_thresholds === false) {
          tr.lastChild.append(cell("span", "no thresholds", {
            class: "no-thresholds", title: "This model version records no per-genre thresholds, so its " +
              "genres are not marked likely or not." }));
        }
        for (const entry of row.top) {
          const td = cell("td", null, { class: "genre", "data-genre": entry.genre,
                                        "data-score": String(entry.score) });
          td.append(cell("span", entry.genre), cell("span", entry.score.toFixed(3), { class: "score" }));
          markLikelyCell(td, entry);
          tr.append(td);
        }
      }
      body.append(tr);
    }
  }

  // ------------------------------------------------------ likely genres, departures, not-a-poster

  /* A genre at or above its version's validation threshold is "likely": said in words (a mark and
     its accessible text), and in style, never by colour alone. */
  function markLikelyCell(td, entry) {
    if (entry.likely === undefined || entry.likely === null) return;
    td.dataset.likely = String(entry.likely);
    if (entry.likely) {
      td.classList.add("likely");
      td.append(cell("span", "likely", { class: "likely-mark",
                                         title: "at or above this genre's threshold tuned on validation" }));
    }
  }

  /* A heatmap cell whose score departs from the genre's mean over the years: an arrow (up: above the
     mean, down: below) and the difference in its title and accessible name. */
  function markDeparture(td, genre, row, departures) {
    const delta = row.departs ? row.departs[genre] : undefined;
    if (delta === undefined) return;
    const up = delta > 0;
    td.classList.add("departs", up ? "departs-up" : "departs-down");
    td.dataset.departs = String(delta);
    td.prepend(cell("span", up ? "▲" : "▼", { class: "departure-mark", "aria-hidden": "true" }));
    const mean = departures && departures.means ? departures.means[genre] : undefined;
    const said = `${up ? "above" : "below"} its mean over the years` +
      (mean === undefined ? "" : ` (${mean.toFixed(2)})`) + ` by ${Math.abs(delta).toFixed(2)}`;
    td.title += `; departs: ${said}`;
    td.setAttribute("aria-label", `${td.textContent.replace(/[▲▼]/g, "").trim()}, ${said}`);
  }

  function renderWarnings(prediction) {
    const box = document.getElementById("warnings");
    const warnings = prediction.warnings || [];
    box.replaceChildren(...warnings.map((warning) =>
      cell("p", warning.message, { "data-code": warning.code })));
    box.hidden = warnings.length === 0;
  }

  function renderDepartureHelp(prediction) {
    const margin = prediction.departures ? prediction.departures.margin : undefined;
    if (margin !== undefined) document.getElementById("departure-margin").textContent = margin.toFixed(2);
  }

  function renderHeatmap(prediction) {
    const table = document.getElementById("heatmap");
    const head = table.tHead, body = table.tBodies[0];
    head.replaceChildren();
    body.replaceChildren();
    const rows = prediction.years;
    const genres = [...new Set(rows.flatMap((row) => Object.keys(row.scores || {})))].sort();
    const headRow = document.createElement("tr");
    headRow.append(cell("th", "Genre", { scope: "col" }));
    for (const row of rows) headRow.append(cell("th", String(row.year), { scope: "col" }));
    head.append(headRow);
    for (const genre of genres) {
      const tr = document.createElement("tr");
      tr.append(cell("th", genre, { scope: "row" }));
      for (const row of rows) {
        const score = row.scores ? row.scores[genre] : undefined;
        if (score === undefined) {
          tr.append(cell("td", "–", { title: `${genre}, ${row.year}: not a genre of this model` }));
          continue;
        }
        const td = cell("td", score.toFixed(2), { title: `${genre}, ${row.year}: ${score.toFixed(3)}`,
                                                  "data-score": String(score) });
        // The text colour follows the background, so every score keeps AA contrast (readings.js).
        const colours = PosterReadings.heatColours(score);
        td.style.background = colours.background;
        td.style.color = colours.color;
        markDeparture(td, genre, row, prediction.departures);
        tr.append(td);
      }
      body.append(tr);
    }
  }

  function render(prediction, years, where, seconds) {
    renderTable(prediction, years);
    renderHeatmap(prediction);
    renderWarnings(prediction);
    renderDepartureHelp(prediction);
    document.getElementById("poster-id").textContent = `sha256 ${prediction.poster_sha256.slice(0, 12)}…`;
    document.getElementById("results-mode").textContent =
      `${where}: ${prediction.years.length} years answered, ${prediction.unavailable_years.length} without a ` +
      `model, in ${seconds.toFixed(2)} s.`;
    results.hidden = false;
    results.dataset.mode = where === "On the server" ? "server" : "browser";
  }

  /* Set once a table was asked for with the years the field shows: from then on a default that
     arrives late must not rewrite the field, or the field and the table would disagree. */
  let yearsAsked = false;

  async function predict() {
    if (!currentFile) return;
    clearError();
    const spec = yearsInput.value.trim() || "2000-2019";
    yearsAsked = true;
    const started = performance.now();
    try {
      const years = parseYears(spec);
      let prediction, where;
      const browserBlocked = mode() === "browser" ? await whyNotInBrowser(years) : null;
      setModeNote(browserBlocked ? `${browserBlocked} These years were read on the server instead.` : "");
      if (mode() === "browser" && !browserBlocked) {
        prediction = await predictInBrowser(currentFile, spec);
        where = "In this browser";
      } else {
        setStatus("Reading the poster on the server…");
        prediction = await predictOnServer(currentFile, spec);
        where = "On the server";
      }
      render(prediction, years, where, (performance.now() - started) / 1000);
      setStatus("");
    } catch (error) {
      setStatus("");
      showError(error.message || String(error));
      results.hidden = true;
    }
  }

  function choose(file) {
    if (!file) return;
    currentFile = file;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    /* explain.js explains the genres of the table; it needs the poster the table was made from. */
    document.dispatchEvent(new CustomEvent("postergenre:poster", { detail: { file } }));
    predict();
  }

  /* The served models' listing, asked once: the years' default and the in-browser offer read it. */
  const listingPromise = fetch("/api/v1/models")
    .then((response) => (response.ok ? response.json() : null))
    .catch(() => null);

  // ------------------------------------------------------------------ in-browser mode: TF.js or not

  const browserRadio = form.querySelector("input[name=mode][value=browser]");
  const modeNote = document.getElementById("mode-note");

  function setModeNote(text) {
    modeNote.textContent = text;
    modeNote.hidden = !text;
  }

  /* Why these years cannot run in this browser (a sentence), or null when they can: every year that
     has a served model must have its TF.js export. */
  async function whyNotInBrowser(years) {
    const listing = await listingPromise;
    if (!listing) return "The models' listing did not load, so the page cannot tell which models run here.";
    const byName = new Map(listing.models.map((m) => [m.name, m]));
    const without = years.filter((year) => {
      const model = byName.get((listing.by_year || {})[String(year)]);
      return model && !model.tfjs;
    });
    if (without.length === 0) return null;
    const names = [...new Set(without.map((year) => listing.by_year[String(year)]))];
    return `In-browser mode needs each model's TF.js export, and ${names.join(", ")} ` +
      `(${without.length} of the years asked) ${names.length === 1 ? "has" : "have"} none.`;
  }

  /* Offer the in-browser mode only when some served model has a TF.js export; else say why. */
  listingPromise.then((listing) => {
    if (!listing) return;
    const any = listing.models.some((model) => model.tfjs);
    browserRadio.disabled = !any;
    browserRadio.closest("label").classList.toggle("disabled", !any);
    if (!any) {
      if (browserRadio.checked) form.querySelector("input[name=mode][value=server]").checked = true;
      setModeNote("In-browser mode is off: none of the served models has a TF.js export (the training " +
        "did not make one, e.g. without the TF.js converter), so the models run on the server.");
    }
    form.dataset.tfjsChecked = "true";
  });

  /* The years asked for by default: the latest twenty that have a model (the models may end before
     2019, as the demo's, trained on posters up to 2015), unless the visitor has typed their own, is
     in the field now (a default landing mid-typing would be spliced into what they type) or already
     has a table for the years shown. */
  let yearsEdited = false;
  yearsInput.addEventListener("input", () => { yearsEdited = true; });
  listingPromise
    .then((listing) => {
      const covered = Object.keys((listing && listing.by_year) || {}).map(Number)
        .filter(Number.isInteger).sort((a, b) => a - b);
      if (yearsEdited || yearsAsked || document.activeElement === yearsInput || covered.length === 0) return;
      const last = covered[covered.length - 1];
      const first = Math.max(covered[0], last - 19);
      yearsInput.value = first === last ? String(last) : `${first}-${last}`;
      yearsInput.dataset.defaultFromModels = "true";
    });  /* no listing: the field keeps 2000-2019 and the API says what is missing */

  fileInput.addEventListener("change", () => choose(fileInput.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    dropZone.addEventListener(type, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
  });
  form.addEventListener("change", (event) => {
    if (event.target.name === "mode" || event.target === yearsInput) predict();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    predict();
  });
})();
