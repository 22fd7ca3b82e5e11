//! Issue 9, item 6: several sources in one schema never touch each other. Two simulators with distinct data (two
//! enterprises, two tokens) sync into one warehouse: each source's lock, watermark, backfill, enrichment, reconcile
//! and status are its own, deletes in one never mark the other's sessions, and a session id arriving from a second
//! source fails the run with an error that names both, instead of moving silently.

use crate::common;

use std::collections::BTreeSet;

use common::{TestDb, assert_source_matches_where, build_syncer, test_settings};
use devin_etl::sync::{Mode, Syncer};
use devin_sim::{RunningSimulator, Simulator};

struct Source {
    name: &'static str,
    sim: Simulator,
    _server: RunningSimulator,
    syncer: Syncer,
}

async fn source(db: &TestDb, name: &'static str, seed: u64, sessions: usize) -> Source {
    let (sim, server) = common::enterprise_api(name, seed, sessions).await;
    let mut settings = test_settings(&db.url, &server.base_url(), sim.token());
    settings.sync.source = name.to_owned();
    settings.api.page_size = 20;
    let syncer = build_syncer(settings).await;
    Source { name, sim, _server: server, syncer }
}

impl Source {
    /// The source's sessions upstream are stored exactly, as delivered by it; `removed` are stored and marked
    /// deleted.
    async fn assert_exact(&self, removed: &BTreeSet<String>) {
        let store = self.syncer.store();
        let truth = self.sim.sessions();
        let upstream: BTreeSet<String> = truth.iter().map(|s| s.session_id.clone()).collect();
        assert_source_matches_where(store, self.name, &truth, |id| upstream.contains(id)).await;
        let (live, deleted): (Vec<String>, Vec<String>) = sqlx::query_as(
            "select coalesce(array_agg(session_id) filter (where deleted_at is null), '{}'),
                    coalesce(array_agg(session_id) filter (where deleted_at is not null), '{}')
             from sessions where source = $1",
        )
        .bind(self.name)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(live.into_iter().collect::<BTreeSet<_>>(), upstream, "{}: live sessions", self.name);
        assert_eq!(&deleted.into_iter().collect::<BTreeSet<_>>(), removed, "{}: deleted sessions", self.name);
    }

    fn remove(&self, n: usize) -> BTreeSet<String> {
        let ids: Vec<String> = self.sim.sessions().iter().step_by(5).take(n).map(|s| s.session_id.clone()).collect();
        for id in &ids {
            assert!(self.sim.remove(id));
        }
        ids.into_iter().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_share_a_schema_and_deletes_in_one_never_touch_the_other() {
    let db = TestDb::create().await;
    let acme = source(&db, "acme", 1, 120).await;
    let globex = source(&db, "globex", 2, 80).await;
    assert!(acme.sim.sessions().iter().all(|s| globex.sim.session(&s.session_id).is_none()), "distinct data");

    // Both backfill at the same time: the locks are per source.
    let (a, g) = tokio::join!(acme.syncer.run_once(Mode::Backfill), globex.syncer.run_once(Mode::Backfill));
    a.unwrap();
    g.unwrap();
    acme.assert_exact(&BTreeSet::new()).await;
    globex.assert_exact(&BTreeSet::new()).await;
    let store = acme.syncer.store();
    assert_eq!(store.watermark("acme").await.unwrap(), Some(acme.sim.now() - 30));
    assert_eq!(store.watermark("globex").await.unwrap(), Some(globex.sim.now() - 30));

    // Deletes in one enterprise; both reconcile: only acme's removed sessions are marked deleted.
    let removed = acme.remove(6);
    let a = acme.syncer.run_once(Mode::Reconcile).await.unwrap();
    let g = globex.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!((a.deleted, g.deleted), (6, 0));
    acme.assert_exact(&removed).await;
    globex.assert_exact(&BTreeSet::new()).await;

    // Updates in each, then each source's ordinary sync: exact, and each watermark moves on its own.
    acme.sim.advance(60);
    globex.sim.advance(600);
    acme.sim.update_some(10);
    globex.sim.update_some(10);
    acme.sim.advance(60);
    globex.sim.advance(60);
    acme.syncer.sync(None).await.unwrap();
    globex.syncer.sync(None).await.unwrap();
    acme.assert_exact(&removed).await;
    globex.assert_exact(&BTreeSet::new()).await;
    assert_eq!(store.watermark("acme").await.unwrap(), Some(acme.sim.now() - 30));
    assert_eq!(store.watermark("globex").await.unwrap(), Some(globex.sim.now() - 30));

    // Status is per source.
    let status = devin_etl::status::collect(store, "acme", None).await.unwrap();
    assert_eq!((status.live_sessions, status.deleted_sessions), (114, 6));
    assert!(status.runs.iter().all(|r| r.mode != "backfill" || r.sessions_upserted == 120));
    let status = devin_etl::status::collect(store, "globex", None).await.unwrap();
    assert_eq!((status.live_sessions, status.deleted_sessions), (80, 0));
}

/// acme and globex, 40 sessions each, backfilled into one schema.
async fn two_backfilled_sources() -> (TestDb, Source, Source) {
    let db = TestDb::create().await;
    let acme = source(&db, "acme", 1, 40).await;
    let globex = source(&db, "globex", 2, 40).await;
    acme.syncer.run_once(Mode::Backfill).await.unwrap();
    globex.syncer.run_once(Mode::Backfill).await.unwrap();
    (db, acme, globex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_is_per_source() {
    let (_db, acme, globex) = two_backfilled_sources().await;
    let pending_acme =
        acme.syncer.store().sessions_pending_enrichment("acme", 0).await.unwrap().into_iter().collect::<BTreeSet<_>>();
    let acme_ids: BTreeSet<String> = acme.sim.sessions().into_iter().map(|s| s.session_id).collect();
    assert!(!pending_acme.is_empty() && pending_acme.is_subset(&acme_ids), "acme re-fetches only its own sessions");
    let pending_globex = globex.syncer.store().sessions_pending_enrichment("globex", 0).await.unwrap();
    assert!(!pending_globex.is_empty() && pending_globex.iter().all(|id| !acme_ids.contains(id)), "and globex its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_arriving_from_a_second_source_fails_the_run_naming_both_and_moves_nothing() {
    let (_db, acme, globex) = two_backfilled_sources().await;

    // globex's API starts returning one of acme's sessions (a misconfiguration: the same enterprise twice).
    let stolen = acme.sim.sessions()[3].clone();
    globex.sim.advance(60);
    let mut copy = stolen.clone();
    copy.updated_at = globex.sim.now();
    copy.title = Some("changed under globex".to_owned());
    globex.sim.put(copy);
    globex.sim.advance(60);
    let error = globex.syncer.run_once(Mode::Incremental).await.expect_err("a session belongs to one source");
    let message = format!("{error:#}");
    assert!(
        message.contains(&stolen.session_id) && message.contains("\"acme\"") && message.contains("\"globex\""),
        "the error names the session and both sources: {message}"
    );
    let (owner, title): (String, Option<String>) =
        sqlx::query_as("select source, title from sessions where session_id = $1")
            .bind(&stolen.session_id)
            .fetch_one(acme.syncer.store().pool())
            .await
            .unwrap();
    assert_eq!((owner.as_str(), title), ("acme", stolen.title.clone()), "nothing moved, nothing overwritten");
    acme.assert_exact(&BTreeSet::new()).await;
    assert_eq!(globex.syncer.store().watermark("globex").await.unwrap(), Some(globex.sim.now() - 120 - 30));
}
