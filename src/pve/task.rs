//! PVE tasks: the UPID a write answers with, and waiting for the task to end.
//!
//! Every long PVE write (clone, config POST, resize, start, shutdown, stop, destroy) answers
//! with the UPID of a worker task and goes on in the background. [`wait_task`] polls the
//! task's status on the node named in the UPID (PVE answers "unable to parse worker upid"
//! on any other node) until it stops, and reads the end of its log when it failed. The
//! answers are treated as hostile input: the UPID is validated before any part of it is
//! put in a path, exit statuses and log lines are cut and cleaned.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::client::{PveApi, PveError};
use super::metrics::TaskRecorder;
use super::write::percent_encode;
use crate::net::call_metrics::SUCCESS;

/// Longest UPID accepted (PVE's are about 60 to 100 characters).
pub const MAX_UPID_LEN: usize = 512;
/// Longest node name (a DNS label).
const MAX_NODE_LEN: usize = 63;
/// Longest task type and task id kept.
const MAX_FIELD_LEN: usize = 64;
/// Longest user (`user@realm!token`) accepted.
const MAX_USER_LEN: usize = 192;
/// Characters kept of an exit status or of one log line.
pub const MAX_TEXT_CHARS: usize = 200;
/// Lines kept of the end of a failed task's log.
pub const LOG_TAIL_LINES: usize = 20;
/// Lines asked for per request of the log.
const LOG_PAGE_LINES: usize = 500;
/// Requests of the log at most (a log longer than this is read up to there).
const LOG_MAX_PAGES: usize = 20;

/// A task's unique id, `UPID:node:pid:pstart:starttime:type:id:user:`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    node: String,
    starttime: u64,
    task_type: String,
    id: String,
    user: String,
}

/// PVE's node-name pattern: `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`, at most 63 characters.
pub fn is_node_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NODE_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_hex_field(text: &str) -> bool {
    (1..=16).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A field of a UPID: no `:`, no white space or control character, at most `max` bytes.
fn is_plain_field(text: &str, max: usize) -> bool {
    text.len() <= max
        && !text
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

impl Upid {
    /// Parses a UPID; `None` for anything that is not one (wrong shape, a node name PVE
    /// would refuse, a field too long, white space or control characters, longer than
    /// [`MAX_UPID_LEN`]).
    pub fn parse(text: &str) -> Option<Upid> {
        if text.len() > MAX_UPID_LEN {
            return None;
        }
        let rest = text.strip_prefix("UPID:")?.strip_suffix(':')?;
        let fields: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = fields.as_slice() else {
            return None;
        };
        if !is_node_name(node)
            || !is_hex_field(pid)
            || !is_hex_field(pstart)
            || !is_hex_field(starttime)
            || task_type.is_empty()
            || !is_plain_field(task_type, MAX_FIELD_LEN)
            || !is_plain_field(id, MAX_FIELD_LEN)
            || user.is_empty()
            || !is_plain_field(user, MAX_USER_LEN)
        {
            return None;
        }
        Some(Upid {
            raw: text.to_string(),
            node: node.to_string(),
            starttime: u64::from_str_radix(starttime, 16).ok()?,
            task_type: task_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        })
    }

    /// The UPID as PVE wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The node the task runs on (validated against PVE's node-name pattern).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The task type (`qmclone`, `qmstart`, `resize`, ...).
    pub fn task_type(&self) -> &str {
        &self.task_type
    }

    /// The task's object id (a vmid for guest tasks; a clone's is the source's); may be
    /// empty.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Who started it (`user@realm` or `user@realm!token`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// When it started (Unix seconds).
    pub fn starttime(&self) -> u64 {
        self.starttime
    }

    /// `/nodes/{node}/tasks/{upid}/status`, the UPID percent-encoded.
    pub fn status_path(&self) -> String {
        format!(
            "/nodes/{}/tasks/{}/status",
            self.node,
            percent_encode(&self.raw)
        )
    }

    /// `/nodes/{node}/tasks/{upid}/log?start=..&limit=..`.
    pub fn log_path(&self, start: usize, limit: usize) -> String {
        format!(
            "/nodes/{}/tasks/{}/log?start={start}&limit={limit}",
            self.node,
            percent_encode(&self.raw)
        )
    }
}

impl std::fmt::Display for Upid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The task a write's answer names: a string is a UPID, `null` means PVE did the work
/// before answering (`PUT .../config`). Anything else is [`PveError::Decode`] (naming no
/// path: prefer [`task_of_at`]).
pub fn task_of(answer: &Value) -> Result<Option<Upid>, PveError> {
    task_of_at("(the answer of a write)", answer)
}

/// [`task_of`] for the answer of the write on `path` (named in the error).
pub fn task_of_at(path: &str, answer: &Value) -> Result<Option<Upid>, PveError> {
    let kind = match answer {
        Value::Null => return Ok(None),
        Value::String(text) => {
            return Upid::parse(text).map(Some).ok_or_else(|| PveError::Decode {
                path: path.into(),
                message: format!("not a task id (UPID): {:?}", cut(text, 80)),
            });
        }
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    Err(PveError::Decode {
        path: path.into(),
        message: format!("expected a task id (UPID) or null, got {kind}"),
    })
}

/// How to wait for a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskWait {
    /// Pause after the first poll (which is made at once); doubled after each poll.
    pub first_poll: Duration,
    /// Longest pause between polls.
    pub max_poll: Duration,
    /// Give up after this long; the task keeps running.
    pub timeout: Duration,
    /// Failed polls in a row that are tolerated (no answer, a gateway error, the node
    /// unreachable for a moment) before the wait fails with [`TaskError::Api`]. Any other
    /// error (403, the node does not know the task, ...) fails it at once.
    pub poll_errors: u32,
}

impl Default for TaskWait {
    /// 500 ms, backing off to 5 s, for up to 10 minutes, tolerating 3 failed polls in a row.
    fn default() -> Self {
        Self {
            first_poll: Duration::from_millis(500),
            max_poll: Duration::from_secs(5),
            timeout: Duration::from_secs(600),
            poll_errors: 3,
        }
    }
}

impl TaskWait {
    /// The default wait with another timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::default()
        }
    }
}

