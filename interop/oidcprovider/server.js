// A real OpenID provider (panva's oidc-provider) on loopback for popgate's
// interop tests: HTTPS, discovery, JWKS, client credentials grant with
// RFC 8707 resource indicators (JWT or opaque access tokens for popgate's
// audience, with the client's e-mail as a claim; urn:other for another
// audience), RFC 7662 introspection
// and RFC 7009 revocation.
//
//   node server.js CONFIG.json
//
// CONFIG: {"dir", "port" (0: any), "cert", "key", "audience",
// "clients": [{"client_id", "client_secret", "email"}], "rotate": bool}.
// The signing keys live in DIR/keys.json (made on the first start);
// "rotate" puts a new key first (it signs) and keeps the old ones
// published. It prints {"listening": "https://127.0.0.1:PORT"} once ready.
// SIGUSR2 rotates while it runs, as a provider rotates its keys: a new key
// first, the old ones still published, issued tokens and grants kept; it
// prints {"rotated": KID} once the new key signs.
import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';
import path from 'node:path';
import Provider from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const keysFile = path.join(cfg.dir, 'keys.json');
let keys = fs.existsSync(keysFile) ? JSON.parse(fs.readFileSync(keysFile, 'utf8')) : [];
const newKey = () => {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };
};
if (keys.length === 0 || cfg.rotate) keys = [newKey(), ...keys];
fs.writeFileSync(keysFile, JSON.stringify(keys), { mode: 0o600 });

const emails = Object.fromEntries(cfg.clients.map((c) => [c.client_id, c.email]));
const server = https.createServer({ cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) });
// oidc-provider takes its keys when it is made: a rotation makes a new
// one over the same (module-wide) memory storage and swaps it in.
let handle = null;
server.on('request', (req, res) => handle(req, res));
server.listen(cfg.port || 0, '127.0.0.1', () => {
  const issuer = `https://127.0.0.1:${server.address().port}`;
  handle = makeProvider(issuer).callback();
  process.on('SIGUSR2', () => {
    keys = [newKey(), ...keys];
    fs.writeFileSync(keysFile, JSON.stringify(keys), { mode: 0o600 });
    handle = makeProvider(issuer).callback();
    process.stdout.write(JSON.stringify({ rotated: keys[0].kid }) + '\n');
  });
  process.stdout.write(JSON.stringify({ listening: issuer }) + '\n');
});

function makeProvider(issuer) {
  return new Provider(issuer, {
    clients: cfg.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    jwks: { keys },
    scopes: ['mail'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: () => true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:popgate:jwt',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => ({
          scope: 'mail',
          // urn:other: a token for another service, which popgate must refuse
          audience: indicator === 'urn:other' ? 'other-app' : cfg.audience,
          accessTokenTTL: 3600,
          accessTokenFormat: indicator === 'urn:popgate:opaque' ? 'opaque' : 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => ({ email: emails[token.clientId], email_verified: true }),
  });
}
process.on('SIGTERM', () => server.close(() => process.exit(0)));
