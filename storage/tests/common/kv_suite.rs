//! The KV contract (`hanmadi_storage::kv`) as a suite any engine can run.
//!
//! Every check takes the engine and a key prefix, clears everything under the
//! prefix first and last, and touches nothing outside it, so the suite can
//! run repeatedly and concurrently against one shared FoundationDB cluster.
//! Only the `Kv` / `KvTxn` traits are used.

use bytes::Bytes;
use foundationdb_tuple::{Subspace, Versionstamp as TupleStamp};
use hanmadi_storage::kv::{
    AtomicOp, KeyValue, Kv, KvError, KvTxn, RangeRead, Retry, Versionstamp, MAX_KEY_SIZE,
    MAX_TRANSACTION_SIZE, MAX_VALUE_SIZE, VERSIONSTAMP_LEN,
};

/// Runs every check, each under its own sub-prefix of `prefix`.
pub async fn run_all<K: Kv>(kv: &K, prefix: &[u8]) {
    let sub = |name: &str| [prefix, name.as_bytes(), b"/"].concat();
    set_get_clear(kv, &sub("set_get_clear")).await;
    read_your_writes(kv, &sub("read_your_writes")).await;
    range_reads(kv, &sub("range_reads")).await;
    range_reads_page(kv, &sub("range_reads_page")).await;
    atomic_ops(kv, &sub("atomic_ops")).await;
    versionstamped_keys(kv, &sub("versionstamped_keys")).await;
    versionstamped_value(kv, &sub("versionstamped_value")).await;
    invalid_versionstamp(kv, &sub("invalid_versionstamp")).await;
    conflict_then_retry(kv, &sub("conflict_then_retry")).await;
    range_read_conflict(kv, &sub("range_read_conflict")).await;
    snapshot_reads_do_not_conflict(kv, &sub("snapshot_reads_do_not_conflict")).await;
    concurrent_atomic_adds(kv, &sub("concurrent_atomic_adds")).await;
    too_large(kv, &sub("too_large")).await;
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `prefix` followed by `suffix`.
fn key(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    [prefix, suffix].concat()
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return end;
        }
    }
    panic!("a prefix of only 0xff bytes has no end");
}

fn begin<K: Kv>(kv: &K) -> K::Txn {
    kv.begin().expect("begin a transaction")
}

async fn commit<T: KvTxn>(txn: T) -> Versionstamp {
    txn.commit().await.expect("commit")
}

/// Removes every key under `prefix`.
async fn clear_prefix<K: Kv>(kv: &K, prefix: &[u8]) {
    let mut txn = begin(kv);
    txn.clear_range(prefix, &prefix_end(prefix));
    commit(txn).await;
}

/// Sets each `(suffix, value)` under `prefix` in one transaction.
async fn put<K: Kv>(kv: &K, prefix: &[u8], pairs: &[(&[u8], &[u8])]) -> Versionstamp {
    let mut txn = begin(kv);
    for (suffix, value) in pairs {
        txn.set(&key(prefix, suffix), value);
    }
    commit(txn).await
}

/// Reads one key in a fresh transaction.
async fn read<K: Kv>(kv: &K, key: &[u8]) -> Option<Bytes> {
    begin(kv).get(key, false).await.expect("get")
}

/// Reads every pair under `prefix` in a fresh transaction.
async fn read_all<K: Kv>(kv: &K, prefix: &[u8]) -> Vec<KeyValue> {
    let end = prefix_end(prefix);
    begin(kv)
        .get_range(RangeRead::new(prefix, &end))
        .await
        .expect("get_range")
}

/// Pairs as `(suffix, value)` with `prefix` removed, for readable asserts.
fn strip(prefix: &[u8], pairs: &[KeyValue]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|kv| {
            let suffix = kv
                .key
                .strip_prefix(prefix)
                .expect("range read returned a key outside its range");
            (suffix.to_vec(), kv.value.to_vec())
        })
        .collect()
}

