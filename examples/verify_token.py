#!/usr/bin/env python3
"""Verify a sessiond access token in your service, with PyJWT and sessiond's JWKS.

    pip install -r ci/requirements-jwks.txt
    python3 examples/verify_token.py http://127.0.0.1:8080/.well-known/jwks.json "$TOKEN"

Prints the claims as JSON and exits 0 for a valid token; prints "rejected: <reason>" on stderr
and exits 1 otherwise. See docs/verify-tokens.md for what each check is for. A valid signature
says nothing about revocation: a service that must notice a logout at once asks POST /introspect.
"""
import argparse
import json
import sys

import jwt

# What sessiond may sign with. HS256 is not here: its key is never published, and accepting it
# next to public keys is how a public key ends up used as an HMAC secret.
ALGORITHMS = {"EdDSA", "ES256", "RS256"}
ACCESS_TOKEN_TYPES = {"at+jwt", "application/at+jwt"}


def verifier(jwks_url: str) -> jwt.PyJWKClient:
    # Keep one client per process: it caches the key set (JWKS_MAX_AGE, 300 s by default) and
    # fetches it again when a token names a kid it has not seen (a rotated key).
    return jwt.PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=300, timeout=5)


def verify(client: jwt.PyJWKClient, token: str, issuer: str, audience: str) -> dict:
    header = jwt.get_unverified_header(token)
    if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
        raise jwt.InvalidTokenError("not an access token (typ)")
    if header.get("alg") not in ALGORITHMS:
        raise jwt.InvalidAlgorithmError("algorithm not allowed")
    # The key is looked up by kid in sessiond's own JWKS, never taken from the token.
    key = client.get_signing_key_from_jwt(token)
    # The key's own algorithm only: a published key is never used with another one.
    return jwt.decode(
        token,
        key=key.key,
        algorithms=[key.algorithm_name],
        issuer=issuer,
        audience=audience,
        leeway=10,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jwks_url")
    parser.add_argument("token")
    parser.add_argument("--issuer", default="sessiond")
    parser.add_argument("--audience", default="sessiond")
    args = parser.parse_args()
    try:
        claims = verify(verifier(args.jwks_url), args.token, args.issuer, args.audience)
    except jwt.PyJWTError as e:
        print(f"rejected: {e}", file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
