//! Which format a fetch gets: the path's `/<format>` if given, else the app's User-Agent,
//! matched **at the start** only — Hiddify's and NekoBox's User-Agents contain "ClashMeta",
//! and an unanchored `clash` rule would send them YAML they did not ask for — else an HTML
//! page for a browser (`Accept: text/html`), else the base64 link list every app reads.

/// A format the subscription can be served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Base64 (standard alphabet, padded) of the links joined by `\n`.
    B64,
    /// The links joined by `\n`, as they are.
    Plain,
    /// A complete sing-box client configuration.
    Singbox,
    /// A mihomo (Clash Meta) profile.
    Clash,
    /// The page a person sees in a browser.
    Html,
}

impl Format {
    /// The name in `/s/<token>/<format>` and in the fetch log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::B64 => "b64",
            Self::Plain => "plain",
            Self::Singbox => "singbox",
            Self::Clash => "clash",
            Self::Html => "html",
        }
    }

    /// The format named in a path; the page is not one (it is chosen by `Accept`).
    pub fn from_path(name: &str) -> Option<Self> {
        match name {
            "b64" => Some(Self::B64),
            "plain" => Some(Self::Plain),
            "singbox" => Some(Self::Singbox),
            "clash" => Some(Self::Clash),
            _ => None,
        }
    }
}

/// User-Agent prefixes (lower case) of apps that read only sing-box configurations.
const SINGBOX_AGENTS: [&str; 5] = ["sfa/", "sfi/", "sfm/", "sft/", "sing-box"];

/// User-Agent prefixes (lower case) of apps that read only Clash (mihomo) profiles.
const CLASH_AGENTS: [&str; 6] = [
    "clash",
    "mihomo",
    "flclash",
    "clash-verge",
    "clashx",
    "stash/",
];

/// The format for a request without one in its path.
pub fn negotiate(user_agent: Option<&str>, accept: Option<&str>) -> Format {
    let agent = user_agent.unwrap_or("").trim_start().to_ascii_lowercase();
    if SINGBOX_AGENTS.iter().any(|p| agent.starts_with(p)) {
        return Format::Singbox;
    }
    if CLASH_AGENTS.iter().any(|p| agent.starts_with(p)) {
        return Format::Clash;
    }
    let wants_html = accept.is_some_and(|a| a.to_ascii_lowercase().contains("text/html"));
    if wants_html {
        return Format::Html;
    }
    Format::B64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_matched_at_the_start_only() {
        let cases = [
            ("v2rayNG/1.8.5", Format::B64),
            ("v2rayN/6.42", Format::B64),
            (
                "HiddifyNext/2.5.7 (android) like ClashMeta v2ray sing-box",
                Format::B64,
            ),
            (
                "NekoBox/Android/1.3.4 (Prefer ClashMeta Format)",
                Format::B64,
            ),
            ("SFA/1.9.0 (Android)", Format::Singbox),
            ("SFI/1.9.0", Format::Singbox),
            ("sing-box 1.14.4", Format::Singbox),
            ("clash-verge/v1.7.7", Format::Clash),
            ("ClashMetaForAndroid/2.10", Format::Clash),
            ("mihomo/1.18", Format::Clash),
            ("FlClash/v0.8", Format::Clash),
            ("Happ/1.0", Format::B64),
            ("", Format::B64),
        ];
        for (agent, expected) in cases {
            assert_eq!(negotiate(Some(agent), None), expected, "{agent}");
        }
    }

    #[test]
    fn a_browser_gets_the_page_and_an_app_never_does() {
        let html = "text/html,application/xhtml+xml;q=0.9";
        assert_eq!(negotiate(Some("Mozilla/5.0"), Some(html)), Format::Html);
        assert_eq!(negotiate(Some("SFA/1.9"), Some(html)), Format::Singbox);
        assert_eq!(negotiate(None, Some("*/*")), Format::B64);
        assert_eq!(Format::from_path("html"), None);
        assert_eq!(Format::from_path("clash"), Some(Format::Clash));
    }
}
