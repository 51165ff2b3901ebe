/* Poster Genre: explanations on the poster page. Every genre cell of the table (td.genre in a row
 * with a model) becomes a focusable button; clicking it, or Enter/Space on it, asks
 * POST /api/v1/explanations for that genre and year and shows the heatmap drawn over the poster.
 *
 * Kept apart from app.js, which draws the table: this file only decorates the cells it finds there
 * (a MutationObserver sees every new table) and learns the poster from the "postergenre:poster" event
 * app.js sends when a poster is chosen. Explanations run on the server only: in the in-browser mode
 * the poster must stay on the device, so the page says so instead of uploading it.
 */
(function () {
  "use strict";

  const table = document.getElementById("prediction-table");
  const results = document.getElementById("results");
  const figure = document.getElementById("explanation");
  const image = document.getElementById("explanation-image");
  const caption = document.getElementById("explanation-caption");
  if (!table || !figure) return;

  let poster = null;   /* the File the table was made from */
  let active = null;   /* the cell whose explanation is shown */
  let asked = 0;       /* answers to earlier clicks that arrive late are dropped */

  document.addEventListener("postergenre:poster", (event) => {
    poster = event.detail && event.detail.file;
    hideExplanation();
  });

  function describe(td) {
    const tr = td.closest("tr");  /* also for a cell of a table drawn over since: it keeps its row */
    return { genre: td.dataset.genre, year: Number(tr.dataset.year), model: tr.dataset.model,
             version: tr.dataset.version };
  }

  function decorate(td) {
    if (td.dataset.explainable) return;
    const { genre, year } = describe(td);
    td.dataset.explainable = "true";
    td.tabIndex = 0;
    td.setAttribute("role", "button");
    td.setAttribute("aria-pressed", "false");
    td.setAttribute("aria-controls", "explanation");
    const score = Number(td.dataset.score);
    td.setAttribute("aria-label", `${genre} ${Number.isFinite(score) ? score.toFixed(3) : ""}: show where ` +
                    `the ${year} model looked for ${genre}`);
    td.title = `Where the ${year} model looked for ${genre}`;
  }

  function decorateTable() {
    for (const td of table.querySelectorAll("tbody tr[data-model] td.genre")) decorate(td);
    if (active && !table.contains(active)) follow();
  }

  /* The table was drawn again (the years field changed; leaving it after an edit re-asks): the
     explanation stays if the new table has the same year and genre from the same model version. */
  function follow() {
    const { genre, year, model, version } = describe(active);
    const again = [...table.querySelectorAll(`tbody tr[data-year="${year}"] td[data-explainable]`)]
      .find((td) => td.dataset.genre === genre);
    const row = again && again.closest("tr");
    if (!row || row.dataset.model !== model || row.dataset.version !== version) {
      hideExplanation();
      return;
    }
    active = again;
    again.setAttribute("aria-pressed", "true");
  }

  function hideExplanation() {
    asked += 1;
    if (active) active.setAttribute("aria-pressed", "false");
    active = null;
    figure.hidden = true;
    figure.removeAttribute("aria-busy");
    delete figure.dataset.state;
    image.removeAttribute("src");
    caption.textContent = "";
  }

  function show(text, busy) {
    figure.hidden = false;
    caption.textContent = text;
    if (busy) figure.setAttribute("aria-busy", "true"); else figure.removeAttribute("aria-busy");
  }

  async function explain(td) {
    if (active === td && !figure.hidden) {  /* a second press closes it */
      hideExplanation();
      return;
    }
    hideExplanation();
    active = td;
    td.setAttribute("aria-pressed", "true");
    const { genre, year, model, version } = describe(td);
    if (results.dataset.mode === "browser") {
      image.removeAttribute("src");
      show(`Explanations run on the server: choose "On the server" to see where the ${year} model ` +
           `looked for ${genre} (the poster is then sent to the server, and not stored).`, false);
      return;
    }
    if (!poster) return;
    const ticket = ++asked;
    image.removeAttribute("src");
    show(`Finding where the ${year} model looked for ${genre}…`, true);
    figure.dataset.state = "loading";
    const body = new FormData();
    body.append("file", poster);
    body.append("year", String(year));
    body.append("genre", genre);
    let answer;
    try {
      const response = await fetch("/api/v1/explanations", { method: "POST", body });
      answer = await response.json().catch(() => null);
      if (!response.ok) {
        const message = answer && answer.error ? answer.error.message : `HTTP ${response.status}`;
        throw new Error(message);
      }
    } catch (error) {
      if (ticket !== asked) return;
      show(`No explanation for ${genre} in ${year}: ${error.message || error}`, false);
      figure.dataset.state = "error";
      return;
    }
    if (ticket !== asked) return;
    const [item] = answer.explanations;
    figure.dataset.state = "shown";
    figure.dataset.genre = item.genre;
    figure.dataset.year = String(answer.year);
    image.src = item.overlay_png;
    image.alt = `The poster with a heatmap of where the ${answer.year} model looked for ${item.genre}: ` +
      "red and yellow areas raised the score most, uncoloured areas did not.";
    show(`${item.genre}, ${answer.year} (${model || answer.model} v${version || answer.version}, ` +
         `score ${item.score.toFixed(3)}): red and yellow mark where the model looked.`, false);
  }

  table.addEventListener("click", (event) => {
    const td = event.target.closest("td[data-explainable]");
    if (td) explain(td);
  });
  table.addEventListener("keydown", (event) => {
    const td = event.target.closest("td[data-explainable]");
    if (!td || (event.key !== "Enter" && event.key !== " ")) return;
    event.preventDefault();  /* Space would scroll the page */
    explain(td);
  });
  new MutationObserver(decorateTable).observe(table, { childList: true, subtree: true });
  decorateTable();
})();