/// A task that ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDone {
    /// The task.
    pub upid: Upid,
    /// Warnings it logged (`WARNINGS: n`); 0 for `OK`.
    pub warnings: u32,
    /// Time spent waiting for it.
    pub waited: Duration,
}

/// Why waiting for a task did not end in success.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task ended with an error.
    #[error(
        "PVE task {task_type} failed: {exit_status} (the end of its log is in the node's task list)"
    )]
    Failed {
        /// The task type (`qmclone`, ...), from the UPID.
        task_type: String,
        /// PVE's exit status (its error message), cut to [`MAX_TEXT_CHARS`] characters.
        exit_status: String,
        /// The last lines of its log (at most [`LOG_TAIL_LINES`], each cut to
        /// [`MAX_TEXT_CHARS`]); empty when the log could not be read.
        log_tail: Vec<String>,
    },
    /// Still running at the timeout. Nothing was sent to stop it: it may still succeed.
    #[error(
        "PVE task {upid} was still running after {}s; it was left running on node {} (look at it in the node's task list, or wait longer)",
        .waited.as_secs(),
        .upid.node()
    )]
    TimedOut {
        /// The task.
        upid: Upid,
        /// Time waited.
        waited: Duration,
    },
    /// Its status could not be read.
    #[error("cannot follow the PVE task: {0}")]
    Api(#[from] PveError),
}

impl TaskError {
    /// Stable label for metrics and reasons: `TaskFailed`, `TaskTimedOut`, or the API
    /// error's label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Failed { .. } => "TaskFailed",
            Self::TimedOut { .. } => "TaskTimedOut",
            Self::Api(e) => e.metric_label(),
        }
    }
}

