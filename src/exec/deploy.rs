//! Deploying definitions: resolving each service task's handler and the calendars once, keeping
//! the catalogue of deployed versions, and listing what does not deploy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{DeployError, DeployProblem, Engine, ExecError, lock};
use crate::def::{Behaviour, ProcessDef};
use crate::hooks::ServiceHandler;
use crate::ids::{DefKey, NodeId, NodeRef};
use crate::store::{StoreError, StoredDef};
use crate::time::calendar::BusinessCalendar;

/// A deployed definition with its service handlers resolved per node.
/// The most audit records [`Deployed::last_records`] makes room for at once.
pub(crate) const MAX_RECORDS_HINT: usize = 256;

pub(crate) struct Deployed {
    pub(crate) def: Arc<ProcessDef>,
    /// Shared by every instance of this definition.
    pub(crate) key: Arc<DefKey>,
    /// Node ids as events carry them, by node.
    pub(crate) names: Box<[Arc<str>]>,
    /// Node names (`name:`) as work lists show them, by node.
    pub(crate) titles: Box<[Option<Arc<str>>]>,
    pub(crate) handlers: Vec<Option<Arc<dyn ServiceHandler>>>,
    /// The business calendar the definition names.
    pub(crate) calendar: Option<Arc<BusinessCalendar>>,
    /// Calendars that single durations name for themselves.
    pub(crate) calendars: HashMap<String, Arc<BusinessCalendar>>,
    /// How many audit records the last start of this definition wrote.
    pub(crate) first_records: std::sync::atomic::AtomicUsize,
    /// About how many audit records a completed instance of this definition wrote (the most
    /// lately seen, at most [`MAX_RECORDS_HINT`]): a growing audit trail makes room for that
    /// many at once.
    pub(crate) last_records: std::sync::atomic::AtomicUsize,
    /// Why the definition cannot run here, when it was resumed from a store without a handler or
    /// calendar it names: its instances can be read but not started or stepped.
    pub(crate) missing: Option<DeployError>,
    /// By node: whether a token or task there may wait for a correlated message (a catch of
    /// one, or a boundary event on one); empty for a definition without any. The seam looks
    /// here before it works out an instance's waits (see `correlate.rs`).
    pub(crate) listens: Box<[bool]>,
}

impl Deployed {
    /// This definition with `calendar` in place of the one named `name`, or `None` when it
    /// does not use that name.
    pub(crate) fn with_calendar(
        &self,
        name: &str,
        calendar: &Arc<BusinessCalendar>,
    ) -> Option<Deployed> {
        let process = self.def.calendar.as_deref() == Some(name);
        if !process && !self.calendars.contains_key(name) {
            return None;
        }
        let mut calendars = self.calendars.clone();
        if let Some(c) = calendars.get_mut(name) {
            *c = Arc::clone(calendar);
        }
        Some(Deployed {
            def: Arc::clone(&self.def),
            key: Arc::clone(&self.key),
            names: self.names.clone(),
            titles: self.titles.clone(),
            handlers: self.handlers.clone(),
            calendar: if process {
                Some(Arc::clone(calendar))
            } else {
                self.calendar.clone()
            },
            calendars,
            listens: self.listens.clone(),
            first_records: self
                .first_records
                .load(std::sync::atomic::Ordering::Relaxed)
                .into(),
            last_records: self
                .last_records
                .load(std::sync::atomic::Ordering::Relaxed)
                .into(),
            missing: self.missing.clone(),
        })
    }

    /// A node as errors name it.
    pub(crate) fn node(&self, id: NodeId) -> NodeRef {
        NodeRef {
            id,
            name: Arc::clone(&self.names[id.index()]),
        }
    }

    /// Fails when the definition cannot run here.
    pub(crate) fn runnable(&self) -> Result<(), ExecError> {
        match &self.missing {
            Some(e) => Err(ExecError::Unavailable(e.clone())),
            None => Ok(()),
        }
    }
}

/// Deployed definitions by id, then version.
pub(crate) type Versions = HashMap<String, BTreeMap<u32, Arc<Deployed>>>;

/// The deployed definitions (by id, then version: the `Deref`), and who receives each
/// message. Built whole on each deploy and swapped in, so that a call reads one consistent
/// catalogue without a lock.
#[derive(Default)]
pub(crate) struct Catalog {
    versions: Versions,
    /// Message name → every deployed definition (each version) that declares it, with the
    /// message's place in its `messages`: a `correlate` looks at its receivers only, not at
    /// every definition deployed (a lookup in each of them, a microsecond with fifty).
    receivers: HashMap<String, Vec<(Arc<Deployed>, usize)>>,
}

impl Catalog {
    /// The catalogue of `versions`.
    pub(crate) fn new(versions: Versions) -> Catalog {
        let mut receivers: HashMap<String, Vec<(Arc<Deployed>, usize)>> = HashMap::new();
        for deployed in versions.values().flat_map(BTreeMap::values) {
            for (at, name) in deployed.def.messages.keys().enumerate() {
                receivers
                    .entry(name.clone())
                    .or_default()
                    .push((Arc::clone(deployed), at));
            }
        }
        Catalog {
            versions,
            receivers,
        }
    }

