// clipsearch chat page: sends each query to /search and renders the answer as a bubble.
//
// A query is words, and optionally an example image (picked, dropped or pasted: POST /search as multipart), things
// to leave out ("not …": negative terms) and "More like this" on any result (GET /search?like=<photo_id>).
//
// Words are a conversation (POST /search as JSON): each answer carries a `conversation_id` (signed state of the
// query so far) that the next message sends back, so "only at night" refines the last query. The query as
// understood (Gemini's reading, merged with the filters and "not" terms chosen here, which win) is shown as chips;
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
    not_first_page: "re-ranking orders the first page only",
    sorted: "sorted, not re-ranked",
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
  const colorChips = document.getElementById("color-chips");
  const sinceInput = document.getElementById("since");
  const minScoreInput = document.getElementById("min-score");
  const minScoreValue = document.getElementById("min-score-value");

  // Filters for the next search: chips toggle values in these sets; the date and slider are read when sending.
  const chosen = { orientation: new Set(), color: new Set() };
  const imageInput = document.getElementById("image-input");
  const notInput = document.getElementById("not-input");
  const chips = document.getElementById("chips");
  const IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif"];

  let inFlight = false;
  let lastSpec = null; // the last search, re-run when a filter changes
  // What the next search adds to its words: one example image and things to leave out.
  const pending = { image: null, nots: [] };
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
    if (typeof hit.photo_id === "string" && hit.photo_id) {
      const more = el("button", "more-like", "More like this");
      more.type = "button";
      more.setAttribute("aria-label", `More like result ${rank}: ${title}`);
      more.addEventListener("click", () => {
        if (inFlight) return;
        search({ text: "", like: { id: hit.photo_id, title, thumb: thumbUrl } });
      });
      item.appendChild(more);
    }
    return item;
  }

  /** The query string for `query` (none: the caller adds its terms) with the current filters (and a cursor for
   * "show more"). */
  function searchParams(query, cursor) {
    const params = new URLSearchParams({
      k: String(RESULTS_PER_QUERY),
      candidates: String(CANDIDATES),
      rerank: rerankSelect.value,
    });
    if (query) params.set("q", query);
    for (const value of chosen.orientation) params.append("orientation", value);
    for (const value of chosen.color) params.append("color", value);
    if (sinceInput.value) params.set("submitted_from", sinceInput.value);
    const minScore = Number(minScoreInput.value);
    if (minScore > 0) params.set("min_score", minScore.toFixed(2));
    if (cursor) params.set("cursor", cursor);
    return params;
  }

  function pageText(page, shown) {
    if (!page || typeof page !== "object") return null;
    const parts = [];
    if (typeof page.total === "number") {
      parts.push(`${shown} of ${page.total}${page.total_exact === false ? "+" : ""}`);
    }
    if (page.order && page.order !== "relevance") parts.push(`order: ${page.order}`);
    if (page.dropped_duplicates) parts.push(`${page.dropped_duplicates} duplicates dropped`);
    return parts.length ? parts.join(" · ") : null;
  }

  /** Colour chips from the answer's facets (the top colours among the results), keeping chosen ones. */
  function updateColorChips(facets) {
    const counts = facets && facets.color && typeof facets.color === "object" ? facets.color : {};
    const names = [...new Set([...chosen.color, ...Object.keys(counts)])].slice(0, 10);
    colorChips.replaceChildren();
    for (const name of names) {
      const chip = el("button", "chip", name);
      chip.type = "button";
      chip.dataset.filter = "color";
      chip.dataset.value = name;
      chip.setAttribute("aria-pressed", String(chosen.color.has(name)));
      if (typeof counts[name] === "number") chip.appendChild(el("span", "chip-count", String(counts[name])));
      colorChips.appendChild(chip);
    }
  }

  /** "Show more": fetch the next page with the answer's cursor and append it to the same grid. `nextPage(cursor)`
   * gives the request ({ url, init }) for the page after `cursor`. */
  function moreButton(nextPage, page, bubble) {
    const button = el("button", "more", "Show more");
    button.type = "button";
    let cursor = page.next_cursor;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const next = nextPage(cursor);
        const response = await fetch(next.url, { ...next.init, headers: { Accept: "application/json", ...next.headers } });
        const { json } = await readBody(response);
        if (!response.ok || !json || !Array.isArray(json.results)) {
          button.replaceWith(el("p", "notice", `Could not load more (HTTP ${response.status}).`));
          return;
        }
        const grid = bubble.querySelector(".grid");
        const start = grid ? grid.children.length : 0;
        json.results.forEach((hit, i) => grid && grid.appendChild(renderHit(hit || {}, start + i)));
        const info = bubble.querySelector(".page-info");
        const text = pageText(json.page, grid ? grid.children.length : 0);
        if (info && text) info.textContent = text;
        cursor = json.page && json.page.next_cursor;
        if (cursor) button.disabled = false;
        else button.remove();
      } catch (err) {
        button.replaceWith(el("p", "notice", `Could not load more: ${err && err.message ? err.message : err}`));
      }
    });
    return button;
  }

  /** "Searched for: image (PNG 96x64) + “snow” − “people”" from the response's `understood`, or null. */
  function understoodText(understood) {
    if (!understood || !Array.isArray(understood.terms) || understood.kind === "text") return null;
    const parts = understood.terms.map((t, i) => {
      const sign = typeof t.weight === "number" && t.weight < 0 ? "− " : i === 0 ? "" : "+ ";
      let what = "?";
      if (t.kind === "text") what = `“${t.text}”`;
      else if (t.kind === "photo_id") what = `photo ${t.photo_id}`;
      else if (t.kind === "image_url") what = "image by URL";
      else if (t.kind === "image") what = t.image ? `image (${String(t.image).split(",")[0]})` : "image";
      const weight = typeof t.weight === "number" && Math.abs(t.weight) !== 1 ? `${Math.abs(t.weight)}×` : "";
      return `${sign}${weight}${what}`;
    });
    return `Searched for: ${parts.join(" ")}`;
  }

  /** The query as understood: one chip per part, each removable; what changed; why it was searched as typed. */
  function renderUnderstanding(u) {
    const box = el("div", "understanding");
    if (!u || typeof u !== "object") return box;
    const parts = Array.isArray(u.parts) ? u.parts : [];
    const list = el("ul", "chips");
    list.setAttribute("aria-label", "Query as understood");
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
          if (!inFlight) search({ label: `without “${label}”`, remove: [part.key], nots: [] });
        });
        chip.appendChild(x);
      }
      list.appendChild(chip);
    }
    box.appendChild(list);
    const notes = [];
    if (Array.isArray(u.changes) && u.changes.length) notes.push(`changed: ${u.changes.join(", ")}`);
    const why = u.understood ? null : UNDERSTAND_TEXT[u.reason];
    if (why) notes.push(`searched as typed: ${why}`);
    if (Array.isArray(u.not_applied) && u.not_applied.length) {
      notes.push(`not applied: ${u.not_applied.join(", ")}`);
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
  function renderAnswer(query, data, clientMs, nextPage) {
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
    const page = data.page && typeof data.page === "object" ? data.page : null;
    if (page && page.fewer_than_k === "min_score") {
      bubble.appendChild(
        el("p", "notice", `Only ${results.length} photos pass the relevance threshold; lower it to see more.`),
      );
    }
    if (results.length === 0) {
      bubble.appendChild(el("p", "empty", "No photos matched. Try describing it differently, or loosen the filters."));
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
    const understood = understoodText(data.understood);
    if (understood) bubble.appendChild(el("p", "understood", understood));
    const meta = el("p", "meta", parts.join(" · "));
    const breakdown = Object.entries(timings)
      .filter(([, v]) => typeof v === "number")
      .map(([k, v]) => `${k}: ${formatMs(v)}`)
      .join(", ");
    const tooltip = [breakdown, data.request_id ? `request ${data.request_id}` : ""].filter(Boolean).join(" · ");
    if (tooltip) meta.title = tooltip;
    if (data.rerank && data.rerank.detail) meta.dataset.rerankDetail = String(data.rerank.detail);
    bubble.appendChild(meta);
    const info = pageText(page, results.length);
    if (info) bubble.appendChild(el("p", "meta page-info", info));
    if (nextPage && page && typeof page.next_cursor === "string" && page.next_cursor) {
      bubble.appendChild(moreButton(nextPage, page, bubble));
    }
    updateColorChips(data.facets);
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

  /** The user's bubble: their words, the example image (a local preview), "more like" and "not" terms. */
  function userBubble(spec) {
    const bubble = el("div", "bubble bubble-user", spec.text || spec.label || null);
    if (spec.like) {
      const like = el("span", "term term-like", "More like this");
      const thumb = safeHttpUrl(spec.like.thumb);
      if (thumb) {
        const img = el("img", "term-thumb");
        img.alt = spec.like.title || "the chosen photo";
        img.src = thumb;
        like.prepend(img);
      }
      bubble.appendChild(like);
    }
    if (spec.image) {
      const term = el("span", "term term-image", spec.image.name || "pasted image");
      const img = el("img", "term-thumb");
      img.alt = "your example image";
      img.src = URL.createObjectURL(spec.image);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      term.prepend(img);
      bubble.appendChild(term);
    }
    for (const not of spec.nots || []) bubble.appendChild(el("span", "term term-not", `not ${not}`));
    return bubble;
  }

  /** The filters chosen on the page as a JSON `filters` object (for POST bodies). */
  function chosenFilters() {
    const filters = {};
    if (chosen.orientation.size) filters.orientation = [...chosen.orientation];
    if (chosen.color.size) filters.colors = [...chosen.color];
    if (sinceInput.value) filters.submitted_from = sinceInput.value;
    return filters;
  }

  /** POST multipart when an image is attached; GET for "more like this" (a link that can be shared); POST JSON for
   * words (and chip removals): the conversation, understood by the server (`understand: auto`). */
  function buildRequest(spec) {
    // the filters apply to every kind of query: GET parameters, the multipart form's `query` part, the JSON body
    const filtered = searchParams(null, null);
    const filters = chosenFilters();
    if (spec.image) {
      const body = new FormData();
      if (spec.text) body.append("q", spec.text);
      body.append("image", spec.image, spec.image.name || "pasted-image");
      for (const not of spec.nots || []) body.append("not", not);
      if (Object.keys(filters).length) body.append("query", JSON.stringify({ filters }));
      for (const key of ["k", "candidates", "rerank", "min_score"]) {
        if (filtered.has(key)) body.append(key, filtered.get(key));
      }
      // an uploaded image cannot ride in a link: no "show more" cursor request for it
      return { url: `${apiBase}/search`, init: { method: "POST", body }, nextPage: null, conversational: false };
    }
    if (spec.like) {
      const params = new URLSearchParams();
      params.append("like", spec.like.id);
      for (const not of spec.nots || []) params.append("not", not);
      for (const [key, value] of filtered) params.append(key, value);
      const nextPage = (cursor) => {
        const next = new URLSearchParams(params);
        next.set("cursor", cursor);
        next.set("rerank", "off");
        return { url: `${apiBase}/search?${next}`, init: { method: "GET" } };
      };
      return { url: `${apiBase}/search?${params}`, init: { method: "GET" }, nextPage, conversational: false };
    }
    const shared = { k: RESULTS_PER_QUERY, candidates: CANDIDATES, filters };
    const minScore = Number(minScoreInput.value);
    if (minScore > 0) shared.min_score = Number(minScore.toFixed(2));
    const body = { ...shared, rerank: rerankSelect.value, understand: "auto" };
    if (spec.text) body.q = spec.text;
    if (spec.nots && spec.nots.length) body.not = spec.nots;
    if (spec.remove && spec.remove.length) body.remove = spec.remove;
    if (spec.conversation) body.conversation_id = spec.conversation;
    const json = (payload) => ({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    // the next page of an answer: the same conversation's query (no `q`: nothing new to understand) with a cursor
    const nextPage = (cursor, answerConversation) => ({
      url: `${apiBase}/search`,
      init: json({ ...shared, rerank: "off", conversation_id: answerConversation, cursor }),
      headers: { "Content-Type": "application/json" },
    });
    return { url: `${apiBase}/search`, init: json(body), nextPage, conversational: true };
  }

  async function search(spec) {
    const query = spec.text || "";
    const label = query || spec.label || (spec.like ? "more like this" : spec.image ? "your image" : "");
    // a words search joins the conversation as it stood when it was first sent (a re-run for a changed filter
    // redoes that turn, it does not refine itself)
    if (!spec.image && !spec.like && spec.conversation === undefined) spec.conversation = conversationId;
    setBusy(true);
    addRow("user", userBubble(spec));
    const waiting = pendingBubble();
    addRow("bot", waiting);

    lastSpec = spec;
    const request = buildRequest(spec);
    const controller = new AbortController();
    const timer = window.setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    const started = performance.now();
    let bubble;
    try {
      const response = await fetch(request.url, {
        ...request.init,
        headers: { Accept: "application/json", ...(request.init.headers || {}) },
        signal: controller.signal,
      });
      const { json, text } = await readBody(response);
      const clientMs = performance.now() - started;
      if (response.ok && json && typeof json === "object") {
        let nextPage = null;
        if (request.conversational) {
          if (typeof json.conversation_id === "string") conversationId = json.conversation_id;
          const answerConversation = json.conversation_id;
          nextPage = (cursor) => request.nextPage(cursor, answerConversation);
        } else if (request.nextPage) {
          nextPage = request.nextPage;
        }
        bubble = renderAnswer(label, json, clientMs, nextPage);
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
    waiting.replaceWith(bubble);
    if (bubble.classList.contains("bubble-error") && !input.value && !spec.remove) input.value = query;
    if (stick) scrollToBottom();
    setBusy(false);
    const focused = document.activeElement;
    if (!focused || focused === document.body || focused === sendButton) input.focus();
  }

  /** Show what the next search adds (the image, each "not …"), each with a button to remove it. */
  function renderChips() {
    chips.replaceChildren();
    const add = (text, className, onRemove) => {
      const chip = el("li", `chip ${className}`);
      chip.appendChild(el("span", null, text));
      const remove = el("button", "chip-remove", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${text}`);
      remove.addEventListener("click", () => {
        onRemove();
        renderChips();
      });
      chip.appendChild(remove);
      chips.appendChild(chip);
    };
    if (pending.image) {
      add(`image: ${pending.image.name || "pasted image"}`, "chip-image", () => {
        pending.image = null;
        imageInput.value = "";
      });
    }
    pending.nots.forEach((not, i) => add(`not ${not}`, "chip-not", () => pending.nots.splice(i, 1)));
  }

  function attachImage(file) {
    if (!file) return false;
    if (!IMAGE_TYPES.includes(file.type)) {
      addRow("bot", renderError("That file is not an image this search reads.", `${file.name || "file"}: ${file.type || "unknown type"}`,
        "Use a JPEG, PNG, WebP or GIF image.", null));
      return false;
    }
    pending.image = file;
    renderChips();
    return true;
  }

  function addNot() {
    const text = notInput.value.trim();
    notInput.value = "";
    if (text && !pending.nots.includes(text)) pending.nots.push(text);
    renderChips();
  }

  imageInput.addEventListener("change", () => {
    if (imageInput.files && imageInput.files[0]) attachImage(imageInput.files[0]);
    input.focus();
  });
  notInput.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    addNot();
    input.focus();
  });
  notInput.addEventListener("blur", () => {
    if (notInput.value.trim()) addNot();
  });
  document.addEventListener("dragover", (event) => {
    if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    const files = event.dataTransfer ? [...event.dataTransfer.files] : [];
    if (files.length === 0) return;
    event.preventDefault();
    attachImage(files.find((f) => IMAGE_TYPES.includes(f.type)) || files[0]);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    const image = files.find((f) => IMAGE_TYPES.includes(f.type));
    if (!image) return;
    event.preventDefault();
    attachImage(image);
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (inFlight) return;
    const query = input.value.trim();
    if (notInput.value.trim()) addNot();
    if (!query && !pending.image) {
      input.value = "";
      input.focus();
      return;
    }
    input.value = "";
    const spec = { text: query, image: pending.image, nots: [...pending.nots] };
    pending.image = null;
    pending.nots = [];
    imageInput.value = "";
    renderChips();
    search(spec);
  });

  /** A filter changed: re-run the last query with it (when nothing is in flight). */
  function filtersChanged() {
    if (lastSpec && !inFlight) search(lastSpec);
  }

  document.getElementById("filters").addEventListener("click", (event) => {
    const chip = event.target instanceof Element ? event.target.closest(".chip") : null;
    if (!chip || inFlight) return;
    const set = chosen[chip.dataset.filter];
    if (!set) return;
    const value = chip.dataset.value;
    if (set.has(value)) set.delete(value);
    else set.add(value);
    chip.setAttribute("aria-pressed", String(set.has(value)));
    filtersChanged();
  });
  sinceInput.addEventListener("change", filtersChanged);
  minScoreInput.addEventListener("input", () => {
    const value = Number(minScoreInput.value);
    minScoreValue.textContent = value > 0 ? value.toFixed(2) : "off";
  });
  minScoreInput.addEventListener("change", filtersChanged);


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
