// ActorHub's page: boots the session, draws the shell (top bar, screen, cluster panel) and
// routes between screens by the URL's fragment: #/login, #/signup, #/check-mail,
// #/chat[/room], #/convert, #/profile.

import { h, replace, avatar } from './dom.js';
import { loadSession, saveSession, clearSession, isExpired } from './session.js';
import { Cluster } from './cluster.js';
import { Connection } from './connection.js';
import { renderLogin, renderSignup, renderCheckMail } from './auth.js';
import { Chat } from './chat.js';
import { Convert } from './convert.js';
import { renderProfile } from './profile.js';
import { StatusBar } from './statusbar.js';

const cluster = new Cluster();
let session = loadSession();
cluster.token = session ? session.token : null;
const connection = new Connection(cluster, () => (session && !isExpired(session) ? session : null));

const root = document.getElementById('app');
const statusBar = new StatusBar(cluster, connection);
const shell = {};
let screen = null;
let checkMail = null;
let notice = null;

const app = {
  cluster,
  connection,
  me: null,
  chat: null,
  convert: null,

  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },

  /** After a successful login (`{token, expires_at_s, user}`). */
  signedIn(body) {
    session = saveSession(body.token, body.expires_at_s, body.user.id);
    cluster.token = body.token;
    app.me = body.user;
    startSession();
    app.navigate('#/chat');
  },

  checkMail(email, base) {
    checkMail = { email, base };
    app.navigate('#/check-mail');
  },

  signOut(message) {
    clearTimeout(expiryTimer);
    connection.stop();
    if (app.chat) app.chat.dispose();
    if (app.convert) app.convert.dispose();
    app.chat = null;
    app.convert = null;
    app.me = null;
    clearSession();
    session = null;
    cluster.token = null;
    screen = null;
    document.title = 'ActorHub';
    notice = message || null;
    app.navigate('#/login');
  },

  setMe(user) {
    app.me = user;
    renderUserChip();
  },

  setUnread(total) {
    if (!shell.chatBadge) return;
    shell.chatBadge.textContent = total ? String(total) : '';
    shell.chatBadge.hidden = !total;
  },
};

let expiryTimer = null;

function startSession() {
  app.chat = new Chat(app);
  app.convert = new Convert(app);
  connection.start();
  // The token ends at its expiry: say so then, rather than on the next failed request.
  clearTimeout(expiryTimer);
  const left = session.expires_at_s * 1000 - Date.now();
  expiryTimer = setTimeout(() => {
    if (app.me) app.signOut('Your session has ended. Log in again.');
  }, Math.max(0, Math.min(left, 2 ** 31 - 1)));
}

connection.addEventListener('expired', () => app.signOut('Your session has ended. Log in again.'));
cluster.addEventListener('unauthorized', () => {
  if (app.me) app.signOut('Your session has ended. Log in again.');
});
connection.addEventListener('state', renderConnection);

// ---- the shell ----

function buildShell() {
  const tab = (hash, label, extra) => h('a', { class: 'tab', href: hash, dataset: { tab: hash.slice(2) } }, label, extra);
  shell.chatBadge = h('span', { class: 'badge', hidden: true });
  shell.tabs = h('nav', { class: 'tabs', 'aria-label': 'Main' },
    tab('#/chat', 'Chat', shell.chatBadge), tab('#/convert', 'Convert'), tab('#/profile', 'Profile'));
  shell.pill = h('span', { class: 'conn-pill', id: 'connection', role: 'status' });
  shell.user = h('a', { class: 'user-chip', href: '#/profile', 'aria-label': 'Your profile' });
  const logout = h('button', { type: 'button', class: 'button subtle small', id: 'logout' }, 'Log out');
  logout.addEventListener('click', () => app.signOut('You are logged out.'));
  shell.banner = h('div', { class: 'banner', id: 'reconnect-banner', role: 'alert', hidden: true });
  shell.content = h('main', { class: 'content', id: 'main', tabindex: '-1' });
  const skip = h('button', { type: 'button', class: 'skip-link' }, 'Skip to content');
  skip.addEventListener('click', () => shell.content.focus());
  shell.element = h('div', { class: 'shell' },
    skip,
    h('header', { class: 'topbar' },
      h('a', { class: 'brand', href: '#/chat' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }), h('span', { class: 'brand-name' }, 'ActorHub')),
      shell.tabs,
      h('div', { class: 'topbar-right' }, shell.pill, shell.user, logout)),
    shell.banner,
    shell.content,
    statusBar.element);
  renderUserChip();
  renderConnection();
}

function renderUserChip() {
  if (!shell.user || !app.me) return;
  replace(shell.user, avatar(app.me, 'sm', cluster.current), h('span', { class: 'user-name' }, app.me.name));
}

function renderConnection() {
  if (!shell.pill) return;
  const state = connection.state;
  shell.pill.dataset.state = state;
  shell.pill.textContent = state === 'open' ? `Connected · ${connection.node}`
    : state === 'reconnecting' ? 'Reconnecting…' : state === 'connecting' ? 'Connecting…' : 'Offline';
  shell.banner.hidden = state !== 'reconnecting';
  shell.banner.textContent = state === 'reconnecting'
    ? 'The connection to the cluster was lost. Reconnecting to another node… your messages will be sent when it is back.'
    : '';
}

// ---- routing ----

function route() {
  const parts = (location.hash || '').replace(/^#\/?/, '').split('/');
  const path = parts[0] || '';
  if (!app.me) {
    shell.element = null;
    if (screen && screen.hide) screen.hide();
    screen = null;
    const content = h('div', { class: 'shell auth-shell' });
    const body = h('div', { class: 'auth-body' });
    replace(root, append(content, body, statusBar.element));
    if (path === 'signup') renderSignup(body, app);
    else if (path === 'check-mail' && checkMail) renderCheckMail(body, app, checkMail.email, checkMail.base);
    else {
      renderLogin(body, app, notice);
      notice = null;
    }
    return;
  }
  if (!shell.element || !root.contains(shell.element)) {
    buildShell();
    replace(root, shell.element);
  }
  if (screen && screen.hide) screen.hide();
  screen = null;
  let tab = 'chat';
  if (path === 'convert') {
    tab = 'convert';
    screen = app.convert;
    app.convert.render(shell.content);
  } else if (path === 'profile') {
    tab = 'profile';
    renderProfile(shell.content, app);
  } else {
    if (path !== 'chat') {
      history.replaceState(null, '', '#/chat');
    }
    screen = app.chat;
    const room = path === 'chat' && parts[1] ? decodeURIComponent(parts[1]) : null;
    app.chat.render(shell.content, room);
  }
  for (const link of shell.tabs.querySelectorAll('.tab')) {
    if (link.dataset.tab === tab) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.body.dataset.screen = tab;
}

function append(parent, ...children) {
  for (const child of children) parent.appendChild(child);
  return parent;
}

async function boot() {
  root.classList.remove('booting');
  const probe = cluster.probe(location.origin).catch(() => null);
  if (session) {
    try {
      app.me = await cluster.request('/api/users/me');
    } catch (error) {
      if (error.status === 401) {
        clearSession();
        session = null;
        cluster.token = null;
        notice = 'Your session has ended. Log in again.';
      } else {
        notice = `The cluster could not be reached (${error.message}).`;
      }
    }
  }
  await probe;
  if (app.me) startSession();
  window.addEventListener('hashchange', route);
  route();
  document.body.dataset.ready = 'true';
  performance.mark('actorhub-interactive');
}

boot();
