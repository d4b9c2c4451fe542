"""Device identity, broker credentials and access control for a Nightbox site."""

from provisioning.acl import Access, AccessPolicy, AclRule, topic_matches
from provisioning.credentials import (
    BrokerAccount,
    SiteCredentials,
    hash_password,
    verify_password,
)

__all__ = [
    "Access",
    "AccessPolicy",
    "AclRule",
    "BrokerAccount",
    "SiteCredentials",
    "hash_password",
    "topic_matches",
    "verify_password",
]
