//! Delivery status notifications (RFC 3464, RFC 3461 §6): the bounce a sender gets when a
//! message could not be delivered to some recipients. Pure: bytes in, bytes out.
//!
//! Shape: `multipart/report; report-type=delivery-status` with three parts — a short text for
//! humans, the `message/delivery-status` fields (one block per failed recipient) and the
//! original message's header section as `text/rfc822-headers` (headers only: the body may be
//! large and is the sender's own anyway). `Auto-Submitted: auto-replied` (RFC 3834) so
//! well-behaved responders do not answer it; it is sent with the null envelope sender so it
//! can never bounce back.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::mime::MimePart;

/// Header section of the original message kept in the report, at most this many bytes.
pub const ORIGINAL_HEADERS_BYTES_MAX: usize = 64 * 1024;

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1`, or `4.4.7` for expiry.
    pub status: String,
    /// The remote host's reply or our reason, e.g. `550 5.1.1 no such user`.
    pub diagnostic: String,
    /// The host that answered, if any.
    pub remote_mta: Option<String>,
}

/// Everything a report says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name (Reporting-MTA, MAILER-DAEMON@…).
    pub reporting_mta: &'a str,
    /// The original envelope sender: the report's recipient.
    pub to: &'a str,
    pub arrival_unix: i64,
    pub now_unix: i64,
    pub recipients: &'a [FailedRecipient],
    /// The original message (only its header section is used).
    pub original: &'a [u8],
    /// A unique token for the Message-ID (e.g. the queue id).
    pub id: &'a str,
}

/// The header section of a message (up to and including the blank line), bounded.
pub fn header_section(message: &[u8]) -> &[u8] {
    let end = find(message, b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(message.len())
        .min(ORIGINAL_HEADERS_BYTES_MAX);
    &message[..end]
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Strip CR/LF so a field value can never start a new field.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Builds the report message (CRLF line endings).
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let mut human = format!(
        "This is the mail system at {}.\r\n\r\n\
         Your message could not be delivered to the following recipients.\r\n\
         The reason for each is shown after its address.\r\n\r\n",
        one_line(r.reporting_mta)
    );
    for f in r.recipients {
        human.push_str(&format!(
            "<{}>: {}\r\n",
            one_line(&f.address),
            one_line(&f.diagnostic)
        ));
    }
    let mut status = format!(
        "Reporting-MTA: dns; {}\r\nArrival-Date: {}\r\n",
        one_line(r.reporting_mta),
        Date::new(r.arrival_unix).to_rfc822()
    );
    for f in r.recipients {
        let action = if f.status.starts_with('5') || f.status == "4.4.7" {
            "failed"
        } else {
            "delayed"
        };
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\n",
            one_line(&f.address),
            one_line(&f.status)
        ));
        if let Some(m) = &f.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(m)));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&f.diagnostic)
        ));
    }
    let headers = header_section(r.original);
    let headers_8bit = headers.iter().any(|&b| b >= 0x80);
    let parts = vec![
        MimePart::new(
            ContentType::new("text/plain").attribute("charset", "us-ascii"),
            human,
        )
        .transfer_encoding("7bit"),
        MimePart::new(ContentType::new("message/delivery-status"), status)
            .transfer_encoding("7bit"),
        MimePart::new(
            ContentType::new("text/rfc822-headers"),
            String::from_utf8_lossy(headers).into_owned(),
        )
        .transfer_encoding(if headers_8bit { "8bit" } else { "7bit" }),
    ];
    let from = format!("MAILER-DAEMON@{}", one_line(r.reporting_mta));
    let builder = MessageBuilder::new()
        .from(("Mail Delivery System", from.as_str()))
        .to(r.to)
        .subject("Undelivered Mail Returned to Sender")
        .date(Date::new(r.now_unix))
        .message_id(format!(
            "dsn.{}@{}",
            one_line(r.id),
            one_line(r.reporting_mta)
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            parts,
        ));
    // Writing to a Vec cannot fail.
    builder.write_to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_the_rfc3464_shape() {
        let recipients = [FailedRecipient {
            address: "bob@remote.example".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 <bob@remote.example>: no such user\r\nInjected: x".into(),
            remote_mta: Some("mx.remote.example".into()),
        }];
        let original = b"From: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
        let out = build(&Report {
            reporting_mta: "mail.example.com",
            to: "alice@example.com",
            arrival_unix: 1_700_000_000,
            now_unix: 1_700_000_100,
            recipients: &recipients,
            original,
            id: "q1",
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status"),
            "{text}"
        );
        assert!(text.contains("Content-Type: message/delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; bob@remote.example\r\n"));
        assert!(text.contains("Action: failed\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Remote-MTA: dns; mx.remote.example\r\n"));
        assert!(text.contains("Auto-Submitted: auto-replied"));
        assert!(text.contains("Subject: hi\r\n"));
        assert!(
            !text.contains("\r\nbody\r\n"),
            "the original body is not returned"
        );
        assert!(
            !text.contains("\r\nInjected: x"),
            "no header injection through the diagnostic"
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.parts.len(), 4);
    }

    #[test]
    fn header_section_is_bounded() {
        let big = vec![b'x'; ORIGINAL_HEADERS_BYTES_MAX * 2];
        assert_eq!(header_section(&big).len(), ORIGINAL_HEADERS_BYTES_MAX);
        assert_eq!(header_section(b"A: b\r\n\r\nc"), b"A: b\r\n\r\n");
    }
}
