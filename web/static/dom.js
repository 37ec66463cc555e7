// Building the DOM without HTML strings: every string child becomes a text node, so user text
// (names, messages, file names, error messages) is always shown as text, never parsed.

/**
 * Creates an element. `props`: `class`, `text`, `dataset`, `on<event>` handlers, and any
 * attribute (`true` sets it empty, `false`/`null`/`undefined` leave it out).
 */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') element.className = value;
    else if (key === 'text') element.textContent = value;
    else if (key === 'dataset') Object.assign(element.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      element.addEventListener(key.slice(2), value);
    } else element.setAttribute(key, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

/** Appends children: strings and numbers as text, arrays flattened, null skipped. */
export function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
  return parent;
}

/** Replaces an element's children. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** Makes `list`'s children the `items` (`{key, build}`), reusing children whose key matches. */
export function reconcile(list, items) {
  const existing = new Map();
  for (const child of list.children) existing.set(child.dataset.key, child);
  const wanted = new Set(items.map((item) => item.key));
  for (const [key, child] of existing) {
    if (!wanted.has(key)) {
      child.remove();
      existing.delete(key);
    }
  }
  let cursor = list.firstElementChild;
  for (const item of items) {
    let element = existing.get(item.key);
    if (!element) {
      element = item.build();
      element.dataset.key = item.key;
      list.insertBefore(element, cursor);
    } else if (element === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      list.insertBefore(element, cursor);
    }
  }
}

/** A label + input pair with an id, for forms that screen readers can follow. */
export function field(label, input, hint) {
  const hintId = hint ? `${input.id}-hint` : null;
  if (hintId) input.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' },
    h('label', { for: input.id }, label),
    input,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null);
}

/** Up to two initials of a display name. */
export function initials(name) {
  const words = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : [words[0] || '?'];
  return letters.map((word) => Array.from(word)[0] || '').join('').toUpperCase();
}

/** A stable hue for a user id, so each person keeps their colour. */
export function hue(id) {
  let hash = 0;
  for (const char of String(id)) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % 360;
}

/** An avatar: the photo when there is one, otherwise coloured initials. */
export function avatar(user, size = 'md', photoBase = '') {
  const element = h('span', { class: `avatar avatar-${size}`, 'aria-hidden': 'true' });
  if (user.photo_url) {
    element.appendChild(h('img', { src: photoBase + user.photo_url, alt: '' }));
  } else {
    element.textContent = initials(user.name);
    element.style.setProperty('--hue', String(hue(user.id || user.name)));
  }
  return element;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });

export function formatTime(ms) {
  return timeFormat.format(new Date(ms));
}

export function formatDay(ms) {
  const date = new Date(ms);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return 'Today';
  const yesterday = new Date(today);
  yesterday.setDate(today.getDate() - 1);
  if (date.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return dayFormat.format(date);
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A random id for a post (hex; crypto.randomUUID needs a secure context, this does not). */
export function randomId(bytes = 12) {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (value) => value.toString(16).padStart(2, '0')).join('');
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Shows a short message in the corner; errors stay longer. */
export function toast(message, kind = 'info') {
  const region = document.getElementById('toasts');
  if (!region) return;
  const item = h('div', { class: `toast toast-${kind}` }, message);
  region.appendChild(item);
  while (region.children.length > 4) region.firstChild.remove();
  setTimeout(() => item.remove(), kind === 'error' ? 8000 : 4000);
}