    /// The definitions that declare `message`, with its place in their `messages`.
    pub(crate) fn receivers(&self, message: &str) -> &[(Arc<Deployed>, usize)] {
        self.receivers.get(message).map_or(&[], Vec::as_slice)
    }
}

impl std::ops::Deref for Catalog {
    type Target = Versions;

    fn deref(&self) -> &Versions {
        &self.versions
    }
}

/// How [`Engine::install`] treats a definition.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Install {
    /// A host deploys it: everything must resolve, and the store keeps its text.
    Deploy,
    /// An engine resumes it from its store: what does not resolve is noted, not refused.
    Resume,
}

/// The newest version of `id`, or the one named.
pub(crate) fn find<'c>(
    catalog: &'c Catalog,
    id: &str,
    version: Option<u32>,
) -> Result<&'c Arc<Deployed>, ExecError> {
    let versions = catalog.get(id);
    let found = match version {
        Some(v) => versions.and_then(|vs| vs.get(&v)),
        None => versions.and_then(|vs| vs.values().next_back()),
    };
    found.ok_or_else(|| ExecError::UnknownProcess {
        id: id.to_owned(),
        version,
    })
}

impl Engine {
    /// Deploys a definition. Instances started afterwards use the newest version unless one is
    /// named. Deploying the same text again changes nothing (hosts deploy at every start).
    ///
    /// # Errors
    /// [`DeployError`] with every problem: a service task names a handler that is not
    /// registered, the definition names a calendar that is not, another text is deployed under
    /// this id and version, or the store refused to keep the text.
    pub fn deploy(&self, def: ProcessDef) -> Result<Arc<ProcessDef>, DeployError> {
        crate::telemetry::call!("deploy");
        // Call activities name deployed definitions (see `call.rs`).
        self.check_calls(&def, &[])?;
        self.install(def, Install::Deploy)
    }

    /// The definitions resumed from the store that cannot run here (a handler or calendar they
    /// name is not registered on this engine), and why. No running instance needs them (else
    /// [`EngineBuilder::open`](crate::EngineBuilder::open) refuses to open).
    pub fn unavailable(&self) -> Vec<DeployError> {
        let catalog = self.defs.load();
        let mut out: Vec<DeployError> = catalog
            .values()
            .flat_map(|versions| versions.values())
            .filter_map(|d| d.missing.clone())
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// A deployed definition: the newest version, or the one named.
    pub fn definition(&self, id: &str, version: Option<u32>) -> Option<Arc<ProcessDef>> {
        self.deployed(id, version).ok().map(|d| Arc::clone(&d.def))
    }

    pub(crate) fn deployed(
        &self,
        id: &str,
        version: Option<u32>,
    ) -> Result<Arc<Deployed>, ExecError> {
        find(&self.defs.load(), id, version).cloned()
    }

    /// Deploys `def`; see [`Install`].
    pub(crate) fn install(
        &self,
        def: ProcessDef,
        how: Install,
    ) -> Result<Arc<ProcessDef>, DeployError> {
        let mut problems = Vec::new();
        let names: Box<[Arc<str>]> = def.nodes.iter().map(|n| Arc::from(&*n.id)).collect();
        let titles = def
            .nodes
            .iter()
            .map(|n| n.name.as_deref().map(Arc::from))
            .collect();
        let node = |i: usize| NodeRef {
            id: NodeId(i as u32),
            name: Arc::clone(&names[i]),
        };
        let handlers = def
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.behaviour {
                Behaviour::ServiceTask { handler, location } => {
                    let found = self.handlers.get(handler).cloned();
                    if found.is_none() {
                        problems.push(DeployProblem::UnknownHandler {
                            node: node(i),
                            handler: handler.clone(),
                            location: *location,
                        });
                    }
                    found
                }
                _ => None,
            })
            .collect();
        let known = lock(&self.calendars).clone();
        let calendar = def.calendar.as_ref().and_then(|name| {
            let found = known.get(name).cloned();
            if found.is_none() {
                problems.push(DeployProblem::UnknownCalendar {
                    name: name.clone(),
                    node: None,
                });
            }
            found
        });
        // Calendars that single durations name for themselves.
        let mut calendars = HashMap::new();
        for (at, span) in def.spans() {
            let Some(name) = span.calendar() else {
                continue;
            };
            match known.get(name) {
                Some(c) => {
                    calendars.insert(name.to_owned(), Arc::clone(c));
                }
                None => {
                    let at = at.and_then(|n| def.nodes.iter().position(|m| std::ptr::eq(m, n)));
                    problems.push(DeployProblem::UnknownCalendar {
                        name: name.to_owned(),
                        node: at.map(node),
                    });
                }
            }
        }
        if let Some(org) = &self.org
            && let Err(e) = def.check_organisation(&org.org)
        {
            problems.push(DeployProblem::Organisation(e));
        }
        let key = def.key.clone();
        let fail = |problems| DeployError {
            key: key.clone(),
            problems,
        };
        let missing = match how {
            Install::Deploy if !problems.is_empty() => return Err(fail(problems)),
            Install::Resume if !problems.is_empty() => Some(fail(std::mem::take(&mut problems))),
            _ => None,
        };
        let _deploying = lock(&self.deploying);
        let mut catalog: Versions = (**self.defs.load()).clone();
        let versions = catalog.entry(def.key.id.clone()).or_default();
        if let Some(deployed) = versions.get(&def.key.version) {
            if deployed.def.text == def.text && deployed.missing.is_none() {
                return Ok(Arc::clone(&deployed.def));
            }
            if deployed.def.text != def.text {
                return Err(fail(vec![DeployProblem::AlreadyDeployed]));
            }
        }
        if how == Install::Deploy
            && let Some(store) = &self.store
        {
            let stored = StoredDef {
                key: def.key.clone(),
                text: def.text.clone(),
            };
            match store.save_definition(&stored) {
                Ok(()) => {}
                Err(StoreError::DefinitionChanged { .. }) => {
                    return Err(fail(vec![DeployProblem::AlreadyDeployed]));
                }
                Err(e) => return Err(fail(vec![DeployProblem::Store(e)])),
            }
        }
        let def = Arc::new(def);
        versions.insert(
            def.key.version,
            Arc::new(Deployed {
                key: Arc::new(def.key.clone()),
                def: Arc::clone(&def),
                names,
                titles,
                handlers,
                calendar,
                calendars,
                first_records: 0.into(),
                last_records: 0.into(),
                missing,
                listens: super::correlate::listening(&def),
            }),
        );
        self.defs.store(Arc::new(Catalog::new(catalog)));
        Ok(def)
    }

    /// Replaces the business calendar registered as `name` on a running engine, e.g. once the
    /// State Council's notice for a year has been added to it. Every deployed definition that
    /// names it counts on the new one from now on, and every provisional timer of the instances
    /// this engine holds (see [`Timer::provisional`](crate::Timer::provisional)) is computed
    /// again from the instant it counted from, committed, and recorded in the audit trail
    /// (`Entry::Retimed`). Gives how many instances had a timer moved.
    ///
    /// Instances this engine does not hold (another engine's, on a shared store) keep their
    /// timers until an engine that holds them is updated too.
    ///
    /// # Errors
    /// [`ExecError::UnknownCalendar`] when no calendar is registered as `name` (nothing
    /// changes); otherwise the first commit the store refused (the other instances are still
    /// updated; the refused one keeps its old instants and can be updated again).
    pub fn update_calendar(
        &self,
        name: &str,
        calendar: BusinessCalendar,
    ) -> Result<usize, ExecError> {
        self.not_busy()?;
        let calendar = Arc::new(calendar);
        {
            let mut known = lock(&self.calendars);
            let Some(slot) = known.get_mut(name) else {
                return Err(ExecError::UnknownCalendar(name.to_owned()));
            };
            *slot = Arc::clone(&calendar);
        }
        // The definitions that count on it, with the new calendar in place.
        let replaced: HashMap<DefKey, Arc<Deployed>> = {
            let _deploying = lock(&self.deploying);
            let mut catalog: Versions = (**self.defs.load()).clone();
            let mut replaced = HashMap::new();
            for versions in catalog.values_mut() {
                for deployed in versions.values_mut() {
                    if let Some(new) = deployed.with_calendar(name, &calendar) {
                        *deployed = Arc::new(new);
                        replaced.insert((*deployed.key).clone(), Arc::clone(deployed));
                    }
                }
            }
            self.defs.store(Arc::new(Catalog::new(catalog)));
            replaced
        };
        let mut moved = 0;
        let mut first_error = None;
        for id in self.instances() {
            let now = self.clock.now();
            let result = self.call(id, |slot| {
                let Some(new) = replaced.get(&*slot.dep.key) else {
                    return Ok(super::seam::Stepped::nothing(id));
                };
                slot.dep = Arc::clone(new);
                let stepped = self.step_slot(slot, now, |step| {
                    step.retime_provisional();
                    Ok(())
                });
                if stepped.armed.is_some() {
                    moved += 1;
                }
                Ok(stepped)
            });
            match result {
                Ok(()) | Err(ExecError::UnknownInstance(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// Deploys the stored definitions this engine does not have (another engine sharing the
    /// store deployed them after this one opened).
    pub(crate) fn load_definitions(&self) -> Result<(), ExecError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for stored in store.definitions()? {
            if find(&self.defs.load(), &stored.key.id, Some(stored.key.version)).is_ok() {
                continue;
            }
            // A stored text that no longer loads is reported by `open`; here it only leaves its
            // instances unreadable, which the caller hears as an unknown process.
            if let Ok(def) = ProcessDef::from_yaml(&stored.text) {
                let _ = self.install(def, Install::Resume);
            }
        }
        Ok(())
    }
}
