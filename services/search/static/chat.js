// clipsearch chat page: sends each query to POST /search and renders the answer as a bubble.
//
// The conversation is real: each answer carries a `conversation_id` (signed state of the query so far) that the
// next message sends back, so "only at night" refines the last query. The query as understood is shown as chips;
// removing one sends `remove: [key]` for the same conversation (no new typing, no Gemini call).
//
// Everything the server sends (descriptions, reasons, photographer names, error details) is untrusted: it only
// ever reaches the DOM through textContent or setAttribute, never through an HTML parser. Image URLs must be http(s); anything
// else (javascript:, data:) is refused and shown as a placeholder.
"use strict";

(() => {
  const RESULTS_PER_QUERY = 4;
  const CANDIDATES = 10;
  const REQUEST_TIMEOUT_MS = 60000;

  const FALLBACK_TEXT = {
    disabled: "no re-ranker configured",
    not_requested: "re-ranking off",
    timeout: "re-ranker timed out",
    quota: "re-ranker quota exhausted",
    overloaded: "re-ranker overloaded",
    blocked: "re-ranker refused the request",
    invalid_output: "re-ranker gave an unusable answer",
    breaker_open: "re-ranker paused after repeated failures",
    model_unavailable: "re-rank model not found (retired?)",
    error: "re-ranker error",
  };

  const UNDERSTAND_TEXT = {
    disabled: "understanding is off (no Gemini key)",
    spend_guard: "understanding paused: spend limit reached",
    timeout: "understanding timed out",
    quota: "understanding quota exhausted",
    overloaded: "understanding model overloaded",
    blocked: "understanding refused the request",
    invalid_output: "understanding gave an unusable answer",
    breaker_open: "understanding paused after repeated failures",
    model_unavailable: "understanding model not found",
    error: "understanding error",
  };

  const apiBase = document.body.dataset.apiBase || "";
  const log = document.getElementById("log");
  const form = document.getElementById("composer");
  const input = document.getElementById("query");
  const sendButton = document.getElementById("send");
  const rerankSelect = document.getElementById("rerank");

  let inFlight = false;
  let conversationId = null; // the last answer's conversation_id: follow-ups refine its query

  /** Create an element with an optional class and plain-text content (never parsed as HTML). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** The absolute URL when `raw` is an http(s) URL (relative ones resolve against the page), else null. */
  function safeHttpUrl(raw) {
    if (typeof raw !== "string" || raw.trim() === "") return null;
    let url;
    try {
      url = new URL(raw, window.location.href);
    } catch {
      return null;
    }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  function isNearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 120;
  }

  function scrollToBottom() {
    log.scrollTop = log.scrollHeight;
  }

  /** Add a chat row (user or bot) to the history and keep it in view. */
  function addRow(side, bubble) {
    const welcome = document.getElementById("welcome");
    if (welcome) welcome.remove();
    const row = el("div", `row row-${side}`);
    row.appendChild(bubble);
    log.appendChild(row);
    scrollToBottom();
    return row;
  }

  function setBusy(busy) {
    inFlight = busy;
    sendButton.disabled = busy;
    sendButton.textContent = busy ? "Searching…" : "Search";
    form.setAttribute("aria-busy", String(busy));
  }

  function formatScore(score) {
    return typeof score === "number" && Number.isFinite(score) ? score.toFixed(3) : "–";
  }

  function formatMs(ms) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return null;
    return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
  }

  function rerankText(rerank) {
    if (!rerank || typeof rerank !== "object") return "CLIP order";
    if (rerank.applied) return rerank.model ? `re-ranked by ${rerank.model}` : "re-ranked";
    const why = rerank.fallback_reason;
    if (!why) return "CLIP order";
    return `CLIP order (${FALLBACK_TEXT[why] || why})`;
  }

  /** One result: a linked thumbnail and its caption. */
  function renderHit(hit, index) {
    const item = el("li", "hit");
    const rank = Number.isInteger(hit.rank) ? hit.rank : index + 1;
    const description = typeof hit.description === "string" && hit.description.trim() ? hit.description.trim() : null;
    const photographer =
      typeof hit.photographer === "string" && hit.photographer.trim() ? hit.photographer.trim() : null;
    const title = description || (photographer ? `Photo by ${photographer}` : `Result ${rank}`);

    const imageUrl = safeHttpUrl(hit.image_url);
    const thumbUrl = safeHttpUrl(hit.thumbnail_url) || imageUrl;
    const frame = imageUrl ? el("a", "hit-frame") : el("div", "hit-frame");
    if (imageUrl) {
      frame.href = imageUrl;
      frame.target = "_blank";
      frame.rel = "noopener noreferrer";
      frame.setAttribute("aria-label", `Open result ${rank} full size in a new tab: ${title}`);
    }
    if (thumbUrl) {
      const img = el("img", "hit-img");
      img.alt = title;
      img.decoding = "async";
      if (Number.isInteger(hit.width) && Number.isInteger(hit.height) && hit.width > 0 && hit.height > 0) {
        img.width = hit.width;
        img.height = hit.height;
      }
      img.addEventListener("error", () => {
        frame.classList.add("hit-broken");
        frame.appendChild(el("span", "hit-missing", "Image unavailable"));
      });
      img.src = thumbUrl;
      frame.appendChild(img);
    } else {
      frame.classList.add("hit-broken");
      frame.appendChild(el("span", "hit-missing", "No image URL"));
    }
    frame.appendChild(el("span", "hit-rank", String(rank)));
    item.appendChild(frame);

    const caption = el("div", "hit-caption");
    const captionText = el("p", "hit-title", title);
    captionText.title = title;
    caption.appendChild(captionText);
    const byline = el("p", "hit-byline");
    if (description && photographer) byline.appendChild(el("span", "hit-by", photographer));
    const score = el("span", "hit-score", `score ${formatScore(hit.score)}`);
    score.title = "Cosine similarity between your words and the image (CLIP)";
    byline.appendChild(score);
    caption.appendChild(byline);
    if (typeof hit.reason === "string" && hit.reason.trim()) {
      const reason = el("p", "hit-reason");
      reason.appendChild(el("span", "hit-reason-label", "Why: "));
      reason.appendChild(document.createTextNode(hit.reason.trim()));
      caption.appendChild(reason);
    }
    item.appendChild(caption);
    return item;
  }

  /** The query as understood: one chip per part, each removable; what changed; why it was searched as typed. */
  function renderUnderstanding(u) {
    const box = el("div", "understood");
    if (!u || typeof u !== "object") return box;
    const parts = Array.isArray(u.parts) ? u.parts : [];
    const chips = el("ul", "chips");
    chips.setAttribute("aria-label", "Query as understood");
    const removable = parts.length > 1;
    for (const part of parts) {
      if (!part || typeof part.key !== "string") continue;
      const label = String(part.label ?? "");
      const chip = el("li", `chip chip-${part.kind === "filter" ? "filter" : "term"}`);
      chip.dataset.key = part.key;
      chip.appendChild(el("span", "chip-label", label));
      if (removable) {
        const x = el("button", "chip-remove", "×");
        x.type = "button";
        x.setAttribute("aria-label", `Remove “${label}”`);
        x.title = `Remove “${label}” and search again`;
        x.addEventListener("click", () => {
          if (!inFlight) search(`without “${label}”`, { remove: [part.key] });
        });
        chip.appendChild(x);
      }
      chips.appendChild(chip);
    }
    box.appendChild(chips);
    const notes = [];
    if (Array.isArray(u.changes) && u.changes.length) notes.push(`changed: ${u.changes.join(", ")}`);
    const why = u.understood ? null : UNDERSTAND_TEXT[u.reason];
    if (why) notes.push(`searched as typed: ${why}`);
    if (Array.isArray(u.not_applied) && u.not_applied.length) {
      notes.push(`not applied by this server yet: ${u.not_applied.join(", ")}`);
    }
    if (u.conversation) notes.push(String(u.conversation));
    if (notes.length) {
      const line = el("p", "understood-note", notes.join(" · "));
      if (u.detail) line.title = String(u.detail);
      box.appendChild(line);
    }
    box.dataset.understood = u.understood ? "true" : "false";
    if (u.reason) box.dataset.reason = String(u.reason);
    return box;
  }

  /** The answer bubble for a successful SearchResponse. */
  function renderAnswer(query, data, clientMs) {
    const bubble = el("article", "bubble bubble-bot answer");
    bubble.setAttribute("aria-label", `Results for “${query}”`);
    const results = Array.isArray(data.results) ? data.results : [];

    if (data.understanding) bubble.appendChild(renderUnderstanding(data.understanding));
    if (data.query_truncated) {
      bubble.appendChild(
        el("p", "notice", "Your description was longer than the model reads; only its beginning was used."),
      );
    }
    if (data.stale) {
      bubble.appendChild(
        el("p", "notice", "Served from a cached index: the model registry could not be reached just now."),
      );
    }
    if (results.length === 0) {
      bubble.appendChild(el("p", "empty", "No photos matched. Try describing it differently."));
    } else {
      const grid = el("ol", "grid");
      grid.setAttribute("aria-label", `${results.length} matching photos`);
      results.forEach((hit, i) => grid.appendChild(renderHit(hit || {}, i)));
      bubble.appendChild(grid);
    }

    const timings = data.timings_ms && typeof data.timings_ms === "object" ? data.timings_ms : {};
    const total = formatMs(timings.total) || formatMs(timings.total_ms) || formatMs(clientMs);
    const parts = [];
    if (data.index_version) parts.push(`index ${data.index_version}`);
    if (total) parts.push(total);
    parts.push(rerankText(data.rerank));
    const meta = el("p", "meta", parts.join(" · "));
    const breakdown = Object.entries(timings)
      .filter(([, v]) => typeof v === "number")
      .map(([k, v]) => `${k}: ${formatMs(v)}`)
      .join(", ");
    const tooltip = [breakdown, data.request_id ? `request ${data.request_id}` : ""].filter(Boolean).join(" · ");
    if (tooltip) meta.title = tooltip;
    if (data.rerank && data.rerank.detail) meta.dataset.rerankDetail = String(data.rerank.detail);
    bubble.appendChild(meta);
    return bubble;
  }

  /** Turn FastAPI's `detail` (a string, or a list of validation errors) into one readable sentence. */
  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((e) => {
          if (!e || typeof e !== "object") return String(e);
          const loc = Array.isArray(e.loc) ? e.loc.filter((p) => p !== "query" && p !== "body").join(".") : "";
          return loc ? `${loc}: ${e.msg}` : String(e.msg);
        })
        .join("; ");
    }
    if (detail === undefined || detail === null) return "";
    return JSON.stringify(detail);
  }

  function renderError(title, detail, hint, footer) {
    const bubble = el("article", "bubble bubble-bot bubble-error");
    bubble.setAttribute("role", "alert");
    bubble.appendChild(el("p", "error-title", title));
    if (detail) bubble.appendChild(el("p", "error-detail", detail));
    if (hint) bubble.appendChild(el("p", "error-hint", hint));
    if (footer) bubble.appendChild(el("p", "meta", footer));
    return bubble;
  }

  function hintForStatus(status) {
    if (status === 503) return "The service is starting or has no index loaded yet. Try again in a moment.";
    if (status === 429) return "Too many searches at once. Wait a few seconds and try again.";
    if (status >= 500) return "The server hit an error. Try again; if it persists, report the request id.";
    if (status >= 400) return "Change the query and try again.";
    return null;
  }

  async function readBody(response) {
    const text = await response.text();
    try {
      return { json: JSON.parse(text), text };
    } catch {
      return { json: null, text };
    }
  }

  function pendingBubble() {
    const bubble = el("article", "bubble bubble-bot pending");
    bubble.setAttribute("aria-busy", "true");
    bubble.appendChild(el("span", "spinner"));
    bubble.appendChild(el("span", null, "Searching…"));
    return bubble;
  }

  async function search(query, options = {}) {
    setBusy(true);
    addRow("user", el("div", "bubble bubble-user", query));
    const pending = pendingBubble();
    addRow("bot", pending);

    const remove = Array.isArray(options.remove) ? options.remove : [];
    const body = {
      q: remove.length ? "" : query,
      k: RESULTS_PER_QUERY,
      candidates: CANDIDATES,
      rerank: rerankSelect.value,
      understand: "auto",
      conversation_id: conversationId,
      remove,
    };
    const controller = new AbortController();
    const timer = window.setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    const started = performance.now();
    let bubble;
    try {
      const response = await fetch(`${apiBase}/search`, {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const { json, text } = await readBody(response);
      const clientMs = performance.now() - started;
      if (response.ok && json && typeof json === "object") {
        if (typeof json.conversation_id === "string") conversationId = json.conversation_id;
        bubble = renderAnswer(query, json, clientMs);
      } else {
        const requestId = (json && json.request_id) || response.headers.get("x-request-id");
        const detail = json ? detailText(json.detail) : text.slice(0, 300);
        const title = response.ok ? "The server sent an answer this page cannot read." : `Search failed (HTTP ${response.status})`;
        bubble = renderError(title, detail || response.statusText, hintForStatus(response.status),
          requestId ? `request ${requestId}` : null);
      }
    } catch (err) {
      const timedOut = err && err.name === "AbortError";
      bubble = timedOut
        ? renderError("The search took too long.", `No answer within ${REQUEST_TIMEOUT_MS / 1000} s.`, "Try again.", null)
        : renderError("Could not reach the search service.", err && err.message ? err.message : String(err),
            "Check your connection and try again.", null);
    } finally {
      window.clearTimeout(timer);
    }
    const stick = isNearBottom();
    pending.replaceWith(bubble);
    if (bubble.classList.contains("bubble-error") && !input.value && !remove.length) input.value = query;
    if (stick) scrollToBottom();
    setBusy(false);
    const focused = document.activeElement;
    if (!focused || focused === document.body || focused === sendButton) input.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (inFlight) return;
    const query = input.value.trim();
    if (!query) {
      input.value = "";
      input.focus();
      return;
    }
    input.value = "";
    search(query);
  });

  const newTopic = document.getElementById("new-topic");
  if (newTopic) {
    newTopic.addEventListener("click", () => {
      conversationId = null;
      addRow("bot", el("p", "bubble bubble-bot meta", "New topic: the next message starts a fresh search."));
      input.focus();
    });
  }

  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => {
      if (inFlight) return;
      input.value = button.dataset.query || button.textContent;
      form.requestSubmit();
    });
  }

  input.focus();
})();
