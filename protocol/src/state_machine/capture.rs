//! Captures in either format: metadata, chunks (including those that arrive before their
//! metadata), completion with its size and JPEG checks, failure, and the store outcome.

use super::*;

impl DeviceCore {
    /// Capture metadata and chunks, in either format.
    pub(super) fn on_capture_msg(
        &mut self,
        msg: DeviceMsg,
        ack: Option<MessageAck>,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let mut ack = ack;
        if !matches!(msg, DeviceMsg::GxpMeta(_)) {
            if let Some(a) = ack.take() {
                out.push(Effect::Ack(a));
            }
        }
        let counter = match &msg {
            DeviceMsg::CaptureMeta(_) | DeviceMsg::GxpMeta(_) => {
                crate::hot_counter!(m::MESSAGES_TOTAL, "kind" => "capture_meta")
            }
            _ => crate::hot_counter!(m::MESSAGES_TOTAL, "kind" => "chunk"),
        };
        counter.increment(1);
        match msg {
            DeviceMsg::CaptureMeta(meta) => {
                self.format = Some(WireFormat::V1);
                self.on_meta(meta, cx, out);
            }
            DeviceMsg::Chunk(chunk) => {
                self.format = Some(WireFormat::V1);
                self.on_chunk(chunk, WireFormat::V1, cx, out);
            }
            DeviceMsg::GxpMeta(meta) => {
                self.format = Some(WireFormat::Gxp);
                self.on_gxp_meta(meta, ack, cx, out);
            }
            DeviceMsg::GxpChunk(chunk) => {
                self.format = Some(WireFormat::Gxp);
                self.on_gxp_chunk(chunk, cx, out);
            }
            DeviceMsg::Status(_) | DeviceMsg::Reading(_) | DeviceMsg::CmdResult(_) => {}
        }
    }

    pub(super) fn on_meta(&mut self, meta: CaptureMeta, cx: &MsgCtx<'_>, out: &mut Vec<Effect>) {
        let (now, wall) = (cx.now, cx.wall);
        let layout = Layout {
            image_bytes: meta.image_bytes as u32,
            chunk_size: meta.chunk_size,
            total_chunks: meta.total_chunks,
        };
        if self.answer_if_stored(&meta.capture_id, cx, out) {
            return;
        }
        if let Some(c) = self.captures.get(&meta.capture_id) {
            if c.layout == layout || matches!(c.phase, Phase::Storing) {
                // A retransmission: ignored, the assembly keeps its chunks. It does not count as
                // activity: a device that resends metadata while waiting must still get the
                // missing-chunks NACK when the inactivity timeout passes.
                return;
            }
            // Different sizes: restart the assembly.
            let old = self
                .captures
                .remove(&meta.capture_id)
                .map(|c| c.held)
                .unwrap_or(0);
            self.release(old);
        }
        let Some(need) = self.reserve(&meta.capture_id, layout, cx, out) else {
            return;
        };
        let captured_at = meta.captured_at.unwrap_or(wall);
        if let Some(sensors) = meta.sensors {
            let row = ReadingRow {
                device_id: self.id.clone(),
                seq: None,
                capture_id: Some(meta.capture_id.clone()),
                values: sensors,
                extra: Default::default(),
                measured_at: captured_at,
                touch_device: false,
            };
            out.push(Effect::Row(Row::Reading(row), None));
        }
        let capture = Capture {
            format: WireFormat::V1,
            gxp: None,
            layout,
            captured_at,
            sha256: meta.sha256.map(|s| s.to_ascii_lowercase()),
            phase: Phase::Assembling(Assembly::new(layout)),
            last_activity: now,
            nack_rounds: 0,
            held: need,
        };
        self.captures.insert(meta.capture_id.clone(), capture);
        self.apply_early(&meta.capture_id, WireFormat::V1, cx, out);
    }