/// A range read in `txn`, stripped of `prefix`.
async fn stripped_range<T: KvTxn>(
    txn: &T,
    prefix: &[u8],
    range: RangeRead<'_>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    strip(prefix, &txn.get_range(range).await.expect("get_range"))
}

fn expect_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn le(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

fn as_u64(value: Option<Bytes>) -> u64 {
    let value = value.expect("counter is missing");
    u64::from_le_bytes(value[..].try_into().expect("counter is 8 bytes"))
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Set, get, clear and clear_range; commits return increasing stamps; a
/// dropped transaction applies nothing; a read-only transaction commits.
pub async fn set_get_clear<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;

    let s1 = put(
        kv,
        prefix,
        &[(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")],
    )
    .await;
    assert_eq!(
        read(kv, &key(prefix, b"a")).await.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        read(kv, &key(prefix, b"d")).await.as_deref(),
        Some(&b"4"[..])
    );
    assert_eq!(
        read(kv, &key(prefix, b"zz")).await,
        None,
        "a missing key reads as None"
    );

    // Overwrite, clear one key, clear [c, d): d survives, the end is exclusive.
    let mut txn = begin(kv);
    txn.set(&key(prefix, b"a"), b"one");
    txn.clear(&key(prefix, b"b"));
    txn.clear_range(&key(prefix, b"c"), &key(prefix, b"d"));
    let s2 = commit(txn).await;
    assert!(
        s1 < s2,
        "later commit must have a larger versionstamp: {s1:?} !< {s2:?}"
    );
    assert_eq!(
        strip(prefix, &read_all(kv, prefix).await),
        expect_pairs(&[(b"a", b"one"), (b"d", b"4")])
    );

    // An empty value is a value, not a missing key.
    let s3 = put(kv, prefix, &[(b"empty", b"")]).await;
    assert!(s2 < s3);
    assert_eq!(
        read(kv, &key(prefix, b"empty")).await.as_deref(),
        Some(&b""[..])
    );

    // Dropping a transaction discards its writes.
    {
        let mut txn = begin(kv);
        txn.set(&key(prefix, b"dropped"), b"x");
        txn.clear(&key(prefix, b"a"));
    }
    assert_eq!(read(kv, &key(prefix, b"dropped")).await, None);
    assert_eq!(
        read(kv, &key(prefix, b"a")).await.as_deref(),
        Some(&b"one"[..])
    );

    // A transaction that only reads still commits; its stamp sorts after
    // the commits it saw and before the ones after it.
    let txn = begin(kv);
    assert!(txn
        .get(&key(prefix, b"a"), false)
        .await
        .expect("get")
        .is_some());
    let read_only = txn.commit().await.expect("a read-only transaction commits");
    let s4 = put(kv, prefix, &[(b"after", b"x")]).await;
    assert!(
        s3 < read_only && read_only < s4,
        "read-only stamp out of order: {s3:?} {read_only:?} {s4:?}"
    );

    clear_prefix(kv, prefix).await;
    assert!(
        read_all(kv, prefix).await.is_empty(),
        "clear_range over the prefix removes all"
    );
}

/// Reads inside a transaction see its own sets, clears, range clears and
/// atomic operations, in point and range reads, snapshot or not.
pub async fn read_your_writes<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    put(
        kv,
        prefix,
        &[
            (b"a", b"1"),
            (b"c", b"3"),
            (b"e", b"5"),
            (b"f", b"6"),
            (b"n", &le(5)),
        ],
    )
    .await;

    let mut txn = begin(kv);
    txn.set(&key(prefix, b"a"), b"10");
    txn.set(&key(prefix, b"b"), b"2");
    txn.clear(&key(prefix, b"c"));
    txn.clear_range(&key(prefix, b"e"), &key(prefix, b"f"));
    txn.set(&key(prefix, b"g"), b"7");
    txn.atomic_op(&key(prefix, b"n"), AtomicOp::Add, &le(3));

    for snapshot in [false, true] {
        assert_eq!(
            txn.get(&key(prefix, b"a"), snapshot)
                .await
                .expect("get")
                .as_deref(),
            Some(&b"10"[..]),
            "overwritten key (snapshot={snapshot})"
        );
        assert_eq!(
            txn.get(&key(prefix, b"b"), snapshot)
                .await
                .expect("get")
                .as_deref(),
            Some(&b"2"[..]),
            "new key (snapshot={snapshot})"
        );
        assert_eq!(
            txn.get(&key(prefix, b"c"), snapshot).await.expect("get"),
            None,
            "cleared key (snapshot={snapshot})"
        );
        assert_eq!(
            txn.get(&key(prefix, b"e"), snapshot).await.expect("get"),
            None,
            "key in a cleared range (snapshot={snapshot})"
        );
        assert_eq!(
            as_u64(txn.get(&key(prefix, b"n"), snapshot).await.expect("get")),
            8,
            "atomic add applied to the read (snapshot={snapshot})"
        );
    }

    let end = prefix_end(prefix);
    let expected = expect_pairs(&[
        (b"a", b"10"),
        (b"b", b"2"),
        (b"f", b"6"),
        (b"g", b"7"),
        (b"n", &le(8)),
    ]);
    for snapshot in [false, true] {
        let forward = txn
            .get_range(RangeRead::new(prefix, &end).snapshot(snapshot))
            .await
            .expect("get_range");
        assert_eq!(
            strip(prefix, &forward),
            expected,
            "merged range (snapshot={snapshot})"
        );

        let reverse = txn
            .get_range(
                RangeRead::new(prefix, &end)
                    .reverse(true)
                    .snapshot(snapshot),
            )
            .await
            .expect("get_range");
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(strip(prefix, &reverse), reversed, "merged reverse range");

        let limited = txn
            .get_range(RangeRead::new(prefix, &end).limit(3).snapshot(snapshot))
            .await
            .expect("get_range");
        assert_eq!(
            strip(prefix, &limited),
            expected[..3],
            "merged range with a limit"
        );
    }

    // Nothing is visible outside before the commit, everything after.
    assert_eq!(read(kv, &key(prefix, b"b")).await, None);
    commit(txn).await;
    assert_eq!(strip(prefix, &read_all(kv, prefix).await), expected);

    clear_prefix(kv, prefix).await;
}

/// Range reads: forward, reverse, limits from both ends, sub-ranges, empty
/// ranges and snapshot reads.
pub async fn range_reads<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    let names: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i:02}").into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..10).map(|i| format!("v{i}").into_bytes()).collect();
    let pairs: Vec<(&[u8], &[u8])> = names
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    put(kv, prefix, &pairs).await;
    let all = expect_pairs(&pairs);
    let end = prefix_end(prefix);

    let txn = begin(kv);
    let get = |range| stripped_range(&txn, prefix, range);

    assert_eq!(get(RangeRead::new(prefix, &end)).await, all);
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(
        get(RangeRead::new(prefix, &end).reverse(true)).await,
        reversed
    );

    assert_eq!(get(RangeRead::new(prefix, &end).limit(3)).await, all[..3]);
    assert_eq!(
        get(RangeRead::new(prefix, &end).limit(3).reverse(true)).await,
        reversed[..3],
        "a reverse limit takes the last keys"
    );
    assert_eq!(
        get(RangeRead::new(prefix, &end).limit(100)).await,
        all,
        "limit above the count"
    );
    assert_eq!(
        get(RangeRead::new(prefix, &end).limit(10)).await,
        all,
        "limit equal to the count"
    );

    // [k03, k07): begin inclusive, end exclusive.
    let (b, e) = (key(prefix, b"k03"), key(prefix, b"k07"));
    assert_eq!(get(RangeRead::new(&b, &e)).await, all[3..7]);
    assert_eq!(
        get(RangeRead::new(&b, &e).reverse(true).limit(2)).await,
        reversed[3..5]
    );
    // Bounds between existing keys.
    let (b, e) = (key(prefix, b"k03x"), key(prefix, b"k05x"));
    assert_eq!(get(RangeRead::new(&b, &e)).await, all[4..6]);

    assert!(
        get(RangeRead::new(&b, &b)).await.is_empty(),
        "begin == end is empty"
    );
    let (b, e) = (key(prefix, b"x"), key(prefix, b"y"));
    assert!(
        get(RangeRead::new(&b, &e)).await.is_empty(),
        "no keys in range"
    );

    for (limit, reverse) in [(0, false), (0, true), (4, false), (4, true)] {
        let plain = get(RangeRead::new(prefix, &end).limit(limit).reverse(reverse)).await;
        let snap = get(RangeRead::new(prefix, &end)
            .limit(limit)
            .reverse(reverse)
            .snapshot(true))
        .await;
        assert_eq!(plain, snap, "snapshot read returns the same pairs");
    }
    drop(txn);

    clear_prefix(kv, prefix).await;
}

