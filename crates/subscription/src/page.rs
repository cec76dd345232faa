//! The page a browser gets: the URL, a QR code to scan with the phone, and "add to app"
//! buttons. Telegram's URL buttons open only `http(s)` links, so the bot links here and the
//! page hands the URL to the app through the app's own deep link.

use axum::http::{HeaderValue, StatusCode, header};

use crate::entries::Contents;
use crate::render::Rendered;
use domain::encode_uri_component;

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The QR code of `text` as an inline SVG; `None` if it does not fit one.
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .quiet_zone(true)
            .build(),
    )
}

/// Deep links that import `url` into the common apps, as (label, link).
pub fn app_links(url: &str, title: &str) -> Vec<(&'static str, String)> {
    let (u, t) = (encode_uri_component(url), encode_uri_component(title));
    vec![
        ("v2rayNG", format!("v2rayng://install-sub?url={u}&name={t}")),
        ("Hiddify", format!("hiddify://import/{url}#{t}")),
        (
            "sing-box",
            format!("sing-box://import-remote-profile?url={}#{t}", {
                encode_uri_component(&format!("{url}/singbox"))
            }),
        ),
        ("Streisand", format!("streisand://import/{url}")),
        ("Happ", format!("happ://add/{url}")),
    ]
}

/// The page for `url` showing `contents`. The URL is a credential: the page tells the
/// browser not to send it on as a referrer, and loads nothing from elsewhere.
pub fn render(url: &str, title: &str, contents: &Contents) -> Rendered {
    let replaced = contents
        .entries
        .iter()
        .all(|e| e.remark == crate::entries::REPLACED);
    let servers: String = contents
        .entries
        .iter()
        .map(|e| {
            let mark = if e.working { "✅" } else { "" };
            format!("<li>{mark} {}</li>", escape(&e.remark))
        })
        .collect();
    let body = if replaced {
        format!(
            "<p>This link was replaced by a new one. Open the bot to get it.</p><ul>{servers}</ul>"
        )
    } else {
        let qr = qr_svg(url).unwrap_or_default();
        let buttons: String = app_links(url, title)
            .iter()
            .map(|(label, link)| {
                format!(
                    "<a class=\"app\" href=\"{}\">Add to {label}</a>",
                    escape(link)
                )
            })
            .collect();
        format!(
            "<p>Add this subscription to your VPN app; it keeps your servers up to date.</p>\
             <div class=\"qr\">{qr}</div>\
             <p><input readonly value=\"{url_attr}\" onclick=\"this.select()\"></p>\
             <p>{buttons}</p><h2>Servers</h2><ul>{servers}</ul>",
            url_attr = escape(url)
        )
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}}\
         input{{width:100%}}.app{{display:inline-block;margin:.25rem;padding:.5rem 1rem;\
         border:1px solid #888;border-radius:.5rem;text-decoration:none}}\
         .qr svg{{width:240px;height:240px}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    Rendered {
        status: StatusCode::OK,
        headers: vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body: page.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_carry_the_url_for_each_app() {
        let links = app_links("https://sub.example.com/s/abc", "VPN");
        assert!(links.iter().any(|(_, l)| l
            == "v2rayng://install-sub?url=https%3A%2F%2Fsub.example.com%2Fs%2Fabc&name=VPN"));
        assert!(
            links
                .iter()
                .any(|(_, l)| l == "hiddify://import/https://sub.example.com/s/abc#VPN")
        );
        assert!(escape("<a href=\"x\">") == "&lt;a href=&quot;x&quot;&gt;");
        assert!(qr_svg("https://sub.example.com/s/abc").is_some_and(|s| s.contains("<svg")));
    }
}
