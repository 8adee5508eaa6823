"""Bounce and complaint messages as real MTAs and mailbox providers write them."""

from __future__ import annotations


def dsn(to: str, rcpt: str, status: str = "5.1.1", action: str = "failed",
        diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown") -> bytes:
    """A Postfix-style RFC 3464 delivery status notification."""
    diag = diagnostic.format(rcpt=rcpt)
    return f"""Return-Path: <>
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Sat, 21 Nov 2026 10:00:00 +0000
Message-Id: <20261121100000.ABC@mx.example.org>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

This is a MIME-encapsulated message.

--B1
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--B1
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
X-Postfix-Queue-ID: ABC
Arrival-Date: Sat, 21 Nov 2026 09:59:59 +0000

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mailbox.example.org
Diagnostic-Code: {diag}

--B1
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: news@shop.example
To: {rcpt}
Subject: Spring sale

--B1--
""".replace("\n", "\r\n").encode()


def arf(to: str, rcpt: str) -> bytes:
    """An RFC 5965 abuse report (feedback loop), as Yahoo or Mail.ru send them."""
    return f"""From: feedbackloop@fbl.example.net
To: {to}
Subject: FW: Spring sale
Date: Sat, 21 Nov 2026 11:00:00 +0000
Message-Id: <fbl-1@fbl.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F1"

--F1
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 192.0.2.1.

--F1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <bounces+x@bounce.example.com>
Original-Rcpt-To: <{rcpt}>
Arrival-Date: Sat, 21 Nov 2026 10:30:00 +0000
Source-IP: 192.0.2.1

--F1
Content-Type: message/rfc822

From: news@shop.example
To: {rcpt}
Subject: Spring sale

Buy now.
--F1--
""".replace("\n", "\r\n").encode()


def qmail(to: str, rcpt: str) -> bytes:
    """A qmail failure notice: no RFC 3464 part, only text (flufl.bounce reads it)."""
    return f"""From: MAILER-DAEMON@mx.example.org
To: {to}
Subject: failure notice
Date: Sat, 21 Nov 2026 10:00:00 +0000

Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{rcpt}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Subject: Spring sale
""".replace("\n", "\r\n").encode()


def vacation(to: str) -> bytes:
    return f"""From: ann@example.net
To: {to}
Subject: Out of office
Date: Sat, 21 Nov 2026 10:00:00 +0000
Auto-Submitted: auto-replied

I am away until Monday.
""".replace("\n", "\r\n").encode()