/// A range larger than one network batch comes back whole and in order,
/// with and without a limit, in both directions.
pub async fn range_reads_page<K: Kv>(kv: &K, prefix: &[u8]) {
    const COUNT: usize = 3_000;
    clear_prefix(kv, prefix).await;
    // 3,000 pairs of about 210 bytes: several of FoundationDB's batches,
    // while each writing transaction stays well under 1 MB.
    let value = vec![b'v'; 200];
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(1_000) {
        let mut txn = begin(kv);
        for i in chunk {
            txn.set(&key(prefix, format!("{i:05}").as_bytes()), &value);
        }
        commit(txn).await;
    }
    let end = prefix_end(prefix);
    let txn = begin(kv);
    let suffixes = |pairs: Vec<KeyValue>| -> Vec<usize> {
        pairs
            .iter()
            .map(|kv| {
                assert_eq!(kv.value.len(), value.len());
                let suffix = kv.key.strip_prefix(prefix).expect("key in range");
                std::str::from_utf8(suffix)
                    .expect("utf-8 suffix")
                    .parse()
                    .expect("numeric suffix")
            })
            .collect()
    };

    let forward = suffixes(
        txn.get_range(RangeRead::new(prefix, &end))
            .await
            .expect("get_range"),
    );
    assert_eq!(forward, (0..COUNT).collect::<Vec<_>>());

    let reverse = suffixes(
        txn.get_range(RangeRead::new(prefix, &end).reverse(true))
            .await
            .expect("get_range"),
    );
    assert_eq!(reverse, (0..COUNT).rev().collect::<Vec<_>>());

    let limited = suffixes(
        txn.get_range(RangeRead::new(prefix, &end).limit(2_500))
            .await
            .expect("get_range"),
    );
    assert_eq!(limited, (0..2_500).collect::<Vec<_>>());

    let limited_reverse = suffixes(
        txn.get_range(
            RangeRead::new(prefix, &end)
                .limit(2_500)
                .reverse(true)
                .snapshot(true),
        )
        .await
        .expect("get_range"),
    );
    assert_eq!(
        limited_reverse,
        (COUNT - 2_500..COUNT).rev().collect::<Vec<_>>()
    );
    drop(txn);

    clear_prefix(kv, prefix).await;
}

