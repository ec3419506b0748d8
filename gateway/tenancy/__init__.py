"""Tenants, API keys and rate limits: authenticate, authorize, admit and settle (see Admission)."""

from gateway.tenancy.admin import admin_routes
from gateway.tenancy.admission import Admission, Principal, estimate_tokens
from gateway.tenancy.config import KeyConfig, LimitsConfig, TenancyConfig, TenantConfig
from gateway.tenancy.keycli import keys_command
from gateway.tenancy.lease import Lease

__all__ = ["Admission", "KeyConfig", "Lease", "LimitsConfig", "Principal", "TenancyConfig", "TenantConfig",
           "admin_routes", "estimate_tokens", "keys_command"]
