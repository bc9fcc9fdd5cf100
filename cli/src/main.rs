//! `sluice`: the command line. Parses arguments, prints tables, progress
//! bars and JSON; every protocol and storage decision lives in the library
//! crates.

// Printing is this crate's job: results on stdout, errors on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

// `println!` and friends, shadowed for the whole crate (these come first,
// so every module below sees them): output to a closed pipe is dropped
// instead of panicking. `sluice get … 2>&1 | head` reads what it wants and
// the download goes on; std's macros would panic in whichever task
// printed, and a panicked task leaves the command waiting for it.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod config;
mod daemon;
mod inspect;
mod net;
mod testnet;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use sluice_storage::{CreateOptions, MetaVersion, Metainfo, default_threads};

use sluice_storage::units::{format_size, parse_size};

/// A peer-to-peer file-swarm node.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// A config file (TOML; keys are the long flags, e.g. up_rate =
    /// "5MB/s") instead of $SLUICE_CONFIG or
    /// $XDG_CONFIG_HOME/sluice/config.toml. Flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a BitTorrent v2 .torrent from a file or directory.
    Create(CreateArgs),
    /// Describe a .torrent: name, files, piece size, info-hash.
    Show {
        torrent: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Share a file or directory with the swarm until Ctrl-C.
    Seed(net::SeedArgs),
    /// Download a torrent (from a .torrent, a magnet link or an
    /// info-hash) from the swarm; exit 0 once every piece is verified and
    /// on disk. Run again to resume.
    Get(net::GetArgs),
    /// A node with no torrent: serves the DHT, for others' --bootstrap.
    Node(net::NodeArgs),
    /// Make or read an identity key file, for --identity: a peer id
    /// chosen before the node runs (a bootstrap node's, say, kept as a
    /// Docker secret).
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// One node left running with many torrents, kept across restarts;
    /// driven by add, list, pause, resume and remove (and its API).
    Daemon(daemon::DaemonArgs),
    /// Add a torrent to a running daemon: a .torrent, a magnet link or an
    /// info-hash.
    Add(daemon::AddArgs),
    /// Remove a torrent from a running daemon (--delete-data: its data too).
    Remove(daemon::RemoveArgs),
    /// Pause a torrent of a running daemon (writes flushed, peers closed).
    Pause(daemon::TorrentArgs),
    /// Resume a paused torrent of a running daemon.
    Resume(daemon::TorrentArgs),
    /// Check a torrent's data on the disk again (in the background: `list`
    /// shows it as checking until done).
    Recheck(daemon::TorrentArgs),
    /// A running daemon's torrents: state, progress, rates, peers.
    List(daemon::ListArgs),
    /// The running daemon's web UI address (with its token: open it in a
    /// browser).
    Ui(daemon::UiArgs),
    /// Show or change a running daemon's upload and download limits and
    /// upload slots, node-wide or of one torrent (kept across restarts).
    Limit(daemon::LimitArgs),
    /// Print a shell completion script: `sluice completions bash >
    /// ~/.local/share/bash-completion/completions/sluice`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `sluice man > sluice.1; man ./sluice.1`.
    Man,
    /// Print the config file in use and the settings the node commands
    /// run with (the file's, else built-in defaults; flags still win).
    Config,
    /// One line per torrent of a running node: progress, rates, peers,
    /// disk-queue fill.
    Status(inspect::StatusArgs),
    /// A running node's peers: choke and interest flags, the choker's
    /// reason, rates, request window, upload queue.
    ///
    /// Flags: D we download from it, d we want but it chokes us, K it
    /// unchoked us but we want nothing; U we upload to it, u it wants but
    /// we choke it, ? we unchoked it but it wants nothing; O optimistic
    /// unchoke, S snubbed.
    Peers(inspect::PeersArgs),
    /// A live view of a running node (q quits).
    Top(top::TopArgs),
    /// A whole local swarm in one command: many real nodes on 127.0.0.1
    /// with capped links, free-riders and slow disks; a live view, then a
    /// report with plots.
    Testnet(testnet::TestnetArgs),
    /// The same swarm in simulated time: every node the real torrent
    /// rules (choker, picker, windows, write queue) on modelled links and
    /// disks, thousands of nodes on one machine; deterministic by --seed.
    /// The same flags, scenario files and report as `testnet`.
    Sim(testnet::SimArgs),
    /// Check data on disk against a .torrent; exit 0 only when complete.
    Verify {
        torrent: PathBuf,
        /// The content: the file of a single-file torrent (or the directory
        /// holding it), else the torrent's directory.
        path: PathBuf,
        /// Hashing threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes: 0 success, 1 the operation ran but the answer is "no"
/// (incomplete data), 2 bad input or failure.
const EXIT_INCOMPLETE: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// glibc returns large freed buffers to the OS and faults them in again;
/// Noise allocates one per frame. Keeping them measured +22% end to end on
/// these machines (see ../shared/notes/libp2p.md) for a few MiB of RSS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "one libc call at start-up, before any thread exists"
)]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread runs, so nothing allocates concurrently.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (config_path, explicit) = config::path_from_args(argv.get(1..).unwrap_or_default());
    let file = match config_path.as_deref().map(|p| config::load(p, explicit)) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_ERROR);
        }
        None => config::FileConfig::default(),
    };
    let command = file.apply(Cli::command());
    let parsed = command
        .clone()
        .try_get_matches_from(&argv)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr()
                && let Some(p) = config_path.as_deref().filter(|p| p.exists())
            {
                eprintln!("(defaults come from the config {})", p.display());
            }
            return if e.use_stderr() {
                ExitCode::from(EXIT_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli);
    if matches!(cli.command, Command::Config) {
        config::print(config_path.as_deref(), &command);
        return ExitCode::SUCCESS;
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only for a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A failed write would be reported with `eprintln!` (std's, which
        // panics on a closed stderr): a log nobody reads is dropped.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Make a new ed25519 key in FILE (never overwritten; readable by
    /// its owner only) and print its peer id.
    New { file: PathBuf },
    /// Print the peer id of the key in FILE.
    Show { file: PathBuf },
}

fn identity(command: &IdentityCommand) -> Result<ExitCode> {
    let key = match command {
        IdentityCommand::New { file } => sluice_node::datadir::new_identity(file),
        IdentityCommand::Show { file } => sluice_node::datadir::read_identity(file),
    }?;
    println!("{}", key.public().to_peer_id());
    Ok(ExitCode::SUCCESS)
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Create(args) => create(args),
        Command::Show { torrent, json } => show(&torrent, json),
        Command::Seed(args) => net::seed(args),
        Command::Get(args) => net::get(args),
        Command::Node(args) => net::node(args),
        Command::Identity(c) => identity(&c),
        Command::Daemon(args) => daemon::daemon(args),
        Command::Add(args) => daemon::add(args),
        Command::Remove(args) => daemon::remove(args),
        Command::Pause(args) => daemon::pause(args),
        Command::Resume(args) => daemon::resume(args),
        Command::Recheck(args) => daemon::recheck(args),
        Command::List(args) => daemon::list(args),
        Command::Ui(args) => daemon::ui(args),
        Command::Limit(args) => daemon::limit(args),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut out);
            print!("{}", String::from_utf8_lossy(&out));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => unreachable!("answered before run"),
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .context("rendering the man page")?;
            print!("{}", String::from_utf8_lossy(&out));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => inspect::status(args),
        Command::Peers(args) => inspect::peers(args),
        Command::Top(args) => top::top(args),
        Command::Testnet(args) => testnet::testnet(args),
        Command::Sim(args) => testnet::sim(args),
        Command::Verify {
            torrent,
            path,
            threads,
            json,
        } => verify(&torrent, &path, threads, json),
    }
}

