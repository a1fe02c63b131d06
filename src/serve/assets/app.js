// dcloud-fs serve: uploads with progress, drag-and-drop, new folder, rename, delete,
// share. Plain JavaScript, no build step; the page works for browsing without it.
"use strict";
(function () {
  const body = document.body;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const here = body.dataset.path || "";
  const readOnly = body.dataset.readOnly === "true";
  const PARALLEL = 3;

  // Times in the viewer's own zone.
  for (const t of document.querySelectorAll("time[data-ms]")) {
    const d = new Date(Number(t.dataset.ms));
    if (!isNaN(d)) { t.textContent = d.toLocaleString(); t.title = d.toISOString(); }
  }

  function encodePath(path) {
    return path.split("/").filter((s) => s.length).map(encodeURIComponent).join("/");
  }
  function join(dir, name) { return dir ? dir + "/" + name : name; }
  function say(text) {
    const m = document.getElementById("message");
    if (!m) return;
    m.textContent = text;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { m.textContent = ""; }, 6000);
  }
  function errorOf(xhrOrText, status) {
    try { const j = JSON.parse(xhrOrText); if (j && j.error) return j.error; } catch (e) { /* not JSON */ }
    return "the server answered " + status;
  }
  async function api(action, payload) {
    const r = await fetch("/api/" + action, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload),
      credentials: "same-origin",
    });
    const text = await r.text();
    if (!r.ok) throw new Error(errorOf(text, r.status));
    return text ? JSON.parse(text) : {};
  }

  // Redraws the listing from the server, keeping the upload panel as it is.
  async function refresh() {
    const r = await fetch(location.href, { credentials: "same-origin" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.querySelector("table.listing, p.empty");
    const old = document.querySelector("table.listing, p.empty");
    if (fresh && old) { old.replaceWith(document.importNode(fresh, true)); wireRows(); }
    for (const t of document.querySelectorAll("time[data-ms]")) {
      const d = new Date(Number(t.dataset.ms));
      if (!isNaN(d)) t.textContent = d.toLocaleString();
    }
  }

  // ----- uploads -----
  const queue = [];
  let running = 0;
  let stored = 0;

  function addUploads(items) {
    if (readOnly || !items.length) return;
    const panel = document.getElementById("uploads");
    const list = document.getElementById("upload-list");
    panel.hidden = false;
    for (const item of items) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = item.path;
      const bar = document.createElement("progress");
      bar.max = Math.max(item.file.size, 1);
      bar.value = 0;
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = "waiting";
      li.append(name, bar, state);
      list.append(li);
      queue.push({ ...item, bar, state, li });
    }
    pump();
  }

  function pump() {
    while (running < PARALLEL && queue.length) {
      running++;
      send(queue.shift()).finally(() => {
        running--;
        if (!running && !queue.length && stored) { stored = 0; refresh(); }
        pump();
      });
    }
  }

  function send(item) {
    return new Promise((resolve) => {
      const replace = document.getElementById("replace");
      const query = new URLSearchParams();
      query.set("mtime", String(item.file.lastModified || Date.now()));
      if (!(replace && replace.checked)) query.set("noreplace", "1");
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", "/files/" + encodePath(join(here, item.path)) + "?" + query);
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          item.bar.value = e.loaded;
          item.state.textContent = Math.floor((100 * e.loaded) / Math.max(e.total, 1)) + " %";
        }
      };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          item.bar.value = item.bar.max;
          item.state.textContent = "stored";
          item.state.classList.add("done");
          stored++;
        } else {
          item.state.textContent = "failed: " + errorOf(xhr.responseText, xhr.status);
          item.state.classList.add("failed");
        }
        resolve();
      };
      xhr.onerror = () => {
        item.state.textContent = "failed: the connection to the server was lost";
        item.state.classList.add("failed");
        resolve();
      };
      item.state.textContent = "0 %";
      xhr.send(item.file);
    });
  }

  function fromInput(input, useRelative) {
    const items = [];
    for (const file of input.files) {
      items.push({ file, path: useRelative && file.webkitRelativePath ? file.webkitRelativePath : file.name });
    }
    input.value = "";
    addUploads(items);
  }

  const pickFiles = document.getElementById("pick-files");
  if (pickFiles) pickFiles.addEventListener("change", () => fromInput(pickFiles, false));
  const pickFolder = document.getElementById("pick-folder");
  if (pickFolder) pickFolder.addEventListener("change", () => fromInput(pickFolder, true));

  // Drag and drop, folders included (walked through the entries API).
  function readAll(reader) {
    return new Promise((resolve, reject) => {
      const all = [];
      const next = () => reader.readEntries((batch) => {
        if (!batch.length) resolve(all); else { all.push(...batch); next(); }
      }, reject);
      next();
    });
  }
  async function walk(entry, prefix, out) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      for (const child of await readAll(entry.createReader())) {
        await walk(child, prefix + entry.name + "/", out);
      }
    }
  }
  const drop = document.getElementById("drop");
  let dragDepth = 0;
  if (drop && !readOnly && body.dataset.root !== "true") {
    window.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; drop.hidden = false; });
    window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; drop.hidden = true; } });
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", async (e) => {
      e.preventDefault();
      dragDepth = 0;
      drop.hidden = true;
      const items = [];
      const entries = [];
      for (const item of e.dataTransfer.items || []) {
        const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
        if (entry) entries.push(entry);
        else if (item.kind === "file") items.push({ file: item.getAsFile(), path: item.getAsFile().name });
      }
      try {
        for (const entry of entries) await walk(entry, "", items);
      } catch (err) {
        say("could not read what was dropped: " + err);
      }
      addUploads(items);
    });
  }

  // ----- folders, renames, deletes, shares -----
  const newFolder = document.getElementById("new-folder");
  if (newFolder) newFolder.addEventListener("click", async () => {
    const what = body.dataset.root === "true" ? "channel" : "folder";
    const name = prompt("Name of the new " + what + ":");
    if (!name) return;
    try { await api("mkdir", { path: join(here, name) }); await refresh(); say("made " + name); }
    catch (err) { say(err.message); }
  });

  function wireRows() {
    for (const row of document.querySelectorAll("tr[data-path]")) {
      const path = row.dataset.path;
      const isDir = row.dataset.dir === "true";
      const name = path.split("/").pop();
      const rename = row.querySelector(".rename");
      if (rename) rename.onclick = async () => {
        const to = prompt("New name, or a path from the channels (starting with /):", name);
        if (!to || to === name) return;
        const target = to.startsWith("/") ? to.slice(1) : join(path.split("/").slice(0, -1).join("/"), to);
        try { await api("rename", { from: path, to: target }); await refresh(); say("moved to " + target); }
        catch (err) { say(err.message); }
      };
      const del = row.querySelector(".delete");
      if (del) del.onclick = async () => {
        const what = isDir ? "the folder " + name + " and everything in it" : name;
        if (!confirm("Delete " + what + "? Its messages are deleted from Discord; this can't be undone.")) return;
        try { await api("delete", { path, recursive: isDir }); await refresh(); say("deleted " + name); }
        catch (err) { say(err.message); }
      };
      const share = row.querySelector(".share");
      if (share) share.onclick = async () => {
        const expires = prompt("The link expires after (like 12h, 7d, 4w; empty: never):", "7d");
        if (expires === null) return;
        try {
          const made = await api("share", { path, expires: expires || null });
          prompt("Anyone with this link can download " + name + ". Copy it now (it is shown once):", made.url);
        } catch (err) { say(err.message); }
      };
    }
  }
  wireRows();
})();
