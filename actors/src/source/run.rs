//! The task that polls one source's event loop and forwards its PUBLISHes: one path for both
//! protocol versions, on [`SourceEvent`]s and [`MqttClient`] requests. Between polls it moves
//! held acks on, reconnects for leaks, and pauses reading while `mqtt.max_in_flight` of its
//! messages are not durable yet.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};

use super::events::{EventLoop, PollError, SourceEvent};
use super::SourceControl;
use crate::link::{MqttClient, MqttLink, ReplyRoute};
use crate::metrics as m;
use crate::router::RawPublish;

/// The task that polls one source's event loop and forwards its PUBLISHes.
pub(super) struct SourceLoop {
    /// Subscription changes and the goodbye go out through it.
    pub(super) client: MqttClient,
    /// Either protocol's event loop.
    pub(super) eventloop: EventLoop,
    /// Ack epochs and tokens.
    pub(super) link: MqttLink,
    /// Given to every message: where its replies and acks go.
    pub(super) reply_route: Arc<ReplyRoute>,
    /// True while connected.
    pub(super) connected: Arc<AtomicBool>,
    /// PUBLISH packets received.
    pub(super) received: Arc<AtomicU64>,
    /// The latest CONNACK, as JSON.
    pub(super) broker_info: watch::Sender<Option<serde_json::Value>>,
    /// Run, drain or stop.
    pub(super) control: watch::Receiver<SourceControl>,
    /// The router's (or the dispatcher's) bounded queue.
    pub(super) out: mpsc::Sender<RawPublish>,
    /// The filters held now.
    pub(super) topics: Vec<String>,
    /// Filters a resumed session may still hold, to unsubscribe on the next CONNACK.
    pub(super) forget: Vec<String>,
    /// The filters wanted, changed by the source manager.
    pub(super) filters: watch::Receiver<Vec<String>>,
    /// QoS of the subscriptions.
    pub(super) qos: QoS,
    /// First reconnect delay.
    pub(super) backoff_min: Duration,
    /// Longest reconnect delay.
    pub(super) backoff_max: Duration,
    /// Leaked acks that make the source reconnect (the broker then redelivers them).
    pub(super) leak_max_count: u64,
    /// Age of the oldest leaked ack that makes the source reconnect.
    pub(super) leak_max_age: Duration,
    /// How long a QoS 1 message may wait for room in a full queue: half the keep-alive, so
    /// that the loop polls (and pings) in time and the broker does not drop the connection.
    pub(super) full_queue_wait: Duration,
    /// What this source may have queued towards the router.
    pub(super) budget: crate::queue_budget::QueueBudget,
    /// Messages received and not yet durable at which the loop stops reading (0: no bound).
    pub(super) max_in_flight: i64,
    /// After a pause that ran out, no new one before this: the loop polls, so it pings.
    pub(super) pause_free_until: tokio::time::Instant,
}

impl SourceLoop {
    /// Moves the live connection to `wanted`: subscribes what is new, unsubscribes what went.
    /// While disconnected only the list changes; the next CONNACK subscribes it all.
    fn resubscribe(&mut self, wanted: Vec<String>) {
        if self.connected.load(Ordering::Acquire) {
            let added: Vec<String> = wanted
                .iter()
                .filter(|f| !self.topics.contains(f))
                .cloned()
                .collect();
            if let Err(e) = self.client.subscribe(&added, self.qos) {
                tracing::error!(error = %e, "could not queue subscriptions");
            }
            for gone in self.topics.iter().filter(|f| !wanted.contains(f)) {
                if let Err(e) = self.client.unsubscribe(gone.clone()) {
                    tracing::error!(error = %e, filter = %gone, "could not queue an unsubscribe");
                }
            }
        } else {
            // The broker may resume a session holding these: unsubscribe them on reconnect.
            for gone in self.topics.iter().filter(|f| !wanted.contains(f)) {
                if !self.forget.contains(gone) {
                    self.forget.push(gone.clone());
                }
            }
        }
        tracing::info!(filters = ?wanted, "MQTT subscriptions changed");
        self.topics = wanted;
    }

