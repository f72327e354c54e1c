//! `clickflow archive`: the archiver run from the command line (until killed, or once up to
//! the log's end with a progress bar), and `--status`.

use super::archiver::Archiver;
use super::{Archive, Catalog};
use crate::config::Config;
use crate::log;
use crate::store;

/// `clickflow archive`: the archiver until killed, once up to the log's end, or its status.
pub fn archive(config: &Config, once: bool, status: bool) -> anyhow::Result<()> {
    let url = config.database_url()?;
    let Some(target) = Archive::open(&config.archive)? else {
        anyhow::bail!("archive.url is empty: set it to a directory to archive into");
    };
    let log = log::open(&config.log, log::Access::Read)?;
    let mut client = store::connect(&url)?;
    if status {
        return archive_status(&mut client, log.as_ref(), &target);
    }
    let mut archiver = Archiver::start(log.clone(), target.clone(), client, &config.archive)?;
    let mut total = 0u64;
    for (p, from) in archiver.positions() {
        total += log.high_watermark(*p)?.saturating_sub(*from);
    }
    let bar = if once {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} archive [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        eprintln!(
            "archiving {} into {} (Ctrl-C stops; unfinished files are redone on the next start)",
            config.log.kind,
            target.location()
        );
        indicatif::ProgressBar::hidden()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    archiver.run(once, &stop, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    let a = &archiver.archived;
    println!(
        "archived {} records in {} files, {} bytes ({:.1} bytes per record) into {}",
        a.records,
        a.files,
        a.bytes,
        a.bytes as f64 / a.records.max(1) as f64,
        target.location()
    );
    Ok(())
}

fn archive_status(
    client: &mut postgres::Client,
    log: &dyn log::Log,
    target: &Archive,
) -> anyhow::Result<()> {
    let catalog = Catalog::load(client)?;
    println!("archive {}", target.location());
    println!("partition  archived offsets          files  records      bytes  log holds");
    for p in 0..log.partitions()? {
        let files = catalog.contiguous(p);
        let (records, bytes) = files
            .iter()
            .fold((0, 0), |(r, b), f| (r + f.records, b + f.bytes));
        let covered = catalog
            .covered(p)
            .map(|(a, b)| format!("[{a}, {b})"))
            .unwrap_or_else(|| "none".into());
        println!(
            "{p:>9}  {covered:<24} {:>6} {records:>8} {bytes:>10}  [{}, {})",
            files.len(),
            log.low_watermark(p)?,
            log.high_watermark(p)?
        );
    }
    Ok(())
}
