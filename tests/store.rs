//! The store contract, as backend-neutral functions over `&dyn Store` (module
//! `suite`), run here against a fresh `SledStore` per test. A second backend
//! runs the same functions by adding its own `backend_tests!` invocation.
//! Backend-specific checks (on-disk corruption, schema marker, directory mode)
//! follow at the end.

use std::path::Path;

use signet::store::sled_store::{SCHEMA_FORMAT, SCHEMA_VERSION, SEGMENT_SIZE, trees};
use signet::store::{PgStore, SledStore, Store, StoreError};

mod common;

pub mod suite {
    use std::collections::BTreeSet;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    use aws_lc_rs::digest::{SHA256, digest};
    use signet::store::{
        AUDIT_GENESIS_PREV_HASH, AuditEntry, CatalogInfo, CeremonyRecord, Checkpoint,
        CredentialRecord, MetadataEntry, OneTime, Store, StoreError, User, limits,
    };

    pub fn user(id: &[u8], name: &str) -> User {
        User {
            id: id.to_vec(),
            name: name.into(),
            display_name: format!("{name} (display)"),
            created_ms: 1_700_000_000_000,
        }
    }

    pub fn credential(id: &[u8], user_id: &[u8]) -> CredentialRecord {
        CredentialRecord {
            id: id.to_vec(),
            user_id: user_id.to_vec(),
            public_key_cose: vec![0xa5, 1, 2, 3, 4],
            sign_count: 0,
            backup_eligible: true,
            backup_state: false,
            aaguid: [7; 16],
            fmt: "packed".into(),
            attestation_type: "basic".into(),
            transports: vec!["usb".into(), "nfc".into()],
            created_ms: 1_700_000_000_000,
            last_used_ms: None,
            flagged: None,
            tier: Some(3),
            tier_reasons: vec!["known model, self-asserted AAGUID".into()],
            policy_version: Some("test-1".into()),
            marked: false,
            attested: false,
            metadata_key_id: Some(vec![0xab; 20]),
            device_id: None,
            disabled: None,
        }
    }

    pub fn ceremony(id: u8, expires_ms: u64) -> CeremonyRecord {
        CeremonyRecord {
            id: [id; 16],
            kind: "authentication".into(),
            challenge: vec![id; 32],
            user_id: Some(vec![1, 2, 3]),
            expires_ms,
            payload: b"{\"uv\":\"required\"}".to_vec(),
        }
    }

    /// What the audit module does inside `build`: hash seq, previous hash
    /// and body together.
    pub fn audit_hash(seq: u64, prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut input = seq.to_be_bytes().to_vec();
        input.extend_from_slice(prev);
        input.extend_from_slice(body);
        let mut out = [0; 32];
        out.copy_from_slice(digest(&SHA256, &input).as_ref());
        out
    }

    pub fn append_result(store: &dyn Store, body: &[u8]) -> Result<AuditEntry, StoreError> {
        store.append_audit(&mut |seq, prev_hash| {
            Ok(AuditEntry {
                seq,
                prev_hash,
                hash: audit_hash(seq, &prev_hash, body),
                body: body.to_vec(),
            })
        })
    }

    pub fn append(store: &dyn Store, body: &[u8]) -> AuditEntry {
        append_result(store, body).unwrap()
    }

