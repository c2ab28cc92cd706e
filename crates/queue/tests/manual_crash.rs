//! Manual acknowledge / discard / redeliver are on disk when they return (issue 14 item 5).
//!
//! Before the fix they answered before the change was flushed, so a crash within the flush
//! interval brought an acknowledged or discarded message back (and a redelivered one back into
//! its backoff). This test binary re-runs itself as a child that opens the queue with a long
//! commit delay, does one action, prints a line once it returned, and is SIGKILLed as soon as
//! the parent has read it; once per action. The reopened queue must show all three.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use s2sink_core::{ErrorClass, LastError};
use s2sink_queue::{MessageId, NewMessage, Queue, QueueOptions};

const CHILD_ENV: &str = "S2SINK_QUEUE_MANUAL_CHILD";
const SINK: &str = "manual";
/// Far longer than the child lives after its last action: an action that does not wait for
/// its flush is not on disk when the kill lands.
const COMMIT_DELAY: Duration = Duration::from_millis(1500);

/// The child's body; a no-op in an ordinary test run. Takes the directory, the action and the
/// message id from the environment.
#[test]
fn manual_actions_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (dir, action) = (parts.next().unwrap(), parts.next().unwrap());
    let id = MessageId(parts.next().unwrap().parse().unwrap());
    let queue = Queue::open_with(
        dir,
        QueueOptions {
            commit_delay: COMMIT_DELAY,
            ..QueueOptions::default()
        },
    )
    .expect("child opens the queue");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let done = match action {
            "acknowledge" => queue.acknowledge(SINK, id).await,
            "discard" => queue.discard(SINK, id).await,
            "redeliver" => queue.redeliver(SINK, id).await,
            other => panic!("unknown action {other}"),
        };
        assert!(done.unwrap(), "{action}: message {id} not found");
        // libtest may have left "test manual_actions_child ... " without a newline.
        let mut out = std::io::stdout().lock();
        out.write_all(b"\n@DONE\n").unwrap();
        out.flush().unwrap();
        // Wait for the kill.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// Runs the child doing `action` on `id` and SIGKILLs it as soon as the action returned.
fn act_then_kill(dir: &std::path::Path, action: &str, id: MessageId) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "manual_actions_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{action}|{}", dir.display(), id.0))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut done = false;
    while out.read_line(&mut line).unwrap() > 0 {
        if line.trim() == "@DONE" {
            child.kill().unwrap(); // SIGKILL, at once
            done = true;
            break;
        }
        line.clear();
    }
    child.wait().unwrap();
    assert!(done, "the child did not finish {action}");
}

/// A SIGKILL right after acknowledge, discard and redeliver returned loses none of them.
#[test]
fn manual_actions_survive_a_sigkill_right_after_they_return() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let far = 4_000_000_000_000; // year 2096: backing off for good unless redelivered
    let ids: Vec<MessageId> = rt.block_on(async {
        let queue = Queue::open(dir.path()).unwrap();
        let done = queue
            .enqueue(
                SINK,
                (0..3)
                    .map(|i| NewMessage::new(None, format!("m{i}").into_bytes()))
                    .collect(),
            )
            .await
            .unwrap();
        let ids: Vec<MessageId> = done.iter().map(|e| e.id).collect();
        let error = LastError {
            class: ErrorClass::Retryable,
            status: Some(503),
            code: None,
            message: "unavailable".into(),
            body: None,
            at_ms: 1,
        };
        queue.fail(SINK, ids[2], error, far).unwrap();
        queue.flush().await.unwrap();
        ids
    });
    // Each action is the last thing its child does before the kill.
    act_then_kill(dir.path(), "acknowledge", ids[0]);
    act_then_kill(dir.path(), "discard", ids[1]);
    act_then_kill(dir.path(), "redeliver", ids[2]);

    let queue = Queue::open(dir.path()).unwrap();
    let mut lost = Vec::new();
    if queue.get(SINK, ids[0]).unwrap().is_some() {
        lost.push("acknowledged message is back");
    }
    if queue.get(SINK, ids[1]).unwrap().is_some() {
        lost.push("discarded message is back");
    }
    if !queue
        .discarded(SINK, 10)
        .unwrap()
        .iter()
        .any(|d| d.message.id == ids[1])
    {
        lost.push("discarded message is not in the discarded list");
    }
    let redelivered = queue
        .get(SINK, ids[2])
        .unwrap()
        .expect("redelivered message");
    if redelivered.state.not_visible_until == Some(far) {
        lost.push("redelivered message is back in its backoff");
    }
    assert!(lost.is_empty(), "after SIGKILL: {lost:?}");
}
