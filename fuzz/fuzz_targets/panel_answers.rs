//! A 3x-ui panel's answers are outside input: a panel of another version, a proxy's error
//! page or a hostile panel can send any bytes. Every input is read the ways the worker reads
//! answers (a `get/{id}` envelope, a `list` answer's `obj`, one client, one traffic row);
//! nothing may panic, and whatever parses must survive what the worker then does with it:
//! overlaying keyledger's fields on a client keeps the panel's other fields, serialises and
//! reads back to the same owned fields, and then matches the spec it was made from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use uuid::Uuid;
use x3ui_worker::{ClientSpec, ClientTraffic, InboundClients, PanelClient};

/// The inbound the seeds' `list` answers hold; other ids exercise "not in the list".
const INBOUND_ID: i64 = 1;

fuzz_target!(|data: &[u8]| {
    if let Ok(read) = InboundClients::from_answer(data) {
        check_read(&read);
    }
    if let Ok(obj) = serde_json::from_slice::<Value>(data)
        && let Ok(read) = InboundClients::from_list(obj, INBOUND_ID)
    {
        assert_eq!(read.inbound.id, INBOUND_ID);
        check_read(&read);
    }
    if let Ok(client) = serde_json::from_slice::<PanelClient>(data) {
        check_overlay(&client);
    }
    if let Ok(row) = serde_json::from_slice::<ClientTraffic>(data) {
        check_row(&row);
    }
});

fn check_read(read: &InboundClients) {
    let _ = read.inbound.default_flow();
    for client in &read.clients {
        let found = read
            .by_email(&client.email)
            .expect("a client is found by its own email");
        assert!(found.email.eq_ignore_ascii_case(&client.email));
        let _ = read.effectively_enabled(client);
        check_overlay(client);
    }
    for (email, row) in read.traffic.iter().flatten() {
        assert_eq!(
            *email,
            email.to_ascii_lowercase(),
            "rows are keyed lower-case"
        );
        assert!(read.traffic_of(email).is_some());
        check_row(row);
    }
}

/// What the worker does with a client it found: keyledger's fields over the panel's.
fn check_overlay(found: &PanelClient) {
    let mut spec = ClientSpec::new(Uuid::from_u128(0x0123_4567_89ab_cdef), &found.email);
    spec.enable = !found.enable;
    spec.tg_id = found.tg_id;
    spec.comment.clone_from(&found.comment);
    let sent = spec.apply_to(Some(found));
    assert_eq!(sent.extra, found.extra, "the panel's own fields are kept");
    assert!(spec.matches(&sent), "{:?}", spec.differences(&sent));

    let wire = serde_json::to_vec(&sent).expect("a client serialises");
    let back: PanelClient = serde_json::from_slice(&wire).expect("a sent client reads back");
    let owned = |c: &PanelClient| {
        (
            c.id.clone(),
            c.email.clone(),
            c.enable,
            c.flow.clone(),
            c.limit_ip,
            c.total_bytes,
            c.expiry_time_ms,
            c.tg_id,
            c.sub_id.clone(),
            c.comment.clone(),
        )
    };
    assert_eq!(owned(&back), owned(&sent));
    // Numbers in foreign fields may move by a rounding step through serde_json; the
    // fields themselves must all come back.
    assert!(
        back.extra.keys().eq(sent.extra.keys()),
        "foreign fields kept"
    );
    assert!(spec.matches(&back), "{:?}", spec.differences(&back));
}

fn check_row(row: &ClientTraffic) {
    // Counters add up without overflowing, and a negative counter adds nothing.
    let used = row.used_bytes();
    assert!(used >= row.up.max(0).unsigned_abs() && used >= row.down.max(0).unsigned_abs());
    if row.quota_used_up() {
        assert!(!row.enable && row.total > 0);
    }
    if row.expired_by_panel(i64::MAX) {
        assert!(row.expiry_time_ms > 0);
    }
}