    /// Entries `1..=n` exist, in order, each chained to its predecessor and
    /// carrying the hash of its own contents.
    pub fn assert_chain(store: &dyn Store, n: u64) {
        let entries = store.audit_range(1, usize::MAX).unwrap();
        assert_eq!(entries.len() as u64, n);
        let mut prev = AUDIT_GENESIS_PREV_HASH;
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.seq, i as u64 + 1);
            assert_eq!(entry.prev_hash, prev, "chain broken at {}", entry.seq);
            assert_eq!(entry.hash, audit_hash(entry.seq, &prev, &entry.body));
            prev = entry.hash;
        }
        if n > 0 {
            assert_eq!(store.audit_last().unwrap().unwrap().seq, n);
        }
    }

    pub fn users(store: &dyn Store) {
        let alice = user(b"alice-handle", "alice");
        store.put_user(&alice).unwrap();
        assert_eq!(
            store.user_by_id(b"alice-handle").unwrap(),
            Some(alice.clone())
        );
        assert_eq!(store.user_by_name("alice").unwrap(), Some(alice.clone()));
        assert_eq!(store.user_by_id(b"nobody").unwrap(), None);
        assert_eq!(store.user_by_name("nobody").unwrap(), None);
        // Names are exact: normalization is the caller's job.
        assert_eq!(store.user_by_name("Alice").unwrap(), None);

        assert!(matches!(
            store.put_user(&user(b"other-handle", "alice")),
            Err(StoreError::Exists { what: "user name" })
        ));
        assert!(matches!(
            store.put_user(&user(b"alice-handle", "mallory")),
            Err(StoreError::Exists { what: "user id" })
        ));
        // A refused put leaves no trace.
        assert_eq!(store.user_by_id(b"other-handle").unwrap(), None);
        assert_eq!(store.user_by_name("mallory").unwrap(), None);
        assert_eq!(store.user_by_name("alice").unwrap(), Some(alice));

        assert!(matches!(
            store.put_user(&user(b"", "empty")),
            Err(StoreError::Invalid {
                field: "user id",
                ..
            })
        ));
        assert!(matches!(
            store.put_user(&user(&[1; limits::USER_ID_MAX + 1], "long")),
            Err(StoreError::TooLarge {
                field: "user id",
                limit: 64
            })
        ));
        store
            .put_user(&user(&[1; limits::USER_ID_MAX], "max"))
            .unwrap();
        assert!(matches!(
            store.put_user(&user(b"x", &"n".repeat(limits::USER_NAME_MAX + 1))),
            Err(StoreError::TooLarge {
                field: "user name",
                ..
            })
        ));
    }

    pub fn users_race(store: &dyn Store) {
        let wins = AtomicUsize::new(0);
        let barrier = Barrier::new(32);
        thread::scope(|s| {
            for i in 0..32u8 {
                let (wins, barrier) = (&wins, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    match store.put_user(&user(&[i + 1; 8], "contested")) {
                        Ok(()) => {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(StoreError::Exists { what: "user name" }) => {}
                        Err(e) => panic!("{e}"),
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::SeqCst), 1);
        let winner = store.user_by_name("contested").unwrap().unwrap();
        assert_eq!(store.user_by_id(&winner.id).unwrap(), Some(winner));
    }

    pub fn credentials(store: &dyn Store) {
        // User ids that are prefixes of each other must not share index
        // ranges.
        store.put_user(&user(&[1], "one")).unwrap();
        store.put_user(&user(&[1, 2], "one-two")).unwrap();
        assert!(matches!(
            store.insert_credential(&credential(b"orphan", b"no-such-user")),
            Err(StoreError::NotFound { what: "user" })
        ));

        let c1 = credential(&[2, 0xa1], &[1]);
        let c2 = credential(&[2, 0xa2], &[1]);
        let c3 = credential(&[0xb1], &[1, 2]);
        for c in [&c2, &c1, &c3] {
            store.insert_credential(c).unwrap();
        }
        assert_eq!(store.credential(&c1.id).unwrap(), Some(c1.clone()));
        assert_eq!(store.credential(b"unknown").unwrap(), None);
        assert_eq!(
            store.credentials_by_user(&[1]).unwrap(),
            vec![c1.clone(), c2.clone()]
        );
        assert_eq!(
            store.credentials_by_user(&[1, 2]).unwrap(),
            vec![c3.clone()]
        );
        assert_eq!(store.credentials_by_user(b"nobody").unwrap(), vec![]);
        assert_eq!(store.credentials_by_user(b"").unwrap(), vec![]);

        // Never re-bound: not to another user, not even to the same one.
        assert!(matches!(
            store.insert_credential(&credential(&c1.id, &[1, 2])),
            Err(StoreError::Exists {
                what: "credential id"
            })
        ));
        assert!(matches!(
            store.insert_credential(&c1),
            Err(StoreError::Exists {
                what: "credential id"
            })
        ));
        assert_eq!(store.credential(&c1.id).unwrap().unwrap().user_id, vec![1]);
        assert_eq!(
            store.credentials_by_user(&[1, 2]).unwrap(),
            vec![c3.clone()]
        );

        assert!(store.delete_credential(&c1.id).unwrap());
        assert_eq!(store.credential(&c1.id).unwrap(), None);
        assert_eq!(store.credentials_by_user(&[1]).unwrap(), vec![c2.clone()]);
        assert!(!store.delete_credential(&c1.id).unwrap());
        assert!(!store.delete_credential(b"never-existed").unwrap());
        assert!(store.delete_credential(&c2.id).unwrap());
        assert_eq!(store.credentials_by_user(&[1]).unwrap(), vec![]);
        assert_eq!(
            store.credentials_by_user(&[1, 2]).unwrap(),
            vec![c3.clone()]
        );

        store
            .set_credential_flag(&c3.id, Some("mds: KEY_COMPROMISE"))
            .unwrap();
        assert_eq!(
            store
                .credential(&c3.id)
                .unwrap()
                .unwrap()
                .flagged
                .as_deref(),
            Some("mds: KEY_COMPROMISE")
        );
        store.set_credential_flag(&c3.id, None).unwrap();
        assert_eq!(store.credential(&c3.id).unwrap().unwrap(), c3);
        assert!(matches!(
            store.set_credential_flag(b"unknown", Some("x")),
            Err(StoreError::NotFound { what: "credential" })
        ));

        assert!(matches!(
            store.insert_credential(&credential(&[9; limits::CREDENTIAL_ID_MAX + 1], &[1])),
            Err(StoreError::TooLarge {
                field: "credential id",
                limit: 1023
            })
        ));
        store
            .insert_credential(&credential(&[9; limits::CREDENTIAL_ID_MAX], &[1]))
            .unwrap();
        let mut big_key = credential(b"big-key", &[1]);
        big_key.public_key_cose = vec![0; limits::PUBLIC_KEY_MAX + 1];
        assert!(matches!(
            store.insert_credential(&big_key),
            Err(StoreError::TooLarge {
                field: "public key",
                ..
            })
        ));
    }

    /// The paged scan officer tools use: every credential once, in id
    /// order, pages of the size asked, and an empty page at the end.
    pub fn credentials_scan(store: &dyn Store) {
        assert!(store.credentials_after(None, 10).unwrap().is_empty());
        store.put_user(&user(b"u1", "one")).unwrap();
        store.put_user(&user(b"u2", "two")).unwrap();
        for i in (0u8..25).rev() {
            let owner: &[u8] = if i % 2 == 0 { b"u1" } else { b"u2" };
            store
                .insert_credential(&credential(&[b'c', i, 0xff], owner))
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.credentials_after(after.as_deref(), 7).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 7);
            after = page.last().map(|c| c.id.clone());
            seen.extend(page.into_iter().map(|c| c.id));
        }
        let want: Vec<Vec<u8>> = (0u8..25).map(|i| vec![b'c', i, 0xff]).collect();
        assert_eq!(seen, want);
        // A page starts strictly after the id given, even an unknown one.
        let page = store.credentials_after(Some(&[b'c', 3]), 2).unwrap();
        assert_eq!(page[0].id, vec![b'c', 3, 0xff]);
        assert_eq!(page.len(), 2);
        assert!(
            store
                .credentials_after(Some(&[0xff]), 5)
                .unwrap()
                .is_empty()
        );
    }

    pub fn credentials_race(store: &dyn Store) {
        for i in 0..32u8 {
            store.put_user(&user(&[i + 1], &format!("u{i}"))).unwrap();
        }
        let barrier = Barrier::new(32);
        let wins = AtomicUsize::new(0);
        thread::scope(|s| {
            for i in 0..32u8 {
                let (wins, barrier) = (&wins, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    match store.insert_credential(&credential(b"contested", &[i + 1])) {
                        Ok(()) => {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(StoreError::Exists { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::SeqCst), 1);
        let owner = store.credential(b"contested").unwrap().unwrap().user_id;
        let listed: usize = (0..32u8)
            .map(|i| store.credentials_by_user(&[i + 1]).unwrap().len())
            .sum();
        assert_eq!(listed, 1);
        assert_eq!(store.credentials_by_user(&owner).unwrap().len(), 1);
    }

    pub fn counters(store: &dyn Store) {
        store.put_user(&user(b"u", "u")).unwrap();
        store.insert_credential(&credential(b"c", b"u")).unwrap();

        // Authenticators without a counter report zero forever.
        store.update_after_assertion(b"c", 0, false, 10).unwrap();
        store.update_after_assertion(b"c", 0, true, 11).unwrap();
        let c = store.credential(b"c").unwrap().unwrap();
        assert_eq!(
            (c.sign_count, c.backup_state, c.last_used_ms),
            (0, true, Some(11))
        );

        store.update_after_assertion(b"c", 5, false, 20).unwrap();
        for (received, at) in [(5, 21), (4, 22), (0, 23)] {
            match store.update_after_assertion(b"c", received, true, at) {
                Err(StoreError::CounterRegression {
                    stored: 5,
                    received: r,
                }) => {
                    assert_eq!(r, received)
                }
                other => panic!("count {received}: {other:?}"),
            }
        }
        // Refusals change nothing.
        let c = store.credential(b"c").unwrap().unwrap();
        assert_eq!(
            (c.sign_count, c.backup_state, c.last_used_ms),
            (5, false, Some(20))
        );

        store
            .update_after_assertion(b"c", u32::MAX, true, 30)
            .unwrap();
        let c = store.credential(b"c").unwrap().unwrap();
        assert_eq!(
            (c.sign_count, c.backup_state, c.last_used_ms),
            (u32::MAX, true, Some(30))
        );
        assert!(matches!(
            store.update_after_assertion(b"c", u32::MAX, true, 31),
            Err(StoreError::CounterRegression { .. })
        ));
        assert!(matches!(
            store.update_after_assertion(b"missing", 1, false, 1),
            Err(StoreError::NotFound { what: "credential" })
        ));
    }

    pub fn counters_race(store: &dyn Store) {
        const THREADS: u32 = 64;
        const ROUNDS: u32 = 20;
        store.put_user(&user(b"u", "u")).unwrap();
        store.insert_credential(&credential(b"c", b"u")).unwrap();

        // Each thread submits increasing counts interleaved with the others';
        // only the acknowledged ones count.
        let barrier = Barrier::new(THREADS as usize);
        let acked: Vec<Vec<u32>> = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let mut acked = Vec::new();
                        for round in 0..ROUNDS {
                            let count = round * THREADS + t + 1;
                            match store.update_after_assertion(b"c", count, false, u64::from(count))
                            {
                                Ok(()) => acked.push(count),
                                Err(StoreError::CounterRegression { stored, received }) => {
                                    assert!(stored >= received);
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        acked
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: BTreeSet<u32> = acked.iter().flatten().copied().collect();
        assert_eq!(all.len(), acked.iter().map(Vec::len).sum::<usize>());
        // The highest count can never be refused, and nothing acknowledged
        // after it may have overwritten it.
        let highest = THREADS * ROUNDS;
        assert_eq!(all.last().copied(), Some(highest));
        let c = store.credential(b"c").unwrap().unwrap();
        assert_eq!(c.sign_count, highest);
        assert_eq!(c.last_used_ms, Some(u64::from(highest)));

        // A compare-and-swap, not a read-then-write: of many submitting the
        // same next count, one wins.
        let barrier = Barrier::new(THREADS as usize);
        let wins = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..THREADS {
                let (barrier, wins) = (&barrier, &wins);
                s.spawn(move || {
                    barrier.wait();
                    match store.update_after_assertion(b"c", highest + 1, true, 0) {
                        Ok(()) => {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(StoreError::CounterRegression { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::SeqCst), 1);
    }

    pub fn ceremonies(store: &dyn Store) {
        let live = ceremony(1, 10_000);
        store.put_ceremony(&live).unwrap();
        assert!(matches!(
            store.put_ceremony(&live),
            Err(StoreError::Exists { what: "ceremony" })
        ));
        assert!(
            store
                .peek_one_time(OneTime::Ceremony, &live.id, 5_000)
                .is_ok()
        );
        assert_eq!(store.consume_ceremony(&live.id, 9_999).unwrap(), live);
        assert!(matches!(
            store.consume_ceremony(&live.id, 9_999),
            Err(StoreError::AlreadyConsumed { what: "ceremony" })
        ));
        assert!(matches!(
            store.peek_one_time(OneTime::Ceremony, &live.id, 9_999),
            Err(StoreError::AlreadyConsumed { .. })
        ));
        // The tombstone also keeps the id from being issued again.
        assert!(matches!(
            store.put_ceremony(&live),
            Err(StoreError::Exists { what: "ceremony" })
        ));
        assert!(matches!(
            store.consume_ceremony(&[0xee; 16], 0),
            Err(StoreError::NotFound { what: "ceremony" })
        ));

        // Expiry is judged by the caller's clock: `now >= expires` is too late.
        let short = ceremony(2, 1_000);
        store.put_ceremony(&short).unwrap();
        assert!(matches!(
            store.peek_one_time(OneTime::Ceremony, &short.id, 1_000),
            Err(StoreError::Expired { .. })
        ));
        assert!(matches!(
            store.consume_ceremony(&short.id, 1_000),
            Err(StoreError::Expired { what: "ceremony" })
        ));
        // Removed, yet still reported as expired rather than unknown, even
        // to a caller whose clock is behind.
        assert!(matches!(
            store.consume_ceremony(&short.id, 0),
            Err(StoreError::Expired { .. })
        ));

        // Namespaces are separate: the same id is another object elsewhere.
        store
            .put_one_time(OneTime::RegistrationToken, &live.id, 10_000, b"token")
            .unwrap();
        assert_eq!(
            store
                .consume_one_time(OneTime::RegistrationToken, &live.id, 1)
                .unwrap(),
            b"token"
        );
        assert!(matches!(
            store.consume_one_time(OneTime::Pairing, &live.id, 1),
            Err(StoreError::NotFound { what: "pairing" })
        ));

        let mut big = ceremony(3, 10_000);
        big.payload = vec![0; limits::CEREMONY_PAYLOAD_MAX];
        store.put_ceremony(&big).unwrap();
        assert_eq!(store.consume_ceremony(&big.id, 0).unwrap(), big);
        // Every field at its limit still fits a one-time body.
        let largest = CeremonyRecord {
            id: [5; 16],
            kind: "k".repeat(limits::CEREMONY_KIND_MAX),
            challenge: vec![1; limits::CHALLENGE_MAX],
            user_id: Some(vec![2; limits::USER_ID_MAX]),
            expires_ms: u64::MAX,
            payload: vec![3; limits::CEREMONY_PAYLOAD_MAX],
        };
        store.put_ceremony(&largest).unwrap();
        assert_eq!(store.consume_ceremony(&largest.id, 0).unwrap(), largest);
        let mut too_big = ceremony(4, 10_000);
        too_big.payload = vec![0; limits::CEREMONY_PAYLOAD_MAX + 1];
        assert!(matches!(
            store.put_ceremony(&too_big),
            Err(StoreError::TooLarge {
                field: "ceremony payload",
                limit: 65536
            })
        ));
        assert!(matches!(
            store.consume_ceremony(&too_big.id, 0),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.put_one_time(
                OneTime::Transaction,
                b"t",
                1,
                &vec![0; limits::ONE_TIME_BODY_MAX + 1]
            ),
            Err(StoreError::TooLarge {
                field: "one-time body",
                ..
            })
        ));
        assert!(matches!(
            store.put_one_time(
                OneTime::Transaction,
                &[0; limits::ONE_TIME_ID_MAX + 1],
                1,
                b""
            ),
            Err(StoreError::TooLarge {
                field: "one-time id",
                ..
            })
        ));
    }

    pub fn ceremonies_race(store: &dyn Store) {
        const THREADS: usize = 100;
        for round in 0..5u8 {
            let c = ceremony(round, 10_000);
            store.put_ceremony(&c).unwrap();
            let barrier = Barrier::new(THREADS);
            let (won, spent) = (AtomicUsize::new(0), AtomicUsize::new(0));
            thread::scope(|s| {
                for _ in 0..THREADS {
                    let (barrier, won, spent, c) = (&barrier, &won, &spent, &c);
                    s.spawn(move || {
                        barrier.wait();
                        match store.consume_ceremony(&c.id, 5_000) {
                            Ok(got) => {
                                assert_eq!(&got, c);
                                won.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(StoreError::AlreadyConsumed { .. }) => {
                                spent.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    });
                }
            });
            assert_eq!(won.load(Ordering::SeqCst), 1, "round {round}");
            assert_eq!(spent.load(Ordering::SeqCst), THREADS - 1, "round {round}");
        }
    }

    pub fn sweep(store: &dyn Store) {
        let grace = store.tombstone_grace_ms();
        assert!(
            grace > 1_000,
            "the schedule below assumes a grace above 1 s"
        );
        let kind = OneTime::Transaction;
        store.put_one_time(kind, b"a", 1_000, b"a").unwrap();
        store.put_one_time(kind, b"b", 2_000, b"b").unwrap();
        store
            .put_one_time(kind, b"long", grace * 10, b"long")
            .unwrap();
        store.put_one_time(kind, b"used", 1_500, b"used").unwrap();
        store.consume_one_time(kind, b"used", 500).unwrap();
        assert_eq!(store.sweep_expired(999, 100).unwrap(), 0);

        // At 2.5 s: a and b expired and become tombstones; "used"'s
        // tombstone is within its grace; "long" is alive.
        assert_eq!(store.sweep_expired(2_500, 100).unwrap(), 2);
        assert_eq!(store.sweep_expired(2_500, 100).unwrap(), 0);
        assert!(matches!(
            store.consume_one_time(kind, b"a", 2_500),
            Err(StoreError::Expired { .. })
        ));
        assert!(matches!(
            store.consume_one_time(kind, b"used", 2_500),
            Err(StoreError::AlreadyConsumed { .. })
        ));
        assert_eq!(store.peek_one_time(kind, b"long", 2_500).unwrap(), b"long");

        // Past every grace period the tombstones go; the id is then unknown.
        let later = 2_000 + grace + 1;
        assert_eq!(store.sweep_expired(later, 100).unwrap(), 3);
        for id in [&b"a"[..], b"b", b"used"] {
            assert!(matches!(
                store.consume_one_time(kind, id, later),
                Err(StoreError::NotFound { .. })
            ));
        }
        assert_eq!(
            store.consume_one_time(kind, b"long", later).unwrap(),
            b"long"
        );

        // Bounded work per call.
        for i in 0..10u8 {
            store
                .put_one_time(OneTime::Pairing, &[i], later + 10, b"")
                .unwrap();
        }
        let now = later + 10;
        assert_eq!(store.sweep_expired(now, 4).unwrap(), 4);
        assert_eq!(store.sweep_expired(now, 4).unwrap(), 4);
        assert_eq!(store.sweep_expired(now, 4).unwrap(), 2);
        assert_eq!(store.sweep_expired(now, 4).unwrap(), 0);
        assert_eq!(store.sweep_expired(now, 0).unwrap(), 0);
        for i in 0..10u8 {
            assert!(matches!(
                store.consume_one_time(OneTime::Pairing, &[i], now),
                Err(StoreError::Expired { .. })
            ));
        }
    }

    pub fn audit(store: &dyn Store) {
        assert_eq!(store.audit_last().unwrap(), None);
        assert_eq!(store.audit_range(1, 10).unwrap(), vec![]);
        let first = append(store, b"one");
        assert_eq!((first.seq, first.prev_hash), (1, AUDIT_GENESIS_PREV_HASH));
        let second = append(store, b"two");
        assert_eq!((second.seq, second.prev_hash), (2, first.hash));
        let third = append(store, b"three");
        assert_eq!((third.seq, third.prev_hash), (3, second.hash));
        assert_chain(store, 3);
        assert_eq!(store.audit_range(2, 1).unwrap(), vec![second.clone()]);
        assert_eq!(
            store.audit_range(0, 2).unwrap(),
            vec![first.clone(), second.clone()]
        );
        assert_eq!(store.audit_range(4, 10).unwrap(), vec![]);

        // The store, not the builder, decides seq and previous hash; a
        // refused or failed build appends nothing.
        let wrong_seq = store.append_audit(&mut |seq, prev_hash| {
            Ok(AuditEntry {
                seq: seq + 1,
                prev_hash,
                hash: [0; 32],
                body: vec![],
            })
        });
        assert!(matches!(wrong_seq, Err(StoreError::Invalid { .. })));
        let wrong_prev = store.append_audit(&mut |seq, _| {
            Ok(AuditEntry {
                seq,
                prev_hash: [1; 32],
                hash: [0; 32],
                body: vec![],
            })
        });
        assert!(matches!(wrong_prev, Err(StoreError::Invalid { .. })));
        let failed = store.append_audit(&mut |_, _| {
            Err(StoreError::Invalid {
                field: "test",
                detail: "builder failed".into(),
            })
        });
        assert!(matches!(
            failed,
            Err(StoreError::Invalid { field: "test", .. })
        ));
        let too_big = store.append_audit(&mut |seq, prev_hash| {
            Ok(AuditEntry {
                seq,
                prev_hash,
                hash: [0; 32],
                body: vec![0; limits::AUDIT_BODY_MAX + 1],
            })
        });
        assert!(matches!(
            too_big,
            Err(StoreError::TooLarge {
                field: "audit body",
                ..
            })
        ));
        assert_chain(store, 3);

        let checkpoint = Checkpoint {
            seq: 2,
            hash: second.hash,
            kid: "audit-checkpoint-kid".into(),
            signature: vec![0x30; 70],
            time_ms: 42,
        };
        assert_eq!(store.last_checkpoint().unwrap(), None);
        store.put_checkpoint(&checkpoint).unwrap();
        assert!(matches!(
            store.put_checkpoint(&checkpoint),
            Err(StoreError::Exists { what: "checkpoint" })
        ));
        let forged = Checkpoint {
            seq: 3,
            hash: second.hash,
            ..checkpoint.clone()
        };
        assert!(matches!(
            store.put_checkpoint(&forged),
            Err(StoreError::Conflict { .. })
        ));
        let ahead = Checkpoint {
            seq: 99,
            ..checkpoint.clone()
        };
        assert!(matches!(
            store.put_checkpoint(&ahead),
            Err(StoreError::Conflict { .. })
        ));
        let at_third = Checkpoint {
            seq: 3,
            hash: third.hash,
            ..checkpoint.clone()
        };
        store.put_checkpoint(&at_third).unwrap();
        assert_eq!(
            store.checkpoints(0, 10).unwrap(),
            vec![checkpoint.clone(), at_third.clone()]
        );
        assert_eq!(store.checkpoints(3, 10).unwrap(), vec![at_third.clone()]);
        assert_eq!(store.checkpoints(1, 1).unwrap(), vec![checkpoint]);
        assert_eq!(store.last_checkpoint().unwrap(), Some(at_third));
    }

    pub fn audit_race(store: &dyn Store) {
        const THREADS: usize = 16;
        const EACH: usize = 50;
        let barrier = Barrier::new(THREADS);
        thread::scope(|s| {
            for t in 0..THREADS {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..EACH {
                        append(store, format!("thread {t} entry {i}").as_bytes());
                    }
                });
            }
        });
        assert_chain(store, (THREADS * EACH) as u64);
        let bodies: BTreeSet<Vec<u8>> = store
            .audit_range(1, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect();
        assert_eq!(bodies.len(), THREADS * EACH);
    }

    /// First half of the durability check: writes one of everything. The
    /// backend then closes and reopens the store and calls [`reopened`].
    pub fn before_reopen(store: &dyn Store) {
        store.put_user(&user(b"durable", "durable")).unwrap();
        store
            .insert_credential(&credential(b"cred", b"durable"))
            .unwrap();
        store
            .insert_credential(&credential(b"gone", b"durable"))
            .unwrap();
        assert!(store.delete_credential(b"gone").unwrap());
        store.update_after_assertion(b"cred", 41, true, 99).unwrap();
        store.put_ceremony(&ceremony(1, 10_000)).unwrap();
        store.put_ceremony(&ceremony(2, 10_000)).unwrap();
        store.consume_ceremony(&[1; 16], 10).unwrap();
        for i in 0..5 {
            append(store, format!("entry {i}").as_bytes());
        }
        let last = store.audit_last().unwrap().unwrap();
        store
            .put_checkpoint(&Checkpoint {
                seq: last.seq,
                hash: last.hash,
                kid: "k".into(),
                signature: vec![1],
                time_ms: 1,
            })
            .unwrap();
    }

    pub fn catalog(no: u64, entries: usize) -> CatalogInfo {
        CatalogInfo {
            no,
            next_update_ms: 1_800_000_000_000,
            entries: entries as u64,
            installed_ms: 1_700_000_000_000 + no,
            source: format!("blob-{no}.jwt"),
            blob_sha256: [no as u8; 32],
        }
    }

    pub fn md_entry(aaguid: Option<u8>, key_ids: &[&str], body: &str) -> MetadataEntry {
        MetadataEntry {
            aaguid: aaguid.map(|a| vec![a; 16]),
            aaid: None,
            key_ids: key_ids.iter().map(|k| k.to_string()).collect(),
            entry: body.as_bytes().to_vec(),
        }
    }

    fn body_of(e: Option<MetadataEntry>) -> Option<String> {
        e.map(|e| String::from_utf8(e.entry).unwrap())
    }

    pub fn metadata(store: &dyn Store) {
        // Nothing installed.
        let status = store.metadata_status().unwrap();
        assert_eq!(status.catalog, None);
        assert_eq!(store.metadata_by_aaguid(&[1; 16]).unwrap(), None);

        let first = vec![
            md_entry(Some(1), &[], "one"),
            md_entry(None, &["0a0b0c", "ff00"], "keys"),
            MetadataEntry {
                aaguid: None,
                aaid: Some("4e4e#4005".into()),
                key_ids: vec![],
                entry: b"uaf".to_vec(),
            },
        ];
        store.replace_metadata(&catalog(5, 3), &first).unwrap();
        assert_eq!(
            body_of(store.metadata_by_aaguid(&[1; 16]).unwrap()).as_deref(),
            Some("one")
        );
        assert_eq!(
            body_of(store.metadata_by_key_id(&[0x0a, 0x0b, 0x0c]).unwrap()).as_deref(),
            Some("keys")
        );
        assert_eq!(
            body_of(store.metadata_by_key_id(&[0xff, 0x00]).unwrap()).as_deref(),
            Some("keys")
        );
        assert_eq!(store.metadata_by_key_id(&[0xff]).unwrap(), None);
        assert_eq!(store.metadata_by_key_id(&[]).unwrap(), None);
        assert_eq!(store.metadata_by_key_id(&[0; 65]).unwrap(), None);
        assert_eq!(store.metadata_by_aaguid(&[2; 16]).unwrap(), None);
        let status = store.metadata_status().unwrap();
        assert_eq!(status.catalog, Some(catalog(5, 3)));
        assert_eq!(status.last_error, None);

        // A failed refresh is recorded; the catalog stays.
        store
            .record_metadata_attempt(42, Some("fetch: connection refused"))
            .unwrap();
        let status = store.metadata_status().unwrap();
        assert_eq!(status.catalog, Some(catalog(5, 3)));
        assert_eq!(status.last_attempt_ms, Some(42));
        assert_eq!(
            status.last_error.as_deref(),
            Some("fetch: connection refused")
        );
        store
            .record_metadata_attempt(43, Some(&"é".repeat(4000)))
            .unwrap();
        let long = store.metadata_status().unwrap().last_error.unwrap();
        assert!(long.len() <= limits::METADATA_TEXT_MAX, "{}", long.len());
        // An attempt that finds the installed BLOB current clears the error.
        store.record_metadata_attempt(44, None).unwrap();
        let status = store.metadata_status().unwrap();
        assert_eq!(
            (status.last_attempt_ms, status.last_error),
            (Some(44), None)
        );
        assert_eq!(status.catalog, Some(catalog(5, 3)));
        assert_eq!(
            body_of(store.metadata_by_aaguid(&[1; 16]).unwrap()).as_deref(),
            Some("one")
        );

        // Replays and rollbacks are refused.
        for no in [4, 5] {
            assert!(matches!(
                store.replace_metadata(&catalog(no, 1), &[md_entry(Some(9), &[], "old")]),
                Err(StoreError::Conflict { .. })
            ));
        }

        // Bad catalogs are refused whole, and the installed one stays.
        let bad: Vec<(CatalogInfo, Vec<MetadataEntry>)> = vec![
            (
                catalog(6, 2),
                vec![md_entry(Some(3), &[], "a"), md_entry(Some(3), &[], "b")],
            ),
            (
                catalog(6, 2),
                vec![md_entry(None, &["aa"], "a"), md_entry(None, &["aa"], "b")],
            ),
            (catalog(6, 1), vec![md_entry(None, &["AA"], "upper")]),
            (catalog(6, 1), vec![md_entry(None, &["abc"], "odd")]),
            (catalog(6, 1), vec![md_entry(None, &[], "no identifier")]),
            (catalog(6, 1), vec![md_entry(Some(3), &[], "")]),
            (
                catalog(6, 1),
                vec![md_entry(
                    Some(3),
                    &[],
                    &"x".repeat(limits::METADATA_ENTRY_MAX + 1),
                )],
            ),
            (
                catalog(6, 1),
                vec![MetadataEntry {
                    aaguid: Some(vec![1; 15]),
                    aaid: None,
                    key_ids: vec![],
                    entry: b"short".to_vec(),
                }],
            ),
            (
                catalog(6, 2),
                vec![md_entry(Some(3), &[], "count mismatch")],
            ),
        ];
        for (info, entries) in bad {
            let result = store.replace_metadata(&info, &entries);
            assert!(
                matches!(
                    result,
                    Err(StoreError::Invalid { .. } | StoreError::TooLarge { .. })
                ),
                "{entries:?}: {result:?}"
            );
            assert_eq!(
                store.metadata_status().unwrap().catalog,
                Some(catalog(5, 3))
            );
            assert_eq!(
                body_of(store.metadata_by_aaguid(&[1; 16]).unwrap()).as_deref(),
                Some("one")
            );
            assert_eq!(store.metadata_by_aaguid(&[3; 16]).unwrap(), None);
        }

        // A newer BLOB replaces everything: old identifiers are gone.
        store
            .replace_metadata(&catalog(6, 1), &[md_entry(Some(2), &["0a0b0c"], "two")])
            .unwrap();
        assert_eq!(store.metadata_by_aaguid(&[1; 16]).unwrap(), None);
        assert_eq!(store.metadata_by_key_id(&[0xff, 0x00]).unwrap(), None);
        assert_eq!(
            body_of(store.metadata_by_aaguid(&[2; 16]).unwrap()).as_deref(),
            Some("two")
        );
        assert_eq!(
            body_of(store.metadata_by_key_id(&[0x0a, 0x0b, 0x0c]).unwrap()).as_deref(),
            Some("two")
        );
        let status = store.metadata_status().unwrap();
        assert_eq!(status.catalog, Some(catalog(6, 1)));
        assert_eq!(status.last_error, None);
        assert_eq!(status.last_attempt_ms, Some(catalog(6, 1).installed_ms));
    }

    /// Readers during replacements see one whole catalog or the other:
    /// every AAGUID is in both, so a lookup that misses saw a mix.
    pub fn metadata_race(store: &dyn Store) {
        let entries = |tag: &str| -> Vec<MetadataEntry> {
            (0..50u8).map(|a| md_entry(Some(a), &[], tag)).collect()
        };
        store
            .replace_metadata(&catalog(1, 50), &entries("gen"))
            .unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        thread::scope(|scope| {
            let readers: Vec<_> = (0..4)
                .map(|r| {
                    let done = &done;
                    scope.spawn(move || {
                        let mut seen = 0;
                        while !done.load(Ordering::SeqCst) || seen == 0 {
                            let a = ((seen + r) % 50) as u8;
                            let found = store.metadata_by_aaguid(&[a; 16]).unwrap();
                            assert!(found.is_some(), "aaguid {a} missing during a replacement");
                            seen += 1;
                        }
                        seen
                    })
                })
                .collect();
            for no in 2..8 {
                store
                    .replace_metadata(&catalog(no, 50), &entries(&format!("gen{no}")))
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
            for r in readers {
                assert!(r.join().unwrap() > 0);
            }
        });
        assert_eq!(store.metadata_status().unwrap().catalog.unwrap().no, 7);
        assert_eq!(
            body_of(store.metadata_by_aaguid(&[9; 16]).unwrap()).as_deref(),
            Some("gen7")
        );
    }

    pub fn reopened(store: &dyn Store) {
        assert_eq!(
            store.user_by_name("durable").unwrap().unwrap().id,
            b"durable"
        );
        let cred = store.credential(b"cred").unwrap().unwrap();
        assert_eq!(
            (cred.sign_count, cred.backup_state, cred.last_used_ms),
            (41, true, Some(99))
        );
        assert_eq!(store.credential(b"gone").unwrap(), None);
        assert_eq!(store.credentials_by_user(b"durable").unwrap(), vec![cred]);
        assert!(matches!(
            store.update_after_assertion(b"cred", 41, true, 100),
            Err(StoreError::CounterRegression { stored: 41, .. })
        ));
        assert!(matches!(
            store.consume_ceremony(&[1; 16], 20),
            Err(StoreError::AlreadyConsumed { .. })
        ));
        assert_eq!(store.consume_ceremony(&[2; 16], 20).unwrap().id, [2; 16]);
        assert_chain(store, 5);
        assert_eq!(store.last_checkpoint().unwrap().unwrap().seq, 5);
        // The chain continues where it stopped.
        assert_eq!(append(store, b"after reopen").seq, 6);
        assert_chain(store, 6);
    }
}

pub mod device_suite {
    use super::suite::{credential, user};
    use signet::store::{
        DeviceEvent, DeviceRecord, DeviceState, DeviceToken, Store, StoreError, limits,
    };
    use std::sync::Barrier;
    use std::thread;

    pub fn device(id: u8, user_id: &[u8]) -> DeviceRecord {
        DeviceRecord {
            id: [id; 16],
            revision: 1,
            state: DeviceState::TokenIssued,
            user_id: user_id.to_vec(),
            user_name: format!("user-{id}"),
            display_name: "User".into(),
            action: "default".into(),
            public_key: vec![4; 65],
            platform: vec![("os".into(), "android".into())],
            key_attestation: None,
            reference: Some("KYC-1".into()),
            created_ms: 1,
            updated_ms: 1,
            expires_ms: 1_000_000,
            token: Some(DeviceToken {
                id: [id; 16],
                issued_ms: 1,
                expires_ms: 1000,
                redeemed_ms: None,
            }),
            credential_ids: Vec::new(),
            timeline: vec![DeviceEvent {
                at_ms: 1,
                event: "enrolled".into(),
                state: DeviceState::Pending,
                actor: "client:core".into(),
                detail: None,
            }],
        }
    }

    fn bumped(d: &DeviceRecord, state: DeviceState) -> DeviceRecord {
        let mut n = d.clone();
        n.revision += 1;
        n.state = state;
        n
    }

    pub fn devices(store: &dyn Store) {
        let d = device(1, &[9; 32]);
        store.insert_device(&d).unwrap();
        assert!(matches!(
            store.insert_device(&d),
            Err(StoreError::Exists { .. })
        ));
        assert_eq!(store.device(&[1; 16]).unwrap().unwrap(), d);
        assert!(store.device(&[2; 16]).unwrap().is_none());
        // Compare-and-swap on the revision.
        let v2 = bumped(&d, DeviceState::Verified);
        store.update_device(&v2).unwrap();
        assert!(matches!(
            store.update_device(&v2),
            Err(StoreError::Conflict { .. })
        ));
        let mut skip = bumped(&v2, DeviceState::TokenIssued);
        skip.revision += 1;
        assert!(matches!(
            store.update_device(&skip),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.update_device(&bumped(&device(3, &[9; 32]), DeviceState::Bound)),
            Err(StoreError::NotFound { .. })
        ));
        // Limits are checked before anything is written.
        let mut big = bumped(&v2, DeviceState::Bound);
        big.timeline = vec![big.timeline[0].clone(); limits::TIMELINE_MAX + 1];
        assert!(matches!(
            store.update_device(&big),
            Err(StoreError::TooLarge { .. })
        ));
        let mut bad = device(4, &[9; 32]);
        bad.public_key = vec![4; 33];
        assert!(store.insert_device(&bad).is_err());
        assert_eq!(store.device(&[1; 16]).unwrap().unwrap().revision, 2);
    }

    pub fn binding(store: &dyn Store) {
        let uid = [8; 32];
        let d = device(1, &uid);
        store.insert_device(&d).unwrap();
        let u = user(&uid, "user-1");
        let mut c = credential(b"cred-1", &uid);
        c.device_id = Some(d.id.to_vec());
        let mut bound = bumped(&d, DeviceState::Bound);
        bound.credential_ids.push(c.id.clone());
        // A taken credential id: nothing at all is written.
        let other = user(&[7; 32], "other");
        store.put_user(&other).unwrap();
        store
            .insert_credential(&credential(b"taken", &[7; 32]))
            .unwrap();
        let mut taken = c.clone();
        taken.id = b"taken".to_vec();
        assert!(matches!(
            store.bind_device(&bound, &u, &taken),
            Err(StoreError::Exists { .. })
        ));
        assert_eq!(store.device(&d.id).unwrap().unwrap().revision, 1);
        assert!(store.user_by_id(&uid).unwrap().is_none());
        // The user name belonging to another id: nothing written either.
        let thief = user(&uid, "other");
        assert!(matches!(
            store.bind_device(&bound, &thief, &c),
            Err(StoreError::Conflict { .. })
        ));
        assert!(store.credential(&c.id).unwrap().is_none());
        // The real binding: device, user and credential together.
        store.bind_device(&bound, &u, &c).unwrap();
        assert_eq!(
            store.device(&d.id).unwrap().unwrap().state,
            DeviceState::Bound
        );
        assert_eq!(store.user_by_name("user-1").unwrap().unwrap().id, uid);
        assert_eq!(
            store.credential(&c.id).unwrap().unwrap().device_id,
            Some(d.id.to_vec())
        );
        // Revocation disables the bound credential in the same step.
        let revoked = bumped(&bound, DeviceState::Revoked);
        store.revoke_device(&revoked, "stolen").unwrap();
        assert_eq!(
            store
                .credential(&c.id)
                .unwrap()
                .unwrap()
                .disabled
                .as_deref(),
            Some("stolen")
        );
        assert!(matches!(
            store.revoke_device(&revoked, "again"),
            Err(StoreError::Conflict { .. })
        ));
    }

    /// Of many threads binding one device from one revision, exactly one
    /// succeeds: the registration token is spent once.
    pub fn binding_race(store: &dyn Store) {
        let uid = [6; 32];
        let d = device(1, &uid);
        store.insert_device(&d).unwrap();
        let n = 16;
        let barrier = Barrier::new(n);
        let wins: usize = thread::scope(|scope| {
            (0..n)
                .map(|i| {
                    let (barrier, d) = (&barrier, &d);
                    scope.spawn(move || {
                        let mut c = credential(format!("cred-{i}").as_bytes(), &uid);
                        c.device_id = Some(d.id.to_vec());
                        let mut bound = bumped(d, DeviceState::Bound);
                        bound.credential_ids.push(c.id.clone());
                        barrier.wait();
                        match store.bind_device(&bound, &user(&uid, "racer"), &c) {
                            Ok(()) => 1,
                            Err(StoreError::Conflict { .. }) => 0,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        assert_eq!(wins, 1);
        assert_eq!(store.credentials_by_user(&uid).unwrap().len(), 1);
    }
}

pub mod transaction_suite {
    use super::suite::{credential, user};
    use signet::store::{
        Store, StoreError, TransactionApproval, TransactionRecord, TransactionState, limits,
    };
    use std::sync::Barrier;
    use std::thread;

    /// Fails with the actual result unless it is the error `$pattern`.
    macro_rules! assert_err {
        ($result:expr, $pattern:pat $(,)?) => {
            match $result {
                Err($pattern) => {}
                other => panic!("expected Err({}), got {other:?}", stringify!($pattern)),
            }
        };
    }

    pub fn transaction(id: u8, user_id: &[u8]) -> TransactionRecord {
        TransactionRecord {
            id: [id; 16],
            revision: 1,
            state: TransactionState::Pending,
            user_id: user_id.to_vec(),
            action: "payment".into(),
            details: br#"{"amount":"99.95","currency":"CHF"}"#.to_vec(),
            nonce: [id; 32],
            display: "Pay CHF 99.95 to ACME".into(),
            created_ms: 1,
            updated_ms: 1,
            expires_ms: 1_000_000,
            options: b"{\"uv\":\"required\"}".to_vec(),
            attempts: 0,
            approval: None,
            closed_reason: None,
        }
    }

    fn bumped(t: &TransactionRecord, state: TransactionState) -> TransactionRecord {
        let mut n = t.clone();
        n.revision += 1;
        n.state = state;
        n.updated_ms += 1;
        n
    }

    /// `t` approved, one revision on, by `credential_id` at `approved_ms`.
    fn approved(
        t: &TransactionRecord,
        credential_id: &[u8],
        approved_ms: u64,
    ) -> TransactionRecord {
        let mut n = bumped(t, TransactionState::Approved);
        n.approval = Some(TransactionApproval {
            credential_id: credential_id.to_vec(),
            approved_ms,
            receipt: format!("receipt at {approved_ms}").into_bytes(),
        });
        n
    }

    /// A user with one credential whose counter stands at `sign_count`
    /// (last used at `used_ms` unless the count is zero).
    pub fn enrolled(store: &dyn Store, uid: &[u8], cred: &[u8], sign_count: u32, used_ms: u64) {
        if store.user_by_id(uid).unwrap().is_none() {
            store
                .put_user(&user(uid, &format!("user-{}", uid[0])))
                .unwrap();
        }
        store.insert_credential(&credential(cred, uid)).unwrap();
        if sign_count > 0 {
            store
                .update_after_assertion(cred, sign_count, false, used_ms)
                .unwrap();
        }
    }

    pub fn counter_of(store: &dyn Store, cred: &[u8]) -> (u32, bool, Option<u64>) {
        let c = store.credential(cred).unwrap().unwrap();
        (c.sign_count, c.backup_state, c.last_used_ms)
    }

    /// Insert, read back, duplicate ids, and what a new transaction must be.
    pub fn transactions(store: &dyn Store) {
        let t = transaction(1, &[9; 32]);
        store.insert_transaction(&t).unwrap();
        assert_eq!(store.transaction(&t.id).unwrap(), Some(t.clone()));
        assert!(store.transaction(&[2; 16]).unwrap().is_none());
        // The same id again, even with other contents.
        assert_err!(
            store.insert_transaction(&t),
            StoreError::Exists {
                what: "transaction id"
            }
        );
        let mut other = transaction(1, &[8; 32]);
        other.display = "someone else".into();
        assert_err!(store.insert_transaction(&other), StoreError::Exists { .. });
        assert_eq!(store.transaction(&t.id).unwrap(), Some(t.clone()));

        // A new transaction is pending at revision 1; nothing else is
        // inserted, and nothing is written.
        let mut later = transaction(3, &[9; 32]);
        later.revision = 2;
        assert_err!(
            store.insert_transaction(&later),
            StoreError::Invalid {
                field: "transaction revision",
                ..
            }
        );
        let mut zero = transaction(3, &[9; 32]);
        zero.revision = 0;
        assert_err!(
            store.insert_transaction(&zero),
            StoreError::Invalid {
                field: "transaction revision",
                ..
            }
        );
        for state in [
            TransactionState::Cancelled,
            TransactionState::Expired,
            TransactionState::Failed,
        ] {
            let mut closed = transaction(3, &[9; 32]);
            closed.state = state;
            closed.closed_reason = Some(state.to_string());
            assert_err!(
                store.insert_transaction(&closed),
                StoreError::Invalid {
                    field: "transaction revision",
                    ..
                }
            );
        }
        // Approved at birth: consistent (it carries its approval) but not new.
        let mut born_approved = transaction(3, &[9; 32]);
        born_approved.state = TransactionState::Approved;
        born_approved.approval = Some(TransactionApproval {
            credential_id: b"cred".to_vec(),
            approved_ms: 1,
            receipt: vec![1],
        });
        assert_err!(
            store.insert_transaction(&born_approved),
            StoreError::Invalid {
                field: "transaction revision",
                ..
            }
        );
        assert!(store.transaction(&[3; 16]).unwrap().is_none());

        // A second transaction is independent of the first.
        let t4 = transaction(4, &[9; 32]);
        store.insert_transaction(&t4).unwrap();
        assert_eq!(store.transaction(&t4.id).unwrap(), Some(t4));
        assert_eq!(store.transaction(&t.id).unwrap(), Some(t));
    }

    /// Every limit `TransactionRecord::validate` checks, on insert, update
    /// and approval alike, before anything is written.
    pub fn transaction_limits(store: &dyn Store) {
        // At every limit at once: accepted and read back whole.
        let mut full = transaction(1, &[9; limits::USER_ID_MAX]);
        full.details = vec![b'x'; limits::TRANSACTION_DETAILS_MAX];
        full.display = "d".repeat(limits::TRANSACTION_DISPLAY_MAX);
        full.options = vec![b'o'; limits::TRANSACTION_OPTIONS_MAX];
        full.action = "a".repeat(limits::SHORT_TEXT_MAX);
        store.insert_transaction(&full).unwrap();
        assert_eq!(store.transaction(&full.id).unwrap(), Some(full.clone()));
        let mut full_approved = approved(&full, &[b'c'; limits::CREDENTIAL_ID_MAX], 5);
        full_approved.approval.as_mut().unwrap().receipt = vec![b'r'; limits::RECEIPT_MAX];
        store.update_transaction(&full_approved).unwrap();
        assert_eq!(
            store.transaction(&full.id).unwrap(),
            Some(full_approved.clone())
        );

        let base = transaction(2, &[9; 32]);
        store.insert_transaction(&base).unwrap();
        let unchanged = |store: &dyn Store| {
            assert_eq!(store.transaction(&base.id).unwrap(), Some(base.clone()));
        };

        // Details: canonical JSON, so at least "{}" and at most the limit.
        for len in [0, 1] {
            let mut t = transaction(3, &[9; 32]);
            t.details = vec![b'{'; len];
            assert_err!(
                store.insert_transaction(&t),
                StoreError::Invalid {
                    field: "transaction details",
                    ..
                }
            );
            let mut u = bumped(&base, TransactionState::Pending);
            u.details = vec![b'{'; len];
            assert_err!(
                store.update_transaction(&u),
                StoreError::Invalid {
                    field: "transaction details",
                    ..
                }
            );
        }
        let mut t = transaction(3, &[9; 32]);
        t.details = vec![b'x'; limits::TRANSACTION_DETAILS_MAX + 1];
        assert_err!(
            store.insert_transaction(&t),
            StoreError::TooLarge {
                field: "transaction details",
                limit: limits::TRANSACTION_DETAILS_MAX
            }
        );
        let mut u = bumped(&base, TransactionState::Pending);
        u.details = vec![b'x'; limits::TRANSACTION_DETAILS_MAX + 1];
        assert_err!(
            store.update_transaction(&u),
            StoreError::TooLarge {
                field: "transaction details",
                limit: limits::TRANSACTION_DETAILS_MAX
            }
        );

        // Display and options.
        let mut t = transaction(3, &[9; 32]);
        t.display = "d".repeat(limits::TRANSACTION_DISPLAY_MAX + 1);
        assert_err!(
            store.insert_transaction(&t),
            StoreError::TooLarge {
                field: "transaction display",
                limit: limits::TRANSACTION_DISPLAY_MAX
            }
        );
        let mut u = bumped(&base, TransactionState::Pending);
        u.display = "d".repeat(limits::TRANSACTION_DISPLAY_MAX + 1);
        assert_err!(
            store.update_transaction(&u),
            StoreError::TooLarge {
                field: "transaction display",
                limit: limits::TRANSACTION_DISPLAY_MAX
            }
        );
        let mut t = transaction(3, &[9; 32]);
        t.options = vec![b'o'; limits::TRANSACTION_OPTIONS_MAX + 1];
        assert_err!(
            store.insert_transaction(&t),
            StoreError::TooLarge {
                field: "transaction options",
                limit: limits::TRANSACTION_OPTIONS_MAX
            }
        );
        let mut u = bumped(&base, TransactionState::Pending);
        u.options = vec![b'o'; limits::TRANSACTION_OPTIONS_MAX + 1];
        assert_err!(
            store.update_transaction(&u),
            StoreError::TooLarge {
                field: "transaction options",
                limit: limits::TRANSACTION_OPTIONS_MAX
            }
        );

        // User id and action.
        let mut t = transaction(3, &[9; 32]);
        t.user_id = Vec::new();
        assert_err!(
            store.insert_transaction(&t),
            StoreError::Invalid {
                field: "user id",
                ..
            }
        );
        let mut t = transaction(3, &[9; 32]);
        t.action = String::new();
        assert_err!(
            store.insert_transaction(&t),
            StoreError::Invalid {
                field: "action",
                ..
            }
        );
        let mut t = transaction(3, &[9; 32]);
        t.action = "a".repeat(limits::SHORT_TEXT_MAX + 1);
        assert_err!(
            store.insert_transaction(&t),
            StoreError::TooLarge {
                field: "action",
                limit: limits::SHORT_TEXT_MAX
            }
        );

        // Closing reason.
        let mut u = bumped(&base, TransactionState::Cancelled);
        u.closed_reason = Some("r".repeat(limits::FLAG_REASON_MAX + 1));
        assert_err!(
            store.update_transaction(&u),
            StoreError::TooLarge {
                field: "flag reason",
                limit: limits::FLAG_REASON_MAX
            }
        );

        // The receipt: present and at most the limit.
        let mut u = approved(&base, b"cred", 5);
        u.approval.as_mut().unwrap().receipt = vec![b'r'; limits::RECEIPT_MAX + 1];
        assert_err!(
            store.update_transaction(&u),
            StoreError::TooLarge {
                field: "receipt",
                limit: limits::RECEIPT_MAX
            }
        );
        assert_err!(
            store.approve_transaction(&u, 1, false),
            StoreError::TooLarge {
                field: "receipt",
                limit: limits::RECEIPT_MAX
            }
        );
        let mut u = approved(&base, b"cred", 5);
        u.approval.as_mut().unwrap().receipt = Vec::new();
        assert_err!(
            store.update_transaction(&u),
            StoreError::Invalid {
                field: "receipt",
                ..
            }
        );
        let mut u = approved(&base, b"cred", 5);
        u.approval.as_mut().unwrap().credential_id = Vec::new();
        assert_err!(
            store.update_transaction(&u),
            StoreError::Invalid {
                field: "credential id",
                ..
            }
        );
        let mut u = approved(&base, b"cred", 5);
        u.approval.as_mut().unwrap().credential_id = vec![b'c'; limits::CREDENTIAL_ID_MAX + 1];
        assert_err!(
            store.update_transaction(&u),
            StoreError::TooLarge {
                field: "credential id",
                limit: limits::CREDENTIAL_ID_MAX
            }
        );

        // An approval exactly when the state is approved.
        let no_approval = bumped(&base, TransactionState::Approved);
        assert_err!(
            store.update_transaction(&no_approval),
            StoreError::Invalid {
                field: "transaction approval",
                ..
            }
        );
        let mut stray = approved(&base, b"cred", 5);
        stray.state = TransactionState::Pending;
        assert_err!(
            store.update_transaction(&stray),
            StoreError::Invalid {
                field: "transaction approval",
                ..
            }
        );
        let mut t = transaction(3, &[9; 32]);
        t.approval = stray.approval.clone();
        assert_err!(
            store.insert_transaction(&t),
            StoreError::Invalid {
                field: "transaction approval",
                ..
            }
        );
        let mut cancelled = approved(&base, b"cred", 5);
        cancelled.state = TransactionState::Cancelled;
        assert_err!(
            store.update_transaction(&cancelled),
            StoreError::Invalid {
                field: "transaction approval",
                ..
            }
        );

        // Revision 0 is never valid.
        let mut u = bumped(&base, TransactionState::Pending);
        u.revision = 0;
        assert_err!(
            store.update_transaction(&u),
            StoreError::Invalid {
                field: "transaction revision",
                ..
            }
        );

        // None of it was written.
        assert!(store.transaction(&[3; 16]).unwrap().is_none());
        unchanged(store);
        assert_eq!(store.transaction(&full.id).unwrap(), Some(full_approved));
    }

    /// Compare-and-swap on the revision.
    pub fn transaction_updates(store: &dyn Store) {
        let t = transaction(1, &[9; 32]);
        store.insert_transaction(&t).unwrap();

        // One refused answer: still pending, one revision on.
        let mut v2 = bumped(&t, TransactionState::Pending);
        v2.attempts = 1;
        store.update_transaction(&v2).unwrap();
        assert_eq!(store.transaction(&t.id).unwrap(), Some(v2.clone()));

        // A writer that read revision 1 too: stale.
        let mut stale = bumped(&t, TransactionState::Cancelled);
        stale.closed_reason = Some("cancelled by the client".into());
        assert_err!(
            store.update_transaction(&stale),
            StoreError::Conflict { .. }
        );
        // The same write twice: stale as well.
        assert_err!(store.update_transaction(&v2), StoreError::Conflict { .. });
        // Writing the stored revision, or an older one.
        let mut same = v2.clone();
        same.attempts = 2;
        assert_err!(store.update_transaction(&same), StoreError::Conflict { .. });
        let mut old = v2.clone();
        old.revision = 1;
        assert_err!(store.update_transaction(&old), StoreError::Conflict { .. });
        // Skipping a revision.
        let mut skip = bumped(&v2, TransactionState::Expired);
        skip.revision += 1;
        assert_err!(store.update_transaction(&skip), StoreError::Conflict { .. });
        let mut far = bumped(&v2, TransactionState::Expired);
        far.revision = u64::MAX;
        assert_err!(store.update_transaction(&far), StoreError::Conflict { .. });
        // Unknown id.
        assert_err!(
            store.update_transaction(&bumped(
                &transaction(7, &[9; 32]),
                TransactionState::Expired
            )),
            StoreError::NotFound {
                what: "transaction"
            }
        );
        assert!(store.transaction(&[7; 16]).unwrap().is_none());
        // None of the refusals changed anything.
        assert_eq!(store.transaction(&t.id).unwrap(), Some(v2.clone()));

        // The next revision goes through, and reading returns it.
        let mut v3 = bumped(&v2, TransactionState::Failed);
        v3.attempts = 3;
        v3.closed_reason = Some("too many attempts".into());
        store.update_transaction(&v3).unwrap();
        assert_eq!(store.transaction(&t.id).unwrap(), Some(v3.clone()));
        assert_err!(store.update_transaction(&v3), StoreError::Conflict { .. });
        assert_eq!(store.transaction(&t.id).unwrap(), Some(v3.clone()));
        // Closed is final: not reopened, not approved, whatever the caller
        // believed, even at the right revision.
        let reopened = bumped(&v3, TransactionState::Pending);
        assert_err!(
            store.update_transaction(&reopened),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.transaction(&t.id).unwrap(), Some(v3));
    }

    /// Transaction and counter move together, or neither does.
    pub fn approval(store: &dyn Store) {
        let uid = [5; 32];
        enrolled(store, &uid, b"cred-1", 0, 0);
        let t = transaction(1, &uid);
        store.insert_transaction(&t).unwrap();

        // Approval with counter 5.
        let a = approved(&t, b"cred-1", 1_234);
        store.approve_transaction(&a, 5, true).unwrap();
        let stored = store.transaction(&t.id).unwrap().unwrap();
        assert_eq!(stored, a);
        assert_eq!(stored.state, TransactionState::Approved);
        assert_eq!(stored.revision, 2);
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // A second approval from the same pending revision: stale, and the
        // counter stays where the first one put it.
        let again = approved(&t, b"cred-1", 2_000);
        assert_err!(
            store.approve_transaction(&again, 6, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.transaction(&t.id).unwrap(), Some(a.clone()));
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));
        // An approval on top of the approval, at the right revision: an
        // approved transaction is final.
        let twice = approved(&a, b"cred-1", 2_000);
        assert_err!(
            store.approve_transaction(&twice, 7, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.transaction(&t.id).unwrap(), Some(a.clone()));
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // A counter that regressed: the transaction stays pending at its
        // old revision, the counter where it was.
        enrolled(store, &uid, b"cred-2", 10, 50);
        let t2 = transaction(2, &uid);
        store.insert_transaction(&t2).unwrap();
        for received in [3, 10, 0] {
            match store.approve_transaction(&approved(&t2, b"cred-2", 3_000), received, true) {
                Err(StoreError::CounterRegression {
                    stored: 10,
                    received: r,
                }) => assert_eq!(r, received),
                other => panic!("count {received}: {other:?}"),
            }
            assert_eq!(store.transaction(&t2.id).unwrap(), Some(t2.clone()));
            assert_eq!(counter_of(store, b"cred-2"), (10, false, Some(50)));
        }
        // Nothing half-written: the same revision is still free.
        let a2 = approved(&t2, b"cred-2", 3_001);
        store.approve_transaction(&a2, 11, false).unwrap();
        assert_eq!(store.transaction(&t2.id).unwrap(), Some(a2));
        assert_eq!(counter_of(store, b"cred-2"), (11, false, Some(3_001)));

        // An unknown credential: the transaction is unchanged.
        let t3 = transaction(3, &uid);
        store.insert_transaction(&t3).unwrap();
        assert_err!(
            store.approve_transaction(&approved(&t3, b"missing", 4_000), 1, false),
            StoreError::NotFound { what: "credential" }
        );
        assert_eq!(store.transaction(&t3.id).unwrap(), Some(t3.clone()));
        assert!(store.credential(b"missing").unwrap().is_none());

        // An unknown transaction: the credential is unchanged.
        assert_err!(
            store.approve_transaction(&approved(&transaction(4, &uid), b"cred-1", 4_000), 7, false),
            StoreError::NotFound {
                what: "transaction"
            }
        );
        assert!(store.transaction(&[4; 16]).unwrap().is_none());
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // An approval without one: invalid, whichever state it claims.
        let pending = bumped(&t3, TransactionState::Pending);
        assert_err!(
            store.approve_transaction(&pending, 1, false),
            StoreError::Invalid {
                field: "transaction approval",
                ..
            }
        );
        let bare = bumped(&t3, TransactionState::Approved);
        assert_err!(
            store.approve_transaction(&bare, 1, false),
            StoreError::Invalid {
                field: "transaction approval",
                ..
            }
        );
        // A skipped revision.
        let mut skip = approved(&t3, b"cred-1", 4_000);
        skip.revision += 1;
        assert_err!(
            store.approve_transaction(&skip, 6, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.transaction(&t3.id).unwrap(), Some(t3.clone()));
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // Authenticators without a counter: two zeros pass.
        enrolled(store, &uid, b"cred-0", 0, 0);
        let a3 = approved(&t3, b"cred-0", 5_000);
        store.approve_transaction(&a3, 0, true).unwrap();
        assert_eq!(store.transaction(&t3.id).unwrap(), Some(a3));
        assert_eq!(counter_of(store, b"cred-0"), (0, true, Some(5_000)));
    }

    /// Of many threads approving one pending transaction from one revision,
    /// exactly one succeeds, and the stored approval is its.
    pub fn approval_race(store: &dyn Store) {
        let uid = [6; 32];
        enrolled(store, &uid, b"cred", 0, 0);
        let t = transaction(1, &uid);
        store.insert_transaction(&t).unwrap();
        let n = 16;
        let barrier = Barrier::new(n);
        let winners: Vec<(TransactionRecord, u32)> = thread::scope(|scope| {
            (0..n as u32)
                .map(|i| {
                    let (barrier, t) = (&barrier, &t);
                    scope.spawn(move || {
                        let a = approved(t, b"cred", 10_000 + u64::from(i));
                        let count = i + 1;
                        barrier.wait();
                        match store.approve_transaction(&a, count, i % 2 == 0) {
                            Ok(()) => Some((a, count)),
                            Err(StoreError::Conflict { .. })
                            | Err(StoreError::CounterRegression { .. }) => None,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(winners.len(), 1, "{winners:?}");
        let (won, count) = &winners[0];
        assert_eq!(store.transaction(&t.id).unwrap().as_ref(), Some(won));
        let approved_ms = won.approval.as_ref().unwrap().approved_ms;
        assert_eq!(
            counter_of(store, b"cred"),
            (*count, *count % 2 == 1, Some(approved_ms))
        );
    }

    /// Writes for [`reopened`] to find after the store is opened again.
    pub fn before_reopen(store: &dyn Store) {
        let uid = [4; 32];
        enrolled(store, &uid, b"cred", 0, 0);
        let t1 = transaction(1, &uid);
        store.insert_transaction(&t1).unwrap();
        store
            .approve_transaction(&approved(&t1, b"cred", 7_000), 9, true)
            .unwrap();
        let t2 = transaction(2, &uid);
        store.insert_transaction(&t2).unwrap();
        let mut t2v2 = bumped(&t2, TransactionState::Pending);
        t2v2.attempts = 1;
        store.update_transaction(&t2v2).unwrap();
    }

    pub fn reopened(store: &dyn Store) {
        let uid = [4; 32];
        let t1 = transaction(1, &uid);
        assert_eq!(
            store.transaction(&t1.id).unwrap(),
            Some(approved(&t1, b"cred", 7_000))
        );
        assert_eq!(counter_of(store, b"cred"), (9, true, Some(7_000)));
        let mut t2v2 = bumped(&transaction(2, &uid), TransactionState::Pending);
        t2v2.attempts = 1;
        assert_eq!(store.transaction(&t2v2.id).unwrap(), Some(t2v2.clone()));
        // The revisions carry on where they stopped.
        assert_err!(store.update_transaction(&t2v2), StoreError::Conflict { .. });
        assert_err!(
            store.insert_transaction(&transaction(2, &uid)),
            StoreError::Exists { .. }
        );
        let a = approved(&t2v2, b"cred", 8_000);
        store.approve_transaction(&a, 10, false).unwrap();
        assert_eq!(store.transaction(&a.id).unwrap(), Some(a));
        assert_eq!(counter_of(store, b"cred"), (10, false, Some(8_000)));
    }
}

pub mod pairing_suite {
    use super::transaction_suite::{counter_of, enrolled};
    use signet::store::{
        PairingApproval, PairingContext, PairingRecord, PairingState, Store, StoreError, limits,
    };
    use std::sync::Barrier;
    use std::thread;

    /// Fails with the actual result unless it is the error `$pattern`.
    macro_rules! assert_err {
        ($result:expr, $pattern:pat $(,)?) => {
            match $result {
                Err($pattern) => {}
                other => panic!("expected Err({}), got {other:?}", stringify!($pattern)),
            }
        };
    }

    /// A new pairing: `created`, revision 1, no user named yet.
    pub fn pairing(id: u8) -> PairingRecord {
        PairingRecord {
            id: [id; 16],
            revision: 1,
            state: PairingState::Created,
            code_sha256: [id; 32],
            desktop_secret_sha256: [!id; 32],
            phone_secret_sha256: None,
            nonce: [id.wrapping_add(1); 32],
            action: "login".into(),
            user_id: None,
            context: PairingContext {
                ip: "203.0.113.7".into(),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0".into(),
                location: Some("Zurich, CH".into()),
            },
            created_ms: 1_000,
            updated_ms: 1_000,
            expires_ms: 121_000,
            code_attempts: 0,
            refusals: 0,
            options: br#"{"uv":"required"}"#.to_vec(),
            approval: None,
            closed_reason: None,
        }
    }

    fn phone(n: u8) -> Option<Vec<u8>> {
        Some(vec![n; 32])
    }

    fn approval(uid: &[u8], cred: &[u8], approved_ms: u64, sign_count: u32) -> PairingApproval {
        PairingApproval {
            user_id: uid.to_vec(),
            credential_id: cred.to_vec(),
            approved_ms,
            tier: 3,
            user_verified: true,
            sign_count,
            policy_version: "test-1".into(),
        }
    }

    /// Makes `p` a valid record in `state`: a phone secret where the state
    /// needs one and none in `created`, an approval exactly in approved and
    /// consumed, a reason where the pairing closed without a login. Keeps
    /// what is already there where the state allows it.
    fn shape(p: &mut PairingRecord, state: PairingState) {
        use PairingState as P;
        p.state = state;
        match state {
            P::Created => p.phone_secret_sha256 = None,
            P::Claimed | P::Approved | P::Denied | P::Consumed => {
                if p.phone_secret_sha256.is_none() {
                    p.phone_secret_sha256 = phone(0xee);
                }
            }
            P::Expired | P::Locked => {}
        }
        if matches!(state, P::Approved | P::Consumed) {
            if p.approval.is_none() {
                p.approval = Some(approval(&[9; 32], b"cred", p.updated_ms, 0));
            }
        } else if state != P::Expired {
            // An approval nobody took stays with the expired pairing.
            p.approval = None;
        }
        p.closed_reason = match state {
            P::Denied | P::Expired | P::Locked => Some(format!("{state} by the test")),
            _ => None,
        };
    }

    /// `p` one revision on, made valid in `state`.
    fn next(p: &PairingRecord, state: PairingState) -> PairingRecord {
        let mut n = p.clone();
        n.revision += 1;
        n.updated_ms += 1;
        shape(&mut n, state);
        n
    }

    /// `p` claimed, one revision on, by the phone whose secret hashes to
    /// `[n; 32]`.
    fn claimed(p: &PairingRecord, n: u8) -> PairingRecord {
        let mut c = p.clone();
        c.phone_secret_sha256 = phone(n);
        next(&c, PairingState::Claimed)
    }

    /// `p` approved, one revision on, for `uid` by `cred` at `approved_ms`.
    fn approved(
        p: &PairingRecord,
        uid: &[u8],
        cred: &[u8],
        approved_ms: u64,
        sign_count: u32,
    ) -> PairingRecord {
        let mut a = p.clone();
        a.approval = Some(approval(uid, cred, approved_ms, sign_count));
        next(&a, PairingState::Approved)
    }

    /// The allowed steps from `created` to `state`.
    fn path_to(state: PairingState) -> &'static [PairingState] {
        use PairingState as P;
        match state {
            P::Created => &[],
            P::Claimed => &[P::Claimed],
            P::Approved => &[P::Claimed, P::Approved],
            P::Denied => &[P::Claimed, P::Denied],
            P::Consumed => &[P::Claimed, P::Approved, P::Consumed],
            P::Expired => &[P::Expired],
            P::Locked => &[P::Locked],
        }
    }

    /// Pairing `id` inserted and written step by step into `state`; the
    /// stored record.
    fn stored_in(store: &dyn Store, id: u8, state: PairingState) -> PairingRecord {
        let mut p = pairing(id);
        store.insert_pairing(&p).unwrap();
        for &step in path_to(state) {
            assert!(p.state.may_become(step), "{} -> {step}", p.state);
            p = next(&p, step);
            store
                .update_pairing(&p)
                .unwrap_or_else(|e| panic!("{step}: {e}"));
        }
        assert_eq!(p.state, state);
        assert_eq!(store.pairing(&p.id).unwrap().as_ref(), Some(&p));
        p
    }

    /// Insert, read back, duplicate ids, and what a new pairing must be.
    pub fn pairings(store: &dyn Store) {
        let p = pairing(1);
        store.insert_pairing(&p).unwrap();
        assert_eq!(store.pairing(&p.id).unwrap(), Some(p.clone()));
        assert!(store.pairing(&[2; 16]).unwrap().is_none());
        assert!(store.pairing(&[0; 16]).unwrap().is_none());

        // The same id again, even with other contents.
        assert_err!(
            store.insert_pairing(&p),
            StoreError::Exists { what: "pairing id" }
        );
        let mut other = pairing(1);
        other.user_id = Some(vec![8; 32]);
        other.context.ip = "198.51.100.1".into();
        other.code_sha256 = [0x55; 32];
        assert_err!(
            store.insert_pairing(&other),
            StoreError::Exists { what: "pairing id" }
        );
        assert_eq!(store.pairing(&p.id).unwrap(), Some(p.clone()));
        // Taken even once it moved on.
        let c = claimed(&p, 7);
        store.update_pairing(&c).unwrap();
        assert_err!(
            store.insert_pairing(&p),
            StoreError::Exists { what: "pairing id" }
        );
        assert_eq!(store.pairing(&p.id).unwrap(), Some(c.clone()));

        // A new pairing is created at revision 1; nothing else is inserted,
        // and nothing is written.
        for revision in [2, 3, u64::MAX] {
            let mut later = pairing(3);
            later.revision = revision;
            later.validate().unwrap();
            assert_err!(
                store.insert_pairing(&later),
                StoreError::Invalid {
                    field: "pairing revision",
                    ..
                }
            );
        }
        let mut zero = pairing(3);
        zero.revision = 0;
        assert_err!(
            store.insert_pairing(&zero),
            StoreError::Invalid {
                field: "pairing revision",
                ..
            }
        );
        for state in PairingState::ALL {
            if state == PairingState::Created {
                continue;
            }
            // Valid in its state, but not new.
            let mut born = pairing(3);
            shape(&mut born, state);
            born.validate()
                .unwrap_or_else(|e| panic!("{state} should be valid: {e}"));
            assert_err!(
                store.insert_pairing(&born),
                StoreError::Invalid {
                    field: "pairing revision",
                    ..
                }
            );
        }
        assert!(store.pairing(&[3; 16]).unwrap().is_none());

        // A second pairing, with a user named and no location, is
        // independent of the first.
        let mut p4 = pairing(4);
        p4.user_id = Some(vec![9; 32]);
        p4.context.location = None;
        p4.options = Vec::new();
        store.insert_pairing(&p4).unwrap();
        assert_eq!(store.pairing(&p4.id).unwrap(), Some(p4));
        assert_eq!(store.pairing(&p.id).unwrap(), Some(c));
    }

    /// A field `validate` bounds: its error name, its limit, and how to set
    /// it to a length.
    struct Bounded {
        field: &'static str,
        min: usize,
        max: usize,
        set: fn(&mut PairingRecord, usize),
        /// A new (created) pairing may carry it.
        at_insert: bool,
    }

    fn bounded() -> Vec<Bounded> {
        vec![
            Bounded {
                field: "pairing ip",
                min: 1,
                max: limits::PAIRING_IP_MAX,
                set: |p, n| p.context.ip = "1".repeat(n),
                at_insert: true,
            },
            Bounded {
                field: "pairing user agent",
                min: 1,
                max: limits::PAIRING_AGENT_MAX,
                set: |p, n| p.context.user_agent = "u".repeat(n),
                at_insert: true,
            },
            Bounded {
                field: "pairing location",
                min: 1,
                max: limits::PAIRING_LOCATION_MAX,
                set: |p, n| p.context.location = Some("l".repeat(n)),
                at_insert: true,
            },
            Bounded {
                field: "pairing options",
                min: 0,
                max: limits::PAIRING_OPTIONS_MAX,
                set: |p, n| p.options = vec![b'o'; n],
                at_insert: true,
            },
            Bounded {
                field: "action",
                min: 1,
                max: limits::SHORT_TEXT_MAX,
                set: |p, n| p.action = "a".repeat(n),
                at_insert: true,
            },
            Bounded {
                field: "user id",
                min: 1,
                max: limits::USER_ID_MAX,
                set: |p, n| p.user_id = Some(vec![b'u'; n]),
                at_insert: true,
            },
            Bounded {
                field: "flag reason",
                min: 0,
                max: limits::FLAG_REASON_MAX,
                set: |p, n| p.closed_reason = Some("r".repeat(n)),
                at_insert: false,
            },
            Bounded {
                field: "phone secret hash",
                min: 32,
                max: 32,
                set: |p, n| p.phone_secret_sha256 = Some(vec![b'p'; n]),
                at_insert: false,
            },
            Bounded {
                field: "user id",
                min: 1,
                max: limits::USER_ID_MAX,
                set: |p, n| p.approval.as_mut().unwrap().user_id = vec![b'v'; n],
                at_insert: false,
            },
            Bounded {
                field: "credential id",
                min: 1,
                max: limits::CREDENTIAL_ID_MAX,
                set: |p, n| p.approval.as_mut().unwrap().credential_id = vec![b'c'; n],
                at_insert: false,
            },
            Bounded {
                field: "policy version",
                min: 0,
                max: limits::SHORT_TEXT_MAX,
                set: |p, n| p.approval.as_mut().unwrap().policy_version = "v".repeat(n),
                at_insert: false,
            },
        ]
    }

    /// Every limit `PairingRecord::validate` checks, refused one past it and
    /// accepted at it, on insert, update and approval alike, before
    /// anything is written.
    pub fn pairing_limits(store: &dyn Store) {
        let uid = [9; 32];
        // At every limit at once: accepted and read back whole.
        let mut full = pairing(1);
        for b in bounded().iter().filter(|b| b.at_insert) {
            (b.set)(&mut full, b.max);
        }
        full.validate().unwrap();
        store.insert_pairing(&full).unwrap();
        assert_eq!(store.pairing(&full.id).unwrap(), Some(full.clone()));
        let full_claimed = claimed(&full, 1);
        store.update_pairing(&full_claimed).unwrap();
        let mut full_approved = approved(&full_claimed, &uid, b"cred", 5, 0);
        // The phone's secret was named by the claim and stays.
        for b in bounded().iter().filter(|b| b.field != "phone secret hash") {
            (b.set)(&mut full_approved, b.max);
        }
        full_approved.validate().unwrap();
        store.update_pairing(&full_approved).unwrap();
        assert_eq!(
            store.pairing(&full.id).unwrap(),
            Some(full_approved.clone())
        );

        for (i, b) in bounded().iter().enumerate() {
            let what = format!("{} (case {i})", b.field);
            let id = 10 + i as u8;

            // One past the limit: refused, as the limit it is.
            let mut over = approved(
                &next(&pairing(id), PairingState::Claimed),
                &uid,
                b"cred",
                5,
                0,
            );
            (b.set)(&mut over, b.max + 1);
            match over.validate() {
                Err(StoreError::TooLarge { field, limit }) => {
                    assert_eq!((field, limit), (b.field, b.max), "{what}")
                }
                other => panic!("{what}: {other:?}"),
            }
            // Below the minimum: refused as invalid.
            if b.min > 0 {
                let mut under = over.clone();
                (b.set)(&mut under, b.min - 1);
                match under.validate() {
                    Err(StoreError::Invalid { field, .. }) => assert_eq!(field, b.field, "{what}"),
                    other => panic!("{what}: {other:?}"),
                }
            }
            // At the limit, and at the minimum: accepted.
            let mut at = over.clone();
            (b.set)(&mut at, b.max);
            at.validate()
                .unwrap_or_else(|e| panic!("{what} at its limit: {e}"));
            let mut at_min = over.clone();
            (b.set)(&mut at_min, b.min);
            at_min
                .validate()
                .unwrap_or_else(|e| panic!("{what} at its minimum: {e}"));

            // The store refuses the same: on insert where a new pairing may
            // carry the field...
            if b.at_insert {
                let mut new = pairing(id);
                (b.set)(&mut new, b.max + 1);
                match store.insert_pairing(&new) {
                    Err(StoreError::TooLarge { field, limit }) => {
                        assert_eq!((field, limit), (b.field, b.max), "{what}")
                    }
                    other => panic!("{what}: {other:?}"),
                }
                assert!(store.pairing(&new.id).unwrap().is_none(), "{what}");
            }
            // ... and on update and approval of a claimed pairing.
            let p = pairing(id);
            store.insert_pairing(&p).unwrap();
            let c = claimed(&p, 2);
            store.update_pairing(&c).unwrap();
            let mut over = approved(&c, &uid, b"cred", 5, 0);
            (b.set)(&mut over, b.max + 1);
            for result in [
                store.update_pairing(&over),
                store.approve_pairing(&over, 1, false),
            ] {
                match result {
                    Err(StoreError::TooLarge { field, limit }) => {
                        assert_eq!((field, limit), (b.field, b.max), "{what}")
                    }
                    other => panic!("{what}: {other:?}"),
                }
            }
            assert_eq!(store.pairing(&p.id).unwrap(), Some(c.clone()), "{what}");
            // At the limit, the same write goes through, if the approval
            // may change the field at all: what the desktop gave and what
            // the claim named are fixed (a Conflict, nothing written).
            let mut at = approved(&c, &uid, b"cred", 5, 0);
            (b.set)(&mut at, b.max);
            let fixed =
                (b.at_insert && b.field != "pairing options") || b.field == "phone secret hash";
            if fixed {
                assert_err!(store.update_pairing(&at), StoreError::Conflict { .. });
                assert_eq!(store.pairing(&p.id).unwrap(), Some(c.clone()), "{what}");
            } else {
                store
                    .update_pairing(&at)
                    .unwrap_or_else(|e| panic!("{what} at its limit: {e}"));
                assert_eq!(store.pairing(&p.id).unwrap(), Some(at), "{what}");
            }
            // And a new pairing at the limit is inserted whole.
            if b.at_insert {
                let mut new = pairing(100 + i as u8);
                (b.set)(&mut new, b.max);
                store
                    .insert_pairing(&new)
                    .unwrap_or_else(|e| panic!("{what} at its limit: {e}"));
                assert_eq!(store.pairing(&new.id).unwrap(), Some(new), "{what}");
            }
        }

        // An approval in approved and consumed, none in created, claimed,
        // denied and locked; either way in expired (an approval nobody took
        // expires with the pairing).
        for state in PairingState::ALL {
            let mut with = pairing(1);
            with.revision = 3;
            shape(&mut with, state);
            let mut without = with.clone();
            with.approval = Some(approval(&uid, b"cred", 5, 0));
            without.approval = None;
            let (with_ok, without_ok) = match state {
                PairingState::Approved | PairingState::Consumed => (true, false),
                PairingState::Expired => (true, true),
                PairingState::Created
                | PairingState::Claimed
                | PairingState::Denied
                | PairingState::Locked => (false, true),
            };
            for (record, ok, how) in [(&with, with_ok, "with"), (&without, without_ok, "without")] {
                match record.validate() {
                    Ok(()) if ok => {}
                    Err(StoreError::Invalid {
                        field: "pairing approval",
                        ..
                    }) if !ok => {}
                    other => panic!("{state} {how} an approval: {other:?}"),
                }
            }
        }

        // A phone secret hash in claimed, approved, denied and consumed;
        // none in created; either way in expired and locked.
        for state in PairingState::ALL {
            let mut with = pairing(1);
            with.revision = 3;
            with.phone_secret_sha256 = phone(3);
            shape(&mut with, state);
            with.phone_secret_sha256 = phone(3);
            let mut without = with.clone();
            without.phone_secret_sha256 = None;
            let (with_ok, without_ok) = match state {
                PairingState::Created => (false, true),
                PairingState::Claimed
                | PairingState::Approved
                | PairingState::Denied
                | PairingState::Consumed => (true, false),
                PairingState::Expired | PairingState::Locked => (true, true),
            };
            for (record, ok, how) in [(&with, with_ok, "with"), (&without, without_ok, "without")] {
                match record.validate() {
                    Ok(()) if ok => {}
                    Err(StoreError::Invalid {
                        field: "pairing phone secret",
                        ..
                    }) if !ok => {}
                    other => panic!("{state} {how} a phone secret: {other:?}"),
                }
            }
        }
        // Through the store: a created pairing with a phone secret is not
        // inserted, a claim without one is not written.
        let mut early = pairing(3);
        early.phone_secret_sha256 = phone(3);
        assert_err!(
            store.insert_pairing(&early),
            StoreError::Invalid {
                field: "pairing phone secret",
                ..
            }
        );
        assert!(store.pairing(&early.id).unwrap().is_none());
        let p = pairing(4);
        store.insert_pairing(&p).unwrap();
        let mut anonymous = claimed(&p, 4);
        anonymous.phone_secret_sha256 = None;
        assert_err!(
            store.update_pairing(&anonymous),
            StoreError::Invalid {
                field: "pairing phone secret",
                ..
            }
        );
        // An approval where none belongs, or none where one does.
        let mut stray = claimed(&p, 4);
        stray.approval = Some(approval(&uid, b"cred", 5, 0));
        assert_err!(
            store.update_pairing(&stray),
            StoreError::Invalid {
                field: "pairing approval",
                ..
            }
        );

        // Revision 0 is never valid.
        let mut zero = claimed(&p, 4);
        zero.revision = 0;
        assert_err!(
            zero.validate(),
            StoreError::Invalid {
                field: "pairing revision",
                ..
            }
        );
        assert_err!(
            store.update_pairing(&zero),
            StoreError::Invalid {
                field: "pairing revision",
                ..
            }
        );
        assert_eq!(store.pairing(&p.id).unwrap(), Some(p));
        assert_eq!(store.pairing(&full.id).unwrap(), Some(full_approved));
    }

    /// Compare-and-swap on the revision.
    pub fn pairing_updates(store: &dyn Store) {
        let p = pairing(1);
        store.insert_pairing(&p).unwrap();

        // A wrong code: still created, one revision on.
        let mut v2 = next(&p, PairingState::Created);
        v2.code_attempts = 1;
        store.update_pairing(&v2).unwrap();
        assert_eq!(store.pairing(&p.id).unwrap(), Some(v2.clone()));

        // A writer that read revision 1 too: stale.
        assert_err!(
            store.update_pairing(&claimed(&p, 1)),
            StoreError::Conflict { .. }
        );
        // The same write twice: stale as well.
        assert_err!(store.update_pairing(&v2), StoreError::Conflict { .. });
        // Writing the stored revision, or an older one.
        let mut same = v2.clone();
        same.code_attempts = 2;
        assert_err!(store.update_pairing(&same), StoreError::Conflict { .. });
        let mut old = v2.clone();
        old.revision = 1;
        assert_err!(store.update_pairing(&old), StoreError::Conflict { .. });
        // Skipping a revision (stored + 2), or far ahead.
        let mut skip = claimed(&v2, 1);
        skip.revision += 1;
        assert_eq!(skip.revision, v2.revision + 2);
        assert_err!(store.update_pairing(&skip), StoreError::Conflict { .. });
        let mut far = claimed(&v2, 1);
        far.revision = u64::MAX;
        assert_err!(store.update_pairing(&far), StoreError::Conflict { .. });
        // Unknown id.
        assert_err!(
            store.update_pairing(&claimed(&pairing(7), 1)),
            StoreError::NotFound { what: "pairing" }
        );
        assert!(store.pairing(&[7; 16]).unwrap().is_none());
        // None of the refusals changed anything.
        assert_eq!(store.pairing(&p.id).unwrap(), Some(v2.clone()));

        // The next revisions go through, and reading returns them.
        let v3 = claimed(&v2, 1);
        store.update_pairing(&v3).unwrap();
        assert_eq!(store.pairing(&p.id).unwrap(), Some(v3.clone()));
        let mut v4 = next(&v3, PairingState::Claimed);
        v4.refusals = 1;
        store.update_pairing(&v4).unwrap();
        assert_eq!(store.pairing(&p.id).unwrap(), Some(v4.clone()));
        assert_err!(store.update_pairing(&v3), StoreError::Conflict { .. });
        let mut v5 = next(&v4, PairingState::Locked);
        v5.refusals = 2;
        store.update_pairing(&v5).unwrap();
        assert_eq!(store.pairing(&p.id).unwrap(), Some(v5.clone()));
        // Locked is final: at the right revision, nothing moves it.
        for state in PairingState::ALL {
            assert_err!(
                store.update_pairing(&next(&v5, state)),
                StoreError::Conflict { .. }
            );
        }
        assert_eq!(store.pairing(&p.id).unwrap(), Some(v5));
    }

    /// Every (from, to) pair of states, written at the right revision with a
    /// valid record: it goes through exactly when the table allows it.
    pub fn pairing_transitions(store: &dyn Store) {
        let mut id = 0;
        let mut allowed = 0;
        for from in PairingState::ALL {
            for to in PairingState::ALL {
                id += 1;
                let stored = stored_in(store, id, from);
                let write = next(&stored, to);
                write
                    .validate()
                    .unwrap_or_else(|e| panic!("{from} -> {to}: the write is invalid: {e}"));
                let result = store.update_pairing(&write);
                let now = store.pairing(&stored.id).unwrap();
                match (from.may_become(to), result) {
                    (true, Ok(())) => {
                        allowed += 1;
                        assert_eq!(now, Some(write), "{from} -> {to}");
                    }
                    (false, Err(StoreError::Conflict { .. })) => {
                        assert_eq!(now, Some(stored), "{from} -> {to}");
                    }
                    (may, other) => {
                        panic!("{from} -> {to} (table allows: {may}): {other:?}")
                    }
                }
            }
        }
        assert_eq!(id, 49);
        assert_eq!(allowed, 11);
    }

    /// What each step may change: the desktop's code, secret, nonce,
    /// action and context never; the phone and the user only at the claim;
    /// the approval only at the approval. Each other change is a Conflict
    /// that writes nothing.
    pub fn pairing_fixed_fields(store: &dyn Store) {
        use PairingState as P;
        let p = pairing(1);
        store.insert_pairing(&p).unwrap();
        type Edit = fn(&mut PairingRecord);
        let edits: Vec<(&str, Edit)> = vec![
            ("code", |r| r.code_sha256 = [0x11; 32]),
            ("desktop secret", |r| r.desktop_secret_sha256 = [0x12; 32]),
            ("nonce", |r| r.nonce = [0x13; 32]),
            ("action", |r| r.action = "payment".into()),
            ("ip", |r| r.context.ip = "198.51.100.9".into()),
            ("user agent", |r| r.context.user_agent = "other".into()),
            ("location", |r| r.context.location = None),
            ("created", |r| r.created_ms += 1),
        ];
        let refused = |stored: &PairingRecord, write: &PairingRecord, what: &str| {
            match store.update_pairing(write) {
                Err(StoreError::Conflict { .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(
                store.pairing(&stored.id).unwrap().as_ref(),
                Some(stored),
                "{what}"
            );
        };
        // Not at the claim, nor while counting a wrong code.
        for (what, edit) in &edits {
            let mut c = claimed(&p, 1);
            edit(&mut c);
            refused(&p, &c, what);
            let mut counted = next(&p, P::Created);
            counted.code_attempts = 1;
            edit(&mut counted);
            refused(&p, &counted, what);
        }
        // The claim names the phone and the user...
        let mut c = claimed(&p, 1);
        c.user_id = Some(vec![4; 32]);
        store.update_pairing(&c).unwrap();
        // ... and nothing after it renames them.
        let mut other_phone = next(&c, P::Claimed);
        other_phone.phone_secret_sha256 = phone(2);
        refused(&c, &other_phone, "another phone");
        let mut other_user = next(&c, P::Claimed);
        other_user.user_id = Some(vec![5; 32]);
        refused(&c, &other_user, "another user");
        let mut no_user = next(&c, P::Denied);
        no_user.user_id = None;
        refused(&c, &no_user, "the user dropped");
        // An approval only by approving: not smuggled into an expiry (the
        // one other state that may carry one; `validate` refuses it in
        // the rest).
        let mut smuggled = next(&c, P::Expired);
        smuggled.approval = Some(approval(&[4; 32], b"cred", 5, 0));
        refused(&c, &smuggled, "approval in an expiry");
        // Approved: the approval expires with the pairing unchanged, and
        // is never replaced or dropped.
        let a = approved(&c, &[4; 32], b"cred", 5, 0);
        store.update_pairing(&a).unwrap();
        let mut replaced = next(&a, P::Consumed);
        replaced.approval = Some(approval(&[4; 32], b"other", 5, 0));
        refused(&a, &replaced, "approval replaced");
        let mut dropped = next(&a, P::Expired);
        dropped.approval = None;
        refused(&a, &dropped, "approval dropped");
        let expired = next(&a, P::Expired);
        assert_eq!(expired.approval, a.approval);
        store.update_pairing(&expired).unwrap();
        assert_eq!(store.pairing(&p.id).unwrap(), Some(expired));
    }

    /// Pairing and counter move together, or neither does.
    pub fn pairing_approval(store: &dyn Store) {
        use PairingState as P;
        let uid = [5; 32];
        enrolled(store, &uid, b"cred-1", 0, 0);
        let p = pairing(1);
        store.insert_pairing(&p).unwrap();
        let c = claimed(&p, 1);
        store.update_pairing(&c).unwrap();

        // Approval with counter 5.
        let a = approved(&c, &uid, b"cred-1", 1_234, 5);
        store.approve_pairing(&a, 5, true).unwrap();
        let stored = store.pairing(&p.id).unwrap().unwrap();
        assert_eq!(stored, a);
        assert_eq!(stored.state, P::Approved);
        assert_eq!(stored.revision, 3);
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // A second approval from the same claimed revision: stale, and the
        // counter stays where the first one put it.
        let again = approved(&c, &uid, b"cred-1", 2_000, 6);
        assert_err!(
            store.approve_pairing(&again, 6, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.pairing(&p.id).unwrap(), Some(a.clone()));
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));
        // An approval on top of the approval, at the right revision: an
        // approved pairing is not approved again.
        let twice = approved(&a, &uid, b"cred-1", 2_000, 7);
        assert_err!(
            store.approve_pairing(&twice, 7, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.pairing(&p.id).unwrap(), Some(a.clone()));
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // A counter that regressed: the pairing stays claimed at its old
        // revision, the counter where it was.
        enrolled(store, &uid, b"cred-2", 10, 50);
        let p2 = pairing(2);
        store.insert_pairing(&p2).unwrap();
        let c2 = claimed(&p2, 2);
        store.update_pairing(&c2).unwrap();
        for received in [3, 10, 0] {
            let a2 = approved(&c2, &uid, b"cred-2", 3_000, received);
            match store.approve_pairing(&a2, received, true) {
                Err(StoreError::CounterRegression {
                    stored: 10,
                    received: r,
                }) => assert_eq!(r, received),
                other => panic!("count {received}: {other:?}"),
            }
            assert_eq!(store.pairing(&p2.id).unwrap(), Some(c2.clone()));
            assert_eq!(counter_of(store, b"cred-2"), (10, false, Some(50)));
        }
        // Nothing half-written: the same revision is still free.
        let a2 = approved(&c2, &uid, b"cred-2", 3_001, 11);
        store.approve_pairing(&a2, 11, false).unwrap();
        assert_eq!(store.pairing(&p2.id).unwrap(), Some(a2.clone()));
        assert_eq!(counter_of(store, b"cred-2"), (11, false, Some(3_001)));
        // Taken by the desktop: consumed, the approval kept.
        let consumed = next(&a2, P::Consumed);
        store.update_pairing(&consumed).unwrap();
        assert_eq!(store.pairing(&p2.id).unwrap(), Some(consumed.clone()));
        assert_eq!(consumed.approval, a2.approval);

        // A pairing that is no longer claimed (or never was): not
        // approved, from the claim's revision or at the right one, and the
        // counter stays.
        for (n, closed) in [(3, P::Denied), (4, P::Expired), (5, P::Locked)] {
            let p = pairing(n);
            store.insert_pairing(&p).unwrap();
            let c = claimed(&p, n);
            store.update_pairing(&c).unwrap();
            let gone = next(&c, closed);
            store.update_pairing(&gone).unwrap();
            for late in [
                approved(&c, &uid, b"cred-1", 4_000, 20),
                approved(&gone, &uid, b"cred-1", 4_000, 20),
            ] {
                assert_err!(
                    store.approve_pairing(&late, 20, false),
                    StoreError::Conflict { .. }
                );
                assert_eq!(
                    store.pairing(&p.id).unwrap(),
                    Some(gone.clone()),
                    "{closed}"
                );
                assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));
            }
        }
        let unclaimed = pairing(6);
        store.insert_pairing(&unclaimed).unwrap();
        let skipped_claim = approved(&unclaimed, &uid, b"cred-1", 4_000, 20);
        skipped_claim.validate().unwrap();
        assert_err!(
            store.approve_pairing(&skipped_claim, 20, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.pairing(&unclaimed.id).unwrap(), Some(unclaimed));
        // A consumed pairing is not approved again either.
        let reapproved = approved(&consumed, &uid, b"cred-2", 4_000, 20);
        assert_err!(
            store.approve_pairing(&reapproved, 20, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.pairing(&p2.id).unwrap(), Some(consumed.clone()));
        assert_eq!(counter_of(store, b"cred-2"), (11, false, Some(3_001)));

        // No approval, or not in state approved: invalid, nothing written.
        let p7 = pairing(7);
        store.insert_pairing(&p7).unwrap();
        let c7 = claimed(&p7, 7);
        store.update_pairing(&c7).unwrap();
        let still_claimed = next(&c7, P::Claimed);
        let mut bare = next(&c7, P::Approved);
        bare.approval = None;
        let mut as_consumed = approved(&c7, &uid, b"cred-1", 4_000, 20);
        as_consumed.state = P::Consumed;
        as_consumed.validate().unwrap();
        let mut claimed_with_approval = approved(&c7, &uid, b"cred-1", 4_000, 20);
        claimed_with_approval.state = P::Claimed;
        let mut denied = next(&c7, P::Denied);
        denied.validate().unwrap();
        denied.approval = None;
        for (what, record) in [
            ("claimed", &still_claimed),
            ("approved without approval", &bare),
            ("consumed", &as_consumed),
            ("claimed with approval", &claimed_with_approval),
            ("denied", &denied),
        ] {
            match store.approve_pairing(record, 20, false) {
                Err(StoreError::Invalid {
                    field: "pairing approval",
                    ..
                }) => {}
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(store.pairing(&p7.id).unwrap(), Some(c7.clone()), "{what}");
            assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));
        }

        // An unknown credential: the pairing is unchanged.
        assert_err!(
            store.approve_pairing(&approved(&c7, &uid, b"missing", 4_000, 1), 1, false),
            StoreError::NotFound { what: "credential" }
        );
        assert_eq!(store.pairing(&p7.id).unwrap(), Some(c7.clone()));
        assert!(store.credential(b"missing").unwrap().is_none());

        // An unknown pairing: the credential is unchanged.
        let ghost = claimed(&pairing(8), 8);
        assert_err!(
            store.approve_pairing(&approved(&ghost, &uid, b"cred-1", 4_000, 7), 7, false),
            StoreError::NotFound { what: "pairing" }
        );
        assert!(store.pairing(&[8; 16]).unwrap().is_none());
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // A skipped revision.
        let mut skip = approved(&c7, &uid, b"cred-1", 4_000, 6);
        skip.revision += 1;
        assert_err!(
            store.approve_pairing(&skip, 6, false),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.pairing(&p7.id).unwrap(), Some(c7.clone()));
        assert_eq!(counter_of(store, b"cred-1"), (5, true, Some(1_234)));

        // Authenticators without a counter: two zeros pass.
        enrolled(store, &uid, b"cred-0", 0, 0);
        let a7 = approved(&c7, &uid, b"cred-0", 5_000, 0);
        store.approve_pairing(&a7, 0, true).unwrap();
        assert_eq!(store.pairing(&p7.id).unwrap(), Some(a7));
        assert_eq!(counter_of(store, b"cred-0"), (0, true, Some(5_000)));
    }

    /// Of many phones claiming one created pairing from one revision,
    /// exactly one succeeds, and the stored phone secret is its.
    pub fn pairing_claim_race(store: &dyn Store) {
        let p = pairing(1);
        store.insert_pairing(&p).unwrap();
        let n = 16;
        let barrier = Barrier::new(n);
        let results: Vec<(PairingRecord, Result<(), StoreError>)> = thread::scope(|scope| {
            (0..n as u8)
                .map(|i| {
                    let (barrier, p) = (&barrier, &p);
                    scope.spawn(move || {
                        let c = claimed(p, i + 1);
                        assert_eq!(c.revision, 2);
                        barrier.wait();
                        let result = store.update_pairing(&c);
                        (c, result)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect()
        });
        let mut winners = Vec::new();
        for (c, result) in results {
            match result {
                Ok(()) => winners.push(c),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let stored = store.pairing(&p.id).unwrap().unwrap();
        assert_eq!(stored, winners[0]);
        assert_eq!(stored.phone_secret_sha256, winners[0].phone_secret_sha256);
        assert_eq!(stored.state, PairingState::Claimed);
        assert_eq!(stored.revision, 2);
    }

    /// Of many threads approving one claimed pairing from one revision,
    /// exactly one succeeds, and the stored approval and the counter are
    /// its.
    pub fn pairing_approval_race(store: &dyn Store) {
        let uid = [6; 32];
        enrolled(store, &uid, b"cred", 0, 0);
        let p = pairing(1);
        store.insert_pairing(&p).unwrap();
        let c = claimed(&p, 1);
        store.update_pairing(&c).unwrap();
        let n = 16;
        let barrier = Barrier::new(n);
        let winners: Vec<(PairingRecord, u32)> = thread::scope(|scope| {
            (0..n as u32)
                .map(|i| {
                    let (barrier, c, uid) = (&barrier, &c, &uid);
                    scope.spawn(move || {
                        let count = i + 1;
                        let a = approved(c, uid, b"cred", 10_000 + u64::from(i), count);
                        barrier.wait();
                        match store.approve_pairing(&a, count, i % 2 == 0) {
                            Ok(()) => Some((a, count)),
                            Err(StoreError::Conflict { .. })
                            | Err(StoreError::CounterRegression { .. }) => None,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(winners.len(), 1, "{winners:?}");
        let (won, count) = &winners[0];
        assert_eq!(store.pairing(&p.id).unwrap().as_ref(), Some(won));
        let approved_ms = won.approval.as_ref().unwrap().approved_ms;
        assert_eq!(
            counter_of(store, b"cred"),
            (*count, *count % 2 == 1, Some(approved_ms))
        );
    }

    /// Writes for [`reopened`] to find after the store is opened again.
    pub fn before_reopen(store: &dyn Store) {
        let uid = [4; 32];
        enrolled(store, &uid, b"cred", 0, 0);
        let p1 = pairing(1);
        store.insert_pairing(&p1).unwrap();
        let c1 = claimed(&p1, 1);
        store.update_pairing(&c1).unwrap();
        store
            .approve_pairing(&approved(&c1, &uid, b"cred", 7_000, 9), 9, true)
            .unwrap();
        let p2 = pairing(2);
        store.insert_pairing(&p2).unwrap();
        let c2 = claimed(&p2, 2);
        store.update_pairing(&c2).unwrap();
        store.update_pairing(&refused_once(&c2)).unwrap();
        let p3 = pairing(3);
        store.insert_pairing(&p3).unwrap();
        store.update_pairing(&locked(&p3)).unwrap();
    }

    fn refused_once(c: &PairingRecord) -> PairingRecord {
        let mut r = next(c, PairingState::Claimed);
        r.refusals = 1;
        r
    }

    fn locked(p: &PairingRecord) -> PairingRecord {
        let mut l = next(p, PairingState::Locked);
        l.code_attempts = 5;
        l
    }

    pub fn reopened(store: &dyn Store) {
        let uid = [4; 32];
        let a1 = approved(&claimed(&pairing(1), 1), &uid, b"cred", 7_000, 9);
        assert_eq!(store.pairing(&a1.id).unwrap(), Some(a1.clone()));
        assert_eq!(counter_of(store, b"cred"), (9, true, Some(7_000)));
        let r2 = refused_once(&claimed(&pairing(2), 2));
        assert_eq!(store.pairing(&r2.id).unwrap(), Some(r2.clone()));
        let l3 = locked(&pairing(3));
        assert_eq!(store.pairing(&l3.id).unwrap(), Some(l3.clone()));

        // The revisions and states carry on where they stopped.
        assert_err!(store.update_pairing(&r2), StoreError::Conflict { .. });
        assert_err!(store.insert_pairing(&pairing(2)), StoreError::Exists { .. });
        assert_err!(
            store.update_pairing(&next(&l3, PairingState::Created)),
            StoreError::Conflict { .. }
        );
        assert_eq!(store.pairing(&l3.id).unwrap(), Some(l3));
        let consumed = next(&a1, PairingState::Consumed);
        store.update_pairing(&consumed).unwrap();
        assert_eq!(store.pairing(&a1.id).unwrap(), Some(consumed));
        let a2 = approved(&r2, &uid, b"cred", 8_000, 10);
        store.approve_pairing(&a2, 10, false).unwrap();
        assert_eq!(store.pairing(&a2.id).unwrap(), Some(a2));
        assert_eq!(counter_of(store, b"cred"), (10, false, Some(8_000)));
    }
}

/// Runs each named `suite` function against a fresh store from `$open`
/// (a `fn(&Path) -> impl Store`, given an empty temporary directory).
macro_rules! backend_tests {
    ($backend:ident, $open:expr, [$($name:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = ($open)(dir.path());
                    super::suite::$name(super::Backend::store(&store));
                }
            )*
        }
    };
}

fn open_sled(dir: &Path) -> SledStore {
    SledStore::open(&dir.join("store")).unwrap()
}

/// What a backend's fixture hands the suites.
trait Backend {
    fn store(&self) -> &dyn Store;
}

impl Backend for SledStore {
    fn store(&self) -> &dyn Store {
        self
    }
}

/// A PgStore on a fresh database of the PostgreSQL scripts/test started,
/// migrated as `signet store migrate` does; the database is dropped with it.
struct PgBackend {
    store: PgStore,
    _db: common::postgres::TestDb,
}

impl Backend for PgBackend {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

fn open_pg(_dir: &Path) -> PgBackend {
    let db = common::postgres::TestDb::new();
    let options = common::pg_store::options(&db);
    assert_eq!(PgStore::migrate(&options, 1).unwrap(), vec![1]);
    PgBackend {
        store: PgStore::connect(&options).unwrap(),
        _db: db,
    }
}

backend_tests!(
    sled_backend,
    super::open_sled,
    [
        users,
        users_race,
        credentials,
        credentials_scan,
        credentials_race,
        counters,
        counters_race,
        ceremonies,
        ceremonies_race,
        sweep,
        audit,
        audit_race,
        metadata,
        metadata_race,
    ]
);

backend_tests!(
    postgres_backend,
    super::open_pg,
    [
        users,
        users_race,
        credentials,
        credentials_scan,
        credentials_race,
        counters,
        counters_race,
        ceremonies,
        ceremonies_race,
        sweep,
        audit,
        audit_race,
        metadata,
        metadata_race,
    ]
);

macro_rules! device_tests {
    ($backend:ident, $open:expr, [$($name:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = ($open)(dir.path());
                    super::device_suite::$name(super::Backend::store(&store));
                }
            )*
        }
    };
}

device_tests!(
    sled_devices,
    super::open_sled,
    [devices, binding, binding_race]
);

device_tests!(
    postgres_devices,
    super::open_pg,
    [devices, binding, binding_race]
);

macro_rules! transaction_tests {
    ($backend:ident, $open:expr, [$($name:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = ($open)(dir.path());
                    super::transaction_suite::$name(super::Backend::store(&store));
                }
            )*
        }
    };
}

transaction_tests!(
    sled_transactions,
    super::open_sled,
    [
        transactions,
        transaction_limits,
        transaction_updates,
        approval,
        approval_race,
    ]
);

transaction_tests!(
    postgres_transactions,
    super::open_pg,
    [
        transactions,
        transaction_limits,
        transaction_updates,
        approval,
        approval_race,
    ]
);

macro_rules! pairing_tests {
    ($backend:ident, $open:expr, [$($name:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = ($open)(dir.path());
                    super::pairing_suite::$name(super::Backend::store(&store));
                }
            )*
        }
    };
}

pairing_tests!(
    sled_pairings,
    super::open_sled,
    [
        pairings,
        pairing_limits,
        pairing_updates,
        pairing_transitions,
        pairing_fixed_fields,
        pairing_approval,
        pairing_claim_race,
        pairing_approval_race,
    ]
);

pairing_tests!(
    postgres_pairings,
    super::open_pg,
    [
        pairings,
        pairing_limits,
        pairing_updates,
        pairing_transitions,
        pairing_fixed_fields,
        pairing_approval,
        pairing_claim_race,
        pairing_approval_race,
    ]
);

/// The transition table, written out independently of
/// `PairingState::may_become`: the store enforces that function, so a
/// mistake in it would pass every store test.
#[test]
fn pairing_state_table() {
    use signet::store::PairingState as P;
    let allowed = [
        (P::Created, P::Created),
        (P::Created, P::Claimed),
        (P::Created, P::Locked),
        (P::Created, P::Expired),
        (P::Claimed, P::Claimed),
        (P::Claimed, P::Approved),
        (P::Claimed, P::Denied),
        (P::Claimed, P::Locked),
        (P::Claimed, P::Expired),
        (P::Approved, P::Consumed),
        (P::Approved, P::Expired),
    ];
    let all: std::collections::HashSet<P> = P::ALL.into_iter().collect();
    assert_eq!(all.len(), 7);
    for from in P::ALL {
        for to in P::ALL {
            assert_eq!(
                from.may_become(to),
                allowed.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
        // Final exactly when nothing follows.
        assert_eq!(
            from.is_final(),
            P::ALL.iter().all(|&to| !from.may_become(to)),
            "{from}"
        );
    }
}

#[test]
fn sled_durability_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    suite::before_reopen(&open_sled(dir.path()));
    suite::reopened(&open_sled(dir.path()));
}

#[test]
fn sled_transactions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    transaction_suite::before_reopen(&open_sled(dir.path()));
    transaction_suite::reopened(&open_sled(dir.path()));
}

/// A store closed in this process (or by a predecessor still exiting)
/// lets go of its directory lock a little after it is dropped: opening
/// again waits for it instead of failing.
#[test]
fn sled_reopen_waits_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_sled(dir.path());
    first
        .put_user(&signet::store::User {
            id: vec![1; 16],
            name: "alice".into(),
            display_name: "Alice".into(),
            created_ms: 1,
        })
        .unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    // Still held when this starts: it waits, then opens.
    let second = open_sled(dir.path());
    closer.join().unwrap();
    assert_eq!(
        second.user_by_name("alice").unwrap().map(|u| u.id),
        Some(vec![1; 16])
    );
}

#[test]
fn sled_pairings_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    pairing_suite::before_reopen(&open_sled(dir.path()));
    pairing_suite::reopened(&open_sled(dir.path()));
}

#[test]
fn sled_metadata_catalog_survives_reopen_and_leftovers_are_cleared() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_sled(dir.path());
        store
            .replace_metadata(
                &suite::catalog(3, 1),
                &[suite::md_entry(Some(4), &["beef"], "kept")],
            )
            .unwrap();
    }
    // A crashed replacement left keys of a generation nobody names.
    let mut key = vec![b'a'];
    key.extend_from_slice(&99u64.to_be_bytes());
    key.extend_from_slice(&[5; 16]);
    write_raw(
        &dir.path().join("store"),
        trees::MDS,
        &key,
        &0u32.to_be_bytes(),
    );
    let store = open_sled(dir.path());
    assert_eq!(store.metadata_status().unwrap().catalog.unwrap().no, 3);
    assert!(store.metadata_by_aaguid(&[4; 16]).unwrap().is_some());
    assert!(store.metadata_by_key_id(&[0xbe, 0xef]).unwrap().is_some());
    assert_eq!(store.metadata_by_aaguid(&[5; 16]).unwrap(), None);
    store
        .replace_metadata(
            &suite::catalog(4, 1),
            &[suite::md_entry(Some(6), &[], "next")],
        )
        .unwrap();
    drop(store);
    let db = sled::Config::new()
        .path(dir.path().join("store"))
        .segment_size(SEGMENT_SIZE)
        .open()
        .unwrap();
    let mds = db.open_tree(trees::MDS).unwrap();
    // Only the installed generation's keys remain: one entry, one index.
    assert_eq!(mds.len(), 2, "{:?}", mds.iter().keys().collect::<Vec<_>>());
}

/// Writes raw bytes under `key` in `tree`, with the store closed.
fn write_raw(dir: &Path, tree: &str, key: &[u8], value: &[u8]) {
    let db = sled::Config::new()
        .path(dir.join("store"))
        .segment_size(SEGMENT_SIZE)
        .open()
        .unwrap();
    db.open_tree(tree).unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}

fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, want_tree: &str) {
    match result {
        Err(StoreError::Corrupt { tree, key, detail }) => {
            assert_eq!(tree, want_tree, "{key}: {detail}");
            assert!(!key.is_empty());
        }
        other => panic!("expected Corrupt in {want_tree}, got {other:?}"),
    }
}

#[test]
fn sled_corrupt_records_are_reported_not_panicked_on() {
    use signet::store::OneTime;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_sled(dir.path());
        store.put_user(&suite::user(b"u", "u")).unwrap();
        store
            .insert_credential(&suite::credential(b"c", b"u"))
            .unwrap();
        store
            .insert_credential(&suite::credential(b"d", b"u"))
            .unwrap();
        store.put_ceremony(&suite::ceremony(1, 10_000)).unwrap();
        store.put_ceremony(&suite::ceremony(2, 10_000)).unwrap();
        store.consume_ceremony(&[2; 16], 1).unwrap();
        suite::append(&store, b"one");
        suite::append(&store, b"two");
    }
    let mut ceremony_key = vec![OneTime::Ceremony.tag()];
    ceremony_key.extend_from_slice(&[1; 16]);
    let mut tombstone_key = vec![OneTime::Ceremony.tag()];
    tombstone_key.extend_from_slice(&[2; 16]);
    write_raw(dir.path(), trees::USERS, b"u", b"\xff\x00garbage");
    write_raw(dir.path(), trees::CREDENTIALS, b"c", b"");
    write_raw(dir.path(), trees::ONE_TIME, &ceremony_key, b"\x82\x01\x01");
    write_raw(dir.path(), trees::TOMBSTONES, &tombstone_key, b"\x18");
    write_raw(dir.path(), trees::AUDIT, &2u64.to_be_bytes(), b"\xa0");

    let store = open_sled(dir.path());
    assert_corrupt(store.user_by_id(b"u"), trees::USERS);
    assert_corrupt(store.user_by_name("u"), trees::USERS);
    assert_corrupt(store.credential(b"c"), trees::CREDENTIALS);
    assert_corrupt(store.credentials_by_user(b"u"), trees::CREDENTIALS);
    assert_corrupt(
        store.update_after_assertion(b"c", 1, false, 1),
        trees::CREDENTIALS,
    );
    assert_corrupt(store.delete_credential(b"c"), trees::CREDENTIALS);
    assert_corrupt(store.consume_ceremony(&[1; 16], 5), trees::ONE_TIME);
    assert_corrupt(store.consume_ceremony(&[2; 16], 5), trees::TOMBSTONES);
    assert_corrupt(store.audit_range(1, 10), trees::AUDIT);
    assert_corrupt(store.audit_last(), trees::AUDIT);
    assert_corrupt(suite::append_result(&store, b"three"), trees::AUDIT);

    // A failed operation on a corrupt record changes nothing: the intact
    // credential is still there and listed through the same index.
    assert!(store.credential(b"d").unwrap().is_some());
    assert!(store.update_after_assertion(b"d", 1, false, 1).is_ok());
    // The sweeper steps over a corrupt object instead of stalling on it.
    assert!(store.sweep_expired(20_000, 100).unwrap() >= 1);
    assert_eq!(store.sweep_expired(20_000, 100).unwrap(), 0);
    assert_corrupt(store.consume_ceremony(&[1; 16], 5), trees::ONE_TIME);
}

#[test]
fn sled_schema_marker_is_checked() {
    #[derive(serde::Serialize)]
    struct Marker<'a> {
        format: &'a str,
        version: u32,
    }
    fn marker(format: &str, version: u32) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&Marker { format, version }, &mut out).unwrap();
        out
    }

    let dir = tempfile::tempdir().unwrap();
    drop(open_sled(dir.path()));
    // Reopening a store this build wrote is fine.
    drop(open_sled(dir.path()));

    write_raw(
        dir.path(),
        trees::META,
        trees::SCHEMA_KEY,
        &marker(SCHEMA_FORMAT, SCHEMA_VERSION + 1),
    );
    match SledStore::open(&dir.path().join("store")) {
        Err(StoreError::UnsupportedVersion { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("{other:?}"),
    }
    write_raw(
        dir.path(),
        trees::META,
        trees::SCHEMA_KEY,
        &marker("something-else", 1),
    );
    assert_corrupt(SledStore::open(&dir.path().join("store")), trees::META);
    write_raw(dir.path(), trees::META, trees::SCHEMA_KEY, b"\xff");
    assert_corrupt(SledStore::open(&dir.path().join("store")), trees::META);

    // A sled database with data but no marker was not written by signet.
    let foreign = tempfile::tempdir().unwrap();
    write_raw(foreign.path(), trees::USERS, b"u", b"x");
    assert_corrupt(SledStore::open(&foreign.path().join("store")), trees::META);
}

#[cfg(unix)]
#[test]
fn sled_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("store");
    drop(SledStore::open(&path).unwrap());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(SledStore::open(&path).unwrap());
    assert_eq!(mode(&path), 0o700);

    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(SledStore::open(&file), Err(StoreError::Io(_))));
}

/// sled never fsyncs the files it writes oversized pages to (`blobs/`), so
/// the store must keep every page below that size; see `SEGMENT_SIZE`.
#[test]
fn sled_largest_records_never_become_unsynced_blobs() {
    use signet::store::{AuditEntry, CeremonyRecord, OneTime, limits};
    let dir = tempfile::tempdir().unwrap();
    let store = open_sled(dir.path());
    // Sequential ids pack the largest records into the same leaves.
    for i in 0..120u8 {
        let mut id = [0; 16];
        id[15] = i;
        store
            .put_ceremony(&CeremonyRecord {
                id,
                kind: "k".repeat(limits::CEREMONY_KIND_MAX),
                challenge: vec![i; limits::CHALLENGE_MAX],
                user_id: Some(vec![i; limits::USER_ID_MAX]),
                expires_ms: 1_000 + u64::from(i),
                payload: vec![i; limits::CEREMONY_PAYLOAD_MAX],
            })
            .unwrap();
        store
            .put_one_time(
                OneTime::Transaction,
                &[i; limits::ONE_TIME_ID_MAX],
                1_000,
                &vec![i; limits::ONE_TIME_BODY_MAX],
            )
            .unwrap();
        store
            .append_audit(&mut |seq, prev_hash| {
                Ok(AuditEntry {
                    seq,
                    prev_hash,
                    hash: [i; 32],
                    body: vec![i; limits::AUDIT_BODY_MAX],
                })
            })
            .unwrap();
        if i % 2 == 0 {
            store.consume_ceremony(&id, 0).unwrap();
        }
    }
    store.sweep_expired(2_000, usize::MAX).unwrap();
    store.flush().unwrap();
    let blobs: Vec<_> = match std::fs::read_dir(dir.path().join("store").join("blobs")) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => panic!("{e}"),
    };
    assert!(blobs.is_empty(), "sled wrote blobs: {blobs:?}");
}

#[test]
fn background_sweeper_purges_with_an_injected_clock() {
    use signet::store::{OneTime, Sweeper};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open_sled(dir.path()));
    let clock = Arc::new(AtomicU64::new(0));
    for i in 0..25u8 {
        store
            .put_one_time(OneTime::Pairing, &[i], 1_000, b"p")
            .unwrap();
    }
    store.consume_one_time(OneTime::Pairing, &[0], 10).unwrap();
    let now = {
        let clock = clock.clone();
        Box::new(move || clock.load(Ordering::SeqCst))
    };
    let sweeper = Sweeper::spawn(store.clone(), now, Duration::from_millis(5), 4).unwrap();

    // Past every tombstone's grace, the sweeper first turns the objects into
    // tombstones, then purges them; "unknown" means both passes happened.
    clock.store(1_000 + store.tombstone_grace_ms(), Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    let all_gone = || {
        (0..25u8).all(|i| {
            matches!(
                store.peek_one_time(OneTime::Pairing, &[i], 0),
                Err(StoreError::NotFound { .. })
            )
        })
    };
    while !all_gone() {
        assert!(Instant::now() < deadline, "sweeper made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(sweeper);
    assert_eq!(store.sweep_expired(u64::MAX, 100).unwrap(), 0);
}

// ---- PostgreSQL backend specifics ----------------------------------------

/// `signet store migrate` applies each migration once; a second run, or a
/// second instance migrating at the same time, applies nothing.
#[test]
fn postgres_migrations_apply_once_even_concurrently() {
    let db = common::postgres::TestDb::new();
    let options = common::pg_store::options(&db);
    let applied: Vec<Vec<i32>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgStore::migrate(&options, 7).unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        applied.iter().filter(|a| **a == vec![1]).count(),
        1,
        "{applied:?}"
    );
    assert_eq!(
        applied.iter().filter(|a| a.is_empty()).count(),
        3,
        "{applied:?}"
    );
    assert!(PgStore::migrate(&options, 8).unwrap().is_empty());
    assert_eq!(
        db.psql("SELECT version, name, applied_ms FROM signet_schema"),
        "1|initial|7\n"
    );
}

/// A database without signet's schema, with an older or a newer one, is
/// refused at connect, naming the command that fixes it.
#[test]
fn postgres_connect_checks_the_schema() {
    let db = common::postgres::TestDb::new();
    let options = common::pg_store::options(&db);
    let text = PgStore::connect(&options).unwrap_err().to_string();
    assert!(
        text.contains("no signet schema") && text.contains("signet store migrate"),
        "{text}"
    );
    PgStore::migrate(&options, 1).unwrap();
    assert!(PgStore::connect(&options).is_ok());
    db.psql("INSERT INTO signet_schema VALUES (99, 'future', 1)");
    assert!(matches!(
        PgStore::connect(&options),
        Err(StoreError::UnsupportedVersion { found: 99, .. })
    ));
    assert!(matches!(
        PgStore::migrate(&options, 1),
        Err(StoreError::UnsupportedVersion { found: 99, .. })
    ));
}

/// An acknowledged write must survive the database's crash: a server (or a
/// database) that acknowledges commits before they are flushed is refused.
#[test]
fn postgres_refuses_commits_that_are_not_durable() {
    let db = common::postgres::TestDb::new();
    let options = common::pg_store::options(&db);
    PgStore::migrate(&options, 1).unwrap();
    db.psql(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        db.name
    ));
    let text = PgStore::connect(&options).unwrap_err().to_string();
    assert!(text.contains("synchronous_commit = off"), "{text}");
    db.psql(&format!(
        "ALTER DATABASE {} SET synchronous_commit = on",
        db.name
    ));
    assert!(PgStore::connect(&options).is_ok());
}

/// The URL carries no password (it would sit in a config file and in
/// process listings), the server is verified against the configured CA
/// only, and a wrong password is refused by the server.
#[test]
fn postgres_connection_is_verified_and_authenticated() {
    let db = common::postgres::TestDb::new();
    let mut options = common::pg_store::options(&db);
    PgStore::migrate(&options, 1).unwrap();

    let url = options.url.clone();
    options.url = url.replacen("signet@", "signet:secret@", 1);
    let text = PgStore::connect(&options).unwrap_err().to_string();
    assert!(
        text.contains("store.postgres.url") && text.contains("password_file"),
        "{text}"
    );
    options.url = url;

    let good_tls = options.tls.clone();
    let dir = tempfile::tempdir().unwrap();
    let other = common::pki::generate(dir.path());
    options.tls =
        signet::store::pg_tls::client_config(&std::fs::read(&other.ca_cert).unwrap()).unwrap();
    let text = format!("{:?}", PgStore::connect(&options).unwrap_err());
    assert!(
        text.contains("TLS handshake") && text.contains("invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    options.tls = good_tls;

    options.password = zeroize::Zeroizing::new("wrong".into());
    let text = format!("{:?}", PgStore::connect(&options).unwrap_err());
    assert!(text.contains("password authentication failed"), "{text}");
}

/// Two instances on one database: one audit chain, every one-time object
/// taken once, counters never backwards, whichever instance answers.
#[test]
fn postgres_two_instances_share_one_chain_and_one_consumption() {
    use signet::store::OneTime;
    let db = common::postgres::TestDb::new();
    let options = common::pg_store::options(&db);
    PgStore::migrate(&options, 1).unwrap();
    let a = PgStore::connect(&options).unwrap();
    let b = PgStore::connect(&options).unwrap();
    let both: [&dyn Store; 2] = [&a, &b];

    std::thread::scope(|s| {
        for (i, store) in both.iter().cycle().take(16).enumerate() {
            s.spawn(move || {
                for n in 0..10 {
                    suite::append(*store, format!("instance entry {i}.{n}").as_bytes());
                }
            });
        }
    });
    suite::assert_chain(&a, 160);

    a.put_one_time(OneTime::Ceremony, b"shared", u64::MAX, b"body")
        .unwrap();
    let taken = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for store in both.iter().cycle().take(64) {
            let taken = &taken;
            s.spawn(
                move || match store.consume_one_time(OneTime::Ceremony, b"shared", 1) {
                    Ok(body) => {
                        assert_eq!(body, b"body");
                        taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(StoreError::AlreadyConsumed { .. }) => {}
                    Err(e) => panic!("{e}"),
                },
            );
        }
    });
    assert_eq!(taken.into_inner(), 1);

    a.put_user(&suite::user(b"u", "u")).unwrap();
    a.insert_credential(&suite::credential(b"c", b"u")).unwrap();
    std::thread::scope(|s| {
        for (i, store) in both.iter().cycle().take(40).enumerate() {
            s.spawn(move || {
                let _ = store.update_after_assertion(b"c", i as u32 + 1, false, 1);
            });
        }
    });
    // Whatever the order, 40 is accepted when it arrives (nothing can be
    // stored above it) and nothing lower is written after it.
    assert_eq!(b.credential(b"c").unwrap().unwrap().sign_count, 40);
    assert!(matches!(
        a.update_after_assertion(b"c", 39, false, 2),
        Err(StoreError::CounterRegression {
            stored: 40,
            received: 39
        })
    ));
}

/// A database that drops signet's connections (a failover, a restart) costs
/// no request: the pool checks each connection before use and opens a new
/// one. A database that accepts none is `Unavailable` (503
/// store-unavailable at the API) after the connection wait, and the store
/// works again once it accepts them.
#[test]
fn postgres_connections_lost_or_refused() {
    let db = common::postgres::TestDb::new();
    let mut options = common::pg_store::options(&db);
    options.connect_timeout = std::time::Duration::from_secs(1);
    PgStore::migrate(&options, 1).unwrap();
    let store = PgStore::connect(&options).unwrap();
    store.put_user(&suite::user(b"before", "before")).unwrap();
    // Run from the `postgres` database: this one may refuse connections.
    let admin = |sql: &str| {
        let out = db.run_psql(&db.conninfo_for("postgres", "verify-full"), sql);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let drop_all = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
        db.name
    );
    assert_ne!(admin(&drop_all), "0\n", "signet held no connection to drop");
    store.put_user(&suite::user(b"after", "after")).unwrap();
    assert!(store.user_by_id(b"before").unwrap().is_some());

    admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ));
    admin(&drop_all);
    let started = std::time::Instant::now();
    let refused = store.user_by_id(b"after");
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ));
    assert!(store.user_by_id(b"after").unwrap().is_some());
}
