"""SMTP ingress: listeners, TLS, AUTH, relay rules and limits in front of the admission chain."""

from pipeline.ingress.service import IngressService

__all__ = ["IngressService"]
