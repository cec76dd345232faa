//! `keyledger panel-sim`: the stand-in 3x-ui panel of the tests, served for demos and
//! manual trials, with the quirks of the chosen panel version (docs/panel.md). It holds its
//! data in memory only: a throwaway panel, gone when the process ends.

use std::io::Write;
use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};

use service::Failure;

#[derive(Debug, Clone, Args)]
pub struct PanelSimArgs {
    /// Address to listen on (port 0: any free port; the URL printed says which).
    #[arg(long, default_value = "127.0.0.1:2053")]
    pub addr: SocketAddr,
    /// The panel's web base path, as the installer's random `webBasePath`.
    #[arg(long, default_value = "/panel-sim/")]
    pub base_path: String,
    /// Which panel version's API and quirks to serve.
    #[arg(long, value_enum, default_value_t = SimVersion::V2_9)]
    pub version: SimVersion,
    /// Port of the VLESS inbound (id 1), as put into `vless://` links.
    #[arg(long, default_value_t = 443)]
    pub inbound_port: u16,
    /// Remark of the inbound, the first part of each link's name.
    #[arg(long, default_value = "demo")]
    pub remark: String,
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// Environment variable holding the password (and, on v3.0+, the API token); without
    /// it a random password is made up and printed, since this panel is a throwaway.
    #[arg(long)]
    pub password_env: Option<String>,
}

/// Panel versions whose behaviour differs where keyledger can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimVersion {
    /// v2.6 – v2.8.3: 401 or a redirect without a session.
    #[value(name = "v2.6")]
    V2_6,
    /// v2.8.4 – v2.9.x, the most common: 404 without a session.
    #[value(name = "v2.9")]
    V2_9,
    /// v3.0: CSRF tokens and Bearer API tokens.
    #[value(name = "v3.0")]
    V3_0,
    /// v3.1+: the clients API.
    #[value(name = "v3.1")]
    V3_1,
}

impl SimVersion {
    fn config(self) -> SimConfig {
        match self {
            Self::V2_6 => SimConfig::v2_6(),
            Self::V2_9 => SimConfig::v2_9(),
            Self::V3_0 => SimConfig::v3_0(),
            Self::V3_1 => SimConfig::v3_1(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V2_6 => "v2.6",
            Self::V2_9 => "v2.9",
            Self::V3_0 => "v3.0",
            Self::V3_1 => "v3.1",
        }
    }
}

/// Serves the simulated panel until SIGINT or SIGTERM.
pub async fn run(args: &PanelSimArgs, out: &mut impl Write) -> Result<(), Failure> {
    let base_path = base_path(&args.base_path)?;
    let (password, source) = match &args.password_env {
        Some(variable) => {
            let password = std::env::var(variable).map_err(|_| {
                Failure::Usage(format!(
                    "--password-env: environment variable {variable} is not set"
                ))
            })?;
            if password.is_empty() {
                return Err(Failure::Usage(format!(
                    "--password-env: environment variable {variable} is empty"
                )));
            }
            (password, format!("from ${variable}"))
        }
        None => (
            Uuid::new_v4().simple().to_string(),
            "made up for this run".to_owned(),
        ),
    };
    let mut config = args.version.config();
    config.base_path = base_path;
    config.username.clone_from(&args.username);
    config.password.clone_from(&password);
    if config.api_token.is_some() {
        config.api_token = Some(password.clone());
    }
    let has_token = config.api_token.is_some();
    let sim = PanelSimulator::start_on(args.addr, config, &args.remark, args.inbound_port)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.addr))?;
    // Listen for signals before announcing the URL: a SIGTERM right after must end the
    // run cleanly.
    let stop = service::serve::shutdown_signal()?;
    let shown = if args.password_env.is_some() {
        source.clone()
    } else {
        format!("{password} ({source})")
    };
    writeln!(
        out,
        "3x-ui panel simulator {} listening\nurl: {}\nusername: {}\npassword: {shown}",
        args.version.name(),
        sim.base_url(),
        args.username,
    )
    .map_err(anyhow::Error::from)?;
    if has_token {
        writeln!(out, "api token: the password (Authorization: Bearer)")
            .map_err(anyhow::Error::from)?;
    }
    writeln!(
        out,
        "inbound: 1 ({}, port {}, vless tcp + reality)",
        args.remark, args.inbound_port
    )
    .map_err(anyhow::Error::from)?;
    out.flush().map_err(anyhow::Error::from)?;
    stop.await;
    tracing::info!("panel simulator stopping");
    Ok(())
}

/// The web base path with its leading and trailing `/`.
fn base_path(raw: &str) -> Result<String, Failure> {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed
        .chars()
        .any(|c| c.is_whitespace() || c == '?' || c == '#')
    {
        return Err(Failure::Usage(format!(
            "--base-path {raw:?} is not a URL path"
        )));
    }
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        format!("/{trimmed}/")
    })
}

#[cfg(test)]
mod tests {
    use super::base_path;

    #[test]
    fn base_paths_get_their_slashes() {
        assert_eq!(base_path("secret").ok().as_deref(), Some("/secret/"));
        assert_eq!(base_path("/a/b/").ok().as_deref(), Some("/a/b/"));
        assert_eq!(base_path("/").ok().as_deref(), Some("/"));
        assert!(base_path("/a b/").is_err());
    }
}
