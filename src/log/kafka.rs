//! Kafka through librdkafka: an idempotent producer with `acks=all`, and readers assigned to
//! explicit partitions and offsets (no consumer group: the engine owns its offsets and stores
//! them in Postgres with the results).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{Ack, Append, Log, LogError, LogReader, LogResult, Record};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaLog {
    brokers: String,
    topic: String,
    producer: FutureProducer,
    admin: BaseConsumer,
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

fn consumer(brokers: &str) -> LogResult<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "clickflow-engine")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(unavailable)
}

impl KafkaLog {
    pub fn connect(brokers: &str, topic: &str) -> LogResult<KafkaLog> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // A broker that does not answer must turn into a 503, not a hanging request.
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(unavailable)?;
        Ok(KafkaLog {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            producer,
            admin: consumer(brokers)?,
        })
    }

    fn watermarks(&self, partition: u32) -> LogResult<(i64, i64)> {
        self.admin
            .fetch_watermarks(&self.topic, partition as i32, METADATA_TIMEOUT)
            .map_err(unavailable)
    }

    /// The timestamp of the record at `offset`, read with a throwaway consumer.
    fn timestamp_at(&self, partition: u32, offset: u64) -> LogResult<Option<i64>> {
        let mut reader = KafkaReader::new(
            &self.brokers,
            &self.topic,
            &BTreeMap::from([(partition, offset)]),
            None,
        )?;
        let records = reader.poll(1, Duration::from_secs(5))?;
        Ok(records.first().map(|r| r.timestamp))
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn append(&self, records: Vec<Append>) -> Vec<LogResult<Ack>> {
        let sends = records.iter().map(|r| {
            let record = FutureRecord::to(&self.topic)
                .key(&r.key)
                .payload(&r.value)
                .timestamp(r.timestamp);
            self.producer.send(record, Duration::from_secs(10))
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(delivery) => Ok((delivery.partition as u32, delivery.offset as u64)),
                Err((e, _)) => Err(unavailable(e)),
            })
            .collect()
    }

    fn partitions(&self) -> LogResult<u32> {
        let metadata = self
            .admin
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(unavailable)?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| unavailable(format!("topic {} not found", self.topic)))?;
        if topic.partitions().is_empty() {
            return Err(unavailable(format!(
                "topic {} has no partitions (does it exist?)",
                self.topic
            )));
        }
        Ok(topic.partitions().len() as u32)
    }

    fn high_watermark(&self, partition: u32) -> LogResult<u64> {
        Ok(self.watermarks(partition)?.1.max(0) as u64)
    }

    fn low_watermark(&self, partition: u32) -> LogResult<u64> {
        Ok(self.watermarks(partition)?.0.max(0) as u64)
    }

    fn offset_for_time(&self, partition: u32, timestamp: i64) -> LogResult<u64> {
        let (low, high) = self.watermarks(partition)?;
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(&self.topic, partition as i32, Offset::Offset(timestamp))
            .map_err(unavailable)?;
        let answer = self
            .admin
            .offsets_for_times(query, METADATA_TIMEOUT)
            .map_err(unavailable)?;
        let found = answer
            .find_partition(&self.topic, partition as i32)
            .map(|e| e.offset())
            .unwrap_or(Offset::End);
        let offset = match found {
            Offset::Offset(o) if o >= 0 => o.min(high),
            _ => high,
        };
        // Some brokers (tansu) answer the low watermark for a time after the last record:
        // trust that answer only if the record there is really at or after `timestamp`.
        if offset == low && low < high {
            if let Some(ts) = self.timestamp_at(partition, low as u64)? {
                if ts < timestamp {
                    return Ok(high.max(0) as u64);
                }
            }
        }
        Ok(offset.max(0) as u64)
    }

    fn reader(
        &self,
        start: &BTreeMap<u32, u64>,
        end: Option<BTreeMap<u32, u64>>,
    ) -> LogResult<Box<dyn LogReader>> {
        Ok(Box::new(KafkaReader::new(
            &self.brokers,
            &self.topic,
            start,
            end,
        )?))
    }
}

pub struct KafkaReader {
    consumer: BaseConsumer,
    next: BTreeMap<u32, u64>,
    end: Option<BTreeMap<u32, u64>>,
    caught_up: BTreeMap<u32, bool>,
}

impl KafkaReader {
    fn new(
        brokers: &str,
        topic: &str,
        start: &BTreeMap<u32, u64>,
        end: Option<BTreeMap<u32, u64>>,
    ) -> LogResult<KafkaReader> {
        let consumer = consumer(brokers)?;
        let mut assignment = TopicPartitionList::new();
        for (&p, &offset) in start {
            if end
                .as_ref()
                .and_then(|e| e.get(&p))
                .is_some_and(|e| *e <= offset)
            {
                continue;
            }
            assignment
                .add_partition_offset(topic, p as i32, Offset::Offset(offset as i64))
                .map_err(unavailable)?;
        }
        consumer.assign(&assignment).map_err(unavailable)?;
        Ok(KafkaReader {
            consumer,
            next: start.clone(),
            end,
            caught_up: start.keys().map(|p| (*p, false)).collect(),
        })
    }

    fn limit(&self, p: u32) -> u64 {
        self.end
            .as_ref()
            .and_then(|e| e.get(&p).copied())
            .unwrap_or(u64::MAX)
    }
}

impl LogReader for KafkaReader {
    fn poll(&mut self, max: usize, timeout: Duration) -> LogResult<Vec<Record>> {
        let mut out = Vec::new();
        let mut wait = timeout;
        while out.len() < max {
            match self.consumer.poll(wait) {
                None => {
                    // Nothing buffered from any assigned partition: all are caught up.
                    self.caught_up.values_mut().for_each(|c| *c = true);
                    break;
                }
                // Records already taken from the consumer moved the positions: they must be
                // returned, or they would be skipped. The error comes back on the next poll.
                Some(Err(e)) if out.is_empty() => return Err(unavailable(e)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "log read failed after some records; returning those");
                    break;
                }
                Some(Ok(m)) => {
                    let p = m.partition() as u32;
                    let offset = m.offset() as u64;
                    if offset >= self.limit(p) || self.next.get(&p).is_some_and(|n| offset < *n) {
                        continue;
                    }
                    self.next.insert(p, offset + 1);
                    self.caught_up.insert(p, false);
                    out.push(Record {
                        partition: p,
                        offset,
                        timestamp: m.timestamp().to_millis().unwrap_or(0),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
            }
            wait = Duration::ZERO;
        }
        Ok(out)
    }

    fn positions(&self) -> BTreeMap<u32, u64> {
        self.next.clone()
    }

    fn caught_up(&self, partition: u32) -> bool {
        self.caught_up.get(&partition).copied().unwrap_or(true)
            || self
                .next
                .get(&partition)
                .is_some_and(|n| *n >= self.limit(partition))
    }

    fn finished(&self) -> bool {
        self.end.is_some() && self.next.iter().all(|(p, n)| *n >= self.limit(*p))
    }
}
