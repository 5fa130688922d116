// Numbers, money and times for people.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

export function tokens(n) {
  return typeof n === "number" && Number.isFinite(n) ? integer.format(n) : "0";
}

export function usd(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  if (value === 0) return "$0";
  if (value >= 1) return "$" + value.toFixed(2);
  if (value >= 0.01) return "$" + value.toFixed(4);
  return "$" + value.toFixed(6);
}

const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const today = new Date();
  return date.toDateString() === today.toDateString() ? timeOnly.format(date) : dateTime.format(date);
}

export function fullTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function ms(value) {
  return typeof value === "number" ? `${integer.format(value)} ms` : "—";
}

/** Sum usage objects ({input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens}). */
export function addUsage(total, usage) {
  const out = { ...total };
  for (const key of ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]) {
    out[key] = (out[key] || 0) + (usage && typeof usage[key] === "number" ? usage[key] : 0);
  }
  return out;
}
