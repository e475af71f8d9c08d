"""``pdmv2 keygen``, ``pdmv2 primary-server``, ``pdmv2 register`` and ``pdmv2 secrets``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..core.config import load_yaml
from ..core.errors import ConfigError
from ..core.keyring import dump_client_key_file, dump_server_key_file
from ..core.keys import AeadId, KdfId, KemId, client_secret
from ..core.registration import (
    DEFAULT_LIFETIME_S,
    DEFAULT_OVERLAP_S,
    ClientHandshake,
    Identity,
    dump_identity,
    parse_allow_list,
    parse_identity,
)
from ..regnet import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_PORT,
    DEFAULT_SOURCE_PREFIX,
    DEFAULT_TIMEOUT_S,
    PrimaryServer,
    ServerConfig,
    register,
)
from ..regstore import current_registration, read_text, store_registration, write_secret_file

KEMS = {
    "x25519": KemId.DHKEM_X25519_HKDF_SHA256,
    "x448": KemId.DHKEM_X448_HKDF_SHA512,
    "p256": KemId.DHKEM_P256_HKDF_SHA256,
    "p384": KemId.DHKEM_P384_HKDF_SHA384,
    "p521": KemId.DHKEM_P521_HKDF_SHA512,
}
KDFS = {"sha256": KdfId.HKDF_SHA256, "sha384": KdfId.HKDF_SHA384, "sha512": KdfId.HKDF_SHA512}
AEADS = {"aes128gcm": AeadId.AES_128_GCM, "aes256gcm": AeadId.AES_256_GCM, "chacha20poly1305": AeadId.CHACHA20_POLY1305}


def _names(table: dict[str, Any]) -> str:
    return ", ".join(table)


def _choices(text: str, table: dict[str, Any], what: str) -> tuple[int, ...]:
    out = []
    for name in text.split(","):
        name = name.strip().lower()
        if name not in table:
            raise ConfigError("command line", what, f"{name!r} is not one of {_names(table)}")
        out.append(int(table[name]))
    return tuple(out)


def _prefix(text: str) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv6 prefix") from None


def _address(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv6 address") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in 0..1000000")
    return value


def _prefix_len(text: str) -> int:
    value = _count(text)
    if value > 128:
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 prefix length is 0..128")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 and at most 3600 seconds")
    return value


def _load_identities(paths: list[Path]) -> dict[KemId, Identity]:
    ids = {}
    for path in paths:
        ident = parse_identity(read_text(path, "identity"), str(path))
        ids[ident.kem] = ident
    return ids


def register_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the registration subcommands."""
    k = sub.add_parser(
        "keygen",
        help="make a primary's static key pair (identity file, 0600)",
        description="Generate a static KEM key pair for a Primary Client or Server and print "
        "its fingerprint (what the PC pins, or what the PS allows).",
    )
    k.add_argument("--kem", default="x25519", help=f"KEM ({_names(KEMS)}; default x25519)")
    k.add_argument("--out", type=Path, required=True, help="identity file to write (0600)")
    k.add_argument("--force", action="store_true", help="overwrite an existing file")
    k.set_defaults(func=_keygen)

    s = sub.add_parser(
        "primary-server",
        help="run the Primary Server (registration daemon)",
        description="Serve registrations over TCP/IPv6 until SIGINT/SIGTERM; SIGHUP reloads the allow-list.",
    )
    s.add_argument("--listen", default="::", help="address to listen on (default ::)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    s.add_argument("--key", type=Path, action="append", required=True, help="identity file (repeat per KEM)")
    s.add_argument(
        "--allow", type=Path, required=True, help="YAML allow-list: clients: [{name, fingerprint, prefixes}]"
    )
    s.add_argument("--state", type=Path, required=True, help="directory for registrations/<pc>.json (0600)")
    s.add_argument(
        "--lifetime",
        type=int,
        default=DEFAULT_LIFETIME_S,
        help=f"seconds a SharedSecret is valid (default {DEFAULT_LIFETIME_S})",
    )
    s.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP_S,
        help=f"seconds the previous secret stays valid after re-registration (default {DEFAULT_OVERLAP_S})",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds for each message (default {DEFAULT_TIMEOUT_S:g})",
    )
    s.add_argument(
        "--max-clients",
        type=_count,
        default=DEFAULT_MAX_CLIENTS,
        help=f"registrations served at once (default {DEFAULT_MAX_CLIENTS}; more: BUSY)",
    )
    s.add_argument(
        "--max-per-source",
        type=_count,
        default=0,
        help="connections one source may hold at once (default: half of --max-clients; more: BUSY)",
    )
    s.add_argument(
        "--source-prefix",
        type=_prefix_len,
        default=DEFAULT_SOURCE_PREFIX,
        help=f"IPv6 prefix length of one source (0..128, default {DEFAULT_SOURCE_PREFIX}; IPv4: one address)",
    )
    s.add_argument(
        "--deadline",
        type=_seconds,
        default=DEFAULT_DEADLINE_S,
        help=f"seconds for a whole registration, however slowly its bytes come (default {DEFAULT_DEADLINE_S:g})",
    )
    s.add_argument("--ready-file", type=Path, help="write 'host port' here once listening")
    s.set_defaults(func=_primary_server)

    r = sub.add_parser(
        "register",
        help="register this Primary Client with a Primary Server",
        description="Run the SETUP and KEM exchange with a PS whose key is pinned, and store the registration (0600).",
    )
    r.add_argument("--server", required=True, help="PS address (IPv6, or a host name)")
    r.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    r.add_argument("--key", type=Path, action="append", required=True, help="identity file (repeat per KEM)")
    r.add_argument("--pin", required=True, help="fingerprint of the PS key (sha256:...)")
    r.add_argument(
        "--prefix", type=_prefix, action="append", required=True, help="client prefix this PC speaks for (repeat)"
    )
    r.add_argument("--kem", default="x25519", help="KEMs in order of preference, comma-separated")
    r.add_argument("--kdf", default="sha256,sha384,sha512", help="KDFs in order of preference")
    r.add_argument("--aead", default="aes128gcm,aes256gcm,chacha20poly1305", help="AEADs in order of preference")
    r.add_argument("--state", type=Path, required=True, help="directory for registrations.json (0600)")
    r.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP_S,
        help=f"seconds the previous secret stays valid (default {DEFAULT_OVERLAP_S})",
    )
    r.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds for each message (default {DEFAULT_TIMEOUT_S:g})",
    )
    r.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    r.set_defaults(func=_register)

    sec = sub.add_parser(
        "secrets",
        help="turn a registration into the secondaries' key files",
        description="PC side: one client key file per secondary client address. PS side: "
        "one server key file for the secondary servers.",
    )
    ssub = sec.add_subparsers(dest="side", metavar="SIDE", required=True)
    c = ssub.add_parser(
        "client",
        help="key files for secondary clients (on the PC)",
        description="Write OUT/<address>.json, holding client_secret(address), for each --client.",
    )
    c.add_argument("--registrations", type=Path, required=True, help="the PC's registrations.json")
    c.add_argument("--client", type=_address, action="append", required=True, help="secondary client address")
    c.add_argument(
        "--server-prefix",
        type=_prefix,
        action="append",
        default=[],
        help="where the secondary servers are (optional, repeat)",
    )
    c.add_argument("--out", type=Path, required=True, help="output directory")
    c.set_defaults(func=_secrets_client)
    v = ssub.add_parser(
        "server",
        help="key file for secondary servers (on the PS)",
        description="Write OUT holding SharedSecret, salt and the client prefixes.",
    )
    v.add_argument("--registrations", type=Path, required=True, help="the PS's registrations/<pc>.json")
    v.add_argument("--out", type=Path, required=True, help="output key file")
    v.set_defaults(func=_secrets_server)


