//! One archive file: the log records of one partition over a contiguous offset range, as
//! Parquet. Offsets and timestamps are delta-encoded (dense offsets cost almost nothing), the
//! site key is dictionary-encoded, and the message bytes are kept exactly as logged, so a
//! replay decodes them with whatever decoder the engine has then: the archive never has to
//! follow the record format.

use std::fs::File;
use std::sync::Arc;

use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::column::reader::get_typed_column_reader;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

use crate::log::Record;

const SCHEMA: &str = "
message log_record {
    REQUIRED INT64 offset;
    REQUIRED INT64 timestamp (TIMESTAMP(MILLIS, true));
    REQUIRED BYTE_ARRAY key;
    REQUIRED BYTE_ARRAY value;
}";

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("archive file i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("archive file {0}")]
    Invalid(String),
}

/// Writes the records of one partition into a Parquet file, a row group at a time.
pub struct FileWriter {
    writer: SerializedFileWriter<File>,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    keys: Vec<ByteArray>,
    values: Vec<ByteArray>,
    row_group_records: usize,
}

impl FileWriter {
    pub fn create(
        file: File,
        partition: u32,
        row_group_records: usize,
    ) -> Result<Self, FormatError> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let delta = |p: &str| ColumnPath::from(p);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_column_dictionary_enabled(delta("offset"), false)
            .set_column_encoding(delta("offset"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(delta("timestamp"), false)
            .set_column_encoding(delta("timestamp"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(delta("value"), false)
            .set_max_row_group_row_count(Some(row_group_records.max(1)))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "clickflow.partition".into(),
                partition.to_string(),
            )]))
            .build();
        Ok(FileWriter {
            writer: SerializedFileWriter::new(file, schema, Arc::new(props))?,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            row_group_records: row_group_records.max(1),
        })
    }

    pub fn push(&mut self, record: &Record) -> Result<(), FormatError> {
        self.offsets.push(record.offset as i64);
        self.timestamps.push(record.timestamp);
        self.keys.push(ByteArray::from(record.key.clone()));
        self.values.push(ByteArray::from(record.value.clone()));
        if self.offsets.len() >= self.row_group_records {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), FormatError> {
        if self.offsets.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut column = |write: &mut dyn FnMut(
            &mut parquet::file::writer::SerializedColumnWriter<'_>,
        ) -> parquet::errors::Result<usize>|
         -> Result<(), FormatError> {
            let mut c = group
                .next_column()?
                .ok_or_else(|| FormatError::Invalid("schema has fewer columns".into()))?;
            write(&mut c)?;
            c.close()?;
            Ok(())
        };
        column(&mut |c| {
            c.typed::<Int64Type>()
                .write_batch(&self.offsets, None, None)
        })?;
        column(&mut |c| {
            c.typed::<Int64Type>()
                .write_batch(&self.timestamps, None, None)
        })?;
        column(&mut |c| {
            c.typed::<ByteArrayType>()
                .write_batch(&self.keys, None, None)
        })?;
        column(&mut |c| {
            c.typed::<ByteArrayType>()
                .write_batch(&self.values, None, None)
        })?;
        group.close()?;
        self.offsets.clear();
        self.timestamps.clear();
        self.keys.clear();
        self.values.clear();
        Ok(())
    }

    /// Writes the footer and syncs the file.
    pub fn finish(mut self) -> Result<(), FormatError> {
        self.flush_row_group()?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}

/// Reads an archive file back, one row group at a time.
pub struct FileCursor {
    reader: SerializedFileReader<File>,
    partition: u32,
    next_group: usize,
}

impl FileCursor {
    pub fn open(file: File, partition: u32) -> Result<Self, FormatError> {
        let reader = SerializedFileReader::new(file)?;
        let recorded = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == "clickflow.partition"))
            .and_then(|k| k.value.as_deref()?.parse::<u32>().ok());
        if recorded != Some(partition) {
            return Err(FormatError::Invalid(format!(
                "holds partition {recorded:?}, expected {partition}"
            )));
        }
        Ok(FileCursor {
            reader,
            partition,
            next_group: 0,
        })
    }

    /// The records of the next row group with an offset at or after `from`; `None` at the end.
    pub fn next_group(&mut self, from: u64) -> Result<Option<Vec<Record>>, FormatError> {
        loop {
            let i = self.next_group;
            if i >= self.reader.num_row_groups() {
                return Ok(None);
            }
            self.next_group += 1;
            let meta = self.reader.metadata().row_group(i);
            // Row groups wholly before `from` are skipped without decompressing them.
            if let Some(Statistics::Int64(s)) = meta.column(0).statistics() {
                if s.max_opt().is_some_and(|max| (*max as u64) < from) {
                    continue;
                }
            }
            let rows = meta.num_rows() as usize;
            let group = self.reader.get_row_group(i)?;
            let offsets = read_column::<Int64Type>(group.get_column_reader(0)?, rows)?;
            let timestamps = read_column::<Int64Type>(group.get_column_reader(1)?, rows)?;
            let keys = read_column::<ByteArrayType>(group.get_column_reader(2)?, rows)?;
            let values = read_column::<ByteArrayType>(group.get_column_reader(3)?, rows)?;
            let records = offsets
                .into_iter()
                .zip(timestamps)
                .zip(keys)
                .zip(values)
                .filter(|(((o, _), _), _)| *o as u64 >= from)
                .map(|(((offset, timestamp), key), value)| Record {
                    partition: self.partition,
                    offset: offset as u64,
                    timestamp,
                    key: key.data().to_vec(),
                    value: value.data().to_vec(),
                })
                .collect();
            return Ok(Some(records));
        }
    }
}

fn read_column<T: parquet::data_type::DataType>(
    column: parquet::column::reader::ColumnReader,
    rows: usize,
) -> Result<Vec<T::T>, FormatError> {
    let mut reader = get_typed_column_reader::<T>(column);
    let mut values = Vec::with_capacity(rows);
    while values.len() < rows {
        let (records, _, _) = reader.read_records(rows - values.len(), None, None, &mut values)?;
        if records == 0 {
            return Err(FormatError::Invalid(format!(
                "row group ends after {} of {rows} rows",
                values.len()
            )));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> Record {
        Record {
            partition: 3,
            offset,
            timestamp: 1_700_000_000_000 + offset as i64,
            key: format!("site-{}", offset % 4).into_bytes(),
            value: format!("{{\"n\":{offset}}}").into_bytes(),
        }
    }

    #[test]
    fn records_come_back_as_written_across_row_groups_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let mut w = FileWriter::create(File::create(&path).unwrap(), 3, 7).unwrap();
        let written: Vec<Record> = (100..150).map(record).collect();
        for r in &written {
            w.push(r).unwrap();
        }
        w.finish().unwrap();
        for from in [0, 100, 106, 107, 120, 149, 150] {
            let mut cursor = FileCursor::open(File::open(&path).unwrap(), 3).unwrap();
            let mut read = Vec::new();
            while let Some(group) = cursor.next_group(from).unwrap() {
                read.extend(group);
            }
            let expected: Vec<Record> = written
                .iter()
                .filter(|r| r.offset >= from)
                .cloned()
                .collect();
            assert_eq!(read, expected, "from {from}");
        }
        let wrong = FileCursor::open(File::open(&path).unwrap(), 2);
        assert!(wrong.is_err());
    }
}
