//! The panel's traffic side: one `client_traffics` row per client beside the inbound's
//! settings, the bytes Xray counts, and the traffic job that adds them up, renews
//! clients with a `reset` period and disables clients whose quota or time ran out.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::SimConfig;
use super::state::{Data, email_of, id_of};

const DAY_MS: i64 = 86_400_000;

/// One row of the panel's `client_traffics` table: bytes, Unix ms, days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficRow {
    pub id: i64,
    pub inbound_id: i64,
    /// False once the traffic job disabled the client (or it was added disabled): Xray
    /// does not serve it then, whatever its settings entry says.
    pub enable: bool,
    pub email: String,
    pub uuid: String,
    pub sub_id: String,
    pub up: i64,
    pub down: i64,
    /// Bytes ever moved; a traffic reset leaves it.
    pub all_time: i64,
    /// Unix ms; 0 = never; negative = that many ms after first use.
    pub expiry_time: i64,
    /// The quota in bytes; 0 = unlimited.
    pub total: i64,
    /// The auto-renew period in days; 0 = none.
    pub reset: i64,
    /// Unix ms of the last job pass that saw the client move traffic; 0 = never.
    pub last_online: i64,
}

impl TrafficRow {
    /// The row as the panel sends it: a `clientStats` entry, or `getClientTraffics`' `obj`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "inboundId": self.inbound_id, "enable": self.enable,
            "email": self.email, "uuid": self.uuid, "subId": self.sub_id,
            "up": self.up, "down": self.down, "allTime": self.all_time,
            "expiryTime": self.expiry_time, "total": self.total, "reset": self.reset,
            "lastOnline": self.last_online,
        })
    }

    /// Over its quota or past its expiry: what the job disables.
    fn depleted(&self, now: i64) -> bool {
        (self.total > 0 && self.up.saturating_add(self.down) >= self.total)
            || (self.expiry_time > 0 && self.expiry_time <= now)
    }

    /// The fields an add or update copies from the client, read like the panel's Go
    /// struct does: no validation, and a value of the wrong type (a float or a string
    /// `totalGB`, a missing `enable`) is the zero value.
    fn take_client(&mut self, client: &Map<String, Value>) {
        let int = |name: &str| client.get(name).and_then(Value::as_i64).unwrap_or(0);
        self.enable = client
            .get("enable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        email_of(client).clone_into(&mut self.email);
        id_of(client).clone_into(&mut self.uuid);
        client
            .get("subId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .clone_into(&mut self.sub_id);
        self.total = int("totalGB");
        self.expiry_time = int("expiryTime");
        self.reset = int("reset");
    }
}

/// What one pass of the traffic job did, in row order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficPass {
    /// Clients that moved traffic in this pass: what `onlines` answers until the next
    /// pass, unless Xray restarts.
    pub online: Vec<String>,
    /// Clients whose negative `expiryTime` became a real time at their first traffic.
    pub started: Vec<String>,
    /// Clients renewed by their `reset` period: counters zeroed, expiry moved on, enabled.
    pub renewed: Vec<String>,
    /// Clients disabled for their quota or their expiry.
    pub disabled: Vec<String>,
    /// Whether Xray was restarted after disabling (`restart_xray_on_disable`).
    pub restarted_xray: bool,
}

