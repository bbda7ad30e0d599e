//! `serve`'s flags for users from an OpenID Connect identity provider.
//! OIDC is off unless `--oidc-issuer` is set; static tokens keep working
//! either way.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::grpc::oidc::OidcConfig;

#[derive(Debug, Clone, Args)]
pub struct OidcArgs {
    /// Issuer URL (https://), exactly as its tokens carry it in `iss`;
    /// discovery is read from <issuer>/.well-known/openid-configuration.
    /// Unset or empty = OIDC off.
    #[arg(long = "oidc-issuer", env = "OIDC_ISSUER")]
    pub issuer: Option<String>,
    /// The `aud` tokens must carry (the client id); required with --oidc-issuer.
    #[arg(long = "oidc-audience", env = "OIDC_AUDIENCE")]
    pub audience: Option<String>,
    /// Claim holding the user name (must pass the user-name rules). A token
    /// without it is refused; there is no fallback to `sub`.
    #[arg(
        long = "oidc-username-claim",
        env = "OIDC_USERNAME_CLAIM",
        default_value = "preferred_username"
    )]
    pub username_claim: String,
    /// Claim holding the caller's groups (a list of strings).
    #[arg(
        long = "oidc-groups-claim",
        env = "OIDC_GROUPS_CLAIM",
        default_value = "groups"
    )]
    pub groups_claim: String,
    /// Callers whose groups claim holds this group get role admin; unset =
    /// OIDC callers are never admins.
    #[arg(long = "admin-group", env = "ADMIN_GROUP")]
    pub admin_group: Option<String>,
    /// PEM bundle trusted for the issuer's HTTPS; unset = the system's roots.
    #[arg(long = "oidc-ca", env = "OIDC_CA")]
    pub ca: Option<PathBuf>,
    /// Tolerance for the tokens' `exp` and `nbf`.
    #[arg(long = "oidc-clock-skew", env = "OIDC_CLOCK_SKEW", default_value = "60s", value_parser = crate::listen::parse_duration)]
    pub clock_skew: Duration,
}

impl OidcArgs {
    /// The settings, or None when OIDC is off; reads the CA bundle.
    pub fn config(&self) -> anyhow::Result<Option<OidcConfig>> {
        let Some(issuer) = self.issuer.as_deref().filter(|i| !i.trim().is_empty()) else {
            return Ok(None);
        };
        let audience = self
            .audience
            .as_deref()
            .filter(|a| !a.trim().is_empty())
            .context("--oidc-audience: required with --oidc-issuer")?;
        let mut cfg = OidcConfig::new(issuer, audience);
        cfg.username_claim = self.username_claim.clone();
        cfg.groups_claim = self.groups_claim.clone();
        cfg.admin_group = self.admin_group.clone().filter(|g| !g.is_empty());
        cfg.clock_skew = self.clock_skew;
        if let Some(path) = &self.ca {
            cfg.ca_pem = Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--oidc-ca: reading {}", path.display()))?,
            );
        }
        Ok(Some(cfg))
    }
}
