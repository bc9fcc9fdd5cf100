//! `sluice top`: a live terminal view of a running node (ratatui).
//!
//! Torrents on top, sparklines of disk-queue fill and download rate, then
//! the selected torrent's peers sorted by rate with the choker's reason.
//! Fits an 80×24 terminal. `q` quits, `s` changes the sort, ↑/↓ pick the
//! torrent.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::{DefaultTerminal, Frame};
use sluice_node::api::{ApiClient, NodeInfo, PeerInfo, TorrentInfo};

use crate::inspect::{ApiArgs, client, flags, short_id};
use sluice_storage::units::{format_rate, format_size};

/// Samples kept for the sparklines (one per refresh).
const HISTORY: usize = 240;

#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    refresh: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Down,
    Up,
    Flags,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Down => SortBy::Up,
            SortBy::Up => SortBy::Flags,
            SortBy::Flags => SortBy::Down,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::Down => "down rate",
            SortBy::Up => "up rate",
            SortBy::Flags => "choke state",
        }
    }
}

struct App {
    client: ApiClient,
    node: Option<NodeInfo>,
    torrents: Vec<TorrentInfo>,
    peers: Vec<PeerInfo>,
    selected: usize,
    sort: SortBy,
    /// Disk-queue fill (queued + outstanding), percent of capacity.
    disk_fill: VecDeque<u64>,
    /// Download rate of the selected torrent, bytes/s.
    down: VecDeque<u64>,
    error: Option<String>,
}

impl App {
    async fn refresh(&mut self) {
        match self.fetch().await {
            Ok(()) => self.error = None,
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    async fn fetch(&mut self) -> Result<()> {
        self.node = Some(self.client.get_json("/api/v1/node").await?);
        self.torrents = self.client.get_json("/api/v1/torrents").await?;
        self.selected = self.selected.min(self.torrents.len().saturating_sub(1));
        let Some(t) = self.torrents.get(self.selected) else {
            self.peers.clear();
            return Ok(());
        };
        let path = format!("/api/v1/torrents/{}/peers", t.info_hash);
        let d = &t.disk;
        let used = d.used_bytes();
        let fill = (used as f64 * 100.0 / d.capacity_bytes.max(1) as f64) as u64;
        push(&mut self.disk_fill, fill);
        push(&mut self.down, t.down_rate as u64);
        self.peers = self.client.get_json(&path).await?;
        self.sort_peers();
        Ok(())
    }

    fn sort_peers(&mut self) {
        match self.sort {
            SortBy::Down => self
                .peers
                .sort_by(|a, b| b.stats.down_rate.total_cmp(&a.stats.down_rate)),
            SortBy::Up => self
                .peers
                .sort_by(|a, b| b.stats.up_rate.total_cmp(&a.stats.up_rate)),
            SortBy::Flags => self.peers.sort_by_key(|p| (p.stats.am_choking, flags(p))),
        }
    }

    fn select(&mut self, delta: isize) {
        let n = self.torrents.len();
        if n > 0 {
            self.selected = (self.selected as isize + delta).rem_euclid(n as isize) as usize;
            self.disk_fill.clear();
            self.down.clear();
        }
    }
}

fn push(history: &mut VecDeque<u64>, v: u64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(v);
}

pub(crate) fn top(args: TopArgs) -> Result<ExitCode> {
    let client = args.api.client()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut app = App {
        client,
        node: None,
        torrents: Vec::new(),
        peers: Vec::new(),
        selected: 0,
        sort: SortBy::Down,
        disk_fill: VecDeque::with_capacity(HISTORY),
        down: VecDeque::with_capacity(HISTORY),
        error: None,
    };
    // Fail before taking over the terminal when no node answers.
    rt.block_on(app.fetch())?;
    if !args.refresh.is_finite() {
        anyhow::bail!("--refresh {} is not a number of seconds", args.refresh);
    }
    let refresh = Duration::from_secs_f64(args.refresh.clamp(0.1, 60.0));
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = run(&mut terminal, &rt, &mut app, refresh);
    ratatui::try_restore().context("restoring the terminal")?;
    result.map(|()| ExitCode::SUCCESS)
}

fn run(
    terminal: &mut DefaultTerminal,
    rt: &tokio::runtime::Runtime,
    app: &mut App,
    refresh: Duration,
) -> Result<()> {
    let mut next = Instant::now() + refresh;
    loop {
        terminal.draw(|f| draw(f, app))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('s') => {
                        app.sort = app.sort.next();
                        app.sort_peers();
                    }
                    KeyCode::Down | KeyCode::Tab | KeyCode::Char('j') => {
                        app.select(1);
                        rt.block_on(app.refresh());
                    }
                    KeyCode::Up | KeyCode::BackTab | KeyCode::Char('k') => {
                        app.select(-1);
                        rt.block_on(app.refresh());
                    }
                    _ => {}
                }
            }
            continue;
        }
        rt.block_on(app.refresh());
        next = Instant::now() + refresh;
    }
}