/// Add, Max and Min on missing and existing values, little-endian.
pub async fn atomic_ops<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    let (add, max, min) = (
        key(prefix, b"add"),
        key(prefix, b"max"),
        key(prefix, b"min"),
    );

    // Missing values: Add counts from 0, Max and Min take the parameter.
    let mut txn = begin(kv);
    txn.atomic_op(&add, AtomicOp::Add, &le(5));
    txn.atomic_op(&max, AtomicOp::Max, &le(7));
    txn.atomic_op(&min, AtomicOp::Min, &le(7));
    commit(txn).await;
    assert_eq!(as_u64(read(kv, &add).await), 5);
    assert_eq!(as_u64(read(kv, &max).await), 7);
    assert_eq!(as_u64(read(kv, &min).await), 7);

    // Existing values.
    let mut txn = begin(kv);
    txn.atomic_op(&add, AtomicOp::Add, &le(7));
    txn.atomic_op(&max, AtomicOp::Max, &le(3));
    txn.atomic_op(&min, AtomicOp::Min, &le(9));
    commit(txn).await;
    assert_eq!(as_u64(read(kv, &add).await), 12);
    assert_eq!(
        as_u64(read(kv, &max).await),
        7,
        "Max keeps the larger stored value"
    );
    assert_eq!(
        as_u64(read(kv, &min).await),
        7,
        "Min keeps the smaller stored value"
    );

    let mut txn = begin(kv);
    txn.atomic_op(&max, AtomicOp::Max, &le(300));
    txn.atomic_op(&min, AtomicOp::Min, &le(2));
    // Adding u64::MAX is subtracting one, wrapping.
    txn.atomic_op(&add, AtomicOp::Add, &le(u64::MAX));
    commit(txn).await;
    assert_eq!(as_u64(read(kv, &add).await), 11);
    assert_eq!(as_u64(read(kv, &max).await), 300);
    assert_eq!(as_u64(read(kv, &min).await), 2);

    // Several adds to one key in one transaction all apply.
    let mut txn = begin(kv);
    for _ in 0..4 {
        txn.atomic_op(&add, AtomicOp::Add, &le(10));
    }
    commit(txn).await;
    assert_eq!(as_u64(read(kv, &add).await), 51);

    // Unsigned comparison: 2^63 is larger than 1, though negative as i64.
    let mut txn = begin(kv);
    txn.atomic_op(&max, AtomicOp::Max, &le(1 << 63));
    commit(txn).await;
    assert_eq!(as_u64(read(kv, &max).await), 1 << 63);

    clear_prefix(kv, prefix).await;
}

