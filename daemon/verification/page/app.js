// The verification page: sends the chosen file to /v1/verify and shows the report as a
// person reads it. Text comes from the strings block; nothing is written as HTML.
"use strict";
(function () {
  const T = JSON.parse(document.getElementById("strings").textContent);
  const expected = document.body.dataset.expected || "";
  const result = document.getElementById("result");
  const input = document.getElementById("file");
  const drop = document.getElementById("drop");
  const PDF = "application/pdf";
  const ASICE = "application/vnd.etsi.asic-e+zip";
  const ROLE_FIELDS = ["GVCN", "HieuTruong", "DauTruong"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.toLocaleString(document.documentElement.lang === "en" ? "en-GB" : "vi-VN", {
      timeZone: "Asia/Ho_Chi_Minh", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hour12: false,
    });
  }

  function plain(problem) {
    const code = problem.code in T.problem ? problem.code : problem.code.startsWith("zip_") ? "zip" : "other";
    return T.problem[code];
  }

  // One line per kind of problem, naming the signatures it concerns; the exact
  // messages are kept under "technical details".
  function problems(list) {
    if (!list.length) return null;
    const groups = new Map();
    for (const p of list) {
      const key = plain(p);
      if (!groups.has(key)) groups.set(key, { fields: [], messages: [] });
      const group = groups.get(key);
      const field = /^(?:records\/[^:]+: )?(GVCN|HieuTruong|DauTruong)\b/.exec(p.message);
      if (field && !group.fields.includes(T.fields[field[1]])) group.fields.push(T.fields[field[1]]);
      group.messages.push(`${p.code}: ${p.message}`);
    }
    const items = [...groups].map(([text, g]) =>
      el("li", {}, text, g.fields.length ? ` (${g.fields.join(", ")})` : "",
        el("details", {}, el("summary", {}, T.details), ...g.messages.map((m) => el("div", {}, m)))));
    return el("div", {}, el("h3", {}, T.problems), el("ul", { class: "problems" }, ...items));
  }

  function signers(signatures) {
    const byField = Object.fromEntries(signatures.map((s) => [s.field, s]));
    const extra = signatures.filter((s) => !ROLE_FIELDS.includes(s.field)).map((s) => s.field);
    const rows = [...ROLE_FIELDS, ...extra].map((field) => {
      const s = byField[field];
      if (!s) return el("tr", {}, el("th", {}, T.fields[field] || field), el("td", { class: "muted" }, T.no_signature), el("td"), el("td"));
      const sound = s.intact && s.valid && s.trusted && s.role_ok;
      return el("tr", { class: "signature" },
        el("th", {}, T.fields[field] || field),
        el("td", { class: "signer" }, s.signer || "?", s.school_id ? el("div", { class: "muted" }, `${T.school} ${s.school_id}`) : null),
        el("td", {}, when(s.signed_at), evidence(s)),
        el("td", { class: sound ? "mark-ok" : "mark-bad" }, sound ? "✓ " + T.signature_ok : "✗ " + T.signature_bad,
          sound ? null : el("div", { class: "why" }, whyNot(s))));
    });
    return el("div", {}, el("h3", {}, T.signers),
      el("table", { class: "signers" },
        el("thead", {}, el("tr", {}, el("th"), el("th"), el("th", {}, T.signed_at), el("th"))),
        el("tbody", {}, ...rows)));
  }

  // The TSA's time and the certificate's status at signing, as the file's own data says.
  function evidence(s) {
    const state = s.revocation || "unknown";
    return el("div", { class: "muted evidence" },
      el("div", {}, `${T.timestamp_at}: ${s.timestamp_at ? when(s.timestamp_at) : T.no_timestamp}`),
      el("div", { class: state === "revoked" ? "mark-bad" : "" }, `${T.revocation}: ${T.revocation_state[state] || state}`));
  }

  function whyNot(s) {
    // The first check that failed: a broken signature is neither valid nor trusted either.
    const failed = ["intact", "valid", "trusted", "role_ok"].find((k) => !s[k]);
    return failed ? T.why_signature[failed] : "";
  }

  function registered(reg) {
    const text = reg ? T.registered_state[reg.state] : T.registry_down;
    const parts = [text];
    if (reg && reg.record_id) parts.push(` (${T.record} ${reg.record_id}, ${T.school} ${reg.school_id})`);
    if (reg && reg.replaced_by) parts.push(` ${T.replaced_by} ${reg.replaced_by}.`);
    return el("p", { class: "registered" }, el("strong", {}, T.registered_title + ": "), ...parts);
  }

  function verdictBox(words, verdict, help) {
    return el("div", { class: `verdict ${verdict}`, id: "verdict" }, words[verdict] || verdict,
      help ? el("small", {}, help) : null);
  }

  function fileMatch(sha256) {
    if (!expected) return null;
    const same = sha256 === expected;
    return el("p", { class: `file-match ${same ? "same" : "other"}`, id: "file-match" }, same ? T.same_file : T.other_file);
  }

  function record(report, name) {
    return [
      fileMatch(report.sha256),
      verdictBox(T.verdict, report.verdict, T.verdict_help[report.verdict]),
      el("p", { class: "muted" }, name,
        report.record_id ? ` — ${T.record} ${report.record_id}` : "",
        report.school_id ? `, ${T.school} ${report.school_id}` : ""),
      problems(report.problems),
      signers(report.signatures),
      registered(report.registered),
      el("p", { class: "digest" }, `${T.digest}: ${report.sha256 || ""}`),
    ];
  }

  function pkg(report, name) {
    const seal = report.seal;
    const records = Object.entries(report.records).map(([id, r]) =>
      el("div", { class: "record" },
        el("h4", {}, `${T.record} ${id}`),
        verdictBox(T.verdict, r.verdict),
        problems(r.problems), signers(r.signatures), registered(r.registered)));
    return [
      fileMatch(report.sha256),
      verdictBox(T.package_verdict, report.verdict, report.verdict === "issued" ? null : T.verdict_help.invalid),
      el("p", { class: "muted" }, name, report.school_id ? ` — ${T.school} ${report.school_id}, ${report.academic_year || ""}` : ""),
      // A record's own problems are shown under that record.
      problems(report.problems.filter((p) => !(p.message.startsWith("records/") && report.records[recordOf(p.message)]))),
      seal ? el("p", {}, el("strong", {}, T.seal + ": "), `${seal.signer} (${T.school} ${seal.school_id || "?"}), ${when(seal.signing_time)}`) : null,
      records.length ? el("h3", {}, `${T.records} (${records.length})`) : null,
      ...records,
      el("p", { class: "digest" }, `${T.digest}: ${report.sha256 || ""}`),
    ];
  }

  function recordOf(message) {
    const match = /^records\/(.+?)\.pdf: /.exec(message);
    return match ? match[1] : null;
  }

  async function typeOf(file) {
    const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
    const zip = head[0] === 0x50 && head[1] === 0x4b;
    return zip || /\.(asice|sce|zip)$/i.test(file.name) ? ASICE : PDF;
  }

  async function check(file) {
    result.hidden = false;
    result.replaceChildren(el("p", { id: "checking" }, T.checking));
    let response;
    try {
      response = await fetch("/v1/verify", { method: "POST", headers: { "Content-Type": await typeOf(file) }, body: file });
    } catch (e) {
      result.replaceChildren(el("div", { class: "verdict invalid", id: "error" }, T.error.other));
      return;
    }
    if (!response.ok) {
      const text = T.error[String(response.status)] || T.error.other;
      result.replaceChildren(el("div", { class: "verdict invalid", id: "error" }, text));
      return;
    }
    const report = await response.json();
    const parts = report.kind === "package" ? pkg(report, file.name) : record(report, file.name);
    result.replaceChildren(...parts.filter((p) => p !== null));
    result.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  input.addEventListener("change", () => { if (input.files.length) check(input.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) check(e.dataTransfer.files[0]);
  });
})();
