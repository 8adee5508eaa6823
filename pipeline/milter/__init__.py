"""smtpgate's chain as a Sendmail/Postfix milter (protocol version 6): docs/milter.md."""

from pipeline.milter.service import MilterService, milter_services

__all__ = ["MilterService", "milter_services"]
