// The cluster panel at the bottom of every screen: the nodes, which are up, and which one this
// tab is connected to. It reads `/api/nodes` from the current node every few seconds.

import { h, replace, reconcile, formatTime } from './dom.js';

const REFRESH_MS = 5_000;

export class StatusBar {
  constructor(cluster, connection) {
    this.cluster = cluster;
    this.connection = connection;
    this.nodes = h('ul', { class: 'nodes', id: 'cluster-nodes' });
    this.note = h('span', { class: 'cluster-note', id: 'cluster-note' });
    this.element = h('footer', { class: 'statusbar', 'aria-label': 'Cluster' },
      h('span', { class: 'cluster-label' }, 'Cluster'), this.nodes, this.note);
    cluster.addEventListener('change', () => this.render());
    connection.addEventListener('state', () => this.render());
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
    this.refresh();
  }

  async refresh() {
    if (document.hidden) return;
    try {
      await this.cluster.probe(this.cluster.current);
    } catch {
      // The connection notices a dead node and moves; the panel follows.
    }
  }

  render() {
    const connected = this.connection.isOpen ? this.cluster.currentNode : null;
    const members = [...this.cluster.members].sort((a, b) => a.id.localeCompare(b.id));
    reconcile(this.nodes, members.map((member) => {
      const current = member.id === connected;
      const state = this.cluster.stateOf(member);
      const title = state !== member.state
        ? `${member.id} does not answer this tab`
        : `${member.id} is ${state}${member.since_ms ? ` since ${formatTime(member.since_ms)}` : ''}`;
      return {
        key: `${member.id}:${state}:${current}:${member.since_ms}`,
        build: () => h('li', {
          class: `node${current ? ' current' : ''}`,
          dataset: { node: member.id, state },
          title,
        },
        h('span', { class: 'dot', 'aria-hidden': 'true' }),
        h('span', { class: 'node-id' }, member.id),
        h('span', { class: 'visually-hidden' }, ` ${state}`),
        current ? h('span', { class: 'this-tab' }, 'this tab') : null),
      };
    }));
    const state = this.connection.state;
    const parts = [];
    if (state === 'reconnecting') parts.push('Reconnecting…');
    else if (state === 'connecting') parts.push('Connecting…');
    if (this.cluster.reconnects) parts.push(`moved ${this.cluster.reconnects}× after losing a node`);
    replace(this.note, parts.join(' · '));
  }
}