    /// Polls the connection until told to stop: forwards PUBLISHes, (re)subscribes on each
    /// CONNACK, follows filter changes, and backs off after a lost connection; then says goodbye.
    pub(super) async fn run(mut self) {
        let mut backoff = self.backoff_min;
        let bytes_counter = metrics::counter!(m::MQTT_BYTES_TOTAL);
        let mut max_unacked = 0i64;
        loop {
            let state = *self.control.borrow();
            if state == SourceControl::Stop {
                break;
            }
            // Between polls, never racing one (rumqttc's poll is not cancel-safe while it
            // writes): every event, keep-alive pings included, gives the checks a turn. Acks
            // held for a full request queue go first; each request the event loop takes is an
            // event, so they drain as fast as it writes.
            self.link.flush_held();
            if self
                .link
                .leaks_exceed(self.leak_max_count, self.leak_max_age)
            {
                self.reconnect_for_leaks();
            }
            self.wait_for_durable().await;
            let ev = tokio::select! {
                ev = self.eventloop.poll() => ev,
                changed = self.control.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
                Ok(()) = self.filters.changed() => {
                    let wanted = self.filters.borrow_and_update().clone();
                    self.resubscribe(wanted);
                    continue;
                }
            };
            match ev {
                Ok(SourceEvent::Publish {
                    topic,
                    payload,
                    qos,
                    pkid,
                }) => {
                    if state != SourceControl::Run {
                        continue;
                    }
                    bytes_counter.increment(payload.len() as u64);
                    let flow = self.forward(topic, payload, qos, pkid, &mut max_unacked);
                    if flow.await.is_break() {
                        break;
                    }
                }
                Ok(SourceEvent::ConnAck {
                    session_present,
                    info,
                }) => {
                    backoff = self.backoff_min;
                    self.on_connected(session_present, info);
                }
                Ok(SourceEvent::SubAck { refused, codes }) if refused > 0 => {
                    tracing::error!(refused, codes = %codes, "the broker refused subscriptions (check its ACLs for this user)");
                }
                Ok(SourceEvent::Disconnect(reason)) => {
                    tracing::warn!(reason = %reason, "broker sent DISCONNECT");
                    self.link.next_epoch();
                }
                Ok(_) => {}
                Err(e) => {
                    self.on_connection_error(&e, backoff).await;
                    backoff = (backoff * 2).min(self.backoff_max);
                }
            }
        }
        self.say_goodbye().await;
    }

    /// While `max_in_flight` messages of this source are in the pipeline and not durable yet,
    /// reads nothing (the broker keeps the rest); settled tokens wake it. A pause lasts at most
    /// `full_queue_wait`; one that runs out is followed by as long without pauses, so that the
    /// event loop still gets to ping (and to write acks) when nothing becomes durable, e.g. with
    /// the database down. A stop ends it.
    async fn wait_for_durable(&mut self) {
        let max = self.max_in_flight;
        // Draining or stopping reads nothing into the pipeline: no pause (acks keep flowing).
        if max <= 0 || self.link.in_pipeline() < max || *self.control.borrow() != SourceControl::Run
        {
            return;
        }
        let now = tokio::time::Instant::now();
        if now < self.pause_free_until {
            return;
        }
        metrics::counter!(m::MQTT_READ_PAUSES_TOTAL).increment(1);
        let deadline = now + self.full_queue_wait;
        // A clone: the main loop's receiver still sees every change.
        let mut control = self.control.clone();
        let stopped = async move {
            while control.changed().await.is_ok() {
                if *control.borrow() == SourceControl::Stop {
                    return;
                }
            }
        };
        let ran_out = tokio::select! {
            () = self.link.pipeline_below(max) => false,
            () = stopped => false,
            () = tokio::time::sleep_until(deadline) => true,
        };
        if ran_out {
            self.pause_free_until = deadline + self.full_queue_wait;
        }
    }

