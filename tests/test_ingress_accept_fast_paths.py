"""The ingress's per-command shortcuts answer exactly what the straightforward code answered.

* the ``250 ... queued as`` reply, sent as it is instead of through the remembered enhanced-code
  rewrite, is the octets the rewrite gives, for generated and real queue ids;
* the relay decision's view of the session, remembered while the credential and TLS state hold,
  equals the one built afresh at every MAIL and RCPT, through AUTH and STARTTLS changes;
* the plain order check of MAIL, RCPT and DATA gives the replies the awaited check pushed, in every
  session state;
* a whole transaction over a real socket gets the replies it got before, octet for octet.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline.app.harness import ingress_test_config, running_ingress
from pipeline.contract.context import Credential, Transaction, new_queue_id
from pipeline.ingress import relay
from pipeline.ingress import replies as R
from pipeline.ingress.server import GatewaySMTP
from pipeline.ingress.session import wire_reply

QUEUE_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"


@given(st.text(alphabet=QUEUE_ID_ALPHABET, min_size=1, max_size=24))
def test_the_queued_reply_sent_as_it_is_equals_its_rewrite(queue_id):
    reply = R.queued(queue_id)
    assert reply.encode("ascii", "replace") == wire_reply(reply)


def test_the_queued_reply_of_real_queue_ids_equals_its_rewrite():
    for _ in range(500):
        reply = R.queued(new_queue_id())
        assert reply.encode("ascii", "replace") == wire_reply(reply)


def fake_session(require_tls: bool) -> Any:
    """Just what ``GatewaySMTP._client`` reads."""
    return SimpleNamespace(
        gw=SimpleNamespace(credential=None),
        is_tls=False,
        listener=SimpleNamespace(require_tls=require_tls),
        _relay_client=None,
    )


def test_the_remembered_relay_view_equals_a_fresh_one_through_auth_and_starttls():
    cred = Credential(name="c")
    for require_tls in (False, True):
        session = fake_session(require_tls)
        for credential, tls in itertools.product([None, cred, None, cred], [False, True, False]):
            session.gw.credential, session.is_tls = credential, tls
            fresh = relay.Client(authorized=credential is not None, tls=tls, require_tls=require_tls)
            assert GatewaySMTP._client(session) == fresh
            assert GatewaySMTP._client(session) is GatewaySMTP._client(session)  # remembered


def old_order_reply(host_name: str | None, txn: Transaction | None, mail: bool, rcpt: bool) -> str | None:
    """What ``_out_of_sequence`` pushed before (``None``: it pushed nothing and returned False)."""
    if not host_name:
        return R.NEED_HELO
    elif mail and txn is None:
        return R.NEED_MAIL
    elif rcpt and txn is not None and not txn.rcpt_tos:
        return R.NEED_RCPT
    return None


def test_the_plain_order_check_gives_the_replies_of_the_awaited_one():
    txns = [
        None,
        Transaction(mail_from="a@example.com"),
        Transaction(mail_from="a@example.com", rcpt_tos=["b@x"]),
    ]
    for host_name, txn, mail, rcpt in itertools.product(
        [None, "", "client"], txns, [False, True], [False, True]
    ):
        session = SimpleNamespace(session=SimpleNamespace(host_name=host_name), txn=txn)
        got = GatewaySMTP._sequence_reply(session, mail=mail, rcpt=rcpt)  # type: ignore[arg-type]
        assert got == old_order_reply(host_name, txn, mail, rcpt)


async def test_a_transaction_gets_the_replies_it_got_before(data_dir):
    config = ingress_test_config(data_dir, relay={"local_domains": ["example.net"]})
    async with running_ingress(config) as (_, ingress):
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port("plain"))
        out = [await reader.readline()]
        for line in (
            b"DATA",
            b"HELO client.test",
            b"RCPT TO:<b@example.net>",
            b"DATA",
            b"MAIL FROM:<a@example.com>",
            b"DATA",
            b"RCPT TO:<b@example.net>",
            b"RCPT TO:<c@elsewhere.test>",
            b"DATA",
        ):
            writer.write(line + b"\r\n")
            out.append(await asyncio.wait_for(reader.readline(), 10))
        writer.write(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        out.append(await asyncio.wait_for(reader.readline(), 10))
        out.append(await asyncio.wait_for(reader.readline(), 10))
        writer.close()
    queued = out[-2]
    assert queued.startswith(b"250 2.0.0 Ok: queued as ") and queued.endswith(b"\r\n")
    assert out[:-2] == [
        b"220 gw.test ESMTP smtpgate\r\n",
        b"503 5.5.1 Error: send HELO/EHLO first\r\n",
        b"250 gw.test\r\n",
        b"503 5.5.1 Error: need MAIL command\r\n",
        b"503 5.5.1 Error: need MAIL command\r\n",
        b"250 2.1.0 Sender ok\r\n",
        b"503 5.5.1 Error: need RCPT command\r\n",
        b"250 2.1.5 Recipient ok\r\n",
        b"530 5.7.0 Authentication required (no username or password)\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ]
    assert out[-1] == b"221 2.0.0 Bye\r\n"


async def _session_freed(ingress: Any, steps: list[bytes], close_early: bool) -> bool:
    """Run one connection with the cyclic garbage collector off: whether its session object was
    freed (by reference counting) once it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port("plain"))
    await reader.readline()
    [session] = list(ingress.sessions)
    ref = weakref.ref(session)
    del session
    for step in steps:  # (each answered with one line)
        writer.write(step)
        await asyncio.wait_for(reader.readline(), 10)
    if close_early:
        writer.transport.abort()
    else:
        await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    for _ in range(500):  # a few loop steps: the loop's own handles let go of the connection
        if ref() is None:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_an_ended_session_is_freed_without_the_cyclic_collector(data_dir):
    config = ingress_test_config(data_dir, relay={"local_domains": ["example.net"]})
    transaction = [
        b"HELO client.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@example.net>\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n",
    ]
    gc.collect()
    gc.disable()
    try:
        async with running_ingress(config) as (_, ingress):
            assert await _session_freed(ingress, [*transaction, b"QUIT\r\n"], close_early=False)
            assert await _session_freed(ingress, transaction[:3], close_early=True)  # the client vanishes
            assert await _session_freed(ingress, transaction[:4], close_early=True)  # ... during DATA
            assert await _session_freed(ingress, [b"HELO x\r\n", b"FOO\r\n", b"QUIT\r\n"], close_early=False)
    finally:
        gc.enable()