/// Builds a versionstamped key: `prefix` then the tuple `(stamp,)` with an
/// incomplete 12-byte stamp (10 for the commit, 2 for `user_version`), then
/// the placeholder's offset, which counts the prefix.
fn stamped_key(prefix: &[u8], user_version: u16) -> Vec<u8> {
    Subspace::from_bytes(prefix).pack_with_versionstamp(&(TupleStamp::incomplete(user_version),))
}

/// Decodes a key written by [`stamped_key`] once the commit completed it.
fn decode_stamped_key(prefix: &[u8], key: &[u8]) -> TupleStamp {
    let (stamp,): (TupleStamp,) = Subspace::from_bytes(prefix)
        .unpack(key)
        .expect("a packed versionstamp under the prefix");
    stamp
}

/// Versionstamped keys are completed with the commit's stamp, sort in commit
/// order, and keep their user version.
pub async fn versionstamped_keys<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;

    let mut txn = begin(kv);
    txn.set_versionstamped_key(&stamped_key(prefix, 0), b"first");
    let s1 = commit(txn).await;
    let mut txn = begin(kv);
    txn.set_versionstamped_key(&stamped_key(prefix, 0), b"second");
    let s2 = commit(txn).await;
    assert!(s1 < s2, "commit stamps increase: {s1:?} !< {s2:?}");

    let pairs = read_all(kv, prefix).await;
    assert_eq!(pairs.len(), 2, "both versionstamped keys are stored");
    assert_eq!(
        &pairs[0].value[..],
        b"first",
        "the earlier commit's key sorts first"
    );
    assert_eq!(&pairs[1].value[..], b"second");
    for (pair, stamp) in pairs.iter().zip([s1, s2]) {
        let landed = decode_stamped_key(prefix, &pair.key);
        assert!(landed.is_complete());
        assert_eq!(
            landed.transaction_version(),
            &stamp.0[..],
            "the key holds the commit's stamp"
        );
        assert_eq!(landed.user_version(), 0);
    }

    // Two keys in one transaction, told apart by the user version.
    clear_prefix(kv, prefix).await;
    let mut txn = begin(kv);
    txn.set_versionstamped_key(&stamped_key(prefix, 1), b"one");
    txn.set_versionstamped_key(&stamped_key(prefix, 0), b"zero");
    let s3 = commit(txn).await;
    assert!(s2 < s3);
    let pairs = read_all(kv, prefix).await;
    assert_eq!(pairs.len(), 2, "both keys of one commit are stored");
    let landed: Vec<(u16, Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .map(|kv| {
            let stamp = decode_stamped_key(prefix, &kv.key);
            (
                stamp.user_version(),
                stamp.transaction_version().to_vec(),
                kv.value.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        landed,
        vec![
            (0, s3.0.to_vec(), b"zero".to_vec()),
            (1, s3.0.to_vec(), b"one".to_vec()),
        ]
    );

    // The placeholder may sit anywhere in the key, not only at the end.
    clear_prefix(kv, prefix).await;
    let mut raw = key(prefix, b"mid:");
    let offset = u32::try_from(raw.len()).expect("short key");
    raw.extend_from_slice(&[0; VERSIONSTAMP_LEN]);
    raw.extend_from_slice(b":tail");
    raw.extend_from_slice(&offset.to_le_bytes());
    let mut txn = begin(kv);
    txn.set_versionstamped_key(&raw, b"v");
    let s4 = commit(txn).await;
    let expected = [&key(prefix, b"mid:")[..], &s4.0, b":tail"].concat();
    assert_eq!(read(kv, &expected).await.as_deref(), Some(&b"v"[..]));

    clear_prefix(kv, prefix).await;
}

/// A versionstamped value is completed with the commit's stamp.
pub async fn versionstamped_value<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    let (at_start, in_middle) = (key(prefix, b"start"), key(prefix, b"middle"));

    let mut start = vec![0; VERSIONSTAMP_LEN];
    start.extend_from_slice(b"-after");
    start.extend_from_slice(&0u32.to_le_bytes());
    let mut middle = b"before-".to_vec();
    middle.extend_from_slice(&[0xff; VERSIONSTAMP_LEN]);
    middle.extend_from_slice(b"-after");
    middle.extend_from_slice(&7u32.to_le_bytes());

    let mut txn = begin(kv);
    txn.set_versionstamped_value(&at_start, &start);
    txn.set_versionstamped_value(&in_middle, &middle);
    let stamp = commit(txn).await;

    assert_eq!(
        read(kv, &at_start).await.as_deref(),
        Some(&[&stamp.0[..], b"-after"].concat()[..])
    );
    assert_eq!(
        read(kv, &in_middle).await.as_deref(),
        Some(&[&b"before-"[..], &stamp.0, b"-after"].concat()[..])
    );

    clear_prefix(kv, prefix).await;
}

/// A versionstamped key without room for the stamp fails the commit with
/// `InvalidVersionstamp`, and nothing of the transaction is applied.
pub async fn invalid_versionstamp<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;

    // The offset points 1 byte before the end: the 10-byte stamp cannot fit.
    let mut bad = key(prefix, b"bad");
    let offset = u32::try_from(bad.len() - 1).expect("short key");
    bad.extend_from_slice(&offset.to_le_bytes());
    let mut txn = begin(kv);
    txn.set(&key(prefix, b"other"), b"x");
    txn.set_versionstamped_key(&bad, b"v");
    let err = txn
        .commit()
        .await
        .expect_err("a misplaced versionstamp is refused");
    assert!(
        matches!(err, KvError::InvalidVersionstamp(_)),
        "got {err:?}"
    );

    // Too short to hold even the offset.
    let mut txn = begin(kv);
    txn.set_versionstamped_value(&key(prefix, b"short"), b"ab");
    let err = txn
        .commit()
        .await
        .expect_err("a value without offset is refused");
    assert!(
        matches!(err, KvError::InvalidVersionstamp(_)),
        "got {err:?}"
    );

    assert!(
        read_all(kv, prefix).await.is_empty(),
        "a refused commit applies nothing"
    );
    clear_prefix(kv, prefix).await;
}

