// Test-only OpenID Connect provider for the pgveil integration tests.
//
// NEVER deploy this anywhere: besides a stock `oidc-provider` setup it exposes unauthenticated
// `/test/*` endpoints that rotate the signing keys and hand out deliberately broken tokens.
//
// Start: `node integration/idp/server.mjs` (after `npm ci` in this directory). Settings come
// from environment variables:
//
//   IDP_PORT       TCP port to listen on; the server binds 127.0.0.1 only. Required.
//   IDP_CERT       PEM certificate (chain) the HTTPS listener presents. Required.
//   IDP_KEY        PEM private key of IDP_CERT. Required.
//   IDP_ISSUER     Issuer identifier; default `https://127.0.0.1:<IDP_PORT>`.
//   IDP_STATE_DIR  Writable directory; the signing keys live in `keys.json` there, so a
//                  restart with the same directory keeps the same keys. Required.
//   IDP_CLIENTS    Path of a JSON file holding an array of test identities:
//                  [{"client_id", "client_secret", "username", "groups": ["..."]}]. Required.
//   IDP_TOKEN_TTL  Access token lifetime in seconds; default 300.
//
// Every client may only use the client-credentials grant, authenticating with
// `client_secret_post`. Access tokens are JWTs (`typ: at+jwt`) whose audience is the requested
// resource indicator (`pgveil://db` when none is sent), with `preferred_username` and `groups`
// taken from the client's entry in IDP_CLIENTS. They are signed RS256 unless the resource
// indicator carries the query `?alg=ES256`; the query is not part of the audience.
//
// Test endpoints (no authentication, loopback only):
//
//   POST /test/rotate[?retire=1]  New RS256 and ES256 signing keys with new kids sign from now
//                                 on. The previous keys stay in the JWKS unless `retire=1`.
//                                 Answers JSON {"active": {"RS256": kid, "ES256": kid},
//                                 "published": [kid, ...]}.
//   POST /test/forge              Body JSON {"kind", "client_id"[, "resource"]}. Answers
//                                 (text/plain) a token that is a genuine token of that client
//                                 except for the defect named by `kind`; see FORGERS below.
//
// When listening it prints exactly one line `IDP READY <issuer>` to stdout. Diagnostics go to
// stderr and never contain tokens, secrets or key material. SIGTERM and SIGINT stop it (exit
// code 0). Exit code 2 means bad settings, 3 that IDP_PORT was already in use.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';

import * as jose from 'jose';
import Provider, { errors as oidcErrors } from 'oidc-provider';

const DEFAULT_RESOURCE = 'pgveil://db';
const SIGNING_ALGS = ['RS256', 'ES256'];
const MAX_BODY_BYTES = 64 * 1024;
const SKEW_SECONDS = 600;

function log(message) {
  process.stderr.write(`idp: ${message}\n`);
}

function fail(message, code = 2) {
  log(`fatal: ${message}`);
  process.exit(code);
}

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) fail(`environment variable ${name} is required`);
  return value;
}

function positiveIntEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^[0-9]+$/.test(raw) || Number(raw) < 1 || Number(raw) > 2 ** 31) {
    fail(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

// ---------------------------------------------------------------------------------------------
// Settings

const PORT = positiveIntEnv('IDP_PORT', undefined);
if (PORT === undefined || PORT > 65535) fail('IDP_PORT must be a TCP port number');
const TLS_CERT = fs.readFileSync(requiredEnv('IDP_CERT'));
const TLS_KEY = fs.readFileSync(requiredEnv('IDP_KEY'));
const ISSUER = process.env.IDP_ISSUER || `https://127.0.0.1:${PORT}`;
const STATE_DIR = requiredEnv('IDP_STATE_DIR');
const TOKEN_TTL = positiveIntEnv('IDP_TOKEN_TTL', 300);
const CLIENTS = loadClients(requiredEnv('IDP_CLIENTS'));
const KEYS_FILE = path.join(STATE_DIR, 'keys.json');

function loadClients(file) {
  let list;
  try {
    list = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    fail(`cannot read IDP_CLIENTS file: ${err.message}`);
  }
  if (!Array.isArray(list) || list.length === 0) fail('IDP_CLIENTS must hold a non-empty array');
  const byId = new Map();
  list.forEach((entry, i) => {
    const where = `IDP_CLIENTS[${i}]`;
    for (const field of ['client_id', 'client_secret', 'username']) {
      if (typeof entry?.[field] !== 'string' || entry[field] === '') {
        fail(`${where}.${field} must be a non-empty string`);
      }
    }
    if (!Array.isArray(entry.groups) || !entry.groups.every((g) => typeof g === 'string')) {
      fail(`${where}.groups must be an array of strings`);
    }
    if (byId.has(entry.client_id)) fail(`${where}.client_id is a duplicate`);
    byId.set(entry.client_id, {
      clientId: entry.client_id,
      secret: entry.client_secret,
      username: entry.username,
      groups: [...entry.groups],
    });
  });
  return byId;
}

// ---------------------------------------------------------------------------------------------
// Signing keys: keys.json maps each algorithm to a list of private JWKs, newest (active) first.

async function newSigningKey(alg) {
  const pair = alg === 'RS256'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = pair.privateKey.export({ format: 'jwk' });
  const publicJwk = pair.publicKey.export({ format: 'jwk' });
  const thumbprint = await jose.calculateJwkThumbprint(publicJwk, 'sha256');
  return {
    ...jwk, kid: `${alg.toLowerCase()}-${thumbprint.slice(0, 16)}`, alg, use: 'sig',
  };
}

function saveKeys(keys) {
  fs.mkdirSync(STATE_DIR, { recursive: true });
  const scratch = `${KEYS_FILE}.${process.pid}.tmp`;
  fs.writeFileSync(scratch, JSON.stringify(keys, null, 2), { mode: 0o600 });
  fs.renameSync(scratch, KEYS_FILE);
}

async function loadOrCreateKeys() {
  if (fs.existsSync(KEYS_FILE)) {
    const keys = JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8'));
    if (SIGNING_ALGS.every((alg) => Array.isArray(keys[alg]) && keys[alg].length > 0)) {
      return keys;
    }
    log('keys.json is incomplete; generating new keys');
  }
  const keys = {};
  for (const alg of SIGNING_ALGS) keys[alg] = [await newSigningKey(alg)];
  saveKeys(keys);
  return keys;
}

function publishedKids(keys) {
  return SIGNING_ALGS.flatMap((alg) => keys[alg].map((k) => k.kid));
}

function activeKids(keys) {
  return Object.fromEntries(SIGNING_ALGS.map((alg) => [alg, keys[alg][0].kid]));
}

// ---------------------------------------------------------------------------------------------
// The provider. It is rebuilt whenever the keys change, because oidc-provider reads its key set
// once at construction; the HTTPS server always dispatches to the newest instance.

function resourceServerInfo(indicator) {
  const url = URL.parse(indicator);
  if (!url) throw new oidcErrors.InvalidTarget('resource indicator must be an absolute URI');
  const alg = url.searchParams.get('alg') ?? 'RS256';
  if (!SIGNING_ALGS.includes(alg)) {
    throw new oidcErrors.InvalidTarget(`alg must be one of ${SIGNING_ALGS.join(', ')}`);
  }
  url.search = '';
  return {
    scope: '',
    audience: url.href,
    accessTokenTTL: TOKEN_TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg } },
  };
}

