//! One contract, two logs: the embedded log and Kafka (a real broker) must behave alike.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use clickflow::log::embedded::EmbeddedLog;
use clickflow::log::kafka::KafkaLog;
use clickflow::log::{Append, Log, Record};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn read_all(
    log: &dyn Log,
    start: &BTreeMap<u32, u64>,
    end: Option<BTreeMap<u32, u64>>,
    expect: usize,
) -> Vec<Record> {
    let mut reader = log.reader(start, end).expect("reader");
    let mut out = Vec::new();
    for _ in 0..200 {
        out.extend(reader.poll(1000, Duration::from_millis(100)).expect("poll"));
        if out.len() >= expect {
            break;
        }
    }
    out
}

fn contract(log: &dyn Log) {
    let rt = runtime();
    let partitions = log.partitions().expect("partitions");
    assert_eq!(partitions, 3);
    let base = 1_800_000_000_000i64;
    let keys = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let appends: Vec<Append> = (0..60)
        .map(|i| Append {
            key: keys[i % keys.len()].to_string(),
            value: format!("v{i}").into_bytes(),
            timestamp: base + i as i64 * 1000,
        })
        .collect();
    let mut acks = Vec::new();
    // Several appends, as separate requests would make them.
    for chunk in appends.chunks(7) {
        acks.extend(
            rt.block_on(log.append(chunk.to_vec()))
                .into_iter()
                .map(|a| a.expect("append acknowledged")),
        );
    }

    // Same key, same partition; offsets dense from 0 per partition, in append order.
    let mut partition_of: BTreeMap<&str, u32> = BTreeMap::new();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for (a, (p, o)) in appends.iter().zip(&acks) {
        assert_eq!(
            *partition_of.entry(a.key.as_str()).or_insert(*p),
            *p,
            "key {} moved partition",
            a.key
        );
        let expected = next.entry(*p).or_insert(0);
        assert_eq!(*o, *expected, "offsets are dense");
        *expected += 1;
    }
    for p in 0..partitions {
        assert_eq!(
            log.high_watermark(p).expect("hwm"),
            next.get(&p).copied().unwrap_or(0)
        );
    }

    // Reading from 0 returns every record with its key, value and timestamp, in order.
    let start: BTreeMap<u32, u64> = (0..partitions).map(|p| (p, 0)).collect();
    let records = read_all(log, &start, None, appends.len());
    assert_eq!(records.len(), appends.len());
    for r in &records {
        let i = acks
            .iter()
            .position(|a| *a == (r.partition, r.offset))
            .expect("record was acknowledged");
        assert_eq!(r.key, appends[i].key.as_bytes());
        assert_eq!(r.value, appends[i].value);
        assert_eq!(r.timestamp, appends[i].timestamp);
    }
    for p in 0..partitions {
        let offsets: Vec<u64> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as u64).collect::<Vec<_>>(),
            "partition {p} in order"
        );
    }

    // Seek by offset, and bounded reads.
    let busiest = *next
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("some partition")
        .0;
    let from = BTreeMap::from([(busiest, 2u64)]);
    let end = BTreeMap::from([(busiest, 5u64)]);
    let mut reader = log
        .reader(&from, Some(end.clone()))
        .expect("bounded reader");
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(reader.poll(100, Duration::from_millis(100)).expect("poll"));
        if reader.finished() {
            break;
        }
    }
    assert!(reader.finished(), "bounded reader finishes");
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(reader.positions()[&busiest], 5);

    // Seek by timestamp: the first offset at or after the time; the end when none is.
    for p in 0..partitions {
        let mine: Vec<&Record> = records.iter().filter(|r| r.partition == p).collect();
        if mine.len() < 2 {
            continue;
        }
        let mid = mine[mine.len() / 2];
        assert_eq!(
            log.offset_for_time(p, mid.timestamp).expect("oft"),
            mid.offset
        );
        assert_eq!(
            log.offset_for_time(p, mid.timestamp - 1).expect("oft"),
            mid.offset,
            "between records"
        );
        assert_eq!(log.offset_for_time(p, base - 1_000_000).expect("oft"), 0);
        assert_eq!(
            log.offset_for_time(p, base + 10_000_000).expect("oft"),
            mine.len() as u64,
            "after the last record"
        );
    }

    // A reader that has read everything is caught up.
    let mut reader = log.reader(&start, None).expect("reader");
    let mut n = 0;
    for _ in 0..100 {
        n += reader
            .poll(1000, Duration::from_millis(100))
            .expect("poll")
            .len();
        if n >= appends.len() {
            break;
        }
    }
    let _ = reader.poll(1000, Duration::from_millis(200)).expect("poll");
    assert!((0..partitions).all(|p| reader.caught_up(p)));
}

