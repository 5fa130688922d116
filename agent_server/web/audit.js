// The audit of one conversation (GET /conversations/{id}): its replies, each step's upstream call, each tool run.

import { el, append, clear, pretty } from "./dom.js";
import * as fmt from "./format.js";

function table(caption, columns, rows, cls) {
  if (!rows.length) return el("section", { class: `audit-section ${cls}` }, el("h3", { text: caption }),
                                 el("p", { class: "muted", text: "None." }));
  return el("section", { class: `audit-section ${cls}` },
    el("h3", { text: `${caption} (${rows.length})` }),
    el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
      el("table", {},
        el("thead", {}, el("tr", {}, columns.map(([label]) => el("th", { scope: "col", text: label })))),
        el("tbody", {}, rows.map((row) => el("tr", {}, columns.map(([, cell]) => {
          const value = cell(row);
          return el("td", {}, value instanceof Node ? value : String(value ?? "—"));
        })))))));
}

const short = (id) => (id ? String(id).slice(-8) : "—");
const code = (value) => el("pre", { class: "cell-pre", text: pretty(value) });

export function renderAudit(container, audit) {
  clear(container);
  const t = audit.totals || {};
  append(container,
    el("section", { class: "audit-section audit-summary" },
      el("dl", { class: "facts" },
        el("dt", { text: "Title" }), el("dd", { text: audit.title || "(untitled)" }),
        el("dt", { text: "Model" }), el("dd", { text: audit.model || "—" }),
        el("dt", { text: "Created" }), el("dd", { text: fmt.fullTime(audit.created_at) }),
        el("dt", { text: "Updated" }), el("dd", { text: fmt.fullTime(audit.updated_at) }),
        el("dt", { text: "Upstream calls" }), el("dd", { text: fmt.tokens(t.requests) }),
        el("dt", { text: "Tokens" }),
        el("dd", { text: `${fmt.tokens(t.input_tokens)} in · ${fmt.tokens(t.output_tokens)} out · ` +
                         `${fmt.tokens(t.cache_read_input_tokens)} cache read · ` +
                         `${fmt.tokens(t.cache_creation_input_tokens)} cache write` }),
        el("dt", { text: "Cost" }), el("dd", { class: "audit-cost", text: fmt.usd(t.cost_usd) }),
        el("dt", { text: "Saved by the cache" }), el("dd", { text: fmt.usd(t.cache_savings_usd) }))),
    table("Replies", [
      ["Reply", (r) => short(r.id)],
      ["Status", (r) => r.status],
      ["Steps", (r) => r.steps],
      ["Stop reason", (r) => r.stop_reason],
      ["Error", (r) => r.error_type],
      ["Started", (r) => fmt.when(r.created_at)],
    ], audit.replies || [], "audit-replies"),
    table("Steps (upstream calls)", [
      ["Reply", (r) => short(r.reply_id)],
      ["Step", (r) => r.step],
      ["Model", (r) => r.model],
      ["Status", (r) => r.status + (r.error_type ? ` (${r.error_type})` : "")],
      ["Stop reason", (r) => r.stop_reason],
      ["In", (r) => fmt.tokens(r.input_tokens)],
      ["Out", (r) => fmt.tokens(r.output_tokens)],
      ["Cache read", (r) => fmt.tokens(r.cache_read_input_tokens)],
      ["Cache write", (r) => fmt.tokens(r.cache_creation_input_tokens)],
      ["Cost", (r) => fmt.usd(r.cost_usd)],
      ["Latency", (r) => fmt.ms(r.latency_ms)],
      ["First token", (r) => fmt.ms(r.ttft_ms)],
    ], audit.requests || [], "audit-calls"),
    table("Tool runs", [
      ["Reply", (r) => short(r.reply_id)],
      ["Step", (r) => r.step],
      ["Tool", (r) => r.name],
      ["Kind", (r) => r.kind],
      ["Status", (r) => r.status + (r.is_error ? " (error)" : "")],
      ["Decision", (r) => [r.decision, r.decided_by && `by ${r.decided_by}`].filter(Boolean).join(" ") || "—"],
      ["Reason", (r) => r.reason],
      ["Duration", (r) => fmt.ms(r.duration_ms)],
      ["Input", (r) => code(r.input)],
      ["Output", (r) => (r.output === null || r.output === undefined ? "—" : code(r.output))],
    ], audit.tool_runs || [], "audit-tools"));
}
