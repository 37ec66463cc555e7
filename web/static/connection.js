// The tab's WebSocket to the cluster. It connects to the page's own node first; when the
// socket closes (the node died, restarted, or stopped answering pings) it says so
// ("reconnecting"), and connects to another node that answers, preferring those the cluster
// reports up. Screens listen for `open` (to rejoin their rooms with `since`), `frame` and
// `state`.

import { sleep } from './dom.js';

/** A ping goes out this often while the socket is open. */
const PING_INTERVAL_MS = 3_000;
/** No frame for this long (pongs included) and the node is treated as gone. */
const SILENCE_MAX_MS = 8_000;
/** A socket that is not open after this long is abandoned. */
const OPEN_TIMEOUT_MS = 5_000;
/** Pause between rounds over all nodes: doubles from the minimum up to the maximum. */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5_000;

export class Connection extends EventTarget {
  /** `session()` returns the current `{token, expires_at_s}` or null. */
  constructor(cluster, session) {
    super();
    this.cluster = cluster;
    this.session = session;
    /** `connecting` (first time), `open`, `reconnecting`, or `closed` (stopped). */
    this.state = 'closed';
    this.socket = null;
    this.url = null;
    this.node = null;
    this.lastFrameAt = 0;
    this.timer = null;
    this.stopped = true;
    this.epoch = 0;
  }

  get isOpen() {
    return this.state === 'open';
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop(null);
  }

  stop() {
    this.stopped = true;
    this.drop();
    this.setState('closed');
  }

  /** Sends a frame; false when the socket is not open (the caller keeps it for later). */
  send(frame) {
    if (!this.isOpen || !this.socket) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    document.body.dataset.connection = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  async loop(avoid) {
    const epoch = ++this.epoch;
    this.setState(avoid ? 'reconnecting' : 'connecting');
    for (let round = 0; !this.stopped && epoch === this.epoch; round += 1) {
      for (const url of this.cluster.candidates(avoid)) {
        if (this.stopped || epoch !== this.epoch) return;
        const session = this.session();
        if (!session) {
          this.dispatchEvent(new Event('expired'));
          return;
        }
        let view;
        try {
          view = await this.cluster.probe(url);
        } catch {
          continue;
        }
        if (await this.open(url, view.node, session.token, epoch)) {
          if (avoid) this.cluster.reconnects += 1;
          return;
        }
        if (await this.tokenRefused(url)) {
          this.dispatchEvent(new Event('expired'));
          return;
        }
      }
      const pause = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** round);
      await sleep(pause * (0.75 + Math.random() * 0.5));
    }
  }

  /** Resolves true once a socket to `url` is open, false if it fails first. */
  open(url, node, token, epoch) {
    return new Promise((resolve) => {
      const socketUrl = `${url.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(token)}`;
      let socket;
      try {
        socket = new WebSocket(socketUrl);
      } catch {
        resolve(false);
        return;
      }
      let settled = false;
      const giveUp = setTimeout(() => {
        if (!settled) {
          settled = true;
          socket.close();
          resolve(false);
        }
      }, OPEN_TIMEOUT_MS);
      socket.onopen = () => {
        if (settled || this.stopped || epoch !== this.epoch) {
          socket.close();
          return;
        }
        settled = true;
        clearTimeout(giveUp);
        this.attach(socket, url, node);
        resolve(true);
      };
      socket.onclose = () => {
        if (!settled) {
          settled = true;
          clearTimeout(giveUp);
          resolve(false);
        }
      };
    });
  }

  attach(socket, url, node) {
    this.socket = socket;
    this.url = url;
    this.node = node;
    this.cluster.current = url;
    this.cluster.currentNode = node;
    this.lastFrameAt = Date.now();
    socket.onmessage = (event) => {
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame.type === 'string') {
        this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
      }
    };
    socket.onclose = () => this.lost(socket);
    socket.onerror = () => {};
    this.timer = setInterval(() => this.heartbeat(socket), PING_INTERVAL_MS);
    this.setState('open');
    this.dispatchEvent(new CustomEvent('open', { detail: { url, node } }));
  }

  heartbeat(socket) {
    if (socket !== this.socket) return;
    if (Date.now() - this.lastFrameAt > SILENCE_MAX_MS) {
      // A frozen or cut-off node never closes the socket: stop waiting for it.
      this.lost(socket);
      return;
    }
    this.send({ type: 'ping' });
  }

  lost(socket) {
    if (socket !== this.socket) return;
    const url = this.url;
    this.drop();
    if (!this.stopped) this.setState('reconnecting');
    this.dispatchEvent(new Event('close'));
    if (!this.stopped) this.loop(url);
  }

  drop() {
    clearInterval(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      try {
        socket.close();
      } catch {
        // Already closed.
      }
    }
  }

  /** After a refused upgrade: is it the token (401) rather than the node? */
  async tokenRefused(url) {
    try {
      await this.cluster.requestOnce(url, '/api/users/me', { timeoutMs: 1500 });
      return false;
    } catch (error) {
      return error.status === 401;
    }
  }
}