#[test]
fn embedded_log_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 3, true).expect("open");
    contract(&log);
}

/// Retention works like Kafka's `DeleteRecords`: offsets stay, the start moves, reads below
/// it fail with a reason, seeks by time land on the start, the disk blocks come back, and
/// the start survives a reopen. The retention pass never drops what the archive lacks.
#[test]
fn embedded_retention_drops_the_oldest_records_and_keeps_offsets() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let value = |i: u64| format!("{i:04}").repeat(1024).into_bytes();
    let blocks = || {
        std::fs::metadata(dir.path().join("00000.log"))
            .expect("data file")
            .blocks()
    };
    {
        let log = EmbeddedLog::open(dir.path(), 1, true).expect("open");
        let appends = (0..100)
            .map(|i| Append {
                key: "k".into(),
                value: value(i),
                timestamp: 1_000 + i as i64,
            })
            .collect();
        for ack in rt.block_on(log.append(appends)) {
            ack.expect("ack");
        }
        assert_eq!(log.low_watermark(0).expect("low"), 0);
        let before = blocks();
        assert_eq!(log.delete_records(0, 60).expect("delete"), 60);
        assert!(blocks() * 2 < before, "{before} → {} blocks", blocks());
        assert_eq!(
            log.delete_records(0, 10).expect("no-op"),
            60,
            "the start never moves back"
        );
        assert_eq!(log.low_watermark(0).expect("low"), 60);
        assert_eq!(log.offset_for_time(0, 0).expect("seek"), 60);
        assert_eq!(log.offset_for_time(0, 1_070).expect("seek"), 70);
        match log.reader(&BTreeMap::from([(0, 59)]), None) {
            Err(e) => assert!(e.to_string().contains("gone from the log"), "{e}"),
            Ok(_) => panic!("a reader below the start must be refused"),
        }
        let rest = read_all(&log, &BTreeMap::from([(0, 60)]), None, 40);
        assert_eq!(
            rest.iter()
                .map(|r| (r.offset, r.value.clone()))
                .collect::<Vec<_>>(),
            (60..100).map(|i| (i, value(i))).collect::<Vec<_>>()
        );
    }
    let log = EmbeddedLog::open(dir.path(), 1, true).expect("reopen");
    assert_eq!(
        log.low_watermark(0).expect("low"),
        60,
        "the start is durable"
    );
    let ack = rt.block_on(log.append(vec![Append {
        key: "k".into(),
        value: b"next".to_vec(),
        timestamp: 2_000,
    }]));
    assert_eq!(ack[0].as_ref().expect("ack"), &(0, 100));
    // Older than 10 ms at 1 090 means before offset 80; the archive has only reached 75.
    let archived = BTreeMap::from([(0, 75)]);
    let moved = clickflow::log::apply_retention(&log, 10, 1_090, Some(&archived)).expect("pass");
    assert_eq!(moved, vec![(0, 75)]);
    let moved = clickflow::log::apply_retention(&log, 10, 1_090, None).expect("pass");
    assert_eq!(moved, vec![(0, 80)]);
}

#[test]
fn embedded_log_survives_reopen_and_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    {
        let log = EmbeddedLog::open(dir.path(), 1, true).expect("open");
        let acks = rt.block_on(log.append(vec![Append {
            key: "k".into(),
            value: b"one".to_vec(),
            timestamp: 5,
        }]));
        assert_eq!(acks[0].as_ref().expect("ack"), &(0, 0));
    }
    // A crash mid-append leaves garbage after the last indexed record.
    let data = dir.path().join("00000.log");
    let mut bytes = std::fs::read(&data).expect("read");
    bytes.extend_from_slice(&[7, 7, 7]);
    std::fs::write(&data, bytes).expect("write");
    let log = EmbeddedLog::open(dir.path(), 8, true).expect("reopen");
    assert_eq!(
        log.partitions().expect("partitions"),
        1,
        "partition count is fixed at creation"
    );
    let acks = rt.block_on(log.append(vec![Append {
        key: "k".into(),
        value: b"two".to_vec(),
        timestamp: 3,
    }]));
    assert_eq!(acks[0].as_ref().expect("ack"), &(0, 1));
    let records = read_all(&log, &BTreeMap::from([(0, 0)]), None, 2);
    assert_eq!(
        records.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(records[1].timestamp, 5, "append time never goes backwards");
}

#[test]
fn kafka_keeps_the_contract() {
    let (brokers, topic) = common::fresh_topic(3);
    let log = KafkaLog::connect(&brokers, &topic).expect("connect");
    contract(&log);
}
