// A real OpenID Provider (the certified `oidc-provider` package) for sessiond's integration tests.
//
// Usage: node provider.mjs '<config JSON>'
//   config: {"clients": [{"client_id", "client_secret", "redirect_uris": [...]}, ...],
//            "userinfo_only": false}
// Listens on 127.0.0.1 on a free port and prints one line, {"issuer": "http://127.0.0.1:PORT"},
// once it serves. Development interactions are on: any login name signs in as that subject (the
// test submits the login and consent forms). Test controls, beside the provider's own routes:
//   PUT  /test/accounts/{sub}  {"email", "email_verified"}: the claims of that account
//   POST /test/rotate          a new signing key replaces the old one (JWKS shows only the new)
//   POST /test/next-id-token   {"id_token"}: the next token response carries this ID token
//                              instead of its own (a token made for another flow or client)
//   GET  /test/last-id-token/{client_id}: {"id_token"} the provider last issued to that client
import crypto from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2] ?? '{}');
const accounts = new Map();
const lastIdToken = new Map();
let substitute = null;
let provider = null;
let handler = null;

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function build(issuer) {
  const p = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      ...c,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    jwks: { keys: [newKey()] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // By default the claims of the requested scopes are in the ID token too, as Google, Entra
    // ID and Keycloak do; with "userinfo_only": true, in the UserInfo response only (as Okta).
    conformIdTokenClaims: Boolean(config.userinfo_only),
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          const a = accounts.get(sub) ?? { email: `${sub}@example.com`, email_verified: true };
          return { sub, ...a };
        },
      };
    },
  });
  p.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token' && ctx.body && ctx.body.id_token && ctx.oidc && ctx.oidc.client) {
      lastIdToken.set(ctx.oidc.client.clientId, ctx.body.id_token);
    }
    if (ctx.path === '/token' && substitute && ctx.body && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: substitute };
      substitute = null;
    }
  });
  p.on('server_error', (ctx, err) => console.error('provider error', err));
  return p;
}

function body(req) {
  return new Promise((resolve) => {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data ? JSON.parse(data) : {}));
  });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname.startsWith('/test/')) {
    const input = await body(req);
    if (req.method === 'PUT' && url.pathname.startsWith('/test/accounts/')) {
      accounts.set(decodeURIComponent(url.pathname.slice('/test/accounts/'.length)), input);
    } else if (req.method === 'POST' && url.pathname === '/test/rotate') {
      provider = build(provider.issuer);
      handler = provider.callback();
    } else if (req.method === 'POST' && url.pathname === '/test/next-id-token') {
      substitute = input.id_token;
    } else if (req.method === 'GET' && url.pathname.startsWith('/test/last-id-token/')) {
      const client = decodeURIComponent(url.pathname.slice('/test/last-id-token/'.length));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id_token: lastIdToken.get(client) ?? null }));
      return;
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(204).end();
    return;
  }
  handler(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build(issuer);
  handler = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
