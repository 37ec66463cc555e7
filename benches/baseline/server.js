// A plain Node.js `ws` broadcast server that speaks ActorHub's chat protocol, in memory, with
// no persistence and no cluster: the reference the chat numbers are compared with, driven by
// the same load generator on the same machine (see run.sh).
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 8101);
const rooms = new Map(); // id -> { seq, members: Set<WebSocket> }
let nextRoom = 1;

const server = http.createServer((request, response) => {
  if (request.method === 'POST' && request.url === '/api/rooms') {
    request.resume();
    request.on('end', () => {
      const id = `r${nextRoom++}`;
      rooms.set(id, { seq: 0, members: new Set() });
      response.writeHead(201, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ room: { id } }));
    });
    return;
  }
  response.writeHead(request.url === '/readyz' ? 200 : 404);
  response.end();
});

const sockets = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
sockets.on('connection', (socket, request) => {
  // The token is not verified: this server only measures the cost of broadcasting.
  let user = 'anonymous';
  try {
    const token = new URL(request.url, 'http://localhost').searchParams.get('token') || '';
    user = JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).sub;
  } catch (_) { /* keep anonymous */ }
  const joined = new Set();
  socket.on('message', (data) => {
    let frame;
    try { frame = JSON.parse(data); } catch (_) { return; }
    const room = rooms.get(frame.room);
    if (!room) return;
    if (frame.type === 'join') {
      room.members.add(socket);
      joined.add(room);
      socket.send(JSON.stringify({ type: 'joined', room: frame.room, head: room.seq }));
    } else if (frame.type === 'post') {
      const seq = ++room.seq;
      const message = JSON.stringify({
        type: 'message', room: frame.room, seq, id: frame.id, user, name: user,
        text: frame.text, ts: Date.now(),
      });
      for (const member of room.members) member.send(message);
      socket.send(JSON.stringify({ type: 'ack', room: frame.room, id: frame.id, seq }));
    }
  });
  socket.on('close', () => { for (const room of joined) room.members.delete(socket); });
});

server.listen(port, '127.0.0.1');