function buildProvider(keys) {
  const provider = new Provider(ISSUER, {
    clients: [...CLIENTS.values()].map((c) => ({
      client_id: c.clientId,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
    })),
    jwks: { keys: SIGNING_ALGS.flatMap((alg) => keys[alg]) },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => DEFAULT_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => resourceServerInfo(indicator),
      },
    },
    ttl: { ClientCredentials: TOKEN_TTL },
    extraTokenClaims: async (_ctx, token) => {
      const identity = CLIENTS.get(token.clientId);
      if (!identity) return undefined;
      return { preferred_username: identity.username, groups: [...identity.groups] };
    },
  });
  provider.on('grant.error', (_ctx, err) => log(`token request refused: ${describeError(err)}`));
  provider.on('server_error', (_ctx, err) => log(`server error: ${describeError(err)}`));
  return provider;
}

function describeError(err) {
  return [err?.error, err?.error_description ?? err?.message].filter(Boolean).join(': ');
}

let keys = await loadOrCreateKeys();
let provider = buildProvider(keys);
let dispatch = provider.callback();

// Mints a genuine access token for `clientId` exactly as the token endpoint would.
async function mintGenuine(clientId, resource = DEFAULT_RESOURCE) {
  const client = await provider.Client.find(clientId);
  if (!client) throw new HttpError(404, `unknown client_id ${JSON.stringify(clientId)}`);
  const token = new provider.ClientCredentials({ client });
  token.resourceServer = new provider.ResourceServer(resource, resourceServerInfo(resource));
  return token.save();
}

// ---------------------------------------------------------------------------------------------
// Forged tokens for negative tests.

const b64json = (value) => jose.base64url.encode(JSON.stringify(value));
const now = () => Math.floor(Date.now() / 1000);

function activeSigningKey(alg = 'RS256') {
  const jwk = keys[alg][0];
  return { kid: jwk.kid, key: crypto.createPrivateKey({ key: jwk, format: 'jwk' }) };
}

async function signRs256(header, payload) {
  const { key } = activeSigningKey();
  return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(key);
}

const FORGERS = {
  // Correctly signed, but expired SKEW_SECONDS ago.
  async expired(header, payload) {
    const exp = now() - SKEW_SECONDS;
    const lifetime = payload.exp - payload.iat;
    const shifted = { ...payload, iat: exp - lifetime, exp };
    if ('nbf' in payload) shifted.nbf = shifted.iat;
    return signRs256(header, shifted);
  },
  // Correctly signed, but only valid from SKEW_SECONDS in the future.
  async not_yet_valid(header, payload) {
    const nbf = now() + SKEW_SECONDS;
    return signRs256(header, { ...payload, nbf, exp: nbf + (payload.exp - payload.iat) });
  },
  // Correctly signed, for another audience.
  async wrong_audience(header, payload) {
    return signRs256(header, { ...payload, aud: 'pgveil://not-this-audience' });
  },
  // Correctly signed by our key, but naming another issuer.
  async wrong_issuer(header, payload) {
    return signRs256(header, { ...payload, iss: 'https://wrong-issuer.invalid' });
  },
  // A genuine token whose payload segment was swapped for one with elevated groups; header and
  // signature are the original ones.
  async tampered(_header, payload, genuine) {
    const [head, , signature] = genuine.split('.');
    const groups = ['admins'];
    if (JSON.stringify(payload.groups) === JSON.stringify(groups)) groups.push('superusers');
    return [head, b64json({ ...payload, groups }), signature].join('.');
  },
  // Unsecured JWS: alg "none" and an empty signature segment.
  async alg_none(header, payload) {
    return `${b64json({ ...header, alg: 'none' })}.${b64json(payload)}.`;
  },
  // HMAC-SHA256 keyed with the published RSA public key in PEM form (key confusion attack).
  async hs256_with_public_key(header, payload) {
    const { key } = activeSigningKey();
    const pem = crypto.createPublicKey(key).export({ type: 'spki', format: 'pem' });
    return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ ...header, alg: 'HS256' })
      .sign(new TextEncoder().encode(pem));
  },
  // Correctly formed RS256 token from a key that was never published, under an unknown kid.
  async unknown_kid(header, payload) {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const kid = `unpublished-${crypto.randomBytes(8).toString('hex')}`;
    return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ ...header, kid })
      .sign(privateKey);
  },
};