/// Two transactions read and write one key; the second to commit fails with
/// `Conflict`, applies nothing, and its retry in a fresh transaction sees the
/// first one's write.
pub async fn conflict_then_retry<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    let counter = key(prefix, b"counter");
    let marker = key(prefix, b"loser-marker");
    put(kv, prefix, &[(b"counter", &le(0))]).await;

    let mut winner = begin(kv);
    let mut loser = begin(kv);
    let seen_by_winner = as_u64(winner.get(&counter, false).await.expect("get"));
    let seen_by_loser = as_u64(loser.get(&counter, false).await.expect("get"));
    assert_eq!((seen_by_winner, seen_by_loser), (0, 0));
    winner.set(&counter, &le(seen_by_winner + 1));
    loser.set(&counter, &le(seen_by_loser + 10));
    loser.set(&marker, b"applied");
    commit(winner).await;

    let mut retry = Retry::new(5);
    let mut stale = Some(loser);
    let stamp = loop {
        let txn = match stale.take() {
            Some(txn) => txn,
            None => {
                let mut txn = begin(kv);
                let seen = as_u64(txn.get(&counter, false).await.expect("get"));
                assert_eq!(seen, 1, "the retry sees the winner's write");
                txn.set(&counter, &le(seen + 10));
                txn
            }
        };
        match txn.commit().await {
            Ok(stamp) => break stamp,
            Err(err) => {
                assert!(
                    matches!(err, KvError::Conflict),
                    "the stale transaction fails with Conflict, got {err:?}"
                );
                assert!(err.is_retryable());
                assert!(!err.maybe_committed(), "a conflict applied nothing");
                retry.backoff(err).await.expect("a conflict is retried");
            }
        }
    };
    assert_eq!(retry.attempts(), 1, "exactly one attempt failed");
    assert!(stamp.0 != [0; VERSIONSTAMP_LEN]);
    assert_eq!(as_u64(read(kv, &counter).await), 11);
    assert_eq!(
        read(kv, &marker).await,
        None,
        "the conflicting commit applied nothing"
    );

    clear_prefix(kv, prefix).await;
}

