"""The plugin contract, the bottom layer: hook specifications, verdicts, the session/transaction/message context, the MIME message and the Plugin base. Imports nothing else from smtpgate."""