/// Field changes to one client's settings entry, by inbound and lower-case email.
type SettingsEdits = BTreeMap<i64, BTreeMap<String, Vec<(&'static str, Value)>>>;

impl Data {
    pub(crate) fn traffic_row(&self, email: &str) -> Option<&TrafficRow> {
        self.traffic
            .iter()
            .find(|r| r.email.eq_ignore_ascii_case(email))
    }

    fn traffic_row_mut(&mut self, email: &str) -> Option<&mut TrafficRow> {
        self.traffic
            .iter_mut()
            .find(|r| r.email.eq_ignore_ascii_case(email))
    }

    /// The `clientStats` of an inbound.
    pub(crate) fn inbound_traffic(&self, inbound_id: i64) -> Vec<Value> {
        self.traffic
            .iter()
            .filter(|r| r.inbound_id == inbound_id)
            .map(TrafficRow::to_json)
            .collect()
    }

    /// A client was added: a fresh row with zero counters. One row per email, so a v3.1
    /// client attached to a second inbound keeps the row it has.
    pub(crate) fn add_traffic_row(&mut self, inbound_id: i64, client: &Map<String, Value>) {
        if self.traffic_row(email_of(client)).is_some() {
            return;
        }
        self.last_traffic_id += 1;
        let mut row = TrafficRow {
            id: self.last_traffic_id,
            inbound_id,
            ..TrafficRow::default()
        };
        row.take_client(client);
        self.traffic.push(row);
    }

    /// A client was updated: its row takes the new fields and keeps its counters.
    pub(crate) fn update_traffic_row(&mut self, old_email: &str, client: &Map<String, Value>) {
        if let Some(row) = self.traffic_row_mut(old_email) {
            row.take_client(client);
        }
        // Bytes Xray counted follow the client under its new email.
        if let Some(counted) = self.xray_counted.remove(&old_email.to_ascii_lowercase()) {
            self.xray_counted
                .insert(email_of(client).to_ascii_lowercase(), counted);
        }
    }

    /// A client was deleted: its row goes too.
    pub(crate) fn remove_traffic_row(&mut self, email: &str) {
        self.traffic
            .retain(|r| !r.email.eq_ignore_ascii_case(email));
        self.xray_counted.remove(&email.to_ascii_lowercase());
    }

    /// resetClientTraffic: counters to zero and the row enabled again; the settings
    /// entry is left as it is. False if there is no row.
    pub(crate) fn reset_traffic(&mut self, email: &str) -> bool {
        let Some(row) = self.traffic_row_mut(email) else {
            return false;
        };
        row.up = 0;
        row.down = 0;
        row.enable = true;
        true
    }

    /// Whether Xray serves the client: its row and its settings entry are both enabled.
    pub(crate) fn in_xray(&self, email: &str) -> bool {
        let Some(row) = self.traffic_row(email) else {
            return false;
        };
        row.enable
            && self
                .clients(row.inbound_id)
                .unwrap_or_default()
                .iter()
                .any(|c| {
                    email_of(c).eq_ignore_ascii_case(email)
                        && c.get("enable").and_then(Value::as_bool) == Some(true)
                })
    }

    /// Xray counts bytes for a client it serves; false (nothing counted) for any other.
    pub(crate) fn count_traffic(&mut self, email: &str, up: i64, down: i64) -> bool {
        if !self.in_xray(email) {
            return false;
        }
        let counted = self
            .xray_counted
            .entry(email.to_ascii_lowercase())
            .or_default();
        counted.0 = counted.0.saturating_add(up.max(0));
        counted.1 = counted.1.saturating_add(down.max(0));
        true
    }

    /// `{email: lastOnline}` for every row.
    pub(crate) fn last_online(&self) -> Value {
        Value::Object(
            self.traffic
                .iter()
                .map(|r| (r.email.clone(), json!(r.last_online)))
                .collect(),
        )
    }

    /// One pass of the panel's traffic job at time `now` (Unix ms).
    pub(crate) fn traffic_pass(&mut self, config: &SimConfig, now: i64) -> TrafficPass {
        let mut pass = TrafficPass::default();
        let mut edits = SettingsEdits::new();
        let mut edit = |row: &TrafficRow, field: &'static str, value: Value| {
            edits
                .entry(row.inbound_id)
                .or_default()
                .entry(row.email.to_ascii_lowercase())
                .or_default()
                .push((field, value));
        };
        let counted = std::mem::take(&mut self.xray_counted);
        for row in &mut self.traffic {
            let Some(&(up, down)) = counted.get(&row.email.to_ascii_lowercase()) else {
                continue;
            };
            let moved = up.saturating_add(down);
            if moved <= 0 {
                continue;
            }
            if row.expiry_time < 0 {
                // "N ms after first use" starts now.
                row.expiry_time = now.saturating_sub(row.expiry_time);
                edit(row, "expiryTime", json!(row.expiry_time));
                pass.started.push(row.email.clone());
            }
            row.up = row.up.saturating_add(up);
            row.down = row.down.saturating_add(down);
            row.all_time = row.all_time.saturating_add(moved);
            row.last_online = now;
            pass.online.push(row.email.clone());
        }
        for row in &mut self.traffic {
            if row.reset > 0 && row.expiry_time > 0 && row.expiry_time <= now {
                let period = row.reset.saturating_mul(DAY_MS);
                let periods = (now - row.expiry_time) / period + 1;
                row.expiry_time = row
                    .expiry_time
                    .saturating_add(periods.saturating_mul(period));
                row.up = 0;
                row.down = 0;
                row.enable = true;
                edit(row, "expiryTime", json!(row.expiry_time));
                edit(row, "enable", Value::Bool(true));
                pass.renewed.push(row.email.clone());
            }
        }
        for row in &mut self.traffic {
            if row.enable && row.depleted(now) {
                row.enable = false;
                if config.disable_sets_settings_flag {
                    edit(row, "enable", Value::Bool(false));
                }
                pass.disabled.push(row.email.clone());
            }
        }
        for (inbound_id, by_email) in edits {
            self.edit_clients(inbound_id, |clients| {
                for client in clients.iter_mut() {
                    let key = email_of(client).to_ascii_lowercase();
                    for (field, value) in by_email.get(&key).into_iter().flatten() {
                        client.insert((*field).to_owned(), value.clone());
                    }
                }
            });
        }
        self.onlines = (!pass.online.is_empty()).then(|| pass.online.clone());
        if !pass.disabled.is_empty() && config.restart_xray_on_disable {
            self.restart_xray();
            pass.restarted_xray = true;
        }
        pass
    }

    /// A new Xray process: it knows nobody online until traffic moves again, and bytes
    /// the old one counted but the job had not collected are gone.
    pub(crate) fn restart_xray(&mut self) {
        self.onlines = None;
        self.xray_counted.clear();
    }
}
