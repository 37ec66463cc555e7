// Chat: the rooms this tab joined, their messages, and the screen that shows them.
//
// Delivery rules (the server's session gives each room's messages in order, once; these keep
// that true for the person looking at the page across reconnects):
// - each room remembers the last sequence number it got live (`lastSeq`); after a reconnect it
//   joins with `since: lastSeq` and gets exactly what it missed;
// - messages are kept by sequence number, so one arriving twice (replay and ack, history and
//   live) is shown once;
// - a post keeps its client id until it is acknowledged; posts typed while disconnected wait
//   and are sent after the rejoin with the same ids, so the room stores each once.
//
// Presence: after a room's first `joined` on a socket the server sends a `presence` frame with
// everyone there as `joins`, then the changes; a new socket starts from nothing again.

import { h, replace, reconcile, avatar, formatTime, formatDay, randomId, toast } from './dom.js';
import { loadRooms, saveRooms } from './session.js';

/** Messages fetched per history page (the server allows up to 200). */
const HISTORY_PAGE = 50;
/** Pages fetched to fill one gap, at most. */
const GAP_PAGES_MAX = 20;
const GAP_PAGE = 200;
/** A failed post or join is retried after this. */
const RETRY_MS = 1000;
/** Largest text the server accepts (`sessions.text_bytes_max`). */
const TEXT_BYTES_MAX = 4096;
/** Consecutive messages of one person within this are grouped under one name. */
const GROUP_WINDOW_MS = 5 * 60_000;
const NEAR_BOTTOM_PX = 80;
const NEAR_TOP_PX = 40;
const COMPOSER_HEIGHT_MAX_PX = 160;
/** The room directory is read again this often while the chat is on screen. */
const DIRECTORY_REFRESH_MS = 20_000;

class Room {
  constructor(id, name) {
    this.id = id;
    this.name = name || id;
    /** Joined at least once on this page: `lastSeq` is meaningful as `since`. */
    this.synced = false;
    /** `idle` (not joined on the current socket), `joining`, `joined`. */
    this.joinState = 'idle';
    this.head = 0;
    this.lastSeq = 0;
    /** seq → message. */
    this.messages = new Map();
    /** client id → `{id, text, ts, state: queued|sent|failed, error}`, in the order typed. */
    this.pending = new Map();
    this.unread = 0;
    this.historyLoaded = false;
    this.oldestComplete = false;
    this.loadingOlder = false;
    this.draft = '';
    /** Who is online in the room: user id → name (at most the server's listed bound). */
    this.present = new Map();
    /** How many are online, exactly (may exceed `present.size`). */
    this.presentCount = 0;
  }

  oldestSeq() {
    let oldest = Infinity;
    for (const seq of this.messages.keys()) oldest = Math.min(oldest, seq);
    return oldest === Infinity ? this.head + 1 : oldest;
  }
}