    /// Moves held acks to the broker for at most `budget`. False when the connection was lost
    /// meanwhile: the epoch has moved then (no ack of it may reach a reconnected session).
    async fn flush_before_goodbye(&mut self, budget: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + budget;
        while self.link.held() > 0 && tokio::time::Instant::now() < deadline {
            self.link.flush_held();
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    self.link.next_epoch();
                    self.eventloop.clean();
                    return false;
                }
                Err(_) => break,
            }
        }
        true
    }

    /// Counts a PUBLISH, gives it an ack token (QoS 1) and hands it to the router. A full
    /// queue drops a QoS 0 message and waits for room for a QoS 1 one, up to
    /// `full_queue_wait`; past it the message is left unacknowledged (a leak: the broker
    /// redelivers it after the leak reconnect) so that the connection stays alive. Breaks
    /// when the router is gone.
    async fn forward(
        &mut self,
        topic: Bytes,
        payload: Bytes,
        qos: QoS,
        pkid: u16,
        max_unacked: &mut i64,
    ) -> ControlFlow<()> {
        self.received.fetch_add(1, Ordering::Relaxed);
        let received = std::time::Instant::now();
        let ack = (qos != QoS::AtMostOnce).then(|| {
            let n = self.link.received();
            if n > *max_unacked {
                *max_unacked = n;
                tracing::debug!(unacked = n, "new high of unacknowledged QoS 1 messages");
            }
            self.link.token(pkid)
        });
        let deadline = tokio::time::Instant::now() + self.full_queue_wait;
        let charge = match self.budget.try_charge(payload.len()) {
            Some(c) => c,
            None if ack.is_none() => {
                metrics::counter!(m::MQTT_DROPPED_TOTAL).increment(1);
                return ControlFlow::Continue(());
            }
            None => {
                match tokio::time::timeout_at(deadline, self.budget.charge(payload.len())).await {
                    Ok(c) => c,
                    Err(_) => {
                        metrics::counter!(m::MQTT_DROPPED_TOTAL).increment(1);
                        tracing::warn!(queued_bytes = self.budget.used(), "source queue budget full for half the keep-alive: a QoS 1 message is left for the broker to redeliver");
                        return ControlFlow::Continue(());
                    }
                }
            }
        };
        let msg = RawPublish {
            topic,
            payload,
            ack,
            reply_route: self.reply_route.clone(),
            charge: Some(charge),
            received,
        };
        match self.out.try_send(msg) {
            Ok(()) => ControlFlow::Continue(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if msg.ack.is_none() {
                    metrics::counter!(m::MQTT_DROPPED_TOTAL).increment(1);
                    return ControlFlow::Continue(());
                }
                match tokio::time::timeout_at(deadline, self.out.send(msg)).await {
                    Ok(Ok(())) => ControlFlow::Continue(()),
                    Ok(Err(_)) => ControlFlow::Break(()),
                    Err(_) => {
                        metrics::counter!(m::MQTT_DROPPED_TOTAL).increment(1);
                        tracing::warn!("router queue full for half the keep-alive: a QoS 1 message is left for the broker to redeliver");
                        ControlFlow::Continue(())
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ControlFlow::Break(()),
        }
    }

    /// A CONNACK: records the broker's answer, starts a new ack epoch, drops filters a resumed
    /// session still holds but nobody wants, and subscribes the wanted ones.
    fn on_connected(&mut self, session_present: bool, info: serde_json::Value) {
        let _ = self.broker_info.send(Some(info));
        let epoch = self.link.next_epoch();
        self.connected.store(true, Ordering::Release);
        // One series per source, labelled with its name: a product id, `default` (the [mqtt]
        // file source) or `admin` (the command publisher). The publisher is labelled too: while
        // it is down, commands to devices with no live actor cannot go out.
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(1.0);
        tracing::info!(epoch, session_present, "MQTT connected");
        if session_present {
            self.unsubscribe_forgotten();
        }
        if let Err(e) = self.client.subscribe(&self.topics, self.qos) {
            tracing::error!(error = %e, "could not queue subscriptions");
        }
    }

    /// Unsubscribes the filters dropped while disconnected that a resumed session still holds.
    fn unsubscribe_forgotten(&mut self) {
        for old in std::mem::take(&mut self.forget) {
            if !self.topics.contains(&old) {
                tracing::info!(filter = %old, "unsubscribing a filter left in the resumed session");
                if let Err(e) = self.client.unsubscribe(old) {
                    tracing::error!(error = %e, "could not queue an unsubscribe");
                }
            }
        }
    }

    /// Leaked acks passed their bound: drops the connection (the next poll reconnects, resuming
    /// the session), so that the broker redelivers the packets nobody will acknowledge.
    fn reconnect_for_leaks(&mut self) {
        let (n, age) = self.link.leaks();
        tracing::warn!(
            leaked = n,
            oldest_ms = age.map(|a| a.as_millis() as u64),
            "reconnecting so that the broker redelivers QoS 1 messages left unacknowledged"
        );
        metrics::counter!(m::MQTT_LEAK_RECONNECTS_TOTAL).increment(1);
        self.link.next_epoch();
        self.eventloop.clean();
        self.connected.store(false, Ordering::Release);
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(0.0);
    }

    /// A failed connect or a lost connection: marks it down, counts the reconnect and waits
    /// `backoff` (or until the control changes). The ack epoch moves now, not at the next
    /// CONNACK, and acks that slipped into the request channel since the connection broke are
    /// purged, so none reaches the next session under a reused packet id.
    async fn on_connection_error(&mut self, e: &PollError, backoff: Duration) {
        self.link.next_epoch();
        self.eventloop.clean();
        if self.connected.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, "MQTT connection lost");
        } else {
            tracing::debug!(error = %e, "MQTT connect failed");
        }
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(0.0);
        metrics::counter!(m::MQTT_RECONNECTS_TOTAL).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = self.control.changed() => {}
        }
    }

    /// Gives queued and held acks a moment (up to 1 s) to reach the broker, then disconnects
    /// (up to 1 s more). Acks that come later belong to a gone connection: counted as stale.
    async fn say_goodbye(&mut self) {
        if self.flush_before_goodbye(Duration::from_secs(1)).await {
            let _ = self.client.disconnect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                    Ok(Ok(SourceEvent::DisconnectSent)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
        self.link.next_epoch();
        self.connected.store(false, Ordering::Release);
        // Stopped (for good, or before a restart under the same name): 0. The metrics crate
        // cannot remove one series, so a removed or disabled source keeps reporting 0 until the
        // engine restarts (docs/metrics.md, FleetflowSourceDisconnected).
        metrics::gauge!(m::MQTT_CONNECTED, "source" => self.reply_route.source_name.to_string())
            .set(0.0);
        tracing::info!("MQTT source stopped");
    }
}