    /// Answers metadata for a capture already stored with `ACK_OK` again (§4.1), in the
    /// capture's format. Returns whether it was one.
    pub(super) fn answer_if_stored(
        &mut self,
        capture_id: &str,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) -> bool {
        let wall = cx.wall;
        let Some(r) = self.recent.iter_mut().find(|r| r.capture_id == capture_id) else {
            return false;
        };
        if r.format == WireFormat::Gxp && cx.now.duration_since(r.answered_at) < REANSWER_AFTER {
            return true;
        }
        r.answered_at = cx.now;
        let r = r.clone();
        let payload = match r.format {
            WireFormat::V1 => nack::ack_ok(&r.capture_id, r.image_bytes, r.stored_at),
            WireFormat::Gxp => self.gxp_ack_ok(&r.capture_id, wall, out),
        };
        out.push(Effect::Publish {
            payload,
            kind: "ack",
        });
        true
    }

    /// Reserves the bytes of a new assembly within the capture count and both byte budgets,
    /// or records 2209 and returns `None`.
    pub(super) fn reserve(
        &mut self,
        capture_id: &str,
        layout: Layout,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) -> Option<usize> {
        if self.captures.len() >= self.cfg.max_captures_in_flight {
            let msg = format!(
                "{} captures already in flight (max {})",
                self.captures.len(),
                self.cfg.max_captures_in_flight
            );
            self.error(ErrorCode::OverBudget, msg, Some(capture_id), cx, out);
            return None;
        }
        let need = layout.image_bytes as usize + (layout.total_chunks as usize).div_ceil(64) * 8;
        if self.held + need > self.cfg.device_budget_bytes || !self.budget.try_reserve(need) {
            let msg = format!(
                "capture of {} bytes exceeds the byte budget",
                layout.image_bytes
            );
            self.error(ErrorCode::OverBudget, msg, Some(capture_id), cx, out);
            return None;
        }
        self.held += need;
        metrics::counter!(m::ASSEMBLIES_STARTED_TOTAL).increment(1);
        Some(need)
    }

    /// Feeds the chunks that arrived before the capture's metadata into its new assembly.
    pub(super) fn apply_early(
        &mut self,
        capture_id: &str,
        format: WireFormat,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(early) = self.early.remove(capture_id) {
            self.release(early.bytes);
            for (index, data) in early.chunks {
                let chunk = Chunk {
                    capture_id: capture_id.to_owned(),
                    index,
                    data,
                };
                self.on_chunk(chunk, format, cx, out);
            }
        }
    }

