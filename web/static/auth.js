// Signing up, checking the mail, logging in. Activation itself happens on the link in the mail
// (`/api/users/verify`), which leads back here.

import { h, field, replace } from './dom.js';

/** Shortest password the server accepts (`PASSWORD_CHARS_MIN`). */
const PASSWORD_CHARS_MIN = 10;

function card(title, subtitle, ...body) {
  return h('main', { class: 'auth', id: 'main' },
    h('section', { class: 'auth-card', 'aria-labelledby': 'auth-title' },
      h('div', { class: 'auth-brand' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }), 'ActorHub'),
      h('h1', { id: 'auth-title' }, title),
      subtitle ? h('p', { class: 'muted' }, subtitle) : null,
      ...body));
}

function errorBox() {
  return h('div', { class: 'form-error', role: 'alert', hidden: true });
}

function showError(box, message, ...extra) {
  replace(box, message, ...extra);
  box.hidden = false;
}

function busy(button, on, label) {
  button.disabled = on;
  if (label) button.textContent = label;
}

export function renderLogin(root, app, notice) {
  const email = h('input', { id: 'login-email', type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = h('input', { id: 'login-password', type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', class: 'button primary wide', id: 'login-submit' }, 'Log in');
  const error = errorBox();
  const form = h('form', { class: 'form', id: 'login-form', novalidate: false },
    field('Email', email), field('Password', password), error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    busy(submit, true, 'Logging in…');
    try {
      const body = await app.cluster.request('/api/users/login', {
        method: 'POST', json: { email: email.value.trim(), password: password.value },
      });
      app.signedIn(body);
    } catch (failure) {
      if (failure.code === 'email_not_verified') {
        const resend = h('button', { type: 'button', class: 'link-button' }, 'Send the activation mail again');
        resend.addEventListener('click', () => resendMail(app, email.value.trim(), error));
        showError(error, 'This email address is not activated yet. Follow the link in the mail we sent. ', resend);
      } else if (failure.code === 'invalid_credentials') {
        showError(error, 'Wrong email or password.');
      } else {
        showError(error, failure.message);
      }
      busy(submit, false, 'Log in');
    }
  });
  const signup = h('a', { href: '#/signup' }, 'Create an account');
  replace(root, card('Log in', 'Chat live and convert files on a cluster of actors.',
    notice ? h('div', { class: 'notice', role: 'status' }, notice) : null,
    form,
    h('p', { class: 'auth-switch' }, 'New here? ', signup)));
  email.focus();
}

export function renderSignup(root, app) {
  const name = h('input', { id: 'signup-name', name: 'name', autocomplete: 'name', required: true, maxlength: 64 });
  const email = h('input', { id: 'signup-email', type: 'email', name: 'email', autocomplete: 'email', required: true });
  const password = h('input', {
    id: 'signup-password', type: 'password', name: 'password', autocomplete: 'new-password',
    required: true, minlength: PASSWORD_CHARS_MIN,
  });
  const submit = h('button', { type: 'submit', class: 'button primary wide', id: 'signup-submit' }, 'Create account');
  const error = errorBox();
  const form = h('form', { class: 'form', id: 'signup-form' },
    field('Display name', name, 'Shown next to your messages.'),
    field('Email', email),
    field('Password', password, `At least ${PASSWORD_CHARS_MIN} characters; a phrase of a few words works well.`),
    error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    busy(submit, true, 'Creating your account…');
    const base = app.cluster.current;
    try {
      await app.cluster.request('/api/users/signup', {
        method: 'POST', json: { name: name.value.trim(), email: email.value.trim(), password: password.value },
      });
      app.checkMail(email.value.trim(), base);
    } catch (failure) {
      showError(error, failure.code === 'email_taken'
        ? 'An account with this email already exists. Log in instead.'
        : failure.message);
      busy(submit, false, 'Create account');
    }
  });
  replace(root, card('Create your account', 'One account for chat rooms and file conversions.',
    form,
    h('p', { class: 'auth-switch' }, 'Already have an account? ', h('a', { href: '#/login' }, 'Log in'))));
  name.focus();
}

/** After sign-up: where the activation mail went. `base` is the node that sent it. */
export async function renderCheckMail(root, app, email, base) {
  const where = h('div', { class: 'outbox', hidden: true });
  const status = errorBox();
  const resend = h('button', { type: 'button', class: 'button', id: 'resend' }, 'Send it again');
  resend.addEventListener('click', () => resendMail(app, email, status));
  replace(root, card('Check your mail', null,
    h('p', { id: 'check-mail-text' }, 'We sent an activation link to ', h('strong', {}, email),
      '. Open it to activate your account, then log in.'),
    where,
    status,
    h('div', { class: 'row' }, resend, h('a', { href: '#/login', class: 'button primary' }, 'Go to log in'))));
  try {
    const config = await app.cluster.requestOnce(base || app.cluster.current, '/page/config', { auth: false, timeoutMs: 3000 });
    if (config && config.mailer === 'outbox') {
      replace(where,
        h('p', {}, 'This cluster does not send real mail: node ', h('strong', {}, config.node),
          ' wrote the message as an .eml file to its outbox, and logged the link:'),
        h('code', { class: 'path', id: 'outbox-path' }, `${config.outbox_dir}/`));
      where.hidden = false;
    }
  } catch {
    // Without the hint the page still works; the mail is where the node put it.
  }
}

async function resendMail(app, email, box) {
  try {
    await app.cluster.request('/api/users/resend-verification', { method: 'POST', json: { email } });
    showError(box, 'A new activation link is on its way.');
    box.classList.add('ok');
  } catch (failure) {
    box.classList.remove('ok');
    showError(box, failure.message);
  }
}