fn draw(f: &mut Frame<'_>, app: &App) {
    let torrent_rows = app.torrents.len().clamp(1, 4) as u16;
    let [head, torrents, sparks, peers, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(torrent_rows + 3),
        Constraint::Length(4),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_head(f, head, app);
    draw_torrents(f, torrents, app);
    draw_sparks(f, sparks, app);
    draw_peers(f, peers, app);
    let footer = match &app.error {
        Some(e) => Line::from(format!(" {e}")).red(),
        None => Line::from(format!(
            " q quit  s sort ({})  ↑↓ torrent  flags: sluice peers --help",
            app.sort.name()
        ))
        .dim(),
    };
    f.render_widget(Paragraph::new(footer), foot);
}

fn draw_head(f: &mut Frame<'_>, area: Rect, app: &App) {
    let text = match &app.node {
        Some(n) => format!(
            " sluice top  node …{}  api {}  up {}  {} connected",
            short_id(&n.peer_id),
            app.client.addr(),
            format_uptime(n.uptime_seconds),
            n.connected_peers
        ),
        None => format!(" sluice top  api {}", app.client.addr()),
    };
    f.render_widget(Paragraph::new(Line::from(text).bold()), area);
}

fn format_uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

fn draw_torrents(f: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.torrents.iter().map(|t| {
        let d = &t.disk;
        let used = d.used_bytes();
        Row::new([
            Cell::from(crate::inspect::printable(&t.name)),
            Cell::from(format!("{:5.1}%", 100.0 * t.progress)),
            Cell::from(format_rate(t.down_rate)),
            Cell::from(format_rate(t.up_rate)),
            Cell::from(t.peers.to_string()),
            Cell::from(format!(
                "{}/{}{}",
                format_size(used),
                format_size(d.capacity_bytes),
                if d.throttled { " T" } else { "" }
            )),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(6),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(19),
        ],
    )
    .header(
        Row::new(["TORRENT", "DONE", "DOWN", "UP", "PEERS", "DISK QUEUE"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .block(Block::bordered().title(" torrents "));
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_sparks(f: &mut Frame<'_>, area: Rect, app: &App) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let fill = app.disk_fill.back().copied().unwrap_or(0);
    let rate = app.down.back().copied().unwrap_or(0);
    // Newest on the right: show the last `width` samples.
    let tail = |h: &VecDeque<u64>, w: u16| -> Vec<u64> {
        let w = usize::from(w.saturating_sub(2));
        h.iter().skip(h.len().saturating_sub(w)).copied().collect()
    };
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" disk queue {fill}% ")))
            .data(tail(&app.disk_fill, left.width))
            .max(100)
            .yellow(),
        left,
    );
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" down {} ", format_rate(rate as f64))))
            .data(tail(&app.down, right.width))
            .green(),
        right,
    );
}

fn draw_peers(f: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.peers.iter().map(|p| {
        Row::new([
            Cell::from(short_id(&p.stats.peer_id).to_owned()),
            Cell::from(client(p)),
            Cell::from(flags(p)),
            Cell::from(p.stats.choke_reason.clone()),
            Cell::from(format_rate(p.stats.down_rate)),
            Cell::from(format_rate(p.stats.up_rate)),
            Cell::from(format!(
                "{}/{}",
                p.stats.outstanding_requests, p.stats.request_window
            )),
            Cell::from(p.stats.upload_queue.to_string()),
        ])
    });
    let title = match app.torrents.get(app.selected) {
        Some(t) => format!(
            " peers of {} ({}) ",
            crate::inspect::printable(&t.name),
            app.peers.len()
        ),
        None => " peers ".to_owned(),
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Min(16),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(4),
        ],
    )
    .header(
        Row::new([
            "PEER", "CLIENT", "FLAGS", "REASON", "DOWN/s", "UP/s", "WINDOW", "UPQ",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(title));
    f.render_widget(table, area);
}
