// The server's own API: fetch with the typed key, and SSE read from a POST's body stream.

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.requestId = error.request_id || null;
    this.retryAfter = retryAfter;
  }
}

/** A dropped connection (not a stop the user asked for). */
export class ConnectionLost extends Error {}

export class Api {
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(json) {
    const headers = {};
    const key = this.getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  /** fetch relative to the page, so a server under a path prefix works too. */
  async request(method, path, { body, signal } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: this.headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ConnectionLost("the connection to the server was lost");
    }
    if (!response.ok) {
      const text = await response.text().catch(() => "");
      let parsed = null;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
      const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      throw new ApiError(response.status, parsed, Number.isFinite(retry) ? retry : null);
    }
    return response;
  }

  async json(method, path) {
    const response = await this.request(method, path);
    return response.status === 204 ? null : response.json();
  }

  /** POST `body` and yield its SSE events as {event, data (parsed JSON)}. */
  async *stream(path, body, signal) {
    const response = await this.request("POST", path, { body, signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError" || (signal && signal.aborted)) throw abortError();
        throw new ConnectionLost("the connection to the server was lost");
      }
      if (chunk.done) break;
      buffer += chunk.value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) yield event;
      }
    }
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { event: name, data: JSON.parse(data.join("\n")) };
}

function abortError() {
  return new DOMException("stopped", "AbortError");
}