/// `sluice create`'s flags.
#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The file or directory to share.
    path: PathBuf,
    /// Where to write the .torrent (default: NAME.torrent here).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Piece size, a power of two ≥ 16KiB (default: from the total size).
    #[arg(long, value_parser = parse_size)]
    piece_size: Option<u64>,
    /// Torrent name (default: the file or directory name).
    #[arg(long)]
    name: Option<String>,
    /// Hashing threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Leave out the creation date, so the same files give the same bytes.
    #[arg(long)]
    no_date: bool,
    /// BitTorrent v2 only (default: hybrid, v2 with a v1 part, as
    /// libtorrent 2.0 makes, for v1-only clients too).
    #[arg(long, conflicts_with_all = ["hybrid", "v1"])]
    v2: bool,
    /// BitTorrent v1 only (SHA-1 pieces over the files end to end; what
    /// clients without v2, such as Transmission 3, can open).
    #[arg(long, conflicts_with = "hybrid")]
    v1: bool,
    /// Hybrid v1 + v2 (the default).
    #[arg(long)]
    hybrid: bool,
    /// A tracker's announce URL, http(s):// or udp:// (repeatable;
    /// each its own tier, tried in the order given).
    #[arg(long, value_parser = parse_tracker)]
    tracker: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Where a torrent's content is, given `path`: a single-file torrent may be
