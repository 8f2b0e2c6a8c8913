"""A real SMTP server for the mail tests (aiosmtpd, pinned in ci/requirements-smtp.txt).

Listens on 127.0.0.1:PORT (0: any free port), prints "READY <port>" once it accepts
connections, and writes every message it accepts to DIR as <n>.eml (written under a temporary
name, then renamed, so a reader never sees half a message). Runs until killed.

  --tls starttls|implicit  with --cert/--key: offer STARTTLS, or speak TLS from the first byte
  --auth USER:PASSWORD     require AUTH (PLAIN or LOGIN) with these credentials
  --auth-log FILE          append every AUTH command's argument (mechanism and initial
                           response, so the credentials of AUTH PLAIN) to FILE, one a line
"""
import argparse
import asyncio
import itertools
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult


class Store:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count(len(os.listdir(directory)) + 1)

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        tmp = os.path.join(self.directory, f".{n}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(self.directory, f"{n}.eml"))
        return "250 OK"


class RecordingSMTP(SMTP):
    """Writes down each AUTH attempt before handling it: the tests check what reached us."""

    def __init__(self, *args, auth_log=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.auth_log = auth_log

    async def smtp_AUTH(self, arg):
        if self.auth_log:
            with open(self.auth_log, "a") as f:
                f.write(f"{arg}\n")
        return await super().smtp_AUTH(arg)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth")
    p.add_argument("--auth-log")
    a = p.parse_args()

    context = None
    if a.tls != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(a.cert, a.key)

    authenticator = None
    if a.auth:
        user, password = a.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (auth_data.login or b"").decode() == user and (
                auth_data.password or b""
            ).decode() == password
            return AuthResult(success=ok)

    store = Store(a.dir)

    def factory():
        return RecordingSMTP(
            store,
            auth_log=a.auth_log,
            hostname="localhost",
            tls_context=context if a.tls == "starttls" else None,
            require_starttls=a.tls == "starttls",
            authenticator=authenticator,
            auth_required=bool(a.auth),
            # Implicit TLS is TLS already; STARTTLS must come before AUTH.
            auth_require_tls=a.tls != "none",
        )

    async def serve():
        server = await asyncio.get_running_loop().create_server(
            factory,
            "127.0.0.1",
            a.port,
            ssl=context if a.tls == "implicit" else None,
            reuse_address=True,
        )
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
