//! Append sessions: one long-lived streaming request per stream that carries appends to S2
//! in the order they were submitted and brings their acks back in the same order.
//!
//! Why: unary appends sent concurrently travel on separate connections (HTTP/1.1) or separate
//! HTTP/2 streams and can reach S2 out of order; a writer that chains them by
//! `match_seq_num` then pays a 412 and a resend for every overtaking append. A session is
//! S2's own answer (`Content-Type: s2s/proto` over HTTP/2, what S2's SDK producer uses):
//! inputs are applied in order, and after a failure the session ends, so nothing behind a
//! failed append lands.
//!
//! Each session is a task on the runtime of its first caller. It opens the request on the
//! first append, sends every submitted frame as it arrives, matches acks to appends in order,
//! and ends when S2 ends it, on the first error (every unanswered append gets an error that
//! says whether it may have been applied), when the oldest unanswered append waits longer
//! than the request timeout, or after [`IDLE`] without appends. The next append after an end
//! opens a new session.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{from_response, S2Error};
use crate::proto::{next_frame, Frame};
use crate::session_http::{self, ResponseBody, SessionRequest, Transport};
use crate::types::AppendAck;

/// A session with no append for this long ends (its stream may have gone quiet for good).
pub const IDLE: Duration = Duration::from_secs(30);

/// The reply to one submitted append.
pub(crate) type Reply = oneshot::Receiver<Result<AppendAck, S2Error>>;

/// One append handed to a session.
struct Submit {
    frame: Bytes,
    expected: Option<u64>,
    reply: oneshot::Sender<Result<AppendAck, S2Error>>,
}

/// How sessions connect; shared by every session of one client.
pub(crate) struct SessionTarget {
    /// Streaming requests need HTTP/2 and no whole-request timeout.
    pub transport: Transport,
    /// Time an append may wait for its ack before the session is given up.
    pub ack_timeout: Duration,
}

/// The open sessions of one client, by (basin, stream).
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<(String, String), mpsc::UnboundedSender<Submit>>>,
}

impl Sessions {
    /// Queues `frame` on the session of (basin, stream), opening one if needed. Appends
    /// submitted one after another reach S2 in that order while they share a session.
    pub fn submit(
        self: &Arc<Self>,
        target: &Arc<SessionTarget>,
        request: SessionRequest,
        key: (String, String),
        frame: Bytes,
        expected: Option<u64>,
    ) -> Reply {
        let (reply, rx) = oneshot::channel();
        let mut submit = Submit {
            frame,
            expected,
            reply,
        };
        let mut open = self.open.lock().expect("sessions lock");
        if let Some(tx) = open.get(&key) {
            match tx.send(submit) {
                Ok(()) => return rx,
                Err(back) => submit = back.0,
            }
        }
        let (tx, inputs) = mpsc::unbounded_channel();
        tx.send(submit).expect("receiver is alive");
        open.insert(key.clone(), tx);
        drop(open);
        let context = format!("append session on stream `{}` in basin `{}`", key.1, key.0);
        let (sessions, target) = (self.clone(), target.clone());
        tokio::spawn(async move {
            let mut session = Session {
                context,
                unacked: VecDeque::new(),
                inputs,
                ack_timeout: target.ack_timeout,
            };
            session.run(&target.transport, request).await;
            // Whatever was queued behind the end was never sent.
            session.inputs.close();
            while let Ok(s) = session.inputs.try_recv() {
                let _ = s.reply.send(Err(session.ended("the session ended", false)));
            }
            let mut open = sessions.open.lock().expect("sessions lock");
            if open.get(&key).is_some_and(|tx| tx.is_closed()) {
                open.remove(&key);
            }
        });
        rx
    }

    /// Number of sessions currently open (for tests and metrics).
    pub fn len(&self) -> usize {
        let open = self.open.lock().expect("sessions lock");
        open.values().filter(|tx| !tx.is_closed()).count()
    }
}

struct Pending {
    expected: Option<u64>,
    reply: oneshot::Sender<Result<AppendAck, S2Error>>,
    sent: Instant,
}

struct Session {
    context: String,
    unacked: VecDeque<Pending>,
    inputs: mpsc::UnboundedReceiver<Submit>,
    ack_timeout: Duration,
}

impl Session {
    fn ended(&self, reason: &str, may_have_applied: bool) -> S2Error {
        S2Error::SessionEnded {
            context: self.context.clone(),
            reason: reason.to_string(),
            may_have_applied,
        }
    }

