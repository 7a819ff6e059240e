//! Business keys in reports: instance figures grouped by a key's value
//! ([`ReportOptions::by_key`](super::ReportOptions::by_key), [`KeyFigures`]), and a key value's
//! history read from a store without an engine ([`Report::key_history`], `procflow history`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use chrono::Duration;
use serde::Serialize;

use super::{Durations, Report, ReportError, align, human};
use crate::def::ProcessDef;
use crate::exec::{KeyRecord, KeyValue, KeyedInstance, key_records, keyed_view, sort_history};
use crate::model::{Instance, Status};
use crate::store::{BusinessKey, Fact, Store, StoredFacts};
use crate::vars::VarType;

/// The figures of the instances holding one value of the key a report groups by
/// ([`ReportOptions::by_key`](super::ReportOptions::by_key)), across processes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyFigures {
    /// The key's name, e.g. `customer_id`.
    pub key: String,
    /// Its value, rendered canonically ([`BusinessKey::render`]).
    pub value: String,
    /// The processes of the instances, by id.
    pub processes: Vec<String>,
    /// Instances holding the value.
    pub started: usize,
    /// Of those, completed.
    pub completed: usize,
    /// Of those, still running.
    pub open: usize,
    /// Of those, cancelled.
    pub cancelled: usize,
    /// `ended_at - started_at` of the completed ones.
    pub cycle_time: Durations,
    /// Of those, whose process-wide SLA deadline fired.
    pub sla_breached: usize,
}

/// One key value's instances and history, read from a store ([`Report::key_history`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyHistory {
    /// The key's name.
    pub key: String,
    /// The value, rendered canonically.
    pub value: String,
    /// The instances holding it, oldest first (`sla` is not computed: no calendars here).
    pub instances: Vec<KeyedInstance>,
    /// Their audit records in time order.
    pub records: Vec<KeyRecord>,
}

/// Groups instances by the value of `key`, for [`Report::compute`]. An instance counts when
/// its definition lists `key` under `keys:` and it holds a value.
#[derive(Default)]
pub(super) struct ByKey {
    groups: BTreeMap<String, Group>,
}

#[derive(Default)]
struct Group {
    processes: Vec<String>,
    started: usize,
    completed: usize,
    open: usize,
    cancelled: usize,
    cycles: Vec<Duration>,
    breached: usize,
}

impl ByKey {
    pub(super) fn add(&mut self, key: &str, def: &ProcessDef, inst: &Instance) {
        if !def.keys().any(|k| k == key) {
            return;
        }
        let Some(value) = inst.vars().get(key).and_then(BusinessKey::render) else {
            return;
        };
        let g = self.groups.entry(value).or_default();
        let process = &def.key().id;
        if !g.processes.contains(process) {
            g.processes.push(process.clone());
            g.processes.sort();
        }
        g.started += 1;
        match inst.status() {
            Status::Completed => {
                g.completed += 1;
                if let Some(end) = inst.ended_at() {
                    g.cycles.push(end - inst.started_at());
                }
            }
            Status::Cancelled => g.cancelled += 1,
            _ => g.open += 1,
        }
        if keyed_view(inst, Some(def), None).sla_breached {
            g.breached += 1;
        }
    }

    /// The groups of the by-key counts and cycles a store summed.
    pub(super) fn of_facts(stored: &StoredFacts) -> ByKey {
        let mut by = ByKey::default();
        for (value, process, fact, n) in &stored.key_counts {
            let n = usize::try_from(*n).unwrap_or(0);
            let g = by.groups.entry(value.clone()).or_default();
            if matches!(fact, Fact::Completed | Fact::Open | Fact::Cancelled) {
                // Each instance has one of them: together they are the instances started.
                if n > 0 && !g.processes.contains(process) {
                    g.processes.push(process.clone());
                    g.processes.sort();
                }
                g.started += n;
            }
            match fact {
                Fact::Completed => g.completed += n,
                Fact::Cancelled => g.cancelled += n,
                Fact::Open => g.open += n,
                Fact::KeyBreached => g.breached += n,
                _ => {}
            }
        }
        for (value, from, to) in &stored.key_cycles {
            by.groups
                .entry(value.clone())
                .or_default()
                .cycles
                .push(*to - *from);
        }
        by
    }

    pub(super) fn finish(self, key: &str) -> Vec<KeyFigures> {
        self.groups
            .into_iter()
            .map(|(value, g)| KeyFigures {
                key: key.to_owned(),
                value,
                processes: g.processes,
                started: g.started,
                completed: g.completed,
                open: g.open,
                cancelled: g.cancelled,
                cycle_time: Durations::of(g.cycles),
                sla_breached: g.breached,
            })
            .collect()
    }
}

