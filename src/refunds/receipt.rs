//! Customer receipts: 40-column text for POS printers, and HTML.

use super::object::RefundObject;

pub const WIDTH: usize = 40;

/// `text` without invisible formatting characters (bidirectional overrides
/// such as U+202E, zero-width marks).
fn visible(text: &str) -> String {
    text.chars()
        .filter(|c| {
            !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        })
        .collect()
}

/// Breaks `text` into lines of at most `WIDTH` characters. Invisible
/// formatting characters (bidirectional overrides such as U+202E, zero-width
/// marks) are dropped: on a printed receipt they could reorder what the
/// customer reads.
fn wrap(text: &str) -> Vec<String> {
    let text = visible(text);
    let text = text.as_str();
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > WIDTH {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let head: String = word.chars().take(WIDTH).collect();
            word = word.chars().skip(WIDTH).collect();
            lines.push(head);
        }
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if needed > WIDTH && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn center(text: &str) -> Vec<String> {
    wrap(text)
        .into_iter()
        .map(|l| {
            let pad = (WIDTH - l.chars().count()) / 2;
            format!("{}{}", " ".repeat(pad), l)
        })
        .collect()
}

/// A label on the left and its value on the right; the value wraps below when long.
fn field(label: &str, value: &str) -> Vec<String> {
    let value = visible(value);
    let value = value.as_str();
    let used = label.chars().count() + 1 + value.chars().count();
    if used <= WIDTH {
        vec![format!("{label}{}{value}", " ".repeat(WIDTH - used + 1))]
    } else {
        let mut out = vec![label.to_string()];
        out.extend(
            wrap(value)
                .into_iter()
                .map(|l| format!("{}{l}", " ".repeat(WIDTH - l.chars().count()))),
        );
        out
    }
}

fn status_word(status: &str) -> &'static str {
    match status {
        "succeeded" => "APPROVED",
        "failed" => "DECLINED",
        _ => "PENDING",
    }
}

/// The refund's time as the receipt shows it: (label, value). In the
/// store's time zone when one is configured (`2026-11-30 20:22:12 +04`),
/// else in UTC.
fn date(r: &RefundObject, tz: Option<&jiff::tz::TimeZone>) -> (&'static str, String) {
    let utc = || r.created_at.replace('T', " ").replace('Z', "");
    let Some(tz) = tz else {
        return ("Date (UTC)", utc());
    };
    match r.created_at.parse::<jiff::Timestamp>() {
        Ok(t) => {
            let local = t.to_zoned(tz.clone());
            let offset = local.offset().seconds();
            let sign = if offset < 0 { '-' } else { '+' };
            let (h, m) = (offset.abs() / 3600, offset.abs() % 3600 / 60);
            let zone = if m == 0 {
                format!("{sign}{h:02}")
            } else {
                format!("{sign}{h:02}:{m:02}")
            };
            (
                "Date",
                format!("{} {zone}", local.strftime("%Y-%m-%d %H:%M:%S")),
            )
        }
        Err(_) => ("Date (UTC)", utc()),
    }
}