def _keygen(args: argparse.Namespace) -> int:
    kem = KEMS.get(args.kem.lower())
    if kem is None:
        raise ConfigError("command line", "--kem", f"{args.kem!r} is not one of {_names(KEMS)}")
    if args.out.exists() and not args.force:
        raise ConfigError(str(args.out), "--out", "exists (use --force to overwrite)")
    ident = Identity.generate(kem, ikm=os.urandom(64))
    write_secret_file(args.out, dump_identity(ident))
    print(ident.fingerprint)
    return 0


def _primary_server(args: argparse.Namespace) -> int:
    if args.max_clients < 1:
        raise ConfigError("command line", "--max-clients", "must be at least 1")
    identities = _load_identities(args.key)

    def load_allow() -> Any:
        return parse_allow_list(load_yaml(read_text(args.allow, "allow"), str(args.allow)), str(args.allow))

    config = ServerConfig(
        identities,
        load_allow(),
        args.state,
        lifetime=args.lifetime,
        overlap=args.overlap,
        timeout=args.timeout,
        max_clients=args.max_clients,
        max_per_source=args.max_per_source,
        source_prefix=args.source_prefix,
        deadline=args.deadline,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run() -> None:
        server = PrimaryServer(config)
        host, port = await server.start(args.listen, args.port)
        print(
            f"primary-server: listening on [{host}]:{port}, {len(config.allow.entries)} PC(s) allowed, "
            f"at most {server.max_clients} at once and {server.per_source} per source, "
            f"keys: {', '.join(i.fingerprint for i in identities.values())}",
            flush=True,
        )
        if args.ready_file:
            args.ready_file.write_text(f"{host} {port}\n")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

        def reload() -> None:
            try:
                config.allow = load_allow()
                logging.getLogger("pdmv2.registration").info("allow-list reloaded: %d PC(s)", len(config.allow.entries))
            except ConfigError as exc:
                logging.getLogger("pdmv2.registration").error("allow-list not reloaded: %s", exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
        task = asyncio.create_task(server.serve_forever())
        await stop.wait()
        task.cancel()
        await server.close()
        st, lim = server.stats, server.limits
        print(
            f"primary-server: stopped ({st['ok']} ok, {st['failed']} failed, {st['busy']} busy, "
            f"{lim['source_limited']} over the per-source limit, {lim['accept_errors']} accept errors)",
            flush=True,
        )

    try:
        asyncio.run(run())
    except OSError as exc:
        raise ConfigError(f"[{args.listen}]:{args.port}", "listen", exc.strerror or str(exc)) from None
    return 0


def _register(args: argparse.Namespace) -> int:
    identities = _load_identities(args.key)
    hs = ClientHandshake(
        identities=identities,
        pin=args.pin,
        prefixes=tuple(args.prefix),
        kems=_choices(args.kem, KEMS, "--kem"),
        kdfs=_choices(args.kdf, KDFS, "--kdf"),
        aeads=_choices(args.aead, AEADS, "--aead"),
        random_bytes=os.urandom,
    )
    say = None if args.quiet else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    if say:
        say(f"registering with [{args.server}]:{args.port}")
    t0 = time.perf_counter()
    reg = asyncio.run(register(args.server, args.port, hs, timeout=args.timeout, progress=say))
    kept = store_registration(args.state / "registrations.json", reg, now=reg.created, overlap=args.overlap)
    print(
        f"registration {reg.registration_id}: suite {reg.suite}, expires {reg.expires}, "
        f"{len(kept) - 1} older kept for overlap, {1000 * (time.perf_counter() - t0):.1f} ms"
    )
    return 0


def _secrets_client(args: argparse.Namespace) -> int:
    reg = current_registration(args.registrations, now=int(time.time()))
    for addr in args.client:
        if not any(ipaddress.IPv6Address(addr) in p for p in reg.prefixes):
            raise ConfigError(str(args.registrations), "prefixes", f"{addr} is outside the registered prefixes")
        cs = client_secret(reg.suite, shared_secret=reg.shared_secret, salt=reg.salt, client_addr=addr)
        text = dump_client_key_file(
            reg.suite,
            client_addr=addr,
            client_secret=cs,
            server_prefixes=[str(p) for p in args.server_prefix],
            registration_id=reg.registration_id,
            expires=reg.expires,
        )
        write_secret_file(args.out / f"{addr.replace(':', '_')}.json", text)
    print(f"wrote {len(args.client)} client key file(s) to {args.out} (registration {reg.registration_id})")
    return 0


def _secrets_server(args: argparse.Namespace) -> int:
    reg = current_registration(args.registrations, now=int(time.time()))
    text = dump_server_key_file(
        reg.suite,
        shared_secret=reg.shared_secret,
        salt=reg.salt,
        client_prefixes=[str(p) for p in reg.prefixes],
        registration_id=reg.registration_id,
        expires=reg.expires,
    )
    write_secret_file(args.out, text)
    print(
        f"wrote server key file {args.out} (registration {reg.registration_id}, {len(reg.prefixes)} client prefix(es))"
    )
    return 0
