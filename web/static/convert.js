// File conversion: pick or drop a file, choose what to turn it into (the targets come from
// `/api/converters`), watch the job's progress live (`job` frames on the WebSocket, from
// whichever node runs it), and download the result.

import { h, replace, reconcile, field, formatBytes, toast } from './dom.js';

/** File extensions → the server's format names (the server sniffs the bytes; this only
 *  chooses which targets to offer). */
const EXTENSIONS = {
  png: 'png', jpg: 'jpeg', jpeg: 'jpeg', webp: 'webp', gif: 'gif', bmp: 'bmp', tif: 'tiff', tiff: 'tiff',
  md: 'markdown', markdown: 'markdown', txt: 'text', text: 'text', csv: 'csv', json: 'json',
  html: 'html', htm: 'html', pdf: 'pdf', xlsx: 'xlsx', ods: 'ods', docx: 'docx', odt: 'odt', pptx: 'pptx', odp: 'odp',
};
const IMAGE_FORMATS = new Set(['png', 'jpeg', 'webp', 'gif', 'bmp', 'tiff']);
const LABELS = {
  png: 'PNG image', jpeg: 'JPEG image', webp: 'WebP image', gif: 'GIF image', bmp: 'BMP image', tiff: 'TIFF image',
  markdown: 'Markdown', text: 'Plain text', csv: 'CSV', json: 'JSON', html: 'HTML page', pdf: 'PDF document',
  xlsx: 'Excel workbook', ods: 'OpenDocument spreadsheet', docx: 'Word document', odt: 'OpenDocument text',
  pptx: 'PowerPoint', odp: 'OpenDocument presentation',
};
const STATES = { uploading: 'Uploading', scheduled: 'Scheduled', queued: 'Queued', running: 'Converting', done: 'Done', failed: 'Failed' };
/** Jobs listed at once (the server keeps the newest). */
const JOBS_SHOWN_MAX = 50;

export class Convert {
  constructor(app) {
    this.app = app;
    this.events = new AbortController();
    /** `[{from, to, via, available}]` */
    this.pairs = [];
    /** job id → the job as `/api/jobs/{id}` shows it (merged with live frames). */
    this.jobs = new Map();
    /** Uploads in flight, by a local key. */
    this.uploads = new Map();
    this.file = null;
    this.view = null;
    this.loaded = false;
    const signal = this.events.signal;
    app.connection.addEventListener('frame', (event) => {
      if (event.detail.type === 'job') this.onJobFrame(event.detail);
    }, { signal });
    // Frames sent while the socket was down are lost: read the list again.
    app.connection.addEventListener('open', () => this.loadJobs(), { signal });
  }

  dispose() {
    this.events.abort();
  }

  async load() {
    try {
      const [converters] = await Promise.all([
        this.app.cluster.request('/api/converters'),
        this.loadJobs(),
      ]);
      this.pairs = Array.isArray(converters.converters) ? converters.converters : [];
      this.loaded = true;
      this.renderForm();
    } catch (error) {
      toast(`Could not load the converters: ${error.message}`, 'error');
    }
  }

  async loadJobs() {
    try {
      const body = await this.app.cluster.request(`/api/jobs?limit=${JOBS_SHOWN_MAX}`);
      for (const job of body.jobs || []) this.jobs.set(job.job, { ...this.jobs.get(job.job), ...job });
      this.renderJobs();
    } catch {
      // Live frames still arrive; the list fills in on the next reconnect.
    }
  }

  onJobFrame(frame) {
    const known = this.jobs.get(frame.job);
    const update = {
      job: frame.job, state: frame.state, progress: Number(frame.progress) || 0,
      download: frame.download || null, error: frame.error || null,
    };
    if (known && isFinal(known.state) && !isFinal(update.state)) return; // A late frame.
    this.jobs.set(frame.job, { ...known, ...update });
    // Frames carry the state; the output's name and size come with the job itself.
    if (!known || !known.input || isFinal(update.state)) this.fetchJob(frame.job);
    this.renderJobs();
  }

  async fetchJob(id) {
    try {
      const job = await this.app.cluster.request(`/api/jobs/${encodeURIComponent(id)}`);
      const known = this.jobs.get(id);
      // A frame may be newer than this answer: keep its state and progress if so.
      const keepLive = known && (isFinal(known.state) || (known.progress || 0) > (job.progress || 0));
      this.jobs.set(id, keepLive ? { ...job, state: known.state, progress: known.progress, download: known.download, error: known.error } : job);
      this.renderJobs();
    } catch {
      // Not ours or gone: the frame alone is shown.
    }
  }

