//! The help pages of the web listeners (`http`, `https`): `/help/tls` explains SSL vs TLS
//! vs STARTTLS and lists the exact secure settings, generated from the configuration this
//! server runs with so the page is never out of date.

use crate::config::Config;
use crate::tlspolicy::{Mode, secure_settings};
use anyhow::Result;
use web::{Request, Response, escape_html};

pub struct HelpSite {
    tls_page: String,
}

impl HelpSite {
    pub fn new(cfg: &Config) -> Result<HelpSite> {
        Ok(HelpSite {
            tls_page: tls_page(cfg)?,
        })
    }
}

impl web::Handler for HelpSite {
    fn handle(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/help/tls" | "/help/tls/" => Response::html(self.tls_page.clone()),
            "/" | "/help" | "/help/" => Response::html(page(
                "Help",
                "<ul><li><a href=\"/help/tls\">Secure settings for your mail program \
                 (SSL, TLS and STARTTLS)</a></li></ul>",
            )),
            _ => Response::text(404, "not found\n"),
        }
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;\
         padding:0 1em;line-height:1.5}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:.3em .8em;text-align:left}}</style></head>\
         <body>\n{body}\n</body></html>\n",
        escape_html(title)
    )
}

fn mode_words(cfg: &Config, protocol: &str) -> String {
    let p = &cfg.tls_policy;
    let pp = match protocol {
        "imap" => &p.imap,
        "pop3" => &p.pop3,
        _ => &p.submission,
    };
    let mode = pp.tls.unwrap_or(if cfg.allow_plaintext_auth {
        Mode::Allow
    } else {
        Mode::Require
    });
    match (mode, &pp.require_after) {
        (Mode::Require, _) => "encryption required".into(),
        (Mode::Notify, Some(d)) => {
            format!("unencrypted logins refused from {}", escape_html(d))
        }
        (Mode::Notify, None) => "unencrypted logins get a warning by mail".into(),
        (Mode::Allow, _) => "unencrypted logins still accepted (not recommended)".into(),
    }
}

fn tls_page(cfg: &Config) -> Result<String> {
    let mut rows = String::new();
    for s in secure_settings(cfg)? {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"port\">{}</td><td>{}</td></tr>\n",
            escape_html(s.protocol),
            escape_html(&s.host),
            s.port,
            s.mode
        ));
    }
    let body = format!(
        r#"<h1>Secure settings for your mail program</h1>
<p>Your mail program sends your password every time it connects. Without encryption,
anyone on the network between you and us (a café's Wi-Fi, for example) can read it, and
your mail too. Set your mail program to one of the settings below; your user name and
password stay the same.</p>
<h2>The settings</h2>
<table id="settings">
<tr><th>What</th><th>Server</th><th>Port</th><th>Security (also called "connection security" or "encryption")</th></tr>
{rows}</table>
<p>User name: your full email address. Password: your usual password
("normal password" in Thunderbird).</p>
<p>Current policy: IMAP: {imap}; POP3: {pop3}; SMTP submission: {sub}.</p>
<h2>SSL, TLS and STARTTLS in plain words</h2>
<p><b>SSL and TLS</b> are the same thing, an encrypted tunnel between your mail program
and our server. SSL is the old name; TLS is the current version. Mail programs use the
names loosely: "SSL", "SSL/TLS" and "TLS" usually all mean the same setting.</p>
<p>There are two ways to start the tunnel, and each has its own port:</p>
<ul>
<li><b>SSL/TLS</b> (sometimes "implicit TLS"): the connection is encrypted from the very
first byte. This is the simplest and safest choice: use it when your program offers it.</li>
<li><b>STARTTLS</b>: the connection starts unencrypted on the protocol's normal port, and
the program then asks to switch to encryption before it sends your password. Choose it
only with the STARTTLS port above, and never "STARTTLS if available": that lets an
attacker quietly remove the encryption.</li>
</ul>
<p>"None" or "no encryption" is the setting to change: with it your password travels in
the clear. We will refuse such connections, so please change it now.</p>
<h2>Where to change it</h2>
<ul>
<li><b>Thunderbird</b>: Account Settings, Server Settings (and Outgoing Server (SMTP)
for sending), Connection security.</li>
<li><b>Apple Mail</b>: Settings, Accounts, Server Settings: untick "Automatically manage
connection settings", tick "Use TLS/SSL", set the port.</li>
<li><b>Outlook</b>: Account Settings, More Settings, Advanced: "Use the following type of
encrypted connection".</li>
<li><b>Phones</b>: in the account's incoming and outgoing server settings, "Security
type" or "Use SSL".</li>
</ul>
"#,
        imap = mode_words(cfg, "imap"),
        pop3 = mode_words(cfg, "pop3"),
        sub = mode_words(cfg, "submission"),
    );
    Ok(page("Secure settings for your mail program", &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use web::Handler as _;

    fn get(site: &HelpSite, path: &str) -> Response {
        site.handle(&Request {
            method: "GET".into(),
            path: path.into(),
            query: None,
            headers: vec![],
        })
    }

    #[test]
    fn the_tls_page_lists_the_configured_ports_and_escapes_the_hostname() {
        let cfg: Config = toml::from_str(
            "hostname = \"mail<x>.example\"\n[listen]\nimaps = \"127.0.0.1:993\"\npop3 = \"127.0.0.1:110\"\n\
             [tls_policy.imap]\ntls = \"notify\"\nrequire_after = \"2026-06-30\"\n",
        )
        .unwrap();
        let site = HelpSite::new(&cfg).unwrap();
        let r = get(&site, "/help/tls");
        assert_eq!(r.status, 200);
        let html = String::from_utf8(r.body).unwrap();
        assert!(html.contains("<td>IMAP</td><td>mail&lt;x&gt;.example</td><td class=\"port\">993</td><td>SSL/TLS</td>"), "{html}");
        assert!(html.contains("<td class=\"port\">110</td><td>STARTTLS</td>"));
        assert!(html.contains("unencrypted logins refused from 2026-06-30"));
        assert!(html.contains("STARTTLS</b>"));
        assert_eq!(get(&site, "/etc/passwd").status, 404);
    }
}