/// A key inserted into a range another transaction read (a phantom) makes
/// that transaction conflict.
pub async fn range_read_conflict<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    put(kv, prefix, &[(b"r/a", b"1")]).await;
    let (rb, re) = (key(prefix, b"r/"), key(prefix, b"r0"));

    let mut reader = begin(kv);
    let seen = reader
        .get_range(RangeRead::new(&rb, &re))
        .await
        .expect("get_range");
    assert_eq!(seen.len(), 1);
    reader.set(&key(prefix, b"count"), &le(seen.len() as u64));

    put(kv, prefix, &[(b"r/b", b"2")]).await;

    let err = reader
        .commit()
        .await
        .expect_err("a phantom in a read range conflicts");
    assert!(matches!(err, KvError::Conflict), "got {err:?}");
    assert_eq!(read(kv, &key(prefix, b"count")).await, None);

    clear_prefix(kv, prefix).await;
}

/// Snapshot reads, point and range, add no conflict.
pub async fn snapshot_reads_do_not_conflict<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    put(kv, prefix, &[(b"k", b"old"), (b"r/a", b"1")]).await;
    let (rb, re) = (key(prefix, b"r/"), key(prefix, b"r0"));

    let mut reader = begin(kv);
    assert_eq!(
        reader
            .get(&key(prefix, b"k"), true)
            .await
            .expect("get")
            .as_deref(),
        Some(&b"old"[..])
    );
    let seen = reader
        .get_range(RangeRead::new(&rb, &re).snapshot(true))
        .await
        .expect("get_range");
    assert_eq!(seen.len(), 1);
    reader.set(&key(prefix, b"out"), b"done");

    let mut writer = begin(kv);
    writer.set(&key(prefix, b"k"), b"new");
    writer.set(&key(prefix, b"r/b"), b"2");
    commit(writer).await;

    reader
        .commit()
        .await
        .expect("snapshot reads do not make the commit conflict");
    assert_eq!(
        read(kv, &key(prefix, b"out")).await.as_deref(),
        Some(&b"done"[..])
    );
    assert_eq!(
        read(kv, &key(prefix, b"k")).await.as_deref(),
        Some(&b"new"[..])
    );

    clear_prefix(kv, prefix).await;
}