    pub(super) fn on_chunk(
        &mut self,
        chunk: Chunk,
        format: WireFormat,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let Some(c) = self.captures.get_mut(&chunk.capture_id) else {
            if self.recent.iter().any(|r| r.capture_id == chunk.capture_id) {
                metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "duplicate").increment(1);
                return;
            }
            self.buffer_early(chunk, format, PartialLayout::default(), cx, out);
            return;
        };
        c.last_activity = now;
        let Phase::Assembling(asm) = &mut c.phase else {
            metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "duplicate").increment(1);
            return;
        };
        let outcome = asm.add(chunk.index, &chunk.data);
        let problem = match outcome {
            ChunkOutcome::Accepted => {
                crate::hot_counter!(m::CHUNKS_TOTAL, "outcome" => "accepted").increment(1);
                None
            }
            ChunkOutcome::Duplicate => {
                metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "duplicate").increment(1);
                None
            }
            ChunkOutcome::Complete => {
                crate::hot_counter!(m::CHUNKS_TOTAL, "outcome" => "accepted").increment(1);
                self.complete(&chunk.capture_id, now, out);
                None
            }
            ChunkOutcome::OutOfRange => Some(format!(
                "chunk index {} is out of range 0..{}",
                chunk.index,
                asm.layout().total_chunks
            )),
            ChunkOutcome::WrongLength { expected, got } => Some(format!(
                "chunk {} is {got} bytes, expected {expected}",
                chunk.index
            )),
            ChunkOutcome::Conflict => Some(format!(
                "duplicate chunk {} with different bytes; the first copy is kept",
                chunk.index
            )),
        };
        if let Some(msg) = problem {
            metrics::counter!(m::CHUNKS_TOTAL, "outcome" => "rejected").increment(1);
            self.error(ErrorCode::BadChunk, msg, Some(&chunk.capture_id), cx, out);
        }
    }

    pub(super) fn buffer_early(
        &mut self,
        chunk: Chunk,
        format: WireFormat,
        layout: PartialLayout,
        cx: &MsgCtx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let n = chunk.data.len();
        let fits = n <= MAX_EARLY_CHUNK_BYTES
            && (self.early.contains_key(&chunk.capture_id)
                || self.early.len() + self.captures.len() < self.cfg.max_captures_in_flight)
            && self.held + n <= self.cfg.device_budget_bytes
            && self.budget.try_reserve(n);
        if !fits {
            let id = chunk.capture_id.clone();
            let msg = format!(
                "chunk {} for unknown capture {id} and no room to buffer it",
                chunk.index
            );
            self.error(ErrorCode::UnknownCapture, msg, Some(&id), cx, out);
            if format == WireFormat::V1 {
                out.push(Effect::Publish {
                    payload: nack::need_metadata(&id),
                    kind: "nack",
                });
                metrics::counter!(m::NACKS_TOTAL, "reason" => "need_metadata").increment(1);
            }
            return;
        }
        crate::hot_counter!(m::CHUNKS_TOTAL, "outcome" => "buffered").increment(1);
        self.held += n;
        let e = self.early.entry(chunk.capture_id).or_insert_with(|| Early {
            chunks: Vec::new(),
            bytes: 0,
            first_at: now,
            format,
            layout: PartialLayout::default(),
        });
        e.layout.merge(&layout);
        e.bytes += n;
        e.chunks.push((chunk.index, chunk.data));
    }

    pub(super) fn complete(&mut self, capture_id: &str, now: Instant, out: &mut Vec<Effect>) {
        let Some(c) = self.captures.get_mut(capture_id) else {
            return;
        };
        if c.gxp.as_ref().is_some_and(|g| !g.meta_seen) {
            // A GXP image whose chunks all came before its metadata waits for it (capture time,
            // sensors), until the inactivity timeout (see `nack_idle_captures`).
            return;
        }
        let Phase::Assembling(asm) = &mut c.phase else {
            return;
        };
        if let Some(expected) = &c.sha256 {
            if !asm.verify_sha256(expected) {
                let total = c.layout.total_chunks;
                asm.reset();
                c.nack_rounds += 1;
                let rec = self.record(
                    ErrorCode::ChecksumMismatch,
                    "sha256 of the assembled image does not match".into(),
                    json!({"capture_id": capture_id}),
                    now,
                );
                if let Some(r) = rec {
                    out.push(Effect::Row(Row::Error(r), None));
                }
                out.push(Effect::Publish {
                    payload: nack::checksum(capture_id, total),
                    kind: "nack",
                });
                metrics::counter!(m::NACKS_TOTAL, "reason" => "checksum").increment(1);
                return;
            }
        }
        if let Some((code, message, details)) = invalid_image(asm, c.layout) {
            metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "invalid").increment(1);
            self.fail_capture(capture_id, code, message, details, now, out);
            return;
        }
        let Phase::Assembling(asm) = std::mem::replace(&mut c.phase, Phase::Storing) else {
            return;
        };
        out.push(Effect::Store(StoreRequest {
            format: c.format,
            meta: c.gxp.as_ref().and_then(|g| g.meta_json()),
            device_id: self.id.clone(),
            capture_id: capture_id.to_owned(),
            captured_at: c.captured_at,
            image: asm.into_image(),
            layout: c.layout,
            sha256: c.sha256.clone(),
            nack_rounds: c.nack_rounds,
            completed_at: now,
        }));
    }

    /// Ends a capture as `failed`: frees its bytes, records the error and writes the row.
    pub(super) fn fail_capture(
        &mut self,
        capture_id: &str,
        code: ErrorCode,
        message: String,
        details: serde_json::Value,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(c) = self.captures.remove(capture_id) else {
            return;
        };
        self.release(c.held);
        let mut details = details;
        if let Some(o) = details.as_object_mut() {
            o.entry("capture_id").or_insert_with(|| json!(capture_id));
        }
        if let Some(r) = self.record(code, message, details, now) {
            out.push(Effect::Row(Row::Error(r), None));
        }
        out.push(Effect::Row(
            Row::Capture(CaptureRow {
                device_id: self.id.clone(),
                capture_id: capture_id.to_owned(),
                captured_at: c.captured_at,
                image_bytes: i64::from(c.layout.image_bytes),
                total_chunks: c.layout.total_chunks as i32,
                chunk_size: c.layout.chunk_size as i32,
                sha256: c.sha256,
                status: IngestStatus::Failed,
                storage_path: None,
                nack_rounds: c.nack_rounds as i32,
                stored_at: None,
                format: c.format,
                meta: c.gxp.as_ref().and_then(|g| g.meta_json()),
            }),
            None,
        ));
    }

    /// Reports the end of a store request.
    pub fn on_stored(
        &mut self,
        capture_id: &str,
        outcome: StoreOutcome,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(c) = self.captures.remove(capture_id) else {
            return;
        };
        self.release(c.held);
        match outcome {
            StoreOutcome::Stored { stored_at } => {
                metrics::counter!(m::CAPTURES_STORED_TOTAL).increment(1);
                let payload = match c.format {
                    WireFormat::V1 => nack::ack_ok(capture_id, c.layout.image_bytes, stored_at),
                    WireFormat::Gxp => self.gxp_ack_ok(capture_id, Utc::now(), out),
                };
                out.push(Effect::Publish {
                    payload,
                    kind: "ack",
                });
                if self.recent.len() >= self.cfg.recent_captures.max(1) {
                    self.recent.pop_front();
                }
                self.recent.push_back(Recent {
                    capture_id: capture_id.to_owned(),
                    image_bytes: c.layout.image_bytes,
                    stored_at,
                    format: c.format,
                    answered_at: now,
                });
            }
            StoreOutcome::Failed { reason, code } => {
                metrics::counter!(m::CAPTURES_FAILED_TOTAL, "reason" => "storage").increment(1);
                let what = match code {
                    ErrorCode::CaptureRowFailed => "the captures row could not be written",
                    ErrorCode::FinaliseFailed => "finalising the capture failed",
                    _ => "storage upload failed after retries",
                };
                if let Some(r) = self.record(
                    code,
                    format!("{what}: {reason}"),
                    json!({"capture_id": capture_id}),
                    now,
                ) {
                    out.push(Effect::Row(Row::Error(r), None));
                }
                // The GXP firmware has no storage NACK: it keeps the image pending and offers
                // it again at its next wake.
                if c.format == WireFormat::V1 {
                    out.push(Effect::Publish {
                        payload: nack::storage(capture_id),
                        kind: "nack",
                    });
                    metrics::counter!(m::NACKS_TOTAL, "reason" => "storage").increment(1);
                }
            }
        }
    }
}

/// Validation before storing, in either format: the declared size (2202), then the JPEG
/// markers `FF D8` … `FF D9` (2203).
fn invalid_image(asm: &Assembly, layout: Layout) -> Option<(ErrorCode, String, serde_json::Value)> {
    let actual = asm.assembled_len();
    let declared = layout.image_bytes as usize;
    if actual != declared {
        return Some((
            ErrorCode::SizeMismatch,
            format!("size mismatch: declared {declared}, actual {actual}"),
            json!({"declared": declared, "actual": actual}),
        ));
    }
    if !asm.is_jpeg() {
        return Some((
            ErrorCode::NotJpeg,
            "invalid JPEG: missing SOI (FF D8) or EOI (FF D9) marker".into(),
            json!({}),
        ));
    }
    None
}
