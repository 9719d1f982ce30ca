// The usual alternative to ngx_session_cache, for the benchmark only: the
// endpoint nginx's auth_request calls. It does what the module does (Redis
// GET, fall back to Postgres, fill the cache, remember unknown tokens) the
// way a competent Node.js service would: one multiplexed Redis connection
// (node-redis pipelines concurrent commands), a pg Pool of kept-alive
// connections, a named (prepared) statement, HTTP keep-alive to nginx.
//
//   PORT=8081 REDIS_URL=redis://127.0.0.1:6379/0 \
//   PG_URL=postgresql://nginx:pw@127.0.0.1:5432/sessions node server.js
'use strict';

const http = require('http');
const { createClient } = require('redis');
const { Pool } = require('pg');

const TTL = 300;
const NEGATIVE_TTL = 10;
const PREFIX = 'session:';
const NEGATIVE = '{"invalid":true}';
const QUERY = 'SELECT user_id, extract(epoch FROM expires_at)::bigint ' +
              'FROM platform.user_sessions ' +
              'WHERE token = $1 AND revoked_at IS NULL AND expires_at > now()';

const redis = createClient({ url: process.env.REDIS_URL });
redis.on('error', (e) => console.error('redis:', e.message));
const pg = new Pool({ connectionString: process.env.PG_URL,
                      max: Number(process.env.PG_POOL || 4) });
pg.on('error', (e) => console.error('postgres:', e.message));

function token(req) {
  const cookie = req.headers.cookie || '';
  const m = /(?:^|;\s*)session=([^;]*)/.exec(cookie);
  const t = m ? m[1] : '';
  return t.length > 0 && t.length <= 512 && /^[\x21-\x3a\x3c-\x7e]+$/.test(t)
    ? t : null;
}

function answer(res, status, user) {
  if (user !== undefined) res.setHeader('X-User-Id', user);
  res.statusCode = status;
  res.end();
}

async function check(t) {
  const now = Math.floor(Date.now() / 1000);
  let cached = null;
  try {
    cached = await redis.get(PREFIX + t);
  } catch (e) {
    cached = null;            // Redis down: ask Postgres
  }
  if (cached !== null) {
    if (cached === NEGATIVE) return [401];
    try {
      const s = JSON.parse(cached);
      if (typeof s.user_id === 'string' && s.expires_at > now) {
        return [200, s.user_id];
      }
    } catch (e) { /* unreadable: ask Postgres */ }
  }
  const r = await pg.query({ name: 'check', text: QUERY, values: [t],
                            rowMode: 'array' });
  if (r.rows.length === 0) {
    redis.set(PREFIX + t, NEGATIVE, { EX: NEGATIVE_TTL }).catch(() => {});
    return [401];
  }
  const user = r.rows[0][0];
  const exp = Number(r.rows[0][1]);
  const ttl = Math.min(TTL, exp - now);
  if (ttl > 0) {
    redis.set(PREFIX + t, JSON.stringify({ user_id: user, expires_at: exp }),
              { EX: ttl }).catch(() => {});
  }
  return [200, user];
}

const server = http.createServer((req, res) => {
  const t = token(req);
  if (t === null) return answer(res, 401);
  check(t).then(([status, user]) => answer(res, status, user),
                () => answer(res, 503));
});
server.keepAliveTimeout = 60000;

redis.connect().then(() => {
  server.listen(Number(process.env.PORT), '127.0.0.1', () => {
    console.log('validate: listening on ' + process.env.PORT);
  });
}, (e) => { console.error('redis connect:', e.message); process.exit(1); });
