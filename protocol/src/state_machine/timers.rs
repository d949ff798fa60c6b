//! The inactivity timers: NACK rounds for idle captures, expiry of early chunks, the next
//! deadline, and giving held bytes back to the budgets.

use super::*;

impl DeviceCore {
    /// Runs the inactivity timeouts. Returns the next instant at which a tick is needed.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) -> Option<Instant> {
        let (failed, waited) = self.nack_idle_captures(now, out);
        for id in waited {
            self.complete(&id, now, out);
        }
        for id in failed {
            metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "timeout").increment(1);
            let Some(c) = self.captures.get(&id) else {
                continue;
            };
            let (rounds, format) = (c.nack_rounds, c.format);
            let missing = match &c.phase {
                Phase::Assembling(a) => a.layout().total_chunks - a.received_count(),
                Phase::Storing => 0,
            };
            if format == WireFormat::Gxp && self.gxp.resend_whole_image_after_retries {
                let cmd = crate::gxp::GxpCommand::SendImage(id.clone());
                out.push(Effect::Command {
                    payload: cmd.payload(self.id.as_str()),
                    kind: "command",
                });
            }
            let message = format!(
                "assembly timed out after {rounds} NACK rounds with {missing} chunks missing"
            );
            let details = json!({"capture_id": id, "missing_chunks": missing});
            self.fail_capture(&id, ErrorCode::AssemblyTimeout, message, details, now, out);
        }
        self.expire_early(now, out);
        self.errors.prune(now);
        self.next_deadline()
    }

    /// Sends a missing-chunks NACK, in each capture's format, for every capture idle past the
    /// timeout; returns those whose rounds are used up, and the complete GXP images that
    /// waited for their metadata long enough (stored without it).
    pub(super) fn nack_idle_captures(
        &mut self,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> (Vec<String>, Vec<String>) {
        let timeout = self.cfg.timeout();
        let max_rounds = self.cfg.max_nack_rounds;
        let (mut failed, mut waited) = (Vec::new(), Vec::new());
        for (id, c) in self.captures.iter_mut() {
            let Phase::Assembling(asm) = &c.phase else {
                continue;
            };
            if now.duration_since(c.last_activity) < timeout {
                continue;
            }
            if asm.is_complete() {
                if let Some(g) = c.gxp.as_mut() {
                    g.meta_seen = true;
                }
                waited.push(id.clone());
                continue;
            }
            if c.nack_rounds >= max_rounds {
                failed.push(id.clone());
                continue;
            }
            c.nack_rounds += 1;
            c.last_activity = now;
            let ranges = asm.missing_ranges();
            let effect = match c.format {
                WireFormat::V1 => Effect::Publish {
                    payload: nack::missing(id, &ranges, c.nack_rounds),
                    kind: "nack",
                },
                WireFormat::Gxp => {
                    let g = &self.gxp;
                    let payload = crate::gxp::nack(self.id.as_str(), id, &ranges, g.nack_max_bytes);
                    match g.nack_topic {
                        NackTopic::Ack => Effect::Publish {
                            payload,
                            kind: "nack",
                        },
                        NackTopic::Cmd => Effect::Command {
                            payload,
                            kind: "nack",
                        },
                    }
                }
            };
            out.push(effect);
            metrics::counter!(m::NACKS_TOTAL, "reason" => "missing_chunks").increment(1);
        }
        (failed, waited)
    }

    /// Drops chunks whose metadata never came (2208), asking v1 devices for the metadata.
    pub(super) fn expire_early(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let timeout = self.cfg.timeout();
        let stale: Vec<String> = self
            .early
            .iter()
            .filter(|(_, e)| now.duration_since(e.first_at) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for id in stale {
            let Some(e) = self.early.remove(&id) else {
                continue;
            };
            self.release(e.bytes);
            self.gxp_pending.remove(&id);
            if let Some(r) = self.record(
                ErrorCode::UnknownCapture,
                format!(
                    "{} chunks for capture {id} arrived without metadata",
                    e.chunks.len()
                ),
                json!({"capture_id": id}),
                now,
            ) {
                out.push(Effect::Row(Row::Error(r), None));
            }
            match e.format {
                WireFormat::V1 => out.push(Effect::Publish {
                    payload: nack::need_metadata(&id),
                    kind: "nack",
                }),
                // The firmware has no "need metadata" NACK; its send_image command makes it send
                // the stored image again, metadata first (after a crash lost the assembly).
                WireFormat::Gxp => out.push(Effect::Command {
                    payload: crate::gxp::GxpCommand::SendImage(id.clone())
                        .payload(self.id.as_str()),
                    kind: "nack",
                }),
            }
            metrics::counter!(m::NACKS_TOTAL, "reason" => "need_metadata").increment(1);
        }
        // GXP metadata that never got its sizes, with no chunk waiting either.
        let early = &self.early;
        self.gxp_pending
            .retain(|id, p| early.contains_key(id) || now.duration_since(p.since) < timeout);
    }

    /// The earliest instant a tick has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.cfg.timeout();
        let a = self
            .captures
            .values()
            .filter(|c| matches!(c.phase, Phase::Assembling(_)))
            .map(|c| c.last_activity + timeout);
        let e = self.early.values().map(|e| e.first_at + timeout);
        let p = self.gxp_pending.values().map(|p| p.since + timeout);
        a.chain(e).chain(p).min()
    }

    pub(super) fn release(&mut self, n: usize) {
        self.held -= n.min(self.held);
        self.budget.release(n);
    }
}
