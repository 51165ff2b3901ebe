/* The admin page: start jobs, follow them with live progress bars (polling the jobs API), and see
 * dataset reports and model metrics with their plots. Every admin call sends the bearer token. */
(function () {
  "use strict";

  const banner = document.getElementById("banner");
  const tokenInput = document.getElementById("token");
  tokenInput.value = sessionStorage.getItem("postergenre-admin-token") || "";
  let pollTimer = null;

  function showError(message) {
    banner.textContent = message;
    banner.hidden = !message;
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${tokenInput.value}`, ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers });
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      const message = payload && payload.error ? payload.error.message : `HTTP ${response.status}`;
      throw new Error(response.status === 404 && path.startsWith("/api/v1/admin")
        ? "The admin API is not enabled on this server (see its log)." : message);
    }
    return payload;
  }

  function element(tag, text, attributes = {}) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  function details(job) {
    // A job waiting on a queue no worker consumes says which queue and how to start a worker.
    if (job.warning) return `Warning: ${job.warning}`;
    if (job.errors && job.errors.length) return job.errors[job.errors.length - 1];
    const counts = Object.entries(job.counts || {}).filter(([, v]) => typeof v !== "object");
    return counts.map(([k, v]) => `${k}: ${v}`).join(", ");
  }

  async function refreshJobs() {
    try {
      const { jobs } = await api("/api/v1/admin/jobs?limit=50");
      const body = document.querySelector("#jobs tbody");
      body.replaceChildren(...jobs.map((job) => {
        const tr = element("tr", null, { "data-job": job.id });
        const bar = element("progress", null, { max: "100", value: String(job.progress),
                                                 "aria-label": `progress of job ${job.id.slice(0, 8)}` });
        const progress = element("td");
        progress.append(bar, element("span", ` ${Math.round(job.progress)}%`));
        tr.append(element("td", job.id.slice(0, 8), { title: job.id }), element("td", job.kind),
                  element("td", job.state), progress,
                  element("td", details(job), job.warning ? { class: "job-warning" } : {}),
                  element("td", job.created_at ? new Date(job.created_at).toLocaleString() : ""));
        return tr;
      }));
      showError("");
    } catch (error) {
      showError(error.message);
    }
  }

  async function imageWithToken(path, alt) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${tokenInput.value}` } });
    if (!response.ok) return null;
    return element("img", null, { src: URL.createObjectURL(await response.blob()), alt });
  }

  async function refreshModels() {
    const { models } = await (await fetch("/api/v1/models")).json();
    const holder = document.getElementById("models");
    holder.replaceChildren(...models.map((model) => {
      const card = element("article", null, { class: "card" });
      card.append(element("h3", `${model.name} v${model.version}`));
      card.append(element("p", `${model.architecture}, ${model.image_size} px, dataset ${model.dataset_version || "?"}`,
                          { class: "hint" }));
      const list = element("dl");
      for (const [key, value] of Object.entries(model.metrics)) {
        list.append(element("dt", key), element("dd", Number(value).toFixed(4)));
      }
      card.append(list);
      for (const file of model.files.filter((f) => f.endsWith(".png"))) {
        card.append(element("img", null, {
          src: `/api/v1/models/${model.name}/${model.version}/files/${file}`, alt: `${model.name}: ${file}`,
          loading: "lazy" }));
      }
      const rollback = element("button", "Roll back to the previous version", { type: "button" });
      rollback.addEventListener("click", async () => {
        try {
          await api(`/api/v1/admin/models/${model.name}/rollback`, { method: "POST" });
          refreshModels();
        } catch (error) {
          showError(error.message);
        }
      });
      card.append(rollback);
      return card;
    }));
  }

  async function refreshDatasets() {
    try {
      const { datasets } = await api("/api/v1/admin/datasets");
      const holder = document.getElementById("datasets");
      holder.replaceChildren();
      for (const dataset of datasets) {
        const card = element("article", null, { class: "card" });
        card.append(element("h3", dataset.id), element("p", `window ${dataset.window}`, { class: "hint" }));
        card.append(element("pre", JSON.stringify(dataset.report, null, 1).slice(0, 1500)));
        if (dataset.has_report_plot) {
          const image = await imageWithToken(`/api/v1/admin/datasets/${dataset.id}/report.png`,
                                             `report of dataset ${dataset.id}`);
          if (image) card.append(image);
        }
        holder.append(card);
      }
    } catch (error) {
      showError(error.message);
    }
  }

  function formBody(form) {
    const body = {};
    for (const [name, value] of new FormData(form).entries()) {
      if (value === "") continue;
      body[name] = form.elements[name].type === "number" ? Number(value) : value;
    }
    return body;
  }

  for (const form of document.querySelectorAll("form[data-path]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api(form.dataset.path, { method: "POST", body: JSON.stringify(formBody(form)),
                                       headers: { "Content-Type": "application/json" } });
        refreshJobs();
      } catch (error) {
        showError(error.message);
      }
    });
  }

  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("postergenre-admin-token", tokenInput.value);
    start();
  });

  function start() {
    refreshModels().catch((error) => showError(error.message));
    if (!tokenInput.value) return;
    refreshJobs();
    refreshDatasets();
    clearInterval(pollTimer);
    pollTimer = setInterval(refreshJobs, 2000);
  }

  start();
})();