/// `text` on one line (control characters as spaces), trimmed, at most `max` characters
/// (then an ellipsis).
fn cut(text: &str, max: usize) -> String {
    let clean: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut chars = clean.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// A poll error worth another poll: no answer, a gateway, or the node unreachable from the
/// endpoint for a moment.
fn tolerable(e: &PveError) -> bool {
    e.is_transport()
        || matches!(
            e,
            PveError::Status {
                status: 502..=504 | 595..=599,
                ..
            }
        )
}

/// What a status answer says.
enum Poll {
    Running,
    Stopped(Option<String>),
}

fn read_status(path: &str, status: &Value) -> Result<Poll, PveError> {
    match status["status"].as_str() {
        Some("running") => Ok(Poll::Running),
        Some("stopped") => Ok(Poll::Stopped(
            status["exitstatus"].as_str().map(str::to_string),
        )),
        Some(other) => Err(PveError::Decode {
            path: path.into(),
            message: format!("unknown task status {:?}", cut(other, 40)),
        }),
        None => Err(PveError::Decode {
            path: path.into(),
            message: "no task status in the answer".into(),
        }),
    }
}

/// Waits for the task `upid` to stop: `OK` or `WARNINGS: n` is [`TaskDone`], any other
/// exit status [`TaskError::Failed`] with the end of its log. Polls
/// `GET /nodes/{node}/tasks/{upid}/status` at once, then after `wait.first_poll`, doubling
/// up to `wait.max_poll`, until `wait.timeout` ([`TaskError::TimedOut`]; one last poll is
/// made at the deadline; nothing is sent to the task). Up to `wait.poll_errors` transient
/// poll errors in a row are tolerated; any other error is [`TaskError::Api`]. Only GETs are
/// sent. The time waited is recorded into `recorder` by task type and outcome.
pub async fn wait_task(
    api: &dyn PveApi,
    upid: &Upid,
    wait: &TaskWait,
    recorder: &TaskRecorder,
) -> Result<TaskDone, TaskError> {
    let started = Instant::now();
    let result = follow(api, upid, wait, started).await;
    let outcome = match &result {
        Ok(_) => SUCCESS,
        Err(e) => e.metric_label(),
    };
    recorder.observe(upid.task_type(), outcome, started.elapsed());
    result
}

async fn follow(
    api: &dyn PveApi,
    upid: &Upid,
    wait: &TaskWait,
    started: Instant,
) -> Result<TaskDone, TaskError> {
    let deadline = started + wait.timeout;
    let path = upid.status_path();
    let mut pause = wait.first_poll;
    let mut errors = 0u32;
    loop {
        match api.get(&path).await {
            Ok(status) => {
                errors = 0;
                if let Poll::Stopped(exit) = read_status(&path, &status)? {
                    return finish(api, upid, exit, started.elapsed()).await;
                }
            }
            Err(e) if tolerable(&e) && errors < wait.poll_errors && Instant::now() < deadline => {
                errors += 1;
                tracing::debug!(task = %upid, error = %e, errors, "PVE task status not read, polling again");
            }
            Err(e) => return Err(TaskError::Api(e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TaskError::TimedOut {
                upid: upid.clone(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(wait.max_poll.max(wait.first_poll));
    }
}

async fn finish(
    api: &dyn PveApi,
    upid: &Upid,
    exit: Option<String>,
    waited: Duration,
) -> Result<TaskDone, TaskError> {
    let exit = exit.unwrap_or_default();
    let exit = exit.trim();
    if exit == "OK" {
        return Ok(TaskDone {
            upid: upid.clone(),
            warnings: 0,
            waited,
        });
    }
    if let Some(n) = exit.strip_prefix("WARNINGS:") {
        return Ok(TaskDone {
            upid: upid.clone(),
            // PVE writes the count; an unreadable one still means "some".
            warnings: n.trim().parse().unwrap_or(1),
            waited,
        });
    }
    Err(TaskError::Failed {
        task_type: cut(upid.task_type(), MAX_FIELD_LEN),
        exit_status: if exit.is_empty() {
            "(no exit status)".into()
        } else {
            cut(exit, MAX_TEXT_CHARS)
        },
        log_tail: log_tail(api, upid).await,
    })
}

/// The last [`LOG_TAIL_LINES`] lines of the task's log, each cut; what could be read of it
/// when a page fails (the failure itself is what matters, not its log).
async fn log_tail(api: &dyn PveApi, upid: &Upid) -> Vec<String> {
    let mut tail: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL_LINES + 1);
    for page in 0..LOG_MAX_PAGES {
        let path = upid.log_path(page * LOG_PAGE_LINES, LOG_PAGE_LINES);
        let lines = match api.get(&path).await {
            Ok(Value::Array(lines)) => lines,
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(task = %upid, error = %e, "log of a failed PVE task not read");
                break;
            }
        };
        for line in &lines {
            if let Some(text) = line["t"].as_str() {
                tail.push_back(cut(text, MAX_TEXT_CHARS));
                if tail.len() > LOG_TAIL_LINES {
                    tail.pop_front();
                }
            }
        }
        if lines.len() < LOG_PAGE_LINES {
            break;
        }
    }
    tail.into()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use serde_json::json;

    use super::*;

    const FAKEPVE_UPID: &str =
        "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:9000:netbox-sync@pve!provision:";

    /// A PVE answering the task status from a script (the last answer repeats), and the
    /// log with `log` lines; every GET path and the time it came are recorded.
    struct ScriptedPve {
        status: Mutex<VecDeque<Result<Value, PveError>>>,
        log: Vec<String>,
        seen: Mutex<Vec<(Duration, String)>>,
        start: Instant,
    }

    impl ScriptedPve {
        fn new(status: Vec<Result<Value, PveError>>, log: Vec<String>) -> Self {
            Self {
                status: Mutex::new(status.into()),
                log,
                seen: Mutex::new(Vec::new()),
                start: Instant::now(),
            }
        }

        fn seen(&self) -> Vec<(Duration, String)> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl PveApi for ScriptedPve {
        fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
            self.seen
                .lock()
                .unwrap()
                .push((self.start.elapsed(), path.to_string()));
            let answer = if path.contains("/log?") {
                let q = path.split_once("?").unwrap().1;
                let arg = |name: &str| -> usize {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix(name))
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                let (start, limit) = (arg("start="), arg("limit="));
                Ok(Value::Array(
                    self.log
                        .iter()
                        .enumerate()
                        .skip(start)
                        .take(limit)
                        .map(|(n, t)| json!({"n": n + 1, "t": t}))
                        .collect(),
                ))
            } else {
                let mut script = self.status.lock().unwrap();
                if script.len() > 1 {
                    script.pop_front().unwrap()
                } else {
                    script.front().cloned().unwrap()
                }
            };
            Box::pin(async move { answer })
        }
    }

    fn running() -> Result<Value, PveError> {
        Ok(json!({"status": "running", "upid": FAKEPVE_UPID, "type": "qmclone"}))
    }

    fn stopped(exit: &str) -> Result<Value, PveError> {
        Ok(json!({"status": "stopped", "exitstatus": exit}))
    }

    fn upid() -> Upid {
        Upid::parse(FAKEPVE_UPID).unwrap()
    }

    fn quick() -> TaskWait {
        TaskWait {
            first_poll: Duration::from_millis(500),
            max_poll: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            poll_errors: 3,
        }
    }

    #[test]
    fn upids_are_parsed_and_validated() {
        let u = upid();
        assert_eq!(u.node(), "pve1");
        assert_eq!(u.task_type(), "qmclone");
        assert_eq!(u.id(), "9000");
        assert_eq!(u.user(), "netbox-sync@pve!provision");
        assert_eq!(u.starttime(), 0x6756_A1B2);
        assert_eq!(u.as_str(), FAKEPVE_UPID);
        assert_eq!(u.to_string(), FAKEPVE_UPID);
        // Real PVE: a 9-digit pstart, an empty id.
        let real =
            Upid::parse("UPID:pve-node-2:0002F1A4:0C3B9A71F:6757F0E1:vzdump::root@pam:").unwrap();
        assert_eq!((real.node(), real.id()), ("pve-node-2", ""));
        for bad in [
            "",
            "UPID:",
            "upid:pve1:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam",
            "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam::",
            "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:root@pam:",
            "UPID:pve_1:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "UPID:-pve1:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "UPID:../x:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "UPID:pve1.example.com:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "UPID:pve1:0000G3E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "UPID:pve1:000003E8:00001B58:6756A1B2::9000:root@pam:",
            "UPID:pve1:000003E8:00001B58:6756A1B2:qm clone:9000:root@pam:",
            "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:9000::",
            "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam\n:",
        ] {
            assert_eq!(Upid::parse(bad), None, "{bad:?}");
        }
        let long_node = format!(
            "UPID:{}:000003E8:00001B58:6756A1B2:qmclone:9000:root@pam:",
            "a".repeat(64)
        );
        assert_eq!(Upid::parse(&long_node), None);
        let long = format!(
            "UPID:pve1:000003E8:00001B58:6756A1B2:qmclone:9000:{}:",
            "u".repeat(600)
        );
        assert_eq!(Upid::parse(&long), None);
    }

    #[test]
    fn the_status_path_names_the_upid_node_and_encodes_the_upid() {
        assert_eq!(
            upid().status_path(),
            "/nodes/pve1/tasks/UPID%3Apve1%3A000003E8%3A00001B58%3A6756A1B2%3Aqmclone%3A9000%3Anetbox-sync%40pve%21provision%3A/status"
        );
        assert!(
            upid()
                .log_path(500, 500)
                .ends_with("/log?start=500&limit=500")
        );
    }

    #[test]
    fn answers_name_a_task_or_none() {
        assert_eq!(task_of(&Value::Null), Ok(None));
        assert_eq!(task_of(&json!(FAKEPVE_UPID)), Ok(Some(upid())));
        let err = task_of_at("/nodes/pve1/qemu/9000/clone", &json!("UPID:pve1:nope")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid answer on /nodes/pve1/qemu/9000/clone: not a task id (UPID): \"UPID:pve1:nope\""
        );
        let err = task_of(&json!({"upid": FAKEPVE_UPID})).unwrap_err();
        assert!(err.to_string().contains("got an object"), "{err}");
        let err = task_of(&json!("x".repeat(10_000))).unwrap_err();
        assert!(err.to_string().chars().count() < 200, "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn polls_at_once_then_backs_off_until_the_task_stops() {
        let pve = ScriptedPve::new(
            vec![
                running(),
                running(),
                running(),
                running(),
                running(),
                running(),
                stopped("OK"),
            ],
            vec![],
        );
        let done = wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
            .await
            .unwrap();
        assert_eq!(done.warnings, 0);
        assert_eq!(done.upid, upid());
        let times: Vec<f64> = pve.seen().iter().map(|(t, _)| t.as_secs_f64()).collect();
        assert_eq!(times, [0.0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5]);
        assert_eq!(done.waited, Duration::from_millis(17_500));
        assert!(pve.seen().iter().all(|(_, p)| p == &upid().status_path()));
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_are_a_success() {
        let pve = ScriptedPve::new(vec![stopped("WARNINGS: 2")], vec![]);
        let done = wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
            .await
            .unwrap();
        assert_eq!(done.warnings, 2);
        assert_eq!(pve.seen().len(), 1, "no log read for a success");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_task_carries_its_exit_status_and_the_end_of_its_log() {
        let mut log: Vec<String> = (1..=1234).map(|n| format!("progress line {n}")).collect();
        log.push(format!("detail {}\u{7}", "x".repeat(500)));
        log.push("TASK ERROR: clone failed: No space left on device".into());
        let exit = format!("clone failed: No space left on device {}", "y".repeat(400));
        let pve = ScriptedPve::new(vec![running(), stopped(&exit)], log);
        let err = wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
            .await
            .unwrap_err();
        let TaskError::Failed {
            task_type,
            exit_status,
            log_tail,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(task_type, "qmclone");
        assert!(exit_status.starts_with("clone failed: No space left on device yyy"));
        assert_eq!(exit_status.chars().count(), MAX_TEXT_CHARS + 1);
        assert_eq!(log_tail.len(), LOG_TAIL_LINES);
        assert_eq!(log_tail[0], "progress line 1217");
        assert_eq!(
            log_tail[LOG_TAIL_LINES - 1],
            "TASK ERROR: clone failed: No space left on device"
        );
        let detail = &log_tail[LOG_TAIL_LINES - 2];
        assert_eq!(detail.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(!detail.chars().any(char::is_control));
        // Three pages of 500 lines were read.
        assert_eq!(pve.seen().len(), 2 + 3);
        assert_eq!(err.metric_label(), "TaskFailed");
        assert!(
            err.to_string()
                .starts_with("PVE task qmclone failed: clone failed: No space left on device"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_still_running_at_the_timeout_is_left_running() {
        let pve = ScriptedPve::new(vec![running()], vec![]);
        let wait = TaskWait {
            timeout: Duration::from_secs(10),
            ..quick()
        };
        let err = wait_task(&pve, &upid(), &wait, &TaskRecorder::default())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            TaskError::TimedOut {
                upid: upid(),
                waited: Duration::from_secs(10)
            }
        );
        let times: Vec<f64> = pve.seen().iter().map(|(t, _)| t.as_secs_f64()).collect();
        assert_eq!(times, [0.0, 0.5, 1.5, 3.5, 7.5, 10.0]);
        assert_eq!(err.metric_label(), "TaskTimedOut");
        assert_eq!(
            err.to_string(),
            format!(
                "PVE task {FAKEPVE_UPID} was still running after 10s; it was left running on node pve1 (look at it in the node's task list, or wait longer)"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_transient_poll_errors_are_tolerated() {
        let lost = || {
            Err(PveError::Timeout {
                path: "/nodes/pve1/tasks/x/status".into(),
            })
        };
        let gateway = || {
            Err(PveError::Status {
                path: "/nodes/pve1/tasks/x/status".into(),
                status: 595,
                message: "No route to host".into(),
            })
        };
        let pve = ScriptedPve::new(
            vec![
                lost(),
                gateway(),
                lost(),
                running(),
                lost(),
                lost(),
                stopped("OK"),
            ],
            vec![],
        );
        assert!(
            wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
                .await
                .is_ok()
        );
        // Four in a row are too many.
        let pve = ScriptedPve::new(vec![lost(), lost(), lost(), lost(), stopped("OK")], vec![]);
        let err = wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, TaskError::Api(PveError::Timeout { .. })),
            "{err:?}"
        );
        assert_eq!(err.metric_label(), "Timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn other_poll_errors_end_the_wait_at_once() {
        let unknown = PveError::Status {
            path: "/nodes/pve2/tasks/x/status".into(),
            status: 500,
            message: "unable to parse worker upid 'x'".into(),
        };
        let pve = ScriptedPve::new(vec![Err(unknown.clone()), stopped("OK")], vec![]);
        let err = wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
            .await
            .unwrap_err();
        assert_eq!(err, TaskError::Api(unknown));
        assert_eq!(pve.seen().len(), 1);
        assert!(
            err.to_string()
                .starts_with("cannot follow the PVE task: PVE answered 500")
        );
        let pve = ScriptedPve::new(vec![Ok(json!({"status": "exploded"}))], vec![]);
        let err = wait_task(&pve, &upid(), &quick(), &TaskRecorder::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown task status"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_is_recorded_by_task_type_and_outcome() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::pve::metrics::PveMetrics::register(&mut registry);
        let recorder = metrics.task_recorder("infra/lab");
        let pve = ScriptedPve::new(vec![running(), stopped("OK")], vec![]);
        wait_task(&pve, &upid(), &quick(), &recorder).await.unwrap();
        let pve = ScriptedPve::new(vec![stopped("VM 101 already running")], vec![]);
        let start =
            Upid::parse("UPID:pve2:000003E9:00001B5F:6756A1B3:qmstart:101:u@pve!t:").unwrap();
        wait_task(&pve, &start, &quick(), &recorder)
            .await
            .unwrap_err();
        let text = crate::metrics::render(&registry);
        for line in [
            r#"pve_task_duration_seconds_count{cluster="infra/lab",type="qmclone",outcome="success"} 1"#,
            r#"pve_task_duration_seconds_sum{cluster="infra/lab",type="qmclone",outcome="success"} 0.5"#,
            r#"pve_task_duration_seconds_count{cluster="infra/lab",type="qmstart",outcome="TaskFailed"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("pve2") && !text.contains("101"), "{text}");
    }
}