export class Chat {
  constructor(app) {
    this.app = app;
    this.events = new AbortController();
    /** The rooms this tab joined, by id. */
    this.rooms = new Map();
    /** Every room of the cluster's directory. */
    this.directory = [];
    this.activeId = null;
    this.view = null;
    this.renderQueued = false;
    for (const id of loadRooms(app.me.id)) this.rooms.set(id, new Room(id));
    const signal = this.events.signal;
    const connection = app.connection;
    connection.addEventListener('open', () => this.onOpen(), { signal });
    connection.addEventListener('close', () => this.onClose(), { signal });
    connection.addEventListener('state', () => this.renderRoomStatus(), { signal });
    connection.addEventListener('frame', (event) => this.onFrame(event.detail), { signal });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) this.markRead();
    }, { signal });
    if (connection.isOpen) this.onOpen();
    this.loadDirectory();
    // New rooms appear without a reload (the directory has no push of its own).
    this.directoryTimer = setInterval(() => {
      if (this.view && !document.hidden) this.loadDirectory();
    }, DIRECTORY_REFRESH_MS);
  }

  dispose() {
    this.events.abort();
    clearInterval(this.directoryTimer);
  }

  get unreadTotal() {
    let total = 0;
    for (const room of this.rooms.values()) total += room.unread;
    return total;
  }

  // ---- the rooms and the socket ----

  persist() {
    saveRooms(this.app.me.id, [...this.rooms.keys()]);
  }

  async loadDirectory() {
    try {
      const body = await this.app.cluster.request('/api/rooms');
      this.directory = Array.isArray(body.rooms) ? body.rooms : [];
      for (const info of this.directory) {
        const room = this.rooms.get(info.id);
        if (room) room.name = info.name;
      }
      this.renderSidebar();
      this.renderRoomHead();
    } catch (error) {
      if (this.view) toast(`Could not load the rooms: ${error.message}`, 'error');
    }
  }

  async createRoom(name, isPrivate) {
    const body = await this.app.cluster.request('/api/rooms', { method: 'POST', json: { name, private: isPrivate } });
    const info = body.room;
    this.directory = [...this.directory.filter((room) => room.id !== info.id), info];
    this.open(info.id);
  }

  /** Shows room `id`, joining it first if this tab has not. */
  open(id) {
    if (!this.rooms.has(id)) {
      const info = this.directory.find((room) => room.id === id);
      const room = new Room(id, info && info.name);
      this.rooms.set(id, room);
      this.persist();
      this.join(room);
    }
    if (location.hash !== `#/chat/${encodeURIComponent(id)}`) {
      this.app.navigate(`#/chat/${encodeURIComponent(id)}`);
    }
  }

  leave(id) {
    const room = this.rooms.get(id);
    if (!room) return;
    if (room.joinState !== 'idle') this.app.connection.send({ type: 'leave', room: id });
    this.rooms.delete(id);
    this.persist();
    this.app.navigate('#/chat');
    this.updateTitle();
  }

  join(room) {
    const frame = { type: 'join', room: room.id };
    if (room.synced) frame.since = room.lastSeq;
    if (!this.app.connection.send(frame)) return;
    room.joinState = 'joining';
    // The session queues posts behind the join, so they can follow at once.
    for (const post of room.pending.values()) {
      if (post.state === 'queued') this.sendPost(room, post);
    }
    this.renderRoomStatus();
  }

  sendPost(room, post) {
    if (room.joinState === 'idle') return;
    if (this.app.connection.send({ type: 'post', room: room.id, id: post.id, text: post.text })) {
      post.state = 'sent';
    }
  }

  onOpen() {
    for (const room of this.rooms.values()) this.join(room);
    this.loadDirectory();
    this.scheduleRender();
  }

  onClose() {
    for (const room of this.rooms.values()) {
      room.joinState = 'idle';
      for (const post of room.pending.values()) if (post.state === 'sent') post.state = 'queued';
      // The next socket's session sends the whole presence again.
      room.present.clear();
      room.presentCount = 0;
    }
    this.renderPresence();
    this.scheduleRender();
  }

  post(room, text) {
    const post = { id: randomId(), text, ts: Date.now(), state: 'queued', error: null };
    room.pending.set(post.id, post);
    this.sendPost(room, post);
    this.scheduleRender({ stickToBottom: true });
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'joined': return this.onJoined(frame);
      case 'message': return this.onMessage(frame);
      case 'ack': return this.onAck(frame);
      case 'error': return this.onError(frame);
      case 'presence': return this.onPresence(frame);
      default: return undefined;
    }
  }

  onJoined({ room: id, head }) {
    const room = this.rooms.get(id);
    if (!room) return;
    room.joinState = 'joined';
    room.head = Math.max(room.head, Number(head) || 0);
    if (!room.synced) {
      // A first join starts live at the head; what came before is history.
      room.synced = true;
      room.lastSeq = Math.max(room.lastSeq, room.head);
    }
    if (!room.historyLoaded) this.loadLatest(room);
    this.renderRoomStatus();
  }

  onPresence({ room: id, joins, leaves, count }) {
    const room = this.rooms.get(id);
    if (!room) return;
    for (const user of Array.isArray(leaves) ? leaves : []) room.present.delete(String(user.user));
    for (const user of Array.isArray(joins) ? joins : []) {
      room.present.set(String(user.user), String(user.name || user.user));
    }
    room.presentCount = Math.max(Number(count) || 0, room.present.size);
    if (id === this.activeId) this.renderPresence();
  }

  onMessage(frame) {
    const room = this.rooms.get(frame.room);
    const seq = Number(frame.seq);
    if (!room || !Number.isSafeInteger(seq) || seq < 1) return;
    if (frame.user === this.app.me.id) room.pending.delete(frame.id);
    const gapAfter = room.synced && seq > room.lastSeq + 1 ? room.lastSeq : null;
    room.lastSeq = Math.max(room.lastSeq, seq);
    room.head = Math.max(room.head, seq);
    if (!room.messages.has(seq)) {
      room.messages.set(seq, message(frame));
      const seen = this.activeId === room.id && !document.hidden && this.view;
      if (frame.user !== this.app.me.id && !seen) room.unread += 1;
    }
    if (gapAfter !== null) this.fillRange(room, gapAfter, seq);
    this.scheduleRender();
  }

  onAck({ room: id, id: postId, seq }) {
    const room = this.rooms.get(id);
    if (!room) return;
    const post = room.pending.get(postId);
    room.pending.delete(postId);
    if (post && !room.messages.has(seq)) {
      const me = this.app.me;
      room.messages.set(seq, message({ seq, id: postId, user: me.id, name: me.name, text: post.text, ts: post.ts }));
    }
    this.scheduleRender();
  }

  onError({ code, message: text, ref }) {
    for (const room of this.rooms.values()) {
      const post = ref ? room.pending.get(ref) : null;
      if (!post) continue;
      if (['post_failed', 'rate_limited', 'unavailable', 'internal', 'not_joined'].includes(code)) {
        post.state = 'queued';
        setTimeout(() => {
          if (code === 'not_joined') this.join(room);
          else if (room.pending.get(post.id) === post && post.state === 'queued') this.sendPost(room, post);
        }, RETRY_MS);
      } else {
        post.state = 'failed';
        post.error = text;
      }
      this.scheduleRender();
      return;
    }
    const room = ref ? this.rooms.get(ref) : null;
    if (room) {
      if (code === 'history_gap') {
        this.fillRange(room, room.lastSeq, null);
      } else if (code === 'no_such_room') {
        toast(`The room “${room.name}” does not exist any more.`, 'error');
        this.leave(room.id);
      } else if (code === 'not_a_member' || code === 'removed_from_room') {
        // The room refused us for good: no retry, and no leave frame (the session has let go).
        toast(code === 'removed_from_room' ? `You were removed from “${room.name}”.` : text, 'error');
        room.joinState = 'idle';
        this.leave(room.id);
      } else {
        // The join did not happen (its room was moving, say): try again shortly. The session
        // let the room go, its presence too; the next `joined` brings the whole presence.
        room.joinState = 'idle';
        room.present.clear();
        room.presentCount = 0;
        if (room.id === this.activeId) this.renderPresence();
        for (const post of room.pending.values()) if (post.state === 'sent') post.state = 'queued';
        if (code !== 'too_many_rooms') setTimeout(() => room.joinState === 'idle' && this.join(room), RETRY_MS);
        else toast(text, 'error');
        this.renderRoomStatus();
      }
      return;
    }
    if (code !== 'rate_limited') toast(text, 'error');
  }

  // ---- history over HTTP ----

  history(room, after, before, limit) {
    const query = new URLSearchParams({ after: String(after), limit: String(limit) });
    if (before !== null && before !== undefined) query.set('before', String(before));
    return this.app.cluster.request(`/api/rooms/${encodeURIComponent(room.id)}/messages?${query}`);
  }

  addHistory(room, messages) {
    let added = 0;
    for (const item of messages || []) {
      const seq = Number(item.seq);
      if (Number.isSafeInteger(seq) && seq > 0 && !room.messages.has(seq)) {
        room.messages.set(seq, message(item));
        added += 1;
      }
    }
    return added;
  }

  async loadLatest(room) {
    room.historyLoaded = true;
    const head = room.head;
    if (head === 0) {
      room.oldestComplete = true;
      return;
    }
    const after = Math.max(0, head - HISTORY_PAGE);
    try {
      const body = await this.history(room, after, head + 1, HISTORY_PAGE);
      this.addHistory(room, body.messages);
      room.oldestComplete = after === 0;
      this.scheduleRender({ stickToBottom: true });
    } catch (error) {
      room.historyLoaded = false; // The next join tries again.
      if (error.code === 'not_found' || error.status === 404 || error.code === 'not_a_member') this.leave(room.id);
    }
  }

  async loadOlder(room) {
    if (room.loadingOlder || room.oldestComplete) return;
    const oldest = room.oldestSeq();
    if (oldest <= 1) {
      room.oldestComplete = true;
      this.scheduleRender();
      return;
    }
    room.loadingOlder = true;
    this.scheduleRender();
    const after = Math.max(0, oldest - 1 - HISTORY_PAGE);
    try {
      const body = await this.history(room, after, oldest, HISTORY_PAGE);
      this.addHistory(room, body.messages);
      room.oldestComplete = after === 0;
    } catch (error) {
      toast(`Could not load older messages: ${error.message}`, 'error');
    } finally {
      room.loadingOlder = false;
      this.scheduleRender({ keepOffset: true });
    }
  }

  /** Fetches messages `after < seq < before` (before null: up to what we have). */
  async fillRange(room, after, before) {
    let from = after;
    for (let page = 0; page < GAP_PAGES_MAX; page += 1) {
      let body;
      try {
        body = await this.history(room, from, before, GAP_PAGE);
      } catch {
        return;
      }
      const messages = body.messages || [];
      this.addHistory(room, messages);
      this.scheduleRender();
      if (messages.length < GAP_PAGE) return;
      from = Number(messages[messages.length - 1].seq);
      if (before === null && room.messages.has(from + 1)) return;
    }
  }

  // ---- the screen ----

  /** Renders the chat screen into `root`, showing room `id` (or none). */
  render(root, id) {
    this.activeId = id && this.rooms.has(id) ? id : null;
    if (id && !this.rooms.has(id)) {
      this.open(id);
      this.activeId = id;
    }
    const newRoomName = h('input', { id: 'new-room-name', name: 'name', placeholder: 'New room name', maxlength: 64, required: true, autocomplete: 'off' });
    const newRoomPrivate = h('input', { type: 'checkbox', id: 'new-room-private', name: 'private' });
    const createForm = h('form', { class: 'new-room', id: 'new-room-form' },
      h('label', { for: 'new-room-name', class: 'visually-hidden' }, 'New room name'),
      newRoomName,
      h('button', { type: 'submit', class: 'button primary small' }, 'Create'),
      h('label', { class: 'private-choice', for: 'new-room-private' }, newRoomPrivate, ' Private (members you invite)'));
    createForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      const name = newRoomName.value.trim();
      if (!name) return;
      try {
        await this.createRoom(name, newRoomPrivate.checked);
        newRoomName.value = '';
        newRoomPrivate.checked = false;
      } catch (error) {
        toast(`Could not create the room: ${error.message}`, 'error');
      }
    });
    const myRooms = h('ul', { class: 'room-list', id: 'my-rooms' });
    const otherRooms = h('ul', { class: 'room-list other', id: 'other-rooms' });
    const sidebar = h('aside', { class: 'rooms-panel', 'aria-label': 'Rooms' },
      h('h2', { class: 'panel-title' }, 'Rooms'),
      createForm,
      h('nav', { 'aria-label': 'Your rooms' }, h('h3', { class: 'section-label' }, 'Joined'), myRooms),
      h('div', { class: 'browse' }, h('h3', { class: 'section-label' }, 'Browse'), otherRooms));
    const pane = h('section', { class: 'room-pane', 'aria-label': 'Conversation' });
    const layout = h('div', { class: 'chat', dataset: { view: this.activeId ? 'room' : 'list' } }, sidebar, pane);
    replace(root, layout);
    this.view = { root: layout, myRooms, otherRooms, pane };
    this.loadDirectory();
    this.renderSidebar();
    this.renderPane();
    const room = this.rooms.get(this.activeId);
    if (room) {
      room.unread = 0;
      this.updateTitle();
    }
  }

  /** The screen is gone (another route): stop rendering into it. */
  hide() {
    if (this.view && this.activeId) {
      const room = this.rooms.get(this.activeId);
      if (room && this.view.composer) room.draft = this.view.composer.value;
    }
    this.view = null;
    this.activeId = null;
  }

  renderSidebar() {
    if (!this.view) return;
    // Keyed, so a link keeps its element (and keyboard focus) while counts and rooms change.
    const mine = [...this.rooms.values()].sort((a, b) => a.name.localeCompare(b.name));
    reconcile(this.view.myRooms, mine.length ? mine.map((room) => {
      const active = room.id === this.activeId;
      const isPrivate = this.isPrivate(room.id);
      return {
        key: `mine:${room.id}:${room.name}:${room.unread}:${active}:${isPrivate}`,
        build: () => h('li', {},
          h('a', {
            class: `room-link${active ? ' active' : ''}`, href: `#/chat/${encodeURIComponent(room.id)}`,
            'aria-current': active ? 'page' : null, dataset: { room: room.id },
          },
          h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'),
          h('span', { class: 'room-name' }, room.name),
          isPrivate ? privateMark() : null,
          room.unread ? h('span', { class: 'badge', 'aria-label': `${room.unread} unread` }, String(room.unread)) : null)),
      };
    }) : [{ key: 'none', build: () => h('li', { class: 'empty-note' }, 'No rooms yet: create one or pick one below.') }]);
    const others = this.directory.filter((info) => !this.rooms.has(info.id))
      .sort((a, b) => a.name.localeCompare(b.name));
    reconcile(this.view.otherRooms, others.length ? others.map((info) => ({
      key: `other:${info.id}:${info.name}:${Boolean(info.private)}`,
      build: () => h('li', {},
        h('a', { class: 'room-link', href: `#/chat/${encodeURIComponent(info.id)}`, dataset: { room: info.id } },
          h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'),
          h('span', { class: 'room-name' }, info.name),
          info.private ? privateMark() : null,
          h('span', { class: 'join-hint' }, 'Join'))),
    })) : [{ key: 'none', build: () => h('li', { class: 'empty-note' }, 'Nothing else to join.') }]);
  }

  renderPane() {
    const { pane } = this.view;
    const room = this.rooms.get(this.activeId);
    if (!room) {
      replace(pane, h('div', { class: 'empty-state' },
        h('div', { class: 'empty-illustration', 'aria-hidden': 'true' }, '#'),
        h('h2', {}, 'Pick a room'),
        h('p', { class: 'muted' }, 'Join a room on the left, or create one. Everyone in it sees your messages live, whichever node they are connected to.')));
      this.view.list = null;
      this.view.composer = null;
      return;
    }
    const back = h('a', { class: 'back-link', href: '#/chat' }, h('span', { 'aria-hidden': 'true' }, '‹ '), 'Rooms');
    const title = h('h2', { class: 'room-title', id: 'room-title' }, h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'), room.name);
    const status = h('p', { class: 'room-status', id: 'room-status' });
    const online = h('div', { class: 'room-online', id: 'room-online', 'aria-live': 'polite' });
    const leave = h('button', { type: 'button', class: 'button subtle small', id: 'leave-room' }, 'Leave');
    leave.addEventListener('click', () => this.leave(room.id));
    const older = h('button', { type: 'button', class: 'load-older', id: 'load-older' }, 'Load older messages');
    older.addEventListener('click', () => this.loadOlder(room));
    const list = h('ol', { class: 'messages', id: 'messages', 'aria-live': 'polite', 'aria-relevant': 'additions' });
    const scroller = h('div', { class: 'messages-scroll', tabindex: '0', 'aria-labelledby': 'room-title' }, older, list);
    scroller.addEventListener('scroll', () => {
      if (scroller.scrollTop < NEAR_TOP_PX) this.loadOlder(room);
    }, { passive: true });
    const composer = h('textarea', {
      id: 'composer', rows: '1', placeholder: `Message #${room.name}`, autocomplete: 'off',
      'aria-describedby': 'composer-hint',
    });
    composer.value = room.draft;
    requestAnimationFrame(() => grow(composer));
    const send = h('button', { type: 'submit', class: 'button primary', id: 'send' }, 'Send');
    const form = h('form', { class: 'composer', id: 'composer-form' },
      h('label', { for: 'composer', class: 'visually-hidden' }, `Message #${room.name}`),
      composer, send,
      h('p', { class: 'visually-hidden', id: 'composer-hint' }, 'Enter sends, Shift+Enter starts a new line.'));
    const submit = () => {
      const text = composer.value.trim();
      if (!text) return;
      if (new TextEncoder().encode(text).length > TEXT_BYTES_MAX) {
        toast(`A message has at most ${TEXT_BYTES_MAX} bytes; this one is longer.`, 'error');
        return;
      }
      composer.value = '';
      room.draft = '';
      grow(composer);
      this.post(room, text);
    };
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      submit();
    });
    composer.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      }
    });
    composer.addEventListener('input', () => grow(composer));
    const invite = h('div', { class: 'invite-slot' });
    replace(pane,
      h('header', { class: 'room-head' }, back, h('div', { class: 'room-heading' }, title, status, online), invite, leave),
      scroller, form);
    Object.assign(this.view, { list, scroller, composer, older, status, title, invite, online });
    this.renderInvite();
    this.renderPresence();
    this.renderRoomStatus();
    this.renderMessages({ stickToBottom: true });
    if (!matchMedia('(hover: none)').matches) composer.focus();
  }

  renderRoomHead() {
    if (!this.view || !this.view.title) return;
    const room = this.rooms.get(this.activeId);
    if (room) replace(this.view.title, h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'), room.name);
    this.renderInvite();
  }

  /** Whether the room list marks room `id` private. */
  isPrivate(id) {
    const info = this.directory.find((room) => room.id === id);
    return Boolean(info && info.private);
  }

  /** The owner of the open private room gets a field to invite by email. */
  renderInvite() {
    if (!this.view || !this.view.invite) return;
    const info = this.directory.find((room) => room.id === this.activeId);
    if (!info || !info.private || info.created_by !== this.app.me.id) {
      delete this.view.invite.dataset.room;
      replace(this.view.invite);
      return;
    }
    if (this.view.invite.dataset.room === info.id) return;
    this.view.invite.dataset.room = info.id;
    const email = h('input', { type: 'email', id: 'invite-email', placeholder: 'Invite by email', required: true, autocomplete: 'off' });
    const form = h('form', { class: 'invite', id: 'invite-form' },
      h('label', { for: 'invite-email', class: 'visually-hidden' }, 'Invite a member by email'),
      email, h('button', { type: 'submit', class: 'button subtle small' }, 'Invite'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const address = email.value.trim();
      if (!address) return;
      try {
        await this.app.cluster.request(`/api/rooms/${encodeURIComponent(info.id)}/members`, { method: 'POST', json: { email: address } });
        email.value = '';
        toast(`Invited ${address}.`);
      } catch (error) {
        toast(`Could not invite ${address}: ${error.message}`, 'error');
      }
    });
    replace(this.view.invite, form);
  }

  /** Who is online in the open room: names (yours first), and how many more beyond the list. */
  renderPresence() {
    if (!this.view || !this.view.online) return;
    const room = this.rooms.get(this.activeId);
    if (!room || room.presentCount === 0) {
      replace(this.view.online);
      return;
    }
    const me = this.app.me.id;
    const people = [...room.present.entries()]
      .sort(([a, nameA], [b, nameB]) => {
        if ((a === me) !== (b === me)) return a === me ? -1 : 1;
        return nameA.localeCompare(nameB);
      });
    const more = room.presentCount - people.length;
    replace(this.view.online,
      h('span', { class: 'online-count' }, `${room.presentCount} online`),
      h('ul', { class: 'online-list', 'aria-label': 'Online in this room' },
        ...people.map(([id, name]) => h('li', { class: `online-user${id === me ? ' me' : ''}`, dataset: { user: id } },
          id === me ? `${name} (you)` : name)),
        more > 0 ? h('li', { class: 'online-more' }, `and ${more} more`) : null));
  }

  renderRoomStatus() {
    if (!this.view || !this.view.status) return;
    const room = this.rooms.get(this.activeId);
    if (!room) return;
    const connection = this.app.connection;
    let state;
    let text;
    if (!connection.isOpen) {
      state = 'offline';
      text = 'Reconnecting… messages you send now go out when the connection is back';
    } else if (room.joinState === 'joined') {
      state = 'live';
      text = 'Live';
    } else {
      state = 'joining';
      text = 'Joining…';
    }
    this.view.status.dataset.state = state;
    this.view.status.textContent = text;
  }

  scheduleRender(options = {}) {
    this.pendingRender = { ...this.pendingRender, ...options };
    if (this.renderQueued) return;
    this.renderQueued = true;
    // Hidden tabs get no animation frames, but their title and counts must still move.
    const later = document.hidden ? (callback) => setTimeout(callback, 0) : requestAnimationFrame;
    later(() => {
      this.renderQueued = false;
      const renderOptions = this.pendingRender;
      this.pendingRender = {};
      this.markRead();
      this.renderSidebar();
      this.renderRoomStatus();
      this.renderMessages(renderOptions);
      this.updateTitle();
    });
  }

  markRead() {
    if (!this.view || document.hidden) return;
    const room = this.rooms.get(this.activeId);
    if (room && room.unread) {
      room.unread = 0;
      this.renderSidebar();
      this.updateTitle();
    }
  }

  updateTitle() {
    const total = this.unreadTotal;
    document.title = total ? `(${total}) ActorHub` : 'ActorHub';
    this.app.setUnread(total);
  }

  renderMessages({ stickToBottom = false, keepOffset = false } = {}) {
    if (!this.view || !this.view.list) return;
    const room = this.rooms.get(this.activeId);
    if (!room) return;
    const { list, scroller, older } = this.view;
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
    const heightBefore = scroller.scrollHeight;
    const topBefore = scroller.scrollTop;
    // Items are keyed by what they show, and only changed ones are touched: screen readers
    // announce new messages, not the whole list again, and scrolling stays put.
    const items = [];
    let previous = null;
    const seqs = [...room.messages.keys()].sort((a, b) => a - b);
    for (const seq of seqs) {
      const item = room.messages.get(seq);
      if (!previous || formatDay(previous.ts) !== formatDay(item.ts)) {
        const label = formatDay(item.ts);
        items.push({ key: `day:${label}:${seq}`, build: () => h('li', { class: 'day', role: 'separator' }, h('span', {}, label)) });
        previous = null;
      }
      const continued = Boolean(previous && previous.user === item.user && item.ts - previous.ts < GROUP_WINDOW_MS);
      items.push({ key: `seq:${seq}:${continued}`, build: () => this.messageItem(item, continued) });
      previous = item;
    }
    for (const post of room.pending.values()) {
      const continued = Boolean(previous && previous.user === this.app.me.id && post.ts - previous.ts < GROUP_WINDOW_MS);
      items.push({
        key: `post:${post.id}:${post.state}:${continued}:${post.error || ''}`,
        build: () => this.pendingItem(room, post, continued),
      });
      previous = { user: this.app.me.id, ts: post.ts };
    }
    if (!items.length && room.historyLoaded) {
      items.push({ key: 'empty', build: () => h('li', { class: 'room-empty' }, `This is the start of #${room.name}. Say hello!`) });
    }
    reconcile(list, items);
    older.hidden = room.oldestComplete || room.messages.size === 0;
    older.textContent = room.loadingOlder ? 'Loading…' : 'Load older messages';
    if (keepOffset) scroller.scrollTop = topBefore + (scroller.scrollHeight - heightBefore);
    else if (stickToBottom || atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  messageItem(item, continued) {
    const own = item.user === this.app.me.id;
    const who = own ? { ...this.app.me } : { id: item.user, name: item.name };
    return h('li', {
      class: `message${continued ? ' continued' : ''}${own ? ' own' : ''}`,
      dataset: { seq: String(item.seq), id: item.id },
    },
    continued ? h('span', { class: 'gutter-time', 'aria-hidden': 'true' }, formatTime(item.ts)) : avatar(who, 'md', this.app.cluster.current),
    h('div', { class: 'body' },
      continued ? null : h('div', { class: 'meta' },
        h('span', { class: 'author' }, item.name || 'Someone'),
        h('time', { datetime: new Date(item.ts).toISOString() }, formatTime(item.ts))),
      h('p', { class: 'text' }, item.text)));
  }

  pendingItem(room, post, continued) {
    const me = this.app.me;
    let note;
    if (post.state === 'failed') {
      const retry = h('button', { type: 'button', class: 'link-button' }, 'Retry');
      retry.addEventListener('click', () => {
        post.state = 'queued';
        post.error = null;
        this.sendPost(room, post);
        this.scheduleRender();
      });
      const discard = h('button', { type: 'button', class: 'link-button' }, 'Discard');
      discard.addEventListener('click', () => {
        room.pending.delete(post.id);
        this.scheduleRender();
      });
      note = h('span', { class: 'pending-note failed' }, `Not sent: ${post.error || 'refused'} · `, retry, ' · ', discard);
    } else {
      note = h('span', { class: 'pending-note' }, post.state === 'sent' ? 'Sending…' : 'Waiting for the connection…');
    }
    return h('li', {
      class: `message own pending${continued ? ' continued' : ''}${post.state === 'failed' ? ' failed' : ''}`,
      dataset: { pending: post.id },
    },
    continued ? h('span', { class: 'gutter-time', 'aria-hidden': 'true' }) : avatar(me, 'md', this.app.cluster.current),
    h('div', { class: 'body' },
      continued ? null : h('div', { class: 'meta' }, h('span', { class: 'author' }, me.name)),
      h('p', { class: 'text' }, post.text),
      note));
  }
}

function privateMark() {
  return h('span', { class: 'private-mark', title: 'Private room: members only' }, 'private');
}

function message(frame) {
  return {
    seq: Number(frame.seq),
    id: String(frame.id ?? ''),
    user: String(frame.user ?? ''),
    name: String(frame.name ?? ''),
    text: String(frame.text ?? ''),
    ts: Number(frame.ts) || Date.now(),
  };
}

/** Grows the composer with its text, up to a limit; it scrolls beyond. */
function grow(textarea) {
  textarea.style.height = 'auto';
  const height = Math.min(textarea.scrollHeight + 2, COMPOSER_HEIGHT_MAX_PX);
  textarea.style.height = `${height}px`;
  textarea.style.overflowY = height >= COMPOSER_HEIGHT_MAX_PX ? 'auto' : 'hidden';
}
