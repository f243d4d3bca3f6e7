use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{SystemClock, Timestamp};
use crate::sessions::{Event, SessionId};
use crate::store::{SqliteStore, Store};

fn refused(n: usize) -> Event {
    Event::Refused {
        caller: None,
        action: format!("call {n}"),
        code: "forbidden".into(),
    }
}

fn settings(buffer: usize) -> Settings {
    Settings {
        buffer,
        poll: Duration::from_millis(100),
        heartbeat: Duration::from_secs(15),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn Store>,
    hub: Hub,
}

fn fixture(buffer: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockstep.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let hub = Hub::new(store.clone(), Arc::new(SystemClock), settings(buffer));
    Fixture {
        _dir: dir,
        path,
        store,
        hub,
    }
}

async fn record(store: &dyn Store, from: usize, to: usize) {
    for n in from..to {
        store
            .record(None, refused(n), Timestamp::from_unix(1_900_000_000))
            .await
            .unwrap();
    }
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event within 10 s")
            .expect("the subscription goes on")
            .expect("no error");
        seqs.push(event.entry.seq);
    }
    seqs
}

#[tokio::test]
async fn a_subscriber_gets_every_entry_after_its_start_then_each_new_one() {
    let f = fixture(64);
    record(f.store.as_ref(), 0, 10).await;
    let mut sub = f.hub.subscribe(3).unwrap();
    assert_eq!(take(&mut sub, 7).await, (4..=10).collect::<Vec<_>>());
    record(f.store.as_ref(), 10, 15).await;
    assert_eq!(take(&mut sub, 5).await, (11..=15).collect::<Vec<_>>());
    assert_eq!(sub.last(), 15);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_reads_the_store_and_misses_nothing() {
    let f = fixture(2);
    record(f.store.as_ref(), 0, 1).await;
    let mut slow = f.hub.subscribe(0).unwrap();
    assert_eq!(take(&mut slow, 1).await, vec![1]);
    // A second subscriber that keeps up shows when the hub has broadcast
    // everything; the slow one is not polled meanwhile.
    let mut probe = f.hub.subscribe(1).unwrap();
    let writes = async { record(f.store.as_ref(), 1, 100).await };
    let (_, seen) = tokio::join!(writes, take(&mut probe, 99));
    assert_eq!(seen, (2..=100).collect::<Vec<_>>());
    let before = f.hub.lags();
    assert_eq!(take(&mut slow, 99).await, (2..=100).collect::<Vec<_>>());
    assert!(
        f.hub.lags() > before,
        "the slow subscriber went back to the store"
    );
}

#[tokio::test]
async fn commits_of_another_process_are_published_after_a_poll() {
    let f = fixture(64);
    let mut sub = f.hub.subscribe(0).unwrap();
    // Another store on the same file: its commits are not signalled here.
    let other = SqliteStore::open(&f.path).unwrap();
    record(&other, 0, 3).await;
    assert_eq!(take(&mut sub, 3).await, vec![1, 2, 3]);
    record(&other, 3, 4).await;
    assert_eq!(take(&mut sub, 1).await, vec![4]);
}

#[tokio::test]
async fn a_session_id_that_names_no_session_has_no_resource() {
    let f = fixture(64);
    let id = SessionId::generate().unwrap();
    f.store
        .record(Some(&id), refused(0), Timestamp::from_unix(1_900_000_000))
        .await
        .unwrap();
    let mut sub = f.hub.subscribe(0).unwrap();
    let event = sub.next().await.unwrap().unwrap();
    assert_eq!(event.entry.session.as_deref(), Some(id.as_str()));
    assert_eq!(event.session, None);
}

#[tokio::test]
async fn stopping_the_hub_ends_every_subscription_and_refuses_new_ones() {
    let f = fixture(64);
    record(f.store.as_ref(), 0, 1).await;
    let mut sub = f.hub.subscribe(0).unwrap();
    assert_eq!(take(&mut sub, 1).await, vec![1]);
    let waiting = tokio::spawn(async move { sub.next().await.map(|r| r.map(|e| e.entry.seq)) });
    f.hub.stop();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, Some(Err(EventsError::Stopping))),
        "{ended:?}"
    );
    assert!(matches!(f.hub.subscribe(0), Err(EventsError::Stopping)));
}

#[tokio::test]
async fn an_unreadable_store_ends_the_subscription_with_its_error() {
    let f = fixture(64);
    record(f.store.as_ref(), 0, 2).await;
    // An entry whose session id is not one: the trail was written by
    // something else than lockstep.
    let c = rusqlite::Connection::open(&f.path).unwrap();
    c.execute(
        "UPDATE events SET session_id = 'not-a-session' WHERE seq = 2",
        [],
    )
    .unwrap();
    let mut sub = f.hub.subscribe(0).unwrap();
    assert_eq!(take(&mut sub, 1).await, vec![1]);
    let failed = sub.next().await.unwrap();
    assert!(
        matches!(failed, Err(EventsError::Store(StoreError::Corrupt(_)))),
        "{failed:?}"
    );
    assert!(sub.next().await.is_none(), "nothing after an error");
}
