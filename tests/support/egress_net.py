"""A small internet on loopback for the direct-delivery tests: a test CA (cryptography), an
authoritative DNS server for the test zone (dnspython, UDP on 127.0.0.1, optionally setting the
AD bit as a trusted validating resolver would), an HTTPS server for MTA-STS policies (aiohttp),
and fake MX servers (aiosmtpd) on 127.0.0.x addresses sharing one port.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# -- certificates -------------------------------------------------------------------------


class TestCA:
    """A CA that issues server certificates; ``ca_file`` is what the gateway is told to trust."""

    __test__ = False

    def __init__(self, directory: Path, name: str = "smtpgate test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str, with_chain: bool = True) -> tuple[Path, Path, x509.Certificate]:
        """A server certificate for ``names``: (cert file with the CA appended, key file, the leaf)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = self.dir / names[0]
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        pem = leaf.public_bytes(serialization.Encoding.PEM)
        if with_chain:
            pem += self.cert.public_bytes(serialization.Encoding.PEM)
        cert_file.write_bytes(pem)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file, leaf


def spki_sha256(cert: x509.Certificate) -> str:
    """The data of a ``x 1 1`` TLSA record for ``cert``."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


# -- DNS ----------------------------------------------------------------------------------


class ZoneServer(asyncio.DatagramProtocol):
    """Answers from ``records`` ({(name, type): [rdata text]}); NXDOMAIN for unknown names.

    ``secure``: names whose answers carry the AD bit (what a validating resolver sets when the
    zone is DNSSEC-signed and validates); the gateway believes it only with ``[dns] validating``.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.secure: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def add(self, name: str, rdtype: str, *values: str, secure: bool = False) -> None:
        name = name.lower().rstrip(".")
        self.records.setdefault((name, rdtype.upper()), []).extend(values)
        if secure:
            self.secure.add(name)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        values = self.records.get((name, rdtype))
        if values:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, rdtype, values))
            if name in self.secure and query.flags & dns.flags.AD:
                response.flags |= dns.flags.AD
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    async def start(self) -> ZoneServer:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        assert self.transport is not None
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def dns_config(self, validating: bool = False) -> dict[str, Any]:
        return {"nameservers": ["127.0.0.1"], "port": self.port, "validating": validating, "timeout": 2.0}


# -- HTTPS for MTA-STS --------------------------------------------------------------------


class PolicyServer:
    """Serves ``/.well-known/mta-sts.txt`` per Host (``policies[domain]``) on 127.0.0.1 with TLS."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.policies: dict[str, str] = {}
        self.requests: list[str] = []
        self.reports: list[tuple[str, str, bytes]] = []  # TLS-RPT POSTs: (host, content type, body)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _policy(self, request: web.Request) -> web.Response:
        host = request.host.split(":")[0].lower()
        self.requests.append(host)
        domain = host.removeprefix("mta-sts.")
        if domain not in self.policies:
            return web.Response(status=404)
        return web.Response(text=self.policies[domain], content_type="text/plain")

    async def _report(self, request: web.Request) -> web.Response:
        self.reports.append((request.host.split(":")[0], request.content_type, await request.read()))
        return web.Response(status=201)

    async def start(self) -> PolicyServer:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._policy)
        app.router.add_post("/tlsrpt", self._report)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- fake MX servers ----------------------------------------------------------------------


@dataclass
class MxLog:
    """What a fake MX saw: messages (with the client's address and HELO), connections, RCPTs."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)
    open_now: int = 0
    max_open: int = 0
    connections: int = 0
    peers: list[str] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        with self.lock:
            return self.lock.wait_for(predicate, timeout)


class MxHandler:
    def __init__(self, log: MxLog, rcpt_reply: str | None = None, data_delay: float = 0.0) -> None:
        self.log = log
        self.rcpt_reply = rcpt_reply
        self.data_delay = data_delay

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        with self.log.lock:
            self.log.rcpts.append(address)
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)  # a slow receiver keeps its connections busy
        with self.log.lock:
            self.log.messages.append({"rcpt": envelope.rcpt_tos[0], "peer": session.peer[0], "helo": session.host_name,
                                      "tls": session.ssl is not None})
            self.log.lock.notify_all()
        return "250 2.0.0 Ok: queued"


class _CountingSMTP(SMTP):
    mx_log: MxLog

    def connection_made(self, transport: Any) -> None:
        with self.mx_log.lock:
            self.mx_log.open_now += 1
            self.mx_log.connections += 1
            self.mx_log.max_open = max(self.mx_log.max_open, self.mx_log.open_now)
            self.mx_log.peers.append(transport.get_extra_info("peername")[0])
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        with self.mx_log.lock:
            self.mx_log.open_now -= 1
            self.mx_log.lock.notify_all()


class FakeMx(Controller):
    """An aiosmtpd server on ``address:port`` (port 0: any), STARTTLS with ``tls`` when given."""

    def __init__(self, address: str, port: int = 0, *, tls: ssl.SSLContext | None = None,
                 rcpt_reply: str | None = None, data_delay: float = 0.0) -> None:
        self.log = MxLog()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((address, port))
        kwargs: dict[str, Any] = {"data_size_limit": 0}
        if tls is not None:
            kwargs["tls_context"] = tls
        super().__init__(MxHandler(self.log, rcpt_reply, data_delay), hostname=address,
                         port=self._sock.getsockname()[1], **kwargs)

    def factory(self) -> SMTP:
        smtp = _CountingSMTP(self.handler, **self.SMTP_kwargs)
        smtp.mx_log = self.log
        return smtp

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    def start(self) -> None:
        super().start()
        self.log.wait_for(lambda: self.log.open_now == 0, 5.0)  # the controller's own start-up probe
        with self.log.lock:
            self.log.connections, self.log.max_open, self.log.peers = 0, 0, []


def free_port_on(*addresses: str) -> int:
    """A port free on every one of ``addresses`` (so several fake MXes share one ``mx_port``)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind((addresses[0], 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            for a in addresses:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((a, port))
                s.close()
            return int(port)
        except OSError:
            continue
    raise RuntimeError("no common free port")


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback
