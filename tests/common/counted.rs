//! A store that counts what a test wants to see of the store under it (the instances read by
//! id, the commits refused as conflicts) and is otherwise that store: every method forwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use procflow::{
    Commit, InstanceId, Offer, ParkedMessage, Store, StoreError, StoreWake, StoreWatch, StoredDef,
    StoredFacts, StoredInstance,
};

pub(crate) struct Counted {
    inner: Arc<dyn Store>,
    reads: AtomicUsize,
    conflicts: Arc<AtomicUsize>,
}

#[allow(dead_code)] // Each test binary uses its part.
impl Counted {
    /// `inner`, counting its conflicts into `conflicts`.
    pub(crate) fn new(inner: Arc<dyn Store>, conflicts: Arc<AtomicUsize>) -> Arc<Counted> {
        Arc::new(Counted {
            inner,
            reads: AtomicUsize::new(0),
            conflicts,
        })
    }

    /// How many instances were read by id ([`Store::read`], [`Store::read_many`]) so far.
    pub(crate) fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl Store for Counted {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        self.inner.save_definition(def)
    }
    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        self.inner.definitions()
    }
    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let result = self.inner.commit(commit);
        if let Err(StoreError::Conflict { .. }) = &result {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(id)
    }
    fn read_many(&self, ids: &[InstanceId]) -> Result<Vec<StoredInstance>, StoreError> {
        self.reads.fetch_add(ids.len(), Ordering::SeqCst);
        self.inner.read_many(ids)
    }
    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.running()
    }
    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        self.inner.running_ids(process)
    }
    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.history(process, since)
    }
    fn report_facts(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
        key: Option<&str>,
    ) -> Result<Option<StoredFacts>, StoreError> {
        self.inner.report_facts(process, since, key)
    }
    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        self.inner.due(now)
    }
    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.outbox()
    }
    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        self.inner.reserve_ids(count)
    }
    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.inner.by_key(key, value)
    }
    fn running_by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.inner.running_by_key(key, value)
    }
    fn read_running_by_key(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<Vec<StoredInstance>>, StoreError> {
        let found = self.inner.read_running_by_key(key, value)?;
        if let Some(found) = &found {
            self.reads.fetch_add(found.len(), Ordering::SeqCst);
        }
        Ok(found)
    }
    fn offered(&self, to: &[Offer]) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.inner.offered(to)
    }
    fn offered_anywhere(
        &self,
        roles: &[procflow::RoleId],
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.inner.offered_anywhere(roles)
    }
    fn unoffered(
        &self,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        self.inner.unoffered(after, limit)
    }
    fn reoffer(&self, offers: &[(InstanceId, u64, Vec<Offer>)]) -> Result<usize, StoreError> {
        self.inner.reoffer(offers)
    }
    fn park(&self, message: &ParkedMessage) -> Result<(), StoreError> {
        self.inner.park(message)
    }
    fn settle(&self, id: u64, unmatched: Option<&ParkedMessage>) -> Result<(), StoreError> {
        self.inner.settle(id, unmatched)
    }
    fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        self.inner.parked()
    }
    fn unmatched(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        self.inner.unmatched()
    }
    fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.inner.claim_due(now, lease)
    }
    fn claim_outbox(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.inner.claim_outbox(lease)
    }
    fn next_wake(&self) -> Result<Option<StoreWake>, StoreError> {
        self.inner.next_wake()
    }
    fn watch(&self, wake: StoreWatch) -> bool {
        self.inner.watch(wake)
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
    fn defer(&self) -> bool {
        self.inner.defer()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}
