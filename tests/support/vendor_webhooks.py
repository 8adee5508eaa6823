"""The vendors' published webhook example payloads, as fixtures for tests/test_webhook_formats.py.

Values are the vendors' own examples (trimmed of nothing but whitespace); each block names its source.
"""

from __future__ import annotations

from typing import Any

# Source: SendGrid Event Webhook Reference, "Here is an event response that includes an example of
# each type of event", https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
SENDGRID: dict[str, dict[str, Any]] = {
    "delivered": {
        "email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "delivered", "category": "cat facts", "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id", "response": "250 OK",
    },
    "open": {
        "email": "example@test.com", "timestamp": 1513299569, "event": "open", "sg_machine_open": False,
        "category": "cat facts", "sg_event_id": "sg_event_id", "sg_message_id": "sg_message_id",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
    },
    "click": {
        "email": "example@test.com", "timestamp": 1513299569, "event": "click", "category": "cat facts",
        "sg_event_id": "sg_event_id", "sg_message_id": "sg_message_id",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)",
        "ip": "255.255.255.255", "url": "http://www.sendgrid.com/",
    },
    "bounce": {
        "email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "bounce", "category": "cat facts", "sg_event_id": "sg_event_id", "sg_message_id": "sg_message_id",
        "reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce",
    },
    "unsubscribe": {
        "email": "example@test.com", "timestamp": 1513299569, "event": "unsubscribe", "category": "cat facts",
        "sg_event_id": "sg_event_id", "sg_message_id": "sg_message_id",
    },
}
SENDGRID_NOT_PROVIDED = {"ip"}  # the tracking service does not record the client's address

# Source: Mailgun "Webhook Payloads" and "Securing Webhooks",
# https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads (delivered
# event, trimmed to the fields every event type shares plus delivery-status) and
# https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks (signature).
MAILGUN_DELIVERED: dict[str, Any] = {
    "signature": {
        "token": "e0b5477167110d68991efc6b9f89f0a11066af27834600e123",
        "timestamp": "1770920772",
        "signature": "12d99f5a15355c180971bed7494d578b093c958f57766f3fe750761baed12345",
    },
    "event-data": {
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": 1521472262.908181,
        "log-level": "info",
        "event": "delivered",
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"},
        "campaigns": [],
        "message": {"headers": {"message-id": "20130503182626.18666.16540@example.com"}},
        "delivery-status": {"code": 250, "message": "OK", "description": "", "attempt-no": 1},
    },
}

# Source: Postmark webhook docs, the example JSON of each webhook page:
# https://postmarkapp.com/developer/webhooks/delivery-webhook, /bounce-webhook, /open-tracking-webhook,
# /click-webhook, /subscription-change-webhook
POSTMARK: dict[str, dict[str, Any]] = {
    "Delivery": {
        "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
        "MessageID": "00000000-0000-0000-0000-000000000000", "Recipient": "john@example.com", "Tag": "welcome-email",
        "DeliveredAt": "2021-02-21T16:34:52Z", "Details": "Test delivery webhook details",
        "Metadata": {"example": "value", "example_2": "value"},
    },
    "Bounce": {
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807, "Type": "HardBounce",
        "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test", "MessageID": "00000000-0000-0000-0000-000000000000",
        "Metadata": {"a_key": "a_value", "b_key": "b_value"}, "ServerID": 1234,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details", "Email": "john@example.com", "From": "sender@example.com",
        "BouncedAt": "2021-02-21T16:34:52Z", "DumpAvailable": True, "Inactive": True, "CanActivate": True,
        "Subject": "Test subject", "Content": "Test content",
    },
    "Open": {
        "RecordType": "Open", "MessageStream": "outbound", "Metadata": {"example": "value"}, "FirstOpen": True,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "WebMail", "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)", "ReadSeconds": 5,
        "Geo": {"CountryISOCode": "RS", "Country": "Serbia"}, "MessageID": "00000000-0000-0000-0000-000000000000",
        "ReceivedAt": "2021-02-21T16:34:52Z", "Tag": "welcome-email", "Recipient": "john@example.com",
    },
    "Click": {
        "RecordType": "Click", "MessageStream": "outbound", "Metadata": {"example": "value"},
        "ClickLocation": "HTML", "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "Desktop", "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)",
        "OriginalLink": "https://example.com", "Geo": {"CountryISOCode": "RS", "Country": "Serbia"},
        "MessageID": "00000000-0000-0000-0000-000000000000", "ReceivedAt": "2021-02-21T16:34:52Z",
        "Tag": "welcome-email", "Recipient": "john@example.com",
    },
    "SubscriptionChange": {
        "RecordType": "SubscriptionChange", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "ServerID": 123456,
        "MessageStream": "outbound", "ChangedAt": "2020-02-01T10:53:34.416071Z",
        "Recipient": "bounced-address@wildbit.com", "Origin": "Recipient", "SuppressSending": True,
        "SuppressionReason": "HardBounce", "Tag": "my-tag", "Metadata": {"example": "value", "example_2": "value"},
    },
}
POSTMARK_NOT_PROVIDED = {"Content"}  # the bounce dump: only with Postmark's IncludeContent option


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and value types, not the values (for comparing payloads)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


# Source: SendGrid's own test vector for its signed Event Webhook helper, @sendgrid/eventwebhook
# (sendgrid-nodejs, packages/eventwebhook/src/eventwebhook.spec.js, version 7.2.6): a public key, a
# timestamp, a payload and the signature SendGrid produced over them.
SENDGRID_SIGNED = {
    "public_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTn"
    "lvFYPAZFceEu/1FwCM/QmGUhA==",
    "signature": "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=",
    "timestamp": "1588788367",
    "payload": b'{"category":"example_payload","event":"test_event","message_id":"message_id"}',
}
