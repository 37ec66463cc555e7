// The profile: display name, bio and photo (`/api/users/me`, `/api/users/me/photo`).

import { h, replace, field, avatar, toast } from './dom.js';

/** Longest bio the server accepts (`BIO_CHARS_MAX`). */
const BIO_CHARS_MAX = 500;
const NAME_CHARS_MAX = 64;
const PHOTO_TYPES = 'image/jpeg,image/png,image/webp';

export function renderProfile(root, app) {
  const me = app.me;
  const photo = h('div', { class: 'profile-photo', id: 'profile-photo' }, avatar(me, 'xl', app.cluster.current));
  const photoInput = h('input', { type: 'file', id: 'photo-input', accept: PHOTO_TYPES, class: 'visually-hidden' });
  const photoButton = h('label', { for: 'photo-input', class: 'button small' }, me.photo_url ? 'Change photo' : 'Upload a photo');
  photoInput.addEventListener('change', async () => {
    const file = photoInput.files && photoInput.files[0];
    if (!file) return;
    photoButton.classList.add('busy');
    try {
      const user = await app.cluster.request('/api/users/me/photo', {
        method: 'PUT', body: file, headers: { 'Content-Type': file.type || 'application/octet-stream' }, timeoutMs: 60_000,
      });
      app.setMe(user);
      replace(photo, avatar(user, 'xl', app.cluster.current));
      photoButton.textContent = 'Change photo';
      toast('Your photo is updated.');
    } catch (error) {
      toast(`Could not use this photo: ${error.message}`, 'error');
    } finally {
      photoButton.classList.remove('busy');
      photoInput.value = '';
    }
  });

  const name = h('input', { id: 'profile-name', name: 'name', required: true, maxlength: NAME_CHARS_MAX, autocomplete: 'name' });
  name.value = me.name;
  const bio = h('textarea', { id: 'profile-bio', name: 'bio', rows: '4', maxlength: BIO_CHARS_MAX });
  bio.value = me.bio || '';
  const counter = h('span', {}, `${bio.value.length} / ${BIO_CHARS_MAX}`);
  bio.addEventListener('input', () => {
    counter.textContent = `${bio.value.length} / ${BIO_CHARS_MAX}`;
  });
  const save = h('button', { type: 'submit', class: 'button primary', id: 'profile-save' }, 'Save changes');
  const logout = h('button', { type: 'button', class: 'button subtle', id: 'profile-logout' }, 'Log out');
  logout.addEventListener('click', () => app.signOut('You are logged out.'));
  const form = h('form', { class: 'form', id: 'profile-form' },
    field('Display name', name, 'New messages show it; log in again for chat to use a new name.'),
    field('Bio', bio, counter),
    h('div', { class: 'profile-foot' }, save, logout));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    save.disabled = true;
    try {
      const user = await app.cluster.request('/api/users/me', {
        method: 'PATCH', json: { name: name.value.trim(), bio: bio.value },
      });
      app.setMe(user);
      toast('Profile saved.');
    } catch (error) {
      toast(error.message, 'error');
    } finally {
      save.disabled = false;
    }
  });

  const since = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'long', day: 'numeric' })
    .format(new Date(me.created_at_ms || Date.now()));
  replace(root, h('div', { class: 'page profile' },
    h('header', { class: 'page-head' }, h('h1', {}, 'Your profile'),
      h('p', { class: 'muted' }, 'How other people see you in chat.')),
    h('section', { class: 'card profile-card' },
      h('div', { class: 'profile-side' }, photo, photoInput, photoButton,
        h('p', { class: 'hint' }, 'JPEG, PNG or WebP, up to 5 MB.')),
      h('div', { class: 'profile-main' },
        h('dl', { class: 'facts' },
          h('div', {}, h('dt', {}, 'Email'), h('dd', {}, me.email, ' ',
            me.verified ? h('span', { class: 'state-chip state-done' }, 'Verified') : null)),
          h('div', {}, h('dt', {}, 'Member since'), h('dd', {}, since))),
        form))));
}