  targetsFor(format) {
    const pairs = this.pairs.filter((pair) => !format || pair.from === format);
    const targets = new Map();
    for (const pair of pairs) {
      const known = targets.get(pair.to);
      if (!known || (!known.available && pair.available)) targets.set(pair.to, pair);
    }
    return [...targets.values()].sort((a, b) => Number(b.available) - Number(a.available) || a.to.localeCompare(b.to));
  }

  upload(file, target, width, height) {
    const key = `upload-${Date.now()}-${Math.random()}`;
    const entry = {
      key, local: true, state: 'uploading', progress: 0, target, created_ms: Date.now(),
      input: { name: file.name, format: formatOf(file), bytes: file.size }, error: null,
    };
    this.uploads.set(key, entry);
    this.renderJobs();
    const form = new FormData();
    form.append('target', target);
    if (width) form.append('width', String(width));
    if (height) form.append('height', String(height));
    form.append('file', file, file.name);
    const request = new XMLHttpRequest();
    const base = this.app.cluster.current;
    request.open('POST', `${base}/api/jobs`);
    if (this.app.cluster.token && this.app.cluster.isClusterUrl(base)) {
      request.setRequestHeader('Authorization', `Bearer ${this.app.cluster.token}`);
    }
    request.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable) {
        entry.progress = Math.round((event.loaded / event.total) * 100);
        this.renderJobs();
      }
    });
    request.addEventListener('load', () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = null;
      }
      if (request.status === 202 && body && body.job) {
        this.uploads.delete(key);
        const known = this.jobs.get(body.job);
        this.jobs.set(body.job, known && known.state !== 'queued' ? { ...body, ...known, input: body.input } : body);
      } else {
        entry.state = 'failed';
        entry.error = body && body.error ? body.error.message : `The upload failed (${request.status}).`;
      }
      this.renderJobs();
    });
    request.addEventListener('error', () => {
      entry.state = 'failed';
      entry.error = 'The node did not answer; try again.';
      this.renderJobs();
    });
    request.send(form);
  }

  // ---- the screen ----

  render(root) {
    this.form = h('div', { class: 'card upload-card' });
    this.list = h('ul', { class: 'jobs', id: 'jobs', 'aria-live': 'polite' });
    replace(root, h('div', { class: 'page convert' },
      h('header', { class: 'page-head' },
        h('h1', {}, 'Convert files'),
        h('p', { class: 'muted' }, 'Images, documents and spreadsheets. Jobs run on the cluster and keep going if a node dies.')),
      h('div', { class: 'convert-grid' },
        this.form,
        h('section', { class: 'card jobs-card', 'aria-labelledby': 'jobs-title' },
          h('h2', { id: 'jobs-title', class: 'card-title' }, 'Your jobs'),
          this.list))));
    this.view = true;
    this.renderForm();
    this.renderJobs();
    if (!this.loaded) this.load();
    else this.loadJobs();
  }

  hide() {
    this.view = null;
  }

  renderForm() {
    if (!this.view) return;
    const input = h('input', { type: 'file', id: 'file-input', class: 'visually-hidden', name: 'file' });
    const drop = h('label', { for: 'file-input', class: 'dropzone', id: 'dropzone' },
      h('span', { class: 'drop-icon', 'aria-hidden': 'true' }, '⇪'),
      this.file
        ? [h('strong', { class: 'file-name', id: 'chosen-file' }, this.file.name),
          h('span', { class: 'muted' }, `${formatBytes(this.file.size)} · ${LABELS[formatOf(this.file)] || 'Unknown type'} · choose another`)]
        : [h('strong', {}, 'Drop a file here'), h('span', { class: 'muted' }, 'or click to choose one')]);
    input.addEventListener('change', () => {
      if (input.files && input.files[0]) this.choose(input.files[0]);
    });
    for (const name of ['dragenter', 'dragover']) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add('dragging');
      });
    }
    for (const name of ['dragleave', 'drop']) {
      drop.addEventListener(name, () => drop.classList.remove('dragging'));
    }
    drop.addEventListener('drop', (event) => {
      event.preventDefault();
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) this.choose(file);
    });

    const format = this.file ? formatOf(this.file) : null;
    const targets = this.targetsFor(format);
    const select = h('select', { id: 'target', name: 'target', required: true, disabled: !this.file || !targets.length },
      this.file
        ? targets.map((pair) => h('option', { value: pair.to, disabled: !pair.available },
          `${LABELS[pair.to] || pair.to.toUpperCase()}${pair.available ? '' : ' (not available on this cluster)'}`))
        : h('option', { value: '' }, 'Choose a file first'));
    const firstAvailable = this.file
      ? targets.find((pair) => pair.available && pair.to !== format) || targets.find((pair) => pair.available)
      : null;
    if (firstAvailable) select.value = firstAvailable.to;
    const image = format && IMAGE_FORMATS.has(format);
    const width = h('input', { id: 'resize-width', type: 'number', min: 1, max: 20000, inputmode: 'numeric', placeholder: 'Original' });
    const height = h('input', { id: 'resize-height', type: 'number', min: 1, max: 20000, inputmode: 'numeric', placeholder: 'Original' });
    const submit = h('button', { type: 'submit', class: 'button primary wide', id: 'convert-submit', disabled: !this.file || !firstAvailable }, 'Convert');
    const form = h('form', { id: 'convert-form', class: 'form' },
      h('h2', { class: 'card-title' }, 'New conversion'),
      input, drop,
      field('Convert to', select, this.file && !targets.length ? 'No converter takes this kind of file.' : null),
      image ? h('div', { class: 'field-row' },
        field('Width (px)', width), field('Height (px)', height)) : null,
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!this.file || !select.value) return;
      this.upload(this.file, select.value, image ? Number(width.value) || null : null, image ? Number(height.value) || null : null);
      this.file = null;
      this.renderForm();
    });
    replace(this.form, form);
  }

  choose(file) {
    this.file = file;
    this.renderForm();
    const select = document.getElementById('target');
    if (select && !select.disabled) select.focus();
  }

  renderJobs() {
    if (!this.view) return;
    const entries = [...this.uploads.values(), ...[...this.jobs.values()]
      .sort((a, b) => (b.created_ms || 0) - (a.created_ms || 0))].slice(0, JOBS_SHOWN_MAX);
    if (!entries.length) {
      reconcile(this.list, [{ key: 'empty', build: () => h('li', { class: 'empty-note' }, 'No conversions yet. Your jobs show up here, with their progress.') }]);
      return;
    }
    reconcile(this.list, entries.map((job) => ({
      key: `${job.job || job.key}:${job.state}:${job.progress}:${job.step || ''}:${job.error || ''}:${job.input ? 1 : 0}:${job.output ? 1 : 0}`,
      build: () => this.jobItem(job),
    })));
  }

  jobItem(job) {
    const state = job.state || 'queued';
    const progress = state === 'done' ? 100 : Math.max(0, Math.min(100, Number(job.progress) || 0));
    const name = job.input ? job.input.name : 'File';
    const from = job.input ? job.input.format : '';
    const bar = h('span', { class: 'progress-bar' });
    bar.style.width = `${progress}%`;
    const details = [];
    if (state === 'running' && job.step) details.push(job.step);
    if (state !== 'done' && state !== 'failed') details.push(`${progress}%`);
    if (state === 'done' && job.output) details.push(formatBytes(job.output.bytes));
    if (isFinal(state) && job.finished_ms && job.created_ms) {
      details.push(`took ${((job.finished_ms - job.created_ms) / 1000).toFixed(1)} s`);
    }
    if (job.node && state !== 'done' && state !== 'failed') details.push(`on ${job.node}`);
    let action = null;
    if (state === 'done' && job.download) {
      const fileName = job.output ? job.output.name : `${name}.${job.target}`;
      action = h('a', { class: 'button small download', href: this.app.cluster.url(job.download), download: fileName, 'data-download': job.job },
        'Download');
      action.addEventListener('click', async (event) => {
        event.preventDefault();
        try {
          await this.app.cluster.download(job.download, fileName);
        } catch (error) {
          toast(`Could not download: ${error.message}`, 'error');
        }
      });
    }
    return h('li', { class: 'job', dataset: { job: job.job || job.key, state } },
      h('span', { class: 'format-badge', 'aria-hidden': 'true' }, (from || '?').slice(0, 4).toUpperCase()),
      h('div', { class: 'job-main' },
        h('div', { class: 'job-title' },
          h('span', { class: 'file-name' }, name),
          h('span', { class: 'arrow', 'aria-hidden': 'true' }, ' → '),
          h('span', { class: 'visually-hidden' }, ' to '),
          h('span', { class: 'target' }, (job.target || '').toUpperCase())),
        h('div', {
          class: 'progress', role: 'progressbar', 'aria-label': `Progress of ${name}`,
          'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(progress),
        }, bar),
        h('div', { class: 'job-meta' },
          h('span', { class: `state-chip state-${state}` }, STATES[state] || state),
          details.length ? h('span', { class: 'muted' }, details.join(' · ')) : null),
        job.error ? h('p', { class: 'job-error', role: 'alert' }, job.error) : null),
      action);
  }
}

function isFinal(state) {
  return state === 'done' || state === 'failed';
}

function formatOf(file) {
  const extension = (file.name.split('.').pop() || '').toLowerCase();
  if (EXTENSIONS[extension]) return EXTENSIONS[extension];
  const type = (file.type || '').toLowerCase();
  if (type.startsWith('image/')) return EXTENSIONS[type.slice(6)] || null;
  return null;
}