async function forge(request) {
  const { kind, client_id: clientId, resource } = request ?? {};
  if (typeof kind !== 'string' || !Object.hasOwn(FORGERS, kind)) {
    throw new HttpError(400, `kind must be one of ${Object.keys(FORGERS).join(', ')}`);
  }
  if (typeof clientId !== 'string') throw new HttpError(400, 'client_id must be a string');
  if (resource !== undefined && typeof resource !== 'string') {
    throw new HttpError(400, 'resource must be a string when given');
  }
  const genuine = await mintGenuine(clientId, resource ?? DEFAULT_RESOURCE);
  const header = jose.decodeProtectedHeader(genuine);
  if (header.alg !== 'RS256') throw new HttpError(400, 'forging starts from RS256 tokens only');
  const payload = jose.decodeJwt(genuine);
  const forged = await FORGERS[kind](header, payload, genuine);
  log(`forged a token of kind ${kind} for client ${clientId}`);
  return forged;
}

// ---------------------------------------------------------------------------------------------
// Key rotation.

// Rotations run one at a time, so concurrent requests cannot lose a key.
let rotationQueue = Promise.resolve();
function rotate(retireOld) {
  const run = rotationQueue.then(() => rotateNow(retireOld));
  rotationQueue = run.catch(() => {});
  return run;
}

async function rotateNow(retireOld) {
  const next = {};
  for (const alg of SIGNING_ALGS) {
    const fresh = await newSigningKey(alg);
    next[alg] = retireOld ? [fresh] : [fresh, ...keys[alg]];
  }
  const nextProvider = buildProvider(next);
  saveKeys(next);
  keys = next;
  provider = nextProvider;
  dispatch = provider.callback();
  const active = activeKids(keys);
  log(`rotated signing keys; active ${JSON.stringify(active)}, retired old: ${retireOld}`);
  return { active, published: publishedKids(keys) };
}

// ---------------------------------------------------------------------------------------------
// HTTPS front: /test/* is handled here, everything else by oidc-provider.

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, 'request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function reply(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function handleTest(req, res, url) {
  if (req.method !== 'POST') throw new HttpError(405, 'use POST');
  if (url.pathname === '/test/rotate') {
    const retire = ['1', 'true'].includes(url.searchParams.get('retire') ?? '');
    reply(res, 200, 'application/json', JSON.stringify(await rotate(retire)));
    return;
  }
  if (url.pathname === '/test/forge') {
    let request;
    try {
      request = JSON.parse(await readBody(req));
    } catch (err) {
      if (err instanceof HttpError) throw err;
      throw new HttpError(400, 'body must be JSON');
    }
    reply(res, 200, 'text/plain; charset=utf-8', await forge(request));
    return;
  }
  throw new HttpError(404, 'unknown test endpoint');
}

const server = https.createServer({ cert: TLS_CERT, key: TLS_KEY }, (req, res) => {
  const url = new URL(req.url, ISSUER);
  if (!url.pathname.startsWith('/test/')) {
    dispatch(req, res);
    return;
  }
  handleTest(req, res, url).catch((err) => {
    const status = err instanceof HttpError ? err.status : 500;
    if (status === 500) log(`test endpoint ${url.pathname} failed: ${err.message}`);
    if (!res.headersSent) reply(res, status, 'text/plain; charset=utf-8', `${err.message}\n`);
    else res.destroy();
  });
});

// Exit code 3 tells the harness to retry with another port.
server.on('error', (err) => fail(`HTTPS server: ${err.message}`, err.code === 'EADDRINUSE' ? 3 : 2));
server.listen(PORT, '127.0.0.1', () => {
  log(`signing kids ${JSON.stringify(activeKids(keys))}, token ttl ${TOKEN_TTL}s`);
  process.stdout.write(`IDP READY ${ISSUER}\n`);
});

function shutdown(signal) {
  log(`${signal} received, stopping`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