/// Atomic adds from overlapping transactions both apply, without conflict.
pub async fn concurrent_atomic_adds<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;
    let counter = key(prefix, b"counter");
    put(kv, prefix, &[(b"counter", &le(100)), (b"other", b"x")]).await;

    let mut first = begin(kv);
    let mut second = begin(kv);
    // Fix both read versions before either commits, so they overlap.
    for txn in [&first, &second] {
        assert!(txn
            .get(&key(prefix, b"other"), false)
            .await
            .expect("get")
            .is_some());
    }
    first.atomic_op(&counter, AtomicOp::Add, &le(1));
    second.atomic_op(&counter, AtomicOp::Add, &le(2));
    let s1 = first.commit().await.expect("first add commits");
    let s2 = second
        .commit()
        .await
        .expect("an atomic add does not conflict");
    assert!(s1 < s2);
    assert_eq!(as_u64(read(kv, &counter).await), 103);

    clear_prefix(kv, prefix).await;
}

/// Keys, values and transactions over the limits are refused at commit and
/// apply nothing; values exactly at the limit are accepted.
pub async fn too_large<K: Kv>(kv: &K, prefix: &[u8]) {
    clear_prefix(kv, prefix).await;

    let mut txn = begin(kv);
    txn.set(&key(prefix, b"ok"), b"x");
    txn.set(&key(prefix, b"big-value"), &vec![0; MAX_VALUE_SIZE + 1]);
    let err = txn
        .commit()
        .await
        .expect_err("a value over the limit is refused");
    assert!(
        matches!(
            err,
            KvError::TooLarge { what: "value", .. } | KvError::TransactionTooLarge { .. }
        ),
        "got {err:?}"
    );
    assert!(!err.is_retryable(), "a size error does not pass on retry");

    let mut big_key = key(prefix, b"big-key/");
    big_key.resize(MAX_KEY_SIZE + 1, b'k');
    let mut txn = begin(kv);
    txn.set(&big_key, b"x");
    let err = txn
        .commit()
        .await
        .expect_err("a key over the limit is refused");
    assert!(
        matches!(
            err,
            KvError::TooLarge { what: "key", .. } | KvError::TransactionTooLarge { .. }
        ),
        "got {err:?}"
    );

    let mut txn = begin(kv);
    txn.atomic_op(
        &key(prefix, b"big-param"),
        AtomicOp::Max,
        &vec![1; MAX_VALUE_SIZE + 1],
    );
    let err = txn
        .commit()
        .await
        .expect_err("an atomic parameter over the limit is refused");
    assert!(
        matches!(
            err,
            KvError::TooLarge { .. } | KvError::TransactionTooLarge { .. }
        ),
        "got {err:?}"
    );

    // More than the transaction limit in values that are each allowed.
    let value = vec![7; MAX_VALUE_SIZE];
    let mut txn = begin(kv);
    for i in 0..=MAX_TRANSACTION_SIZE / MAX_VALUE_SIZE {
        txn.set(&key(prefix, format!("bulk/{i:04}").as_bytes()), &value);
    }
    let err = txn
        .commit()
        .await
        .expect_err("a transaction over the limit is refused");
    assert!(
        matches!(err, KvError::TransactionTooLarge { .. }),
        "got {err:?}"
    );

    assert!(
        read_all(kv, prefix).await.is_empty(),
        "refused commits apply nothing"
    );

    // Exactly at the limits is fine.
    let mut max_key = key(prefix, b"max-key/");
    max_key.resize(MAX_KEY_SIZE, b'k');
    let mut txn = begin(kv);
    txn.set(&key(prefix, b"max-value"), &value);
    txn.set(&max_key, b"x");
    commit(txn).await;
    assert_eq!(
        read(kv, &key(prefix, b"max-value")).await.map(|v| v.len()),
        Some(MAX_VALUE_SIZE)
    );
    assert_eq!(read(kv, &max_key).await.as_deref(), Some(&b"x"[..]));

    clear_prefix(kv, prefix).await;
}