    /// Fails every unanswered append: the oldest with `first`, the rest with "an earlier
    /// append failed", which may have been applied unless `rest_applied` says otherwise
    /// (S2 refused the whole request, or never got it).
    fn fail_all(&mut self, first: S2Error, rest_applied: bool) {
        let rest = format!("an earlier append in the session failed: {first}");
        if let Some(p) = self.unacked.pop_front() {
            let _ = p.reply.send(Err(first));
        }
        while let Some(p) = self.unacked.pop_front() {
            let _ = p.reply.send(Err(self.ended(&rest, rest_applied)));
        }
    }

    fn accept(&mut self, s: Submit, body: &mpsc::UnboundedSender<Bytes>) {
        // The body channel lives as long as the request; a closed one ends the loop below.
        let _ = body.send(s.frame);
        self.unacked.push_back(Pending {
            expected: s.expected,
            reply: s.reply,
            sent: Instant::now(),
        });
    }

    /// Takes no more appends (the next ones open a new session) but sends those already
    /// queued: they were submitted to this session, so they go out on it.
    fn stop_taking(&mut self, body: &mpsc::UnboundedSender<Bytes>) {
        self.inputs.close();
        while let Ok(s) = self.inputs.try_recv() {
            self.accept(s, body);
        }
    }

    async fn run(&mut self, transport: &Transport, request: SessionRequest) {
        let (body, frames) = mpsc::unbounded_channel();
        let context = self.context.clone();
        let send = session_http::open(transport, &request, frames, &context);
        tokio::pin!(send);
        let mut response: Option<ResponseBody> = None;
        let mut buf = BytesMut::new();
        let mut last_activity = Instant::now();
        let mut draining = false;
        loop {
            let deadline = match self.unacked.front() {
                Some(p) => p.sent + self.ack_timeout,
                None if draining => return,
                None => last_activity + IDLE,
            };
            tokio::select! {
                biased;
                s = self.inputs.recv(), if !draining => match s {
                    Some(s) => {
                        self.accept(s, &body);
                        last_activity = Instant::now();
                    }
                    None => draining = true,
                },
                r = &mut send, if response.is_none() => match r {
                    Ok(opened) if (200..300).contains(&opened.status) => response = Some(opened.body),
                    Ok(opened) => {
                        let text = opened.body.text().await;
                        let expected = self.unacked.front().and_then(|p| p.expected);
                        let e = from_response(self.context.clone(), opened.status, opened.retry_after, &text, expected);
                        // S2 refused the request itself: none of its appends was read.
                        self.fail_all(e, false);
                        return;
                    }
                    Err(e) => {
                        let applied = e.may_have_applied();
                        self.fail_all(e, applied);
                        return;
                    }
                },
                chunk = async { response.as_mut().expect("guarded").chunk(&context).await }, if response.is_some() => match chunk {
                    Ok(Some(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        last_activity = Instant::now();
                        loop {
                            match next_frame(&mut buf) {
                                Ok(None) => break,
                                Ok(Some(Frame::Ack { ack, reconnect_advised })) => {
                                    let Some(p) = self.unacked.pop_front() else {
                                        tracing::error!(context = %self.context, "S2 acknowledged an append that was not sent");
                                        return;
                                    };
                                    let _ = p.reply.send(Ok(ack));
                                    if reconnect_advised && !draining {
                                        // S2 is about to end this session: new appends go to a
                                        // new one, this one finishes what it sent.
                                        self.stop_taking(&body);
                                        draining = true;
                                    }
                                }
                                Ok(Some(Frame::Terminal { status, body: text })) => {
                                    let expected = self.unacked.front().and_then(|p| p.expected);
                                    let e = from_response(self.context.clone(), status, None, &text, expected);
                                    self.fail_all(e, true);
                                    return;
                                }
                                Err(e) => {
                                    let e = self.ended(&format!("unreadable frame from S2: {}", e.0), true);
                                    self.fail_all(e, true);
                                    return;
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        if !self.unacked.is_empty() {
                            let e = self.ended("S2 ended the session before acknowledging", true);
                            self.fail_all(e, true);
                        }
                        return;
                    }
                    Err(e) => {
                        self.fail_all(e, true);
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if self.unacked.is_empty() {
                        // Idle: take no more, but send what raced with the decision.
                        self.stop_taking(&body);
                        draining = true;
                        continue;
                    }
                    let e = self.ended(&format!("no ack within {:?}", self.ack_timeout), true);
                    self.fail_all(e, true);
                    return;
                }
            }
        }
    }
}
