// The cluster as this tab sees it: the nodes (from `/api/nodes`), which one the tab talks to,
// and the HTTP client every screen uses. The token is only ever sent to the page's own origin
// and to the nodes the cluster itself lists; a GET that finds its node gone is tried on the
// others, so a dead node costs a screen nothing but a retry.

/** A node that does not answer `/api/nodes` within this is treated as down. */
const PROBE_TIMEOUT_MS = 1500;
/** Longest a normal API request may take. */
const REQUEST_TIMEOUT_MS = 15_000;
/** `host:port` or `[v6]:port`, as `http_addr` is written. */
const ADDRESS_PATTERN = /^([a-z0-9.-]+|\[[0-9a-f:.]+\]):\d{1,5}$/i;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Cluster extends EventTarget {
  constructor() {
    super();
    /** `[{id, state, since_ms, url}]`; `url` is null for a node the page cannot reach. */
    this.members = [];
    /** The id of the node that served this page (its URL is `location.origin`). */
    this.originNode = null;
    /** Base URL of the node this tab talks to; changes when the connection moves. */
    this.current = location.origin;
    /** Its id, once known. */
    this.currentNode = null;
    /** How often the tab has moved to another node after losing one. */
    this.reconnects = 0;
    /** The session token, sent only to cluster URLs. */
    this.token = null;
    /** Node URLs that did not answer this tab's last probe. */
    this.unreachable = new Set();
  }

  /** True for the page's origin and the nodes of the cluster: the only places a token goes. */
  isClusterUrl(base) {
    return base === location.origin || this.members.some((member) => member.url === base);
  }

  /** Asks `base` for its view of the cluster; updates the member list. */
  async probe(base) {
    let body;
    try {
      body = await this.requestOnce(base, '/api/nodes', { timeoutMs: PROBE_TIMEOUT_MS, auth: false });
      if (!body || !Array.isArray(body.members) || typeof body.node !== 'string') {
        throw new ApiError(0, 'bad_answer', 'not an ActorHub node');
      }
    } catch (error) {
      if (!this.unreachable.has(base)) {
        this.unreachable.add(base);
        this.dispatchEvent(new Event('change'));
      }
      throw error;
    }
    this.unreachable.delete(base);
    if (base === location.origin && !this.originNode) this.originNode = body.node;
    this.members = body.members.map((member) => ({
      id: String(member.id),
      state: String(member.state),
      since_ms: Number(member.since_ms) || 0,
      url: this.urlOf(member, base, body.node),
    }));
    this.dispatchEvent(new Event('change'));
    return body;
  }

  urlOf(member, base, answering) {
    if (member.id === answering) return base;
    if (member.id === this.originNode) return location.origin;
    // Behind https the nodes' own plain-http addresses are unusable (mixed content): the
    // page's origin (a load balancer) is then the only way in.
    if (location.protocol === 'https:') return null;
    const address = String(member.http_addr || '');
    if (!ADDRESS_PATTERN.test(address) || address.startsWith('0.0.0.0:') || address.startsWith('[::]:')) {
      return null;
    }
    return `http://${address}`;
  }

  /** Where to connect, best first: the page's own node first at start; after losing `avoid`,
   *  the other nodes that are up (in random order, to spread a dead node's tabs), then the
   *  rest, `avoid` last. */
  candidates(avoid) {
    const up = [];
    const other = [];
    for (const member of shuffle(this.members)) {
      if (!member.url || member.url === avoid) continue;
      (member.state === 'up' ? up : other).push(member.url);
    }
    const ordered = avoid ? [...up, location.origin, ...other, avoid] : [location.origin, ...up, ...other];
    return [...new Set(ordered)];
  }

  /** A member's state as this tab sees it: `down` when it does not answer the tab either. */
  stateOf(member) {
    return member.url && this.unreachable.has(member.url) ? 'down' : member.state;
  }

  /** An absolute URL on the current node (for images and links). */
  url(path) {
    return this.current + path;
  }

  /**
   * A JSON request to the current node. GETs that cannot reach it, or that it answers 503,
   * are tried on the other nodes. Throws `ApiError` (status 0 when no node answered).
   */
  async request(path, options = {}) {
    const method = options.method || 'GET';
    const bases = method === 'GET' ? [this.current, ...this.candidates(this.current)] : [this.current];
    let lastError = null;
    for (const base of [...new Set(bases)]) {
      try {
        return await this.requestOnce(base, path, options);
      } catch (error) {
        lastError = error;
        const retry = !(error instanceof ApiError) || error.status === 503;
        if (!retry) break;
      }
    }
    if (lastError instanceof ApiError) {
      if (lastError.status === 401) this.dispatchEvent(new Event('unauthorized'));
      throw lastError;
    }
    throw new ApiError(0, 'unreachable', 'No node of the cluster answered. Check your connection and try again.');
  }

  async requestOnce(base, path, { method = 'GET', json, body, headers = {}, timeoutMs = REQUEST_TIMEOUT_MS, auth = true } = {}) {
    const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(timeoutMs) };
    if (auth && this.token && this.isClusterUrl(base)) init.headers.Authorization = `Bearer ${this.token}`;
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    } else if (body !== undefined) {
      init.body = body;
    }
    const response = await fetch(base + path, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error ? data.error : {};
      throw new ApiError(response.status, error.code || `http_${response.status}`,
        error.message || `The node answered ${response.status}.`);
    }
    return data;
  }

  /** Downloads `path` with the token and hands it to the browser as a file. */
  async download(path, fileName) {
    const base = this.current;
    const headers = {};
    if (this.token && this.isClusterUrl(base)) headers.Authorization = `Bearer ${this.token}`;
    const response = await fetch(base + path, { headers, signal: AbortSignal.timeout(120_000) });
    if (!response.ok) throw new ApiError(response.status, `http_${response.status}`, 'The download failed.');
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = fileName || 'download';
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}

function shuffle(items) {
  const copy = [...items];
  for (let index = copy.length - 1; index > 0; index -= 1) {
    const other = Math.floor(Math.random() * (index + 1));
    [copy[index], copy[other]] = [copy[other], copy[index]];
  }
  return copy;
}
