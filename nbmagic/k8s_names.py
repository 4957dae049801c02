"""Kubernetes name rules, in one place: namespaces, server names, experiment names, secrets, labels."""

from __future__ import annotations

import re

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"  # RFC 1123 label, without its length limit
_LABEL = re.compile(DNS_LABEL)
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(rf"{DNS_LABEL}(\.{DNS_LABEL})*")
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def is_label(name: str, max_length: int = 63) -> bool:
    """An RFC 1123 label (namespaces, most object names): lowercase letters, digits, '-', alphanumeric ends."""
    return len(name) <= max_length and _LABEL.fullmatch(name) is not None


def is_dns1035_label(name: str, max_length: int = 63) -> bool:
    """An RFC 1035 label (Services, InferenceServices): like :func:`is_label`, starting with a letter."""
    return len(name) <= max_length and _DNS1035.fullmatch(name) is not None


def is_subdomain(name: str, max_length: int = 253) -> bool:
    """An RFC 1123 subdomain (Secrets, PersistentVolumeClaims): labels joined by dots."""
    return len(name) <= max_length and _SUBDOMAIN.fullmatch(name) is not None


def is_label_key(key: str) -> bool:
    """A label or annotation key: an optional DNS prefix and '/', then a name of at most 63 characters."""
    return _LABEL_KEY.fullmatch(key) is not None


def is_label_value(value: str) -> bool:
    """A label value: empty, or at most 63 letters, digits, '-', '_', '.' with alphanumeric ends."""
    return _LABEL_VALUE.fullmatch(value) is not None
