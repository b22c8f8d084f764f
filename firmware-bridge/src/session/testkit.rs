//! Transcript runner for session tests: `>` a line the host must send next, `<` a line the
//! firmware sends, `~ <ms>` time passing, `.` nothing more to send right now.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Command, Event, Session};

/// A session under test with a virtual clock and a job fed from memory.
pub struct Harness<S> {
    pub session: S,
    pub now: Instant,
    pub job: VecDeque<String>,
    pub job_open: bool,
    pub events: Vec<Event>,
    pending: VecDeque<Vec<u8>>,
}

impl<S: Session> Harness<S> {
    pub fn new(make: impl FnOnce(Instant) -> S) -> Self {
        let now = Instant::now();
        Self {
            session: make(now),
            now,
            job: VecDeque::new(),
            job_open: false,
            events: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Start a job with these lines.
    pub fn start_job(&mut self, lines: &[&str]) {
        self.session
            .handle_command(self.now, Command::StartJob(Default::default()))
            .expect("job starts");
        self.job = lines.iter().map(|l| l.to_string()).collect();
        self.job_open = true;
    }

    pub fn command(&mut self, command: Command) {
        self.session
            .handle_command(self.now, command)
            .expect("command accepted");
    }

    fn feed(&mut self) {
        while self.job_open && self.session.wants_job_line() {
            match self.job.pop_front() {
                Some(l) => self.session.push_job_line(&l).expect("line accepted"),
                None => {
                    self.session.end_job_input();
                    self.job_open = false;
                }
            }
        }
    }

    /// Everything the session wants to write now.
    pub fn drain(&mut self) {
        self.feed();
        while let Some(bytes) = self.session.poll_transmit(self.now) {
            self.pending.push_back(bytes);
            self.feed();
        }
        self.collect_events();
    }

    pub fn collect_events(&mut self) {
        while let Some(e) = self.session.poll_event() {
            self.events.push(e);
        }
    }

    pub fn input(&mut self, line: &str) {
        self.session
            .handle_input(self.now, format!("{line}\n").as_bytes());
        self.collect_events();
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.session.handle_timeout(self.now);
        self.collect_events();
    }

    /// Jump to the session's next deadline.
    pub fn jump_to_deadline(&mut self) {
        let at = self.session.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.session.handle_timeout(self.now);
        self.collect_events();
    }

    pub fn run(&mut self, transcript: &str) {
        for (i, raw) in transcript.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let (tag, rest) = line.split_at(1);
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match tag {
                ">" => {
                    let expected;
                    let rest = match rest.strip_suffix("*?") {
                        Some(payload) => {
                            let (lead, payload) = match payload.strip_prefix("\\n") {
                                Some(p) => ("\\n", p),
                                None => ("", payload),
                            };
                            let cs = super::line::checksum(payload.as_bytes());
                            expected = format!("{lead}{payload}*{cs}");
                            expected.as_str()
                        }
                        None => rest,
                    };
                    self.drain();
                    let got = self.pending.pop_front().map(|b| {
                        String::from_utf8_lossy(&b)
                            .trim_end_matches('\n')
                            .escape_debug()
                            .to_string()
                    });
                    assert_eq!(
                        got.as_deref(),
                        Some(rest),
                        "transcript line {}: host should send {rest:?}",
                        i + 1
                    );
                }
                "<" => self.input(rest),
                "~" => {
                    let ms: u64 = rest.trim_end_matches("ms").parse().expect("~ <ms>");
                    self.advance(Duration::from_millis(ms));
                }
                "." => {
                    self.drain();
                    assert!(
                        self.pending.is_empty(),
                        "transcript line {}: host should be quiet, but sends {:?}",
                        i + 1,
                        self.pending
                            .iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .collect::<Vec<_>>()
                    );
                }
                _ => panic!("transcript line {}: unknown tag in {raw:?}", i + 1),
            }
        }
    }

    /// The oldest bytes the session handed out and the transcript has not consumed.
    pub fn pending_pop(&mut self) -> Option<Vec<u8>> {
        self.pending.pop_front()
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        self.collect_events();
        std::mem::take(&mut self.events)
    }
}