/// given the directory that holds its file.
pub(crate) fn content_at(info: &sluice_storage::Info, path: &Path) -> PathBuf {
    if info.is_single_file() && path.is_dir() {
        path.join(&info.files()[0].path[0])
    } else {
        path.to_owned()
    }
}

/// The magnet link of a torrent: its trackers (the first of each tier),
/// no peer hints.
pub(crate) fn magnet_of(meta: &Metainfo) -> sluice_swarm::magnet::Magnet {
    sluice_swarm::magnet::Magnet {
        info_hash: meta.info().info_hash(),
        v1_info_hash: meta.info().v1_info_hash(),
        name: Some(meta.info().name().to_owned()),
        peers: Vec::new(),
        bt_peers: Vec::new(),
        trackers: meta
            .trackers()
            .iter()
            .filter_map(|tier| tier.first().cloned())
            .collect(),
    }
}

fn parse_tracker(s: &str) -> Result<String, String> {
    sluice_swarm::tracker::TrackerUrl::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

pub(crate) fn read_torrent(path: &Path) -> Result<Metainfo> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > sluice_storage::metainfo::MAX_TORRENT_BYTES as u64 {
        anyhow::bail!(
            "{} is {len} bytes, too large for a .torrent",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid torrent", path.display()))
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar over `total` bytes, fed from `done`, on stderr (hidden
/// when stderr is not a terminal). Runs until the returned guard drops.
pub(crate) struct Progress {
    stop: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(label: &str, total: u64, done: Arc<AtomicU64>) -> Self {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        let stop = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while stop.load(Ordering::Relaxed) == 0 {
                    bar.set_position(done.load(Ordering::Relaxed));
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[derive(Serialize)]
struct Created {
    info_hash: String,
    magnet: String,
    torrent: PathBuf,
    name: String,
    total_size: u64,
    piece_length: u32,
    pieces: u32,
    files: usize,
    seconds: f64,
}

fn create(args: CreateArgs) -> Result<ExitCode> {
    let CreateArgs {
        path,
        output,
        piece_size,
        name,
        threads,
        no_date,
        tracker: trackers,
        v2,
        v1,
        hybrid: _,
        json,
    } = args;
    let path = path.as_path();
    let piece_length = piece_size
        .map(|p| u32::try_from(p).map_err(|_| anyhow::anyhow!("--piece-size {p} is too large")))
        .transpose()?;
    let date = (!no_date).then(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let options_name = name.clone();
    let options = CreateOptions::default()
        .with_piece_length(piece_length)
        .with_name(name)
        .with_threads(threads.unwrap_or_else(default_threads))
        .with_creation_date(date)
        .with_trackers(trackers)
        .with_version(match (v1, v2) {
            (true, _) => MetaVersion::V1,
            (_, true) => MetaVersion::V2,
            _ => MetaVersion::Hybrid,
        });
    let (default_name, files) = sluice_storage::create::scan(path)?;
    let total: u64 = files.iter().map(|f| f.length).sum();
    // Check where the result goes before spending minutes hashing.
    let output = output.unwrap_or_else(|| {
        let name = options_name.as_deref().unwrap_or(&default_name);
        PathBuf::from(format!("{name}.torrent"))
    });
    if output.is_dir() {
        anyhow::bail!(
            "{} is a directory; give a file name for the .torrent",
            output.display()
        );
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let meta = {
        let _bar = Progress::start("hashing", total, Arc::clone(&done));
        sluice_storage::create(path, &options, &done)?
    };
    let seconds = started.elapsed().as_secs_f64();
    let info = meta.info();
    write_torrent(&output, meta.to_bytes())?;
    let created = Created {
        info_hash: info.info_hash().to_string(),
        magnet: magnet_of(&meta).to_string(),
        torrent: output,
        name: info.name().to_owned(),
        total_size: info.total_size(),
        piece_length: info.piece_length(),
        pieces: sluice_storage::Layout::new(info).num_pieces(),
        files: info.files().len(),
        seconds,
    };
    if json {
        print_json(&created)?;
    } else {
        println!("{}", created.info_hash);
        println!("{}", created.magnet);
        tracing::info!(
            torrent = %created.torrent.display(),
            size = created.total_size,
            pieces = created.pieces,
            seconds,
            "created"
        );
        let rate = created.total_size as f64 / seconds.max(1e-9);
        println!(
            "wrote {} ({} in {} pieces of {}, {} files; hashed at {}/s)",
            created.torrent.display(),
            format_size(created.total_size),
            created.pieces,
            format_size(u64::from(created.piece_length)),
            created.files,
            format_size(rate as u64),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the .torrent atomically: a failure never leaves a half-written file.
fn write_torrent(path: &Path, bytes: &[u8]) -> Result<()> {
    sluice_storage::resume::write_atomically(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[derive(Serialize)]
struct Shown<'a> {
    name: &'a str,
    version: MetaVersion,
    info_hash: String,
    /// A hybrid's v1 info-hash (what v1 clients and trackers know).
    v1_info_hash: Option<String>,
    magnet: String,
    trackers: &'a [Vec<String>],
    total_size: u64,
    piece_length: u32,
    pieces: u32,
    files: Vec<ShownFile>,
}

#[derive(Serialize)]
struct ShownFile {
    path: String,
    length: u64,
    pieces_root: Option<String>,
}

fn show(path: &Path, json: bool) -> Result<ExitCode> {
    let meta = read_torrent(path)?;
    let info = meta.info();
    let shown = Shown {
        name: info.name(),
        version: info.version(),
        info_hash: info.info_hash().to_string(),
        v1_info_hash: info.v1_info_hash().map(hex::encode),
        magnet: magnet_of(&meta).to_string(),
        trackers: meta.trackers(),
        total_size: info.total_size(),
        piece_length: info.piece_length(),
        pieces: sluice_storage::Layout::new(info).num_pieces(),
        files: info
            .files()
            .iter()
            .map(|f| ShownFile {
                path: f.display_path(),
                length: f.length,
                pieces_root: f.pieces_root.map(hex::encode),
            })
            .collect(),
    };
    if json {
        print_json(&shown)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("name:        {}", shown.name);
    println!("info-hash:   {}", shown.info_hash);
    println!(
        "version:     {}",
        match shown.version {
            MetaVersion::V1 => "BitTorrent v1",
            MetaVersion::V2 => "BitTorrent v2",
            MetaVersion::Hybrid => "hybrid (v1 + v2)",
        }
    );
    if let (Some(v1), MetaVersion::Hybrid) = (&shown.v1_info_hash, shown.version) {
        println!("v1 hash:     {v1}");
    }
    println!("magnet:      {}", shown.magnet);
    for (i, tier) in shown.trackers.iter().enumerate() {
        println!("tracker:     tier {i}: {}", tier.join(" "));
    }
    println!(
        "size:        {} ({} bytes)",
        format_size(shown.total_size),
        shown.total_size
    );
    println!(
        "pieces:      {} of {}",
        shown.pieces,
        format_size(u64::from(shown.piece_length))
    );
    println!("files:       {}", shown.files.len());
    for f in &shown.files {
        println!("  {:>12}  {}", f.length, f.path);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Verified {
    info_hash: String,
    path: PathBuf,
    verified_pieces: usize,
    total_pieces: usize,
    complete: bool,
    missing_files: Vec<String>,
}

fn verify(torrent: &Path, path: &Path, threads: Option<usize>, json: bool) -> Result<ExitCode> {
    let meta = read_torrent(torrent)?;
    let info = meta.info();
    if !path.exists() {
        anyhow::bail!("{} does not exist", path.display());
    }
    let content = content_at(info, path);
    let missing_files: Vec<String> = sluice_storage::content_paths(info, &content)
        .iter()
        .zip(info.files())
        .filter(|(p, _)| !p.is_file())
        .map(|(_, f)| f.display_path())
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let bits = {
        let _bar = Progress::start("verifying", info.total_size(), Arc::clone(&done));
        sluice_storage::recheck(
            &meta,
            &content,
            threads.unwrap_or_else(default_threads),
            &done,
        )
    };
    let result = Verified {
        info_hash: info.info_hash().to_string(),
        path: content,
        verified_pieces: bits.count_ones(),
        total_pieces: bits.len(),
        complete: bits.all() && missing_files.is_empty(),
        missing_files,
    };
    if json {
        print_json(&result)?;
    } else {
        let pct = 100.0 * result.verified_pieces as f64 / (result.total_pieces.max(1)) as f64;
        println!(
            "{}/{} pieces verified ({pct:.1}%){}",
            result.verified_pieces,
            result.total_pieces,
            if result.complete { ", complete" } else { "" }
        );
        for f in &result.missing_files {
            println!("missing: {f}");
        }
    }
    Ok(if result.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}