impl Report {
    /// Every instance in `store` holding business key `key` with `value` (any process, running
    /// or ended) and their audit records in time order: a customer's interaction history, read
    /// without an engine (the `procflow history` command).
    ///
    /// # Errors
    /// [`ReportError::UnknownKey`] when no stored definition lists `key` under `keys:`;
    /// [`ReportError::BadKeyValue`] when every one declares it an integer and `value` is text
    /// that is not one; [`ReportError::Store`], [`ReportError::Definition`].
    pub fn key_history(
        store: &dyn Store,
        key: &str,
        value: impl Into<KeyValue>,
    ) -> Result<KeyHistory, ReportError> {
        let defs = Report::definitions(store, None)?;
        let types: Vec<VarType> = defs
            .iter()
            .filter(|d| d.keys().any(|k| k == key))
            .filter_map(|d| d.variables().find(|v| v.name() == key).map(|v| v.ty()))
            .collect();
        if types.is_empty() {
            return Err(ReportError::UnknownKey {
                key: key.to_owned(),
            });
        }
        let value = match value.into() {
            KeyValue::Text(text) if types.iter().all(|t| *t == VarType::Integer) => {
                match text.trim().parse::<i64>() {
                    Ok(n) => n.to_string(),
                    Err(_) => {
                        return Err(ReportError::BadKeyValue {
                            key: key.to_owned(),
                            value: text,
                        });
                    }
                }
            }
            other => other.render(),
        };
        let find = |inst: &Instance| -> Option<&Arc<ProcessDef>> {
            let k = inst.def()?;
            defs.iter().find(|d| d.key() == k)
        };
        let mut instances = Vec::new();
        let mut records = Vec::new();
        for stored in store.read_many(&store.by_key(key, &value)?)? {
            let inst = &stored.instance;
            if inst
                .vars()
                .get(key)
                .and_then(BusinessKey::render)
                .as_deref()
                != Some(&value)
            {
                continue;
            }
            let def = find(inst).map(|d| &**d);
            instances.push(keyed_view(inst, def, None));
            key_records(inst, def, &mut records);
        }
        instances.sort_by_key(|k| (k.started_at, k.id));
        sort_history(&mut records);
        Ok(KeyHistory {
            key: key.to_owned(),
            value,
            instances,
            records,
        })
    }
}

impl KeyHistory {
    /// The history as text: a table of the instances, then one line per record.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Instances with {} = {}", self.key, self.value);
        if self.instances.is_empty() {
            out.push_str("  (none)\n");
        } else {
            let mut rows = vec![
                [
                    "instance",
                    "process",
                    "status",
                    "started",
                    "ended",
                    "open tasks",
                    "SLA breached",
                ]
                .map(str::to_owned)
                .to_vec(),
            ];
            for i in &self.instances {
                rows.push(vec![
                    i.id.to_string(),
                    i.definition.to_string(),
                    format!("{:?}", i.status).to_lowercase(),
                    i.started_at.to_rfc3339(),
                    i.ended_at.map(|e| e.to_rfc3339()).unwrap_or_default(),
                    i.open_tasks.join(" "),
                    if i.sla_breached { "yes" } else { "" }.to_owned(),
                ]);
            }
            out.push_str(&align(&rows));
        }
        let _ = writeln!(out, "\nHistory ({} records)", self.records.len());
        for r in &self.records {
            let _ = writeln!(
                out,
                "{} {} {}: {}",
                r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                r.instance,
                r.definition,
                r.what
            );
        }
        out
    }

    /// The history as JSON (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a history is plain serde data")
    }
}

/// The rows of the by-key section of a report, header first.
pub(super) fn section(keys: &[KeyFigures], csv: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let cols: &[&str] = if csv {
        &[
            "section",
            "key",
            "value",
            "processes",
            "started",
            "completed",
            "open",
            "cancelled",
            "cycle_p50_s",
            "cycle_p90_s",
            "sla_breached",
        ]
    } else {
        &[
            "",
            "key",
            "value",
            "processes",
            "started",
            "completed",
            "open",
            "cancelled",
            "cycle p50",
            "p90",
            "SLA breached",
        ]
    };
    let d = |d: Option<Duration>| match d {
        None => String::new(),
        Some(d) if csv => super::seconds_text(d),
        Some(d) => human(d),
    };
    let rows = keys
        .iter()
        .map(|k| {
            vec![
                "keys".to_owned(),
                k.key.clone(),
                k.value.clone(),
                k.processes.join(" "),
                k.started.to_string(),
                k.completed.to_string(),
                k.open.to_string(),
                k.cancelled.to_string(),
                d(k.cycle_time.p50),
                d(k.cycle_time.p90),
                k.sla_breached.to_string(),
            ]
        })
        .collect();
    (cols.iter().map(|c| (*c).to_owned()).collect(), rows)
}