pub fn text(r: &RefundObject, store_name: &str, tz: Option<&jiff::tz::TimeZone>) -> String {
    let rule = "-".repeat(WIDTH);
    let mut lines = Vec::new();
    lines.extend(center(store_name));
    lines.extend(center("REFUND RECEIPT"));
    lines.push(rule.clone());
    lines.extend(field("Refund", &r.id));
    lines.extend(field("Provider", &r.provider));
    if let Some(p) = &r.provider_refund_id {
        lines.extend(field("Provider ref", p));
    }
    lines.extend(field("Original txn", &r.transaction_no));
    if let Some(reference) = &r.reference {
        lines.extend(field("Order", reference));
    }
    let (label, when) = date(r, tz);
    lines.extend(field(label, &when));
    if let Some(reason) = &r.reason {
        lines.extend(field("Reason", reason));
    }
    lines.push(rule.clone());
    lines.extend(field(
        "REFUND AMOUNT",
        &format!("{} {}", r.amount, r.currency),
    ));
    lines.extend(field("Status", status_word(&r.status)));
    if let Some(m) = &r.failure_message {
        lines.extend(wrap(m));
    }
    lines.push(rule);
    if r.status == "pending" {
        lines.extend(center("Your refund is being processed."));
    } else if r.status == "succeeded" {
        lines.extend(center(
            "The amount will be credited to your original payment method.",
        ));
    }
    if !r.livemode {
        lines.extend(center("*** TEST MODE - NO MONEY MOVED ***"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn html(r: &RefundObject, store_name: &str, tz: Option<&jiff::tz::TimeZone>) -> String {
    let (label, when) = date(r, tz);
    let mut rows = vec![
        ("Refund", r.id.clone()),
        ("Provider", r.provider.clone()),
        (
            "Provider reference",
            r.provider_refund_id.clone().unwrap_or_default(),
        ),
        ("Original transaction", r.transaction_no.clone()),
        ("Order", r.reference.clone().unwrap_or_default()),
        (label, when),
        ("Amount", format!("{} {}", r.amount, r.currency)),
        ("Status", status_word(&r.status).to_string()),
    ];
    if let Some(reason) = &r.reason {
        rows.push(("Reason", reason.clone()));
    }
    let body: String = rows
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&visible(v))))
        .collect();
    let test = if r.livemode {
        ""
    } else {
        "<p class=\"test\">Test mode: no money moved.</p>"
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Refund receipt {id}</title>\
         <style>body{{font-family:sans-serif;max-width:28rem;margin:2rem auto}}th{{text-align:left;padding-right:1rem}}.test{{color:#b00}}</style>\
         </head><body><h1>{store}</h1><h2>Refund receipt</h2><table>{body}</table>{test}</body></html>",
        id = esc(&r.id),
        store = esc(store_name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RefundObject {
        RefundObject {
            id: "rf_01J0000000000000000000000".into(),
            object: "refund".into(),
            livemode: false,
            review_reason: None,
            pending_reason: None,
            next_check_at: None,
            provider: "pockyt".into(),
            status: "succeeded".into(),
            amount: "10.50".into(),
            currency: "USD".into(),
            settle_currency: Some("USD".into()),
            transaction_no: "297553638301777927".into(),
            reference: Some(
                "a-very-long-order-reference-that-will-not-fit-in-forty-columns".into(),
            ),
            refund_reference: None,
            provider_refund_id: Some("297553638302358781".into()),
            provider_status: Some("success".into()),
            provider_code: Some("000100".into()),
            failure_code: None,
            failure_message: None,
            reason: Some("<script>customer changed mind</script>".into()),
            receipt_email: None,
            metadata: Default::default(),
            created_at: "2026-11-23T10:00:00Z".into(),
            updated_at: "2026-11-23T10:00:01Z".into(),
        }
    }

    #[test]
    fn text_fits_forty_columns_and_names_everything() {
        let t = text(
            &sample(),
            "A Store With A Rather Long Name On Main Street, Springfield",
            None,
        );
        for line in t.lines() {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        for needle in [
            "REFUND RECEIPT",
            "rf_01J0000000000000000000000",
            "297553638302358781",
            "297553638301777927",
            "10.50 USD",
            "APPROVED",
            "TEST MODE",
        ] {
            assert!(t.contains(needle), "{needle} missing from\n{t}");
        }
    }

    #[test]
    fn a_bidi_override_never_reaches_the_paper() {
        let mut r = sample();
        r.reason = Some("refund \u{202E}00.001\u{202C} only".into());
        let t = text(&r, "Store", None);
        assert!(!t.contains('\u{202E}') && t.contains("00.001"), "{t}");
    }

    #[test]
    fn html_escapes_user_text() {
        let h = html(&sample(), "Store & Co", None);
        assert!(h.contains("Store &amp; Co"));
        assert!(h.contains("&lt;script&gt;"));
        assert!(!h.contains("<script>"));
    }

    #[test]
    fn a_configured_time_zone_shows_the_stores_local_time() {
        let dubai = jiff::tz::TimeZone::get("Asia/Dubai").unwrap();
        let t = text(&sample(), "Store", Some(&dubai));
        assert!(t.contains("2026-11-23 14:00:00 +04"), "{t}");
        assert!(!t.contains("(UTC)"), "{t}");
        let kolkata = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap();
        let h = html(&sample(), "Store", Some(&kolkata));
        assert!(h.contains("2026-11-23 15:30:00 +05:30"), "{h}");
        // A daylight-saving zone: winter and summer offsets.
        let ny = jiff::tz::TimeZone::get("America/New_York").unwrap();
        assert!(text(&sample(), "S", Some(&ny)).contains("2026-11-23 05:00:00 -05"));
        let mut summer = sample();
        summer.created_at = "2026-07-01T12:00:00Z".into();
        assert!(text(&summer, "S", Some(&ny)).contains("2026-07-01 08:00:00 -04"));
        assert!(text(&sample(), "S", None).contains("Date (UTC)"));
    }
}
